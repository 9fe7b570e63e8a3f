//! `axctl secrets add|import|ls|rm`: the secret store (docs/secrets.md).
//!
//! Values never come from the command line (where `ps` and shell history would show them):
//! `add` reads stdin, `import` reads a file.

use crate::error::usage;
use crate::secrets::{self, mask, store_path, Store};
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::{IsTerminal, Read};

/// `axctl secrets …`.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCmd {
    /// Store a secret; the value is read from stdin (typed without echo on a terminal).
    Add {
        /// Name, e.g. ANTHROPIC_API_KEY (the guest sees it as this environment variable).
        name: String,
        /// Host the secret may be sent to (repeatable); default for well-known names
        /// (ANTHROPIC_API_KEY, OPENAI_API_KEY, GEMINI_API_KEY, GOOGLE_API_KEY, GITHUB_TOKEN,
        /// GH_TOKEN): their API hosts.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Also substitute the secret in request bodies, not only in auth headers.
        #[arg(long)]
        body: bool,
    },
    /// Store every KEY=VALUE of a .env file (well-known names get their hosts; others
    /// need --host).
    Import {
        file: std::path::PathBuf,
        /// Host for the names that are not well known (repeatable).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// List stored secrets: masked value, hosts, last use.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove stored secrets.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs a `secrets` subcommand.
pub fn run(cmd: SecretsCmd) -> Result<i32> {
    match cmd {
        SecretsCmd::Add { name, hosts, body } => add(&name, &hosts, body),
        SecretsCmd::Import { file, hosts } => import(&file, &hosts),
        SecretsCmd::Ls { json } => ls(json),
        SecretsCmd::Rm { names } => {
            secrets::remove_at(&store_path(), &names)?;
            for n in &names {
                eprintln!("axctl: removed {n}");
            }
            Ok(0)
        }
    }
}

/// `--host` values, or the well-known binding of `name`; error if neither.
fn hosts_for(name: &str, hosts: &[String]) -> Result<Vec<String>> {
    if !hosts.is_empty() {
        return secrets::check_hosts(hosts);
    }
    match secrets::known_hosts(name) {
        Some(h) => Ok(h.iter().map(|s| s.to_string()).collect()),
        None => Err(usage(
            format!("{name} is not a well-known secret, so it has no default host"),
            format!("say where it may be sent: axctl secrets add {name} --host HOST"),
        )),
    }
}

fn add(name: &str, hosts: &[String], body: bool) -> Result<i32> {
    secrets::check_name(name)?;
    let hosts = hosts_for(name, hosts)?;
    let value = read_value(name)?;
    secrets::add_at(&store_path(), name, value, hosts.clone(), body)?;
    eprintln!("axctl: stored {name} for {}", hosts.join(", "));
    Ok(0)
}

/// Reads the value from stdin: a terminal prompts on stderr with echo off (one line); a
/// pipe or file is read to the end. Trailing newlines are stripped; empty is an error.
fn read_value(name: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let mut value = if stdin.is_terminal() {
        read_hidden(&format!("Value for {name} (input hidden): "))?
    } else {
        let mut s = String::new();
        stdin
            .lock()
            .read_to_string(&mut s)
            .context("reading the value from stdin (it must be UTF-8 text)")?;
        s
    };
    while value.ends_with('\n') || value.ends_with('\r') {
        value.pop();
    }
    if value.is_empty() {
        return Err(usage(
            format!("the value for {name} is empty"),
            format!("pipe it in: printf %s \"$VALUE\" | axctl secrets add {name} …, or type it at the prompt"),
        ));
    }
    Ok(value)
}

/// One line from the terminal on stdin without echo. Signals from keys are off while
/// reading so that ^C cannot leave the terminal without echo; a ^C in the line cancels.
fn read_hidden(prompt: &str) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("reading the terminal settings")?;
    let mut quiet = saved.clone();
    quiet
        .local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ISIG);
    quiet.local_flags.insert(LocalFlags::ICANON);
    eprint!("{prompt}");
    tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet).context("turning off the terminal echo")?;
    let mut line = String::new();
    let r = stdin.read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSAFLUSH, &saved);
    eprintln!();
    r.context("reading the value")?;
    if line.contains('\u{3}') {
        return Err(usage(
            "cancelled",
            "run the command again to store the secret",
        ));
    }
    Ok(line)
}

