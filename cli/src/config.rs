//! axctl's configuration file, `$XDG_CONFIG_HOME/ax/config.toml` (docs/config.md).
//!
//! TOML (v1.0). Every table and key is known: an unknown one is an error naming the file,
//! line and column (exit 2), so a typo never silently falls back to a default. A missing file
//! is the same as an empty one.
//!
//! ```toml
//! [branch]
//! author_name = "ax agent {name}"        # default
//! author_email = "{name}@ax.invalid"     # default
//! committer_name = "CI bot"              # default: the author
//! committer_email = "ci@example.com"     # default: the author
//! ```
//!
//! `{name}` in a value is replaced by the agent's name; `{{` and `}}` are literal braces; any
//! other `{…}` is an error. The user's git config (`user.name`, `user.email`) is never read.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::error::usage;
use ax_branch::{Identity, Person};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[branch]`: the identity on `ax/<name>`.
    #[serde(default)]
    pub branch: BranchConfig,
}

/// `[branch]`: author and committer of the commits ax makes on `ax/<name>` (templates with
/// `{name}`), also the `user.name`/`user.email` of the agent's own `.git` (the author).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchConfig {
    /// Default `ax agent {name}`.
    pub author_name: Option<String>,
    /// Default `{name}@ax.invalid`.
    pub author_email: Option<String>,
    /// Default: the author's name.
    pub committer_name: Option<String>,
    /// Default: the author's email.
    pub committer_email: Option<String>,
}

/// `$XDG_CONFIG_HOME/ax/config.toml`.
pub fn path() -> PathBuf {
    crate::paths::config_dir().join("config.toml")
}

/// Reads [`path`]; a missing file gives the defaults. Errors (unreadable file, bad TOML,
/// unknown keys, wrong types, bad templates) are usage errors (exit 2) naming `file:line:col`.
pub fn load() -> Result<Config> {
    let p = path();
    match std::fs::read_to_string(&p) {
        Ok(text) => parse(&text, &p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(usage(
            format!("cannot read {}: {e}", p.display()),
            "fix its permissions or remove it",
        )),
    }
}

/// 1-based line and column of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
    (line, col)
}

/// Parses the text of a config file (`file` is only for messages) and checks the templates.
pub fn parse(text: &str, file: &Path) -> Result<Config> {
    let cfg: Config = toml::from_str(text).map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                format!("{}:{l}:{c}", file.display())
            }
            None => file.display().to_string(),
        };
        let msg = e.message().trim().replace('\n', " ");
        usage(
            format!("{at}: {msg}"),
            "fix the file (keys are listed in docs/config.md)",
        )
    })?;
    // Templates are checked now, with a sample name, so a bad one fails before anything runs.
    cfg.branch.identity("agent").map_err(|e| {
        usage(
            format!("{}: [branch]: {e:#}", file.display()),
            "fix the file",
        )
    })?;
    Ok(cfg)
}

/// Replaces `{name}` with `name`; `{{` / `}}` are literal braces; any other brace is an error.
pub fn render(template: &str, name: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{name}") {
            out.push_str(name);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
        } else {
            let bad = match tail[1..].find(['{', '}']) {
                Some(j) if tail[1 + j..].starts_with('}') => &tail[..j + 2],
                _ => &tail[..1],
            };
            anyhow::bail!(
                "unknown placeholder {bad} in {template:?}: only {{name}} is known (write {{{{ and }}}} for literal braces)"
            );
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl BranchConfig {
    /// The identity of agent `name`: the templates rendered, defaults filled in, checked
    /// ([`Identity::validate`]).
    pub fn identity(&self, name: &str) -> Result<Identity> {
        let field = |v: &Option<String>, key: &str, default: &str| -> Result<Option<String>> {
            match v {
                Some(t) => render(t, name)
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("{key}: {e}")),
                None if default.is_empty() => Ok(None),
                None => render(default, name).map(Some),
            }
        };
        let author_name =
            field(&self.author_name, "author_name", "ax agent {name}")?.unwrap_or_default();
        let author_email =
            field(&self.author_email, "author_email", "{name}@ax.invalid")?.unwrap_or_default();
        // The committer defaults to the author (already rendered: not a template again).
        let committer_name = field(&self.committer_name, "committer_name", "")?
            .unwrap_or_else(|| author_name.clone());
        let committer_email = field(&self.committer_email, "committer_email", "")?
            .unwrap_or_else(|| author_email.clone());
        let committer = (committer_name != author_name || committer_email != author_email)
            .then_some(Person {
                name: committer_name,
                email: committer_email,
            });
        let id = Identity {
            name: author_name,
            email: author_email,
            committer,
            time: None,
        };
        id.validate()?;
        Ok(id)
    }

    /// [`BranchConfig::identity`] with the author replaced by `author` (`axctl run
    /// --author`); the committer stays the configured one, or becomes that author when none
    /// is configured.
    pub fn identity_with_author(&self, name: &str, author: Option<&Person>) -> Result<Identity> {
        let Some(a) = author else {
            return self.identity(name);
        };
        let with_author = BranchConfig {
            author_name: Some(escape(&a.name)),
            author_email: Some(escape(&a.email)),
            committer_name: self.committer_name.clone(),
            committer_email: self.committer_email.clone(),
        };
        with_author.identity(name)
    }
}

