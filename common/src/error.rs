//! Errors that map to the CLI's exit codes: 2 for usage/config errors, 1 for runtime failures.
//!
//! Every error carries a message and, where there is one, a hint saying how to fix it; both are
//! printed on stderr on one line: `axctl: <message>; <hint>`.

use std::fmt;

/// Which exit code an error maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad flags, bad config, unknown names: exit code 2.
    Usage,
    /// Something failed while doing the work: exit code 1.
    Runtime,
}

/// An error the user sees.
#[derive(Debug)]
pub struct AxError {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
}

impl AxError {
    pub fn usage(message: impl Into<String>) -> Self {
        AxError {
            kind: Kind::Usage,
            message: message.into(),
            hint: None,
        }
    }
    pub fn runtime(message: impl Into<String>) -> Self {
        AxError {
            kind: Kind::Runtime,
            message: message.into(),
            hint: None,
        }
    }
    /// Adds the "how to fix it" line.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Usage => 2,
            Kind::Runtime => 1,
        }
    }
}

impl fmt::Display for AxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AxError {}

/// Builds a usage error (exit 2) with a hint.
pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    AxError::usage(message).hint(hint).into()
}

/// Builds a runtime error (exit 1) with a hint.
pub fn runtime(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    AxError::runtime(message).hint(hint).into()
}

/// The exit code for any error: an [`AxError`] anywhere in the chain decides, else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<AxError>())
        .map(AxError::exit_code)
        .unwrap_or(1)
}

/// Prints an error the way every command does: `axctl: msg` plus context and hint lines.
pub fn report(e: &anyhow::Error) {
    let mut lines = Vec::new();
    for (i, c) in e.chain().enumerate() {
        let s = c.to_string();
        if i == 0 {
            lines.push(format!("axctl: {s}"));
        } else {
            lines.push(format!("  caused by: {s}"));
        }
    }
    eprintln!("{}", lines.join("\n"));
}