fn import(file: &std::path::Path, hosts: &[String]) -> Result<i32> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        usage(
            format!("cannot read {}: {e}", file.display()),
            "give the path of a .env file",
        )
    })?;
    let pairs = parse_env(&text).map_err(|(line, msg)| {
        usage(
            format!("{}:{line}: {msg}", file.display()),
            "write one KEY=VALUE per line (quotes and # comments allowed)",
        )
    })?;
    if pairs.is_empty() {
        return Err(usage(
            format!("{} has no KEY=VALUE lines", file.display()),
            "give a .env file",
        ));
    }
    let extra = secrets::check_hosts(hosts)?;
    let mut plan = Vec::new();
    let mut unbound = Vec::new();
    for (line, k, v) in pairs {
        secrets::check_name(&k).map_err(|_| {
            usage(
                format!(
                    "{}:{line}: {k:?} is not a valid secret name",
                    file.display()
                ),
                "use letters, digits and '_'",
            )
        })?;
        if v.is_empty() {
            return Err(usage(
                format!("{}:{line}: {k} has an empty value", file.display()),
                "remove the line or give a value",
            ));
        }
        let h = match secrets::known_hosts(&k) {
            Some(h) => h.iter().map(|s| s.to_string()).collect(),
            None if !extra.is_empty() => extra.clone(),
            None => {
                unbound.push(k);
                continue;
            }
        };
        plan.push((k, v, h));
    }
    if !unbound.is_empty() {
        return Err(usage(
            format!("{} not well known, so no host is known for them", unbound.join(", ")),
            format!("pass --host HOST for them (nothing was stored): axctl secrets import {} --host HOST", file.display()),
        ));
    }
    let now = secrets::now();
    secrets::update(&store_path(), |m| {
        for (k, v, h) in &plan {
            m.insert(
                k.clone(),
                secrets::Entry {
                    value: v.clone(),
                    hosts: h.clone(),
                    body: false,
                    added: now,
                    last_used: None,
                },
            );
        }
        Ok(())
    })?;
    for (k, _, h) in &plan {
        eprintln!("axctl: stored {k} for {}", h.join(", "));
    }
    Ok(0)
}

/// The entries of a .env file: (1-based line, name, value), in file order.
pub type EnvLines = Vec<(usize, String, String)>;

/// Parses a .env file: `KEY=VALUE` lines, optional `export `, blank lines and `#` comments;
/// values unquoted (trimmed, ` #…` comment cut), `'single'` (literal) or `"double"` (escapes
/// `\n \t \r \" \\ \$`). Errors: (1-based line, message).
pub fn parse_env(text: &str) -> Result<EnvLines, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or((n, "expected KEY=VALUE".to_string()))?;
        let k = k.trim().to_string();
        let v = v.trim_start();
        let value = if let Some(rest) = v.strip_prefix('\'') {
            let end = rest.find('\'').ok_or((n, "unclosed ' quote".to_string()))?;
            check_after(&rest[end + 1..], n)?;
            rest[..end].to_string()
        } else if let Some(rest) = v.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = rest.char_indices();
            let mut end = None;
            while let Some((j, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(j);
                        break;
                    }
                    '\\' => match chars.next().map(|x| x.1) {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some(c @ ('"' | '\\' | '$')) => s.push(c),
                        Some(c) => {
                            s.push('\\');
                            s.push(c);
                        }
                        None => {}
                    },
                    c => s.push(c),
                }
            }
            let end = end.ok_or((n, "unclosed \" quote".to_string()))?;
            check_after(&rest[end + 1..], n)?;
            s
        } else {
            let v = match v.find(" #") {
                Some(j) => &v[..j],
                None => v,
            };
            v.trim_end().to_string()
        };
        out.push((n, k, value));
    }
    Ok(out)
}

fn check_after(rest: &str, n: usize) -> Result<(), (usize, String)> {
    let r = rest.trim();
    if r.is_empty() || r.starts_with('#') {
        Ok(())
    } else {
        Err((n, format!("unexpected {r:?} after the closing quote")))
    }
}

#[derive(Serialize)]
struct LsRow {
    name: String,
    value: String,
    hosts: Vec<String>,
    body: bool,
    /// RFC 3339 UTC.
    added: String,
    last_used: Option<String>,
}

fn ls(json: bool) -> Result<i32> {
    let store = Store::open()?;
    let ts = |s: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
            .to_string()
    };
    let rows: Vec<LsRow> = store
        .secrets
        .iter()
        .map(|(n, e)| LsRow {
            name: n.clone(),
            value: mask(&e.value),
            hosts: e.hosts.clone(),
            body: e.body,
            added: ts(e.added),
            last_used: e.last_used.map(ts),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let table: Vec<[String; 4]> = rows
        .iter()
        .zip(store.secrets.values())
        .map(|(r, e)| {
            [
                r.name.clone(),
                r.value.clone(),
                format!(
                    "{}{}",
                    r.hosts.join(","),
                    if r.body { " (+body)" } else { "" }
                ),
                match e.last_used {
                    Some(t) => format!("{} ago", crate::table::age(t * 1000)),
                    None => "never".into(),
                },
            ]
        })
        .collect();
    crate::table::print_table(&["NAME", "VALUE", "HOSTS", "LAST USED"], &table);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_env;

    #[test]
    fn env_file_syntax() {
        let text =
            "# comment\n\nexport A=1\nB = 'x # y' # c\nC=\"q\\\"\\n$\"\nD=plain value # note\nE=\n";
        let got: Vec<(usize, String, String)> = parse_env(text).unwrap();
        let kv: Vec<(&str, &str)> = got
            .iter()
            .map(|(_, k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            kv,
            [
                ("A", "1"),
                ("B", "x # y"),
                ("C", "q\"\n$"),
                ("D", "plain value"),
                ("E", "")
            ]
        );
        assert_eq!(got[1].0, 4);
        assert_eq!(parse_env("A=1\nnope\n").unwrap_err().0, 2);
        assert!(parse_env("A='x\n").unwrap_err().1.contains("unclosed"));
        assert!(parse_env("A=\"x\" y\n")
            .unwrap_err()
            .1
            .contains("after the closing quote"));
    }
}