/// `s` as a template that renders to itself.
fn escape(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

/// Parses `Name <email>` (the form of git's `--author`); a usage error otherwise.
pub fn parse_person(s: &str) -> Result<Person> {
    let bad = || {
        usage(
            format!("--author {s:?} is not of the form \"Name <email>\""),
            "e.g. --author \"Ada Lovelace <ada@example.com>\"",
        )
    };
    let s = s.trim();
    let (name, rest) = s.split_once('<').ok_or_else(bad)?;
    let email = rest.strip_suffix('>').ok_or_else(bad)?;
    let p = Person {
        name: name.trim().to_string(),
        email: email.trim().to_string(),
    };
    if p.name.is_empty() || p.email.is_empty() || p.email.contains(['<', '>']) {
        return Err(bad());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit_code;

    fn p(text: &str) -> Result<Config> {
        parse(text, Path::new("/cfg/config.toml"))
    }

    #[test]
    fn empty_file_gives_the_default_identity() {
        let c = p("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.branch.identity("t1").unwrap(), Identity::agent("t1"));
        assert_eq!(p("[branch]\n").unwrap(), Config::default());
    }

    #[test]
    fn templates_and_committer_default() {
        let c = p("# mine\n[branch]\nauthor_name = \"Robot {name}\"\nauthor_email = \"bots+{name}@example.com\"\n")
            .unwrap();
        let id = c.branch.identity("fix-1").unwrap();
        assert_eq!(id.name, "Robot fix-1");
        assert_eq!(id.email, "bots+fix-1@example.com");
        assert_eq!(id.committer, None, "committer defaults to the author");
        let c =
            p("[branch]\ncommitter_name = \"CI\"\ncommitter_email = \"ci@example.com\"\n").unwrap();
        let id = c.branch.identity("a").unwrap();
        assert_eq!(
            (id.name.as_str(), id.email.as_str()),
            ("ax agent a", "a@ax.invalid")
        );
        assert_eq!(
            id.committer,
            Some(Person {
                name: "CI".into(),
                email: "ci@example.com".into()
            })
        );
        // Only the committer's email set: the name is the author's.
        let c = p("[branch]\ncommitter_email = \"ci@example.com\"\n").unwrap();
        let id = c.branch.identity("a").unwrap();
        assert_eq!(id.committer.unwrap().name, "ax agent a");
    }

    #[test]
    fn render_placeholders() {
        assert_eq!(render("{name}-{name}", "x").unwrap(), "x-x");
        assert_eq!(render("{{name}} {name}", "x").unwrap(), "{name} x");
        assert_eq!(render("plain", "x").unwrap(), "plain");
        for (bad, shown) in [
            ("{nam}", "{nam}"),
            ("{", "{"),
            ("}", "}"),
            ("x {agent} y", "{agent}"),
            ("a{name", "{"),
        ] {
            let e = render(bad, "x").unwrap_err().to_string();
            assert!(e.contains("only {name} is known"), "{bad}: {e}");
            assert!(e.contains(&format!("placeholder {shown} in")), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_tables_name_file_and_line() {
        let e = p("[branch]\nauthor_name = \"a\"\nauthor_mail = \"x\"\n").unwrap_err();
        assert_eq!(exit_code(&e), 2);
        let m = e.to_string();
        assert!(m.starts_with("/cfg/config.toml:3:1: "), "{m}");
        assert!(m.contains("author_mail"), "{m}");
        assert!(!m.contains('\n'), "one line: {m}");
        let m = p("\n\n[brnch]\nx = 1\n").unwrap_err().to_string();
        assert!(m.starts_with("/cfg/config.toml:3:"), "{m}");
        assert!(m.contains("brnch"), "{m}");
    }

    #[test]
    fn wrong_types_and_syntax_are_usage_errors() {
        for (text, line) in [
            ("[branch]\nauthor_name = 7\n", 2),
            ("[branch]\nauthor_name = \"unterminated\n", 2),
            ("branch = \"x\"\n", 1),
        ] {
            let e = p(text).unwrap_err();
            assert_eq!(exit_code(&e), 2, "{text}");
            let m = e.to_string();
            assert!(
                m.starts_with(&format!("/cfg/config.toml:{line}:")),
                "{text}: {m}"
            );
        }
    }

    #[test]
    fn bad_templates_and_values_fail_at_load() {
        for text in [
            "[branch]\nauthor_name = \"{user}\"\n",
            "[branch]\nauthor_email = \"<{name}>\"\n",
            "[branch]\nauthor_name = \"\"\n",
            "[branch]\ncommitter_name = \"a\\nb\"\n",
        ] {
            let e = p(text).unwrap_err();
            assert_eq!(exit_code(&e), 2, "{text}");
            assert!(e.to_string().contains("[branch]"), "{e}");
        }
    }

    #[test]
    fn author_override() {
        let a = parse_person("  Ada Lovelace <ada@example.com> ").unwrap();
        assert_eq!(a.name, "Ada Lovelace");
        assert_eq!(a.email, "ada@example.com");
        for bad in [
            "Ada",
            "<a@b>",
            "Ada <>",
            "Ada <a@b",
            "Ada a@b>",
            "Ada <a<b>",
        ] {
            let e = parse_person(bad).unwrap_err();
            assert_eq!(exit_code(&e), 2, "{bad}");
        }
        // Braces in a --author value are literal; the configured committer stays.
        let c = p("[branch]\ncommitter_name = \"CI\"\ncommitter_email = \"ci@{name}.example\"\n")
            .unwrap();
        let who = Person {
            name: "A {name}".into(),
            email: "a@example.com".into(),
        };
        let id = c.branch.identity_with_author("t", Some(&who)).unwrap();
        assert_eq!(id.name, "A {name}");
        assert_eq!(id.committer.unwrap().email, "ci@t.example");
        // Without a configured committer, the --author commits too.
        let id = BranchConfig::default()
            .identity_with_author("t", Some(&who))
            .unwrap();
        assert_eq!((id.name.as_str(), id.committer), ("A {name}", None));
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\ncd", 99), (2, 3));
    }
}
