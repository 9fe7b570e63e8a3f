//! The built-in definitions, embedded at compile time from `builtin/*.toml`.

/// Built-in agent names, sorted.
pub const NAMES: &[&str] = &["claude", "codex", "gemini", "opencode", "shell"];

/// The TOML text of built-in `name`.
pub fn text(name: &str) -> Option<&'static str> {
    Some(match name {
        "claude" => include_str!("builtin/claude.toml"),
        "codex" => include_str!("builtin/codex.toml"),
        "gemini" => include_str!("builtin/gemini.toml"),
        "opencode" => include_str!("builtin/opencode.toml"),
        "shell" => include_str!("builtin/shell.toml"),
        _ => return None,
    })
}
