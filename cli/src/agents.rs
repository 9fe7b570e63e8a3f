//! Agent definitions. Built-in for now: `shell` runs the prompt with `sh -c`. (TOML
//! definitions for claude, codex, gemini, opencode and user agents come with issue #6.)

use crate::error::usage;
use anyhow::Result;

/// A resolved agent definition.
#[derive(Debug, Clone)]
pub struct AgentDef {
    pub name: &'static str,
    /// One-line description for listings.
    pub about: &'static str,
}

/// The built-in agents.
pub const BUILTIN: &[AgentDef] = &[AgentDef {
    name: "shell",
    about: "runs the prompt with `sh -c` in /workspace",
}];

/// Looks up agent `name`; an unknown name is a usage error listing the known ones.
pub fn find(name: &str) -> Result<&'static AgentDef> {
    BUILTIN.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<&str> = BUILTIN.iter().map(|a| a.name).collect();
        usage(
            format!("unknown agent '{name}'"),
            format!("use one of: {}", known.join(", ")),
        )
    })
}

impl AgentDef {
    /// The command agentd runs for `prompt`.
    pub fn argv(&self, prompt: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), prompt.into()]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_agent_is_usage_error() {
        let e = super::find("nope").unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        assert!(format!("{e}").contains("shell"));
        assert_eq!(
            super::find("shell").unwrap().argv("exit 7"),
            ["sh", "-c", "exit 7"]
        );
    }
}
