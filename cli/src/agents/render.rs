//! Command templates and their rendering.
//!
//! A template is text with placeholders in braces: `{prompt}` (the prompt as given),
//! `{name}` (the agent's instance name, as in `axctl ps`), `{home}` (the guest home,
//! `/root`), `{workspace}` (`/workspace`); `{{` and `}}` are literal braces. Any other
//! `{word}` is an error when the file is read.
//!
//! An argv template (`["claude", "-p", "{prompt}"]`) is rendered element by element with the
//! values inserted verbatim: no shell ever sees them. A string template
//! (`"cd sub && codex exec {prompt}"`) becomes `["sh", "-c", rendered]` with every inserted
//! value shell-quoted (POSIX `sh` single quotes, XCU 2.2.2), so a prompt can never break out
//! of its word.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// A placeholder a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Prompt,
    Name,
    Home,
    Workspace,
}

/// A parsed template: literal text and placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Seg>);

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(String),
    Var(Var),
}

impl Template {
    /// Parses `s`; errors name the bad placeholder.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut segs = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &s[i + 1..];
                    let end = rest.find('}').ok_or_else(|| {
                        format!("unclosed '{{' in {s:?}; write {{{{ for a literal brace")
                    })?;
                    let var = match &rest[..end] {
                        "prompt" => Var::Prompt,
                        "name" => Var::Name,
                        "home" => Var::Home,
                        "workspace" => Var::Workspace,
                        other => {
                            return Err(format!(
                                "unknown placeholder {{{other}}}; use {{prompt}}, {{name}}, \
                                 {{home}} or {{workspace}} ({{{{ for a literal brace)"
                            ))
                        }
                    };
                    if !lit.is_empty() {
                        segs.push(Seg::Lit(std::mem::take(&mut lit)));
                    }
                    segs.push(Seg::Var(var));
                    for _ in 0..=end {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(format!(
                        "stray '}}' in {s:?}; write }}}} for a literal brace"
                    ))
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            segs.push(Seg::Lit(lit));
        }
        Ok(Template(segs))
    }

    /// True when the template is exactly one placeholder (an argv element that disappears
    /// when the value is absent).
    fn is_only(&self, v: Var) -> bool {
        self.0 == [Seg::Var(v)]
    }

    /// True when it uses placeholder `v`.
    pub fn uses(&self, v: Var) -> bool {
        self.0.contains(&Seg::Var(v))
    }

    /// Renders with `quote` applied to every inserted value.
    fn render(&self, vars: &Vars, quote: fn(&str) -> String) -> String {
        let mut out = String::new();
        for s in &self.0 {
            match s {
                Seg::Lit(l) => out.push_str(l),
                // No value (no prompt): nothing (documented).
                Seg::Var(v) => {
                    if let Some(val) = vars.get(*v) {
                        out.push_str(&quote(val));
                    }
                }
            }
        }
        out
    }
}

impl<'de> serde::Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that the error is raised inside the value's deserializer and carries
        // the element's own position (not the enclosing array's).
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Template;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Template, E> {
                Template::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Values for the placeholders; `prompt` is `None` for an interactive start without one.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    pub prompt: Option<&'a str>,
    pub name: &'a str,
    pub home: &'a str,
    pub workspace: &'a str,
}

impl Vars<'_> {
    fn get(&self, v: Var) -> Option<&str> {
        match v {
            Var::Prompt => self.prompt,
            Var::Name => Some(self.name),
            Var::Home => Some(self.home),
            Var::Workspace => Some(self.workspace),
        }
    }
}

