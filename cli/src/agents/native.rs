//! `[[mcp]]` servers rendered into each agent CLI's own configuration file.
//!
//! The shapes were checked against the CLIs themselves (versions in docs/agents.md):
//! - Claude Code 2.1.x: `~/.claude.json` `mcpServers.NAME` = `{type:"stdio", command, args,
//!   env}` or `{type:"http", url, headers}` (its settings schema, `claude mcp`).
//! - Codex 0.169: `~/.codex/config.toml` `[mcp_servers.NAME]` `command`, `args`, `env` or
//!   `url`, `http_headers` (accepted by `codex exec --strict-config`, listed by
//!   `codex mcp list`).
//! - Gemini CLI 0.61: `~/.gemini/settings.json` `mcpServers.NAME` = `{command, args, env}` or
//!   `{httpUrl, headers}` (its settings schema: `httpUrl` is streamable HTTP).
//! - OpenCode 1.18: `~/.config/opencode/opencode.json` `mcp.NAME` = `{type:"local",
//!   command:[cmd, args…], environment, enabled}` or `{type:"remote", url, headers, enabled}`
//!   (shown by `opencode debug config`).
//!
//! When the definition's `files` already writes that file, the servers are merged into its
//! contents (which must then be valid JSON / TOML); otherwise the file holds only them.

use super::def::{GuestPath, Mcp, McpConfig, McpTransport};
use serde_json::{json, Map, Value};

/// The guest path of `fmt`'s configuration file.
pub fn config_path(fmt: McpConfig) -> GuestPath {
    GuestPath(
        match fmt {
            McpConfig::Claude => "~/.claude.json",
            McpConfig::Codex => "~/.codex/config.toml",
            McpConfig::Gemini => "~/.gemini/settings.json",
            McpConfig::Opencode => "~/.config/opencode/opencode.json",
        }
        .to_string(),
    )
}

/// Returns `existing` (or an empty document) with `servers` added in `fmt`'s format.
/// Errors say which file does not parse.
pub fn merge_mcp(
    fmt: McpConfig,
    servers: &[Mcp],
    existing: Option<&str>,
) -> Result<String, String> {
    let path = config_path(fmt).0;
    if fmt == McpConfig::Codex {
        let mut doc: toml::Table = match existing {
            Some(t) => toml::from_str(t).map_err(|e| {
                format!(
                    "files: {path} is not valid TOML, so [[mcp]] cannot be added to it: {}",
                    e.message()
                )
            })?,
            None => toml::Table::new(),
        };
        let tbl = doc
            .entry("mcp_servers")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let tbl = tbl
            .as_table_mut()
            .ok_or_else(|| format!("files: {path}: mcp_servers is not a table"))?;
        for s in servers {
            let v = match &s.transport {
                McpTransport::Stdio { command, args, env } => toml::Value::try_from(json!({
                    "command": command, "args": args, "env": env,
                })),
                McpTransport::Http { url, headers } => {
                    toml::Value::try_from(json!({ "url": url, "http_headers": headers }))
                }
            }
            .map_err(|e| e.to_string())?;
            tbl.insert(s.name.clone(), v);
        }
        return toml::to_string_pretty(&doc).map_err(|e| e.to_string());
    }
    let mut doc: Value = match existing {
        Some(t) => serde_json::from_str(t).map_err(|e| {
            format!("files: {path} is not valid JSON, so [[mcp]] cannot be added to it: {e}")
        })?,
        None => Value::Object(Map::new()),
    };
    let key = if fmt == McpConfig::Opencode {
        "mcp"
    } else {
        "mcpServers"
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| format!("files: {path} must hold a JSON object"))?
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| format!("files: {path}: {key} is not an object"))?;
    for s in servers {
        let v = match (&s.transport, fmt) {
            (McpTransport::Stdio { command, args, env }, McpConfig::Claude) => {
                json!({ "type": "stdio", "command": command, "args": args, "env": env })
            }
            (McpTransport::Http { url, headers }, McpConfig::Claude) => {
                json!({ "type": "http", "url": url, "headers": headers })
            }
            (McpTransport::Stdio { command, args, env }, McpConfig::Gemini) => {
                json!({ "command": command, "args": args, "env": env })
            }
            (McpTransport::Http { url, headers }, McpConfig::Gemini) => {
                json!({ "httpUrl": url, "headers": headers })
            }
            (McpTransport::Stdio { command, args, env }, _) => {
                let mut argv = vec![command.clone()];
                argv.extend(args.iter().cloned());
                json!({ "type": "local", "command": argv, "environment": env, "enabled": true })
            }
            (McpTransport::Http { url, headers }, _) => {
                json!({ "type": "remote", "url": url, "headers": headers, "enabled": true })
            }
        };
        obj.insert(s.name.clone(), v);
    }
    Ok(serde_json::to_string_pretty(&doc).expect("JSON values serialize") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn servers() -> Vec<Mcp> {
        vec![
            Mcp {
                name: "fs".into(),
                transport: McpTransport::Stdio {
                    command: "mcp-fs".into(),
                    args: vec!["/workspace".into()],
                    env: BTreeMap::from([("A".into(), "1".into())]),
                },
            },
            Mcp {
                name: "web".into(),
                transport: McpTransport::Http {
                    url: "https://mcp.example.com/mcp".into(),
                    headers: BTreeMap::new(),
                },
            },
        ]
    }

    #[test]
    fn json_formats() {
        let out = merge_mcp(
            McpConfig::Claude,
            &servers(),
            Some(r#"{"hasCompletedOnboarding":true}"#),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["hasCompletedOnboarding"], true);
        assert_eq!(v["mcpServers"]["fs"]["type"], "stdio");
        assert_eq!(v["mcpServers"]["fs"]["args"][0], "/workspace");
        assert_eq!(v["mcpServers"]["web"]["type"], "http");

        let v: Value =
            serde_json::from_str(&merge_mcp(McpConfig::Gemini, &servers(), None).unwrap()).unwrap();
        assert_eq!(
            v["mcpServers"]["web"]["httpUrl"],
            "https://mcp.example.com/mcp"
        );
        assert_eq!(v["mcpServers"]["fs"]["command"], "mcp-fs");

        let v: Value =
            serde_json::from_str(&merge_mcp(McpConfig::Opencode, &servers(), None).unwrap())
                .unwrap();
        assert_eq!(v["mcp"]["fs"]["command"], json!(["mcp-fs", "/workspace"]));
        assert_eq!(v["mcp"]["fs"]["type"], "local");
        assert_eq!(v["mcp"]["web"]["type"], "remote");
    }

    #[test]
    fn codex_toml() {
        let out = merge_mcp(
            McpConfig::Codex,
            &servers(),
            Some("check_for_update_on_startup = false\n"),
        )
        .unwrap();
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(t["check_for_update_on_startup"].as_bool(), Some(false));
        assert_eq!(t["mcp_servers"]["fs"]["command"].as_str(), Some("mcp-fs"));
        assert_eq!(t["mcp_servers"]["fs"]["env"]["A"].as_str(), Some("1"));
        assert_eq!(
            t["mcp_servers"]["web"]["url"].as_str(),
            Some("https://mcp.example.com/mcp")
        );
    }

    #[test]
    fn unparsable_existing_file_is_an_error() {
        let e = merge_mcp(McpConfig::Claude, &servers(), Some("{nope")).unwrap_err();
        assert!(e.contains("~/.claude.json is not valid JSON"), "{e}");
        let e = merge_mcp(McpConfig::Codex, &servers(), Some("= x")).unwrap_err();
        assert!(e.contains("not valid TOML"), "{e}");
    }
}
