//! `axctl audit NAME [--json] [--requests|--connections]`: an agent's audit log — every guest
//! connection (decision, destination, bytes) and every HTTP request on intercepted connections
//! (method, host, path without query string, status, bytes, why blocked) — from the ledger
//! (`paths::ledger_path()`, docs/ledger.md).

use crate::error;
use crate::paths;
use crate::table::utc_time;
use anyhow::Result;
use ax_netstack::meter::ledger::Ledger;

/// Flags of `axctl audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The agent.
    pub name: String,
    /// Only the HTTP requests.
    #[arg(long, conflicts_with = "connections")]
    pub requests: bool,
    /// Only the connections.
    #[arg(long)]
    pub connections: bool,
    /// Print JSON (format: docs/ledger.md).
    #[arg(long)]
    pub json: bool,
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

/// Runs `axctl audit`.
pub fn audit(args: AuditArgs) -> Result<i32> {
    let path = paths::ledger_path();
    let ledger = Ledger::open_read(&path).map_err(|e| {
        error::runtime(
            format!("cannot read the ledger {}: {e:#}", path.display()),
            "check the file's permissions",
        )
    })?;
    let known_agent = paths::agents_dir().join(&args.name).is_dir();
    let (conns, reqs) = match &ledger {
        Some(l) if l.knows_agent(&args.name)? => {
            (l.connections(&args.name)?, l.requests(&args.name)?)
        }
        _ if known_agent => (Vec::new(), Vec::new()),
        _ => {
            return Err(error::usage(
                format!(
                    "no agent {:?} and no audit records for it in {}",
                    args.name,
                    path.display()
                ),
                "check the name with axctl ps --all",
            ))
        }
    };
    let show_conns = !args.requests;
    let show_reqs = !args.connections;
    if args.json {
        let mut doc = serde_json::json!({ "version": 1, "agent": args.name });
        if show_conns {
            doc["connections"] = serde_json::to_value(&conns)?;
        }
        if show_reqs {
            doc["requests"] = serde_json::to_value(&reqs)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    if show_conns {
        if show_reqs {
            println!("CONNECTIONS");
        }
        let rows: Vec<[String; 8]> = conns
            .iter()
            .map(|c| {
                [
                    utc_time(c.time_ms),
                    c.flow_id.to_string(),
                    c.decision.clone(),
                    opt(&c.host),
                    if c.ip.contains(':') {
                        format!("[{}]:{}", c.ip, c.port)
                    } else {
                        format!("{}:{}", c.ip, c.port)
                    },
                    c.bytes_up.to_string(),
                    c.bytes_down.to_string(),
                    opt(&c.reason),
                ]
            })
            .collect();
        crate::table::print_table(
            &[
                "TIME", "FLOW", "DECISION", "HOST", "ADDRESS", "UP", "DOWN", "REASON",
            ],
            &rows,
        );
    }
    if show_reqs {
        if show_conns {
            println!("\nREQUESTS");
        }
        let rows: Vec<[String; 9]> = reqs
            .iter()
            .map(|r| {
                [
                    utc_time(r.time_ms),
                    r.flow_id.to_string(),
                    r.method.clone(),
                    r.host.clone(),
                    r.path.clone(),
                    if r.status == 0 {
                        "-".into()
                    } else {
                        r.status.to_string()
                    },
                    r.bytes_up.to_string(),
                    r.bytes_down.to_string(),
                    opt(&r.blocked),
                ]
            })
            .collect();
        crate::table::print_table(
            &[
                "TIME", "FLOW", "METHOD", "HOST", "PATH", "STATUS", "UP", "DOWN", "BLOCKED",
            ],
            &rows,
        );
    }
    Ok(0)
}