/// A command template: an argv array (each element rendered on its own, no shell) or a
/// string (rendered with every substitution shell-quoted, run as `sh -c STRING`).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `["claude", "-p", "{prompt}"]`.
    Argv(Vec<Template>),
    /// `"cd /workspace && make {prompt}"`.
    Shell(Template),
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an argv array of strings or a shell command string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Command, E> {
                if s.trim().is_empty() {
                    return Err(E::custom("the command is empty"));
                }
                Template::parse(s).map(Command::Shell).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Command, A::Error> {
                let mut v = Vec::new();
                while let Some(t) = a.next_element::<Template>()? {
                    v.push(t);
                }
                if v.is_empty() {
                    return Err(serde::de::Error::custom("the command is empty"));
                }
                Ok(Command::Argv(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Renders a command (see the module docs): argv elements verbatim, or `sh -c` with quoting.
/// An argv element that is exactly `{prompt}` is left out when there is no prompt.
pub fn render_command(cmd: &Command, vars: &Vars) -> Vec<String> {
    match cmd {
        Command::Argv(v) => v
            .iter()
            .filter(|t| !(vars.prompt.is_none() && t.is_only(Var::Prompt)))
            .map(|t| t.render(vars, |s| s.to_string()))
            .collect(),
        Command::Shell(t) => vec!["sh".into(), "-c".into(), t.render(vars, shell_quote)],
    }
}

/// Quotes `s` as one POSIX shell word: unchanged if it has only `[A-Za-z0-9_@%+=:,./-]`,
/// else in single quotes with each `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Replaces `${NAME}` with `values[NAME]` for every NAME in `values` (the secrets'
/// placeholders); any other `${…}` is left as written (a shell script keeps its `${HOME}`).
pub fn expand_secrets(s: &str, values: &BTreeMap<String, String>) -> String {
    if values.is_empty() || !s.contains("${") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after
            .find('}')
            .and_then(|e| values.get(&after[..e]).map(|v| (e, v)))
        {
            Some((e, v)) => {
                out.push_str(v);
                rest = &after[e + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(prompt: Option<&str>) -> Vars<'_> {
        Vars {
            prompt,
            name: "fix-it",
            home: "/root",
            workspace: "/workspace",
        }
    }

    fn argv(v: &[&str]) -> Command {
        Command::Argv(v.iter().map(|s| Template::parse(s).unwrap()).collect())
    }

    #[test]
    fn argv_inserts_verbatim() {
        let p = "it's \"$(rm -rf /)\" {name} `x`";
        let c = argv(&["tool", "-p", "{prompt}", "--tag={name}", "{{lit}}"]);
        assert_eq!(
            render_command(&c, &vars(Some(p))),
            ["tool", "-p", p, "--tag=fix-it", "{lit}"]
        );
        // No prompt: the lone {prompt} element disappears.
        assert_eq!(
            render_command(&c, &vars(None)),
            ["tool", "-p", "--tag=fix-it", "{lit}"]
        );
    }

    #[test]
    fn shell_form_quotes_every_value() {
        let c = Command::Shell(Template::parse("cd {workspace} && tool -p {prompt}").unwrap());
        let p = "it's $(touch /tmp/pwned); `id` \n next";
        let out = render_command(&c, &vars(Some(p)));
        assert_eq!(out[..2], ["sh", "-c"]);
        assert_eq!(
            out[2],
            "cd /workspace && tool -p 'it'\\''s $(touch /tmp/pwned); `id` \n next'"
        );
        // The real shell hands the prompt through as one word, unchanged.
        let echo = Command::Shell(Template::parse("printf %s {prompt}").unwrap());
        let r = render_command(&echo, &vars(Some(p)));
        let o = std::process::Command::new(&r[0])
            .args(&r[1..])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(o.stdout).unwrap(), p);
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a-b_c.d/e"), "a-b_c.d/e");
    }

    #[test]
    fn bad_templates() {
        assert!(Template::parse("{promt}")
            .unwrap_err()
            .contains("unknown placeholder {promt}"));
        assert!(Template::parse("{prompt").unwrap_err().contains("unclosed"));
        assert!(Template::parse("a}b").unwrap_err().contains("stray"));
        assert!(Template::parse("{prompt}").unwrap().uses(Var::Prompt));
    }

    #[test]
    fn secret_expansion() {
        let mut m = BTreeMap::new();
        m.insert("K".to_string(), "ph-1".to_string());
        assert_eq!(
            expand_secrets("a=${K} b=${HOME} c=${K}${", &m),
            "a=ph-1 b=${HOME} c=ph-1${"
        );
        assert_eq!(expand_secrets("${K", &m), "${K");
    }
}
