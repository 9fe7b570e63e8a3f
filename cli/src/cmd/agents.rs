//! `axctl agents`: the agent definitions visible here and whether their secrets are available.

use crate::agents::{self, Agent, Dirs};
use crate::secrets::{self, Origin, Store};
use anyhow::Result;
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    name: String,
    /// `builtin`, `user` or `repo`.
    source: &'static str,
    /// The file, for user and repo definitions.
    path: Option<String>,
    about: String,
    secrets: Vec<SecretRow>,
}

#[derive(Serialize)]
struct SecretRow {
    name: String,
    hosts: Vec<String>,
    optional: bool,
    /// `stored`, `environment`, or null when missing.
    available: Option<Origin>,
}

/// `axctl agents [--json]`, looking in the repository around the current directory too.
pub fn agents(json: bool) -> Result<i32> {
    let dirs = Dirs::from_cwd();
    let list = agents::list(&dirs)?;
    let store = Store::open()?;
    let env = |n: &str| std::env::var(n).ok();
    let rows: Vec<Row> = list.iter().map(|a| row(a, &store, &env)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let table: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            let src = match &r.path {
                Some(p) => format!("{} ({p})", r.source),
                None => r.source.to_string(),
            };
            let secrets: Vec<String> = r
                .secrets
                .iter()
                .map(|s| {
                    let state = match s.available {
                        Some(Origin::Stored) => "stored",
                        Some(Origin::Environment) => "env",
                        None if s.optional => "optional",
                        None => "MISSING",
                    };
                    format!("{} ({state})", s.name)
                })
                .collect();
            [
                r.name.clone(),
                src,
                if secrets.is_empty() {
                    "-".into()
                } else {
                    secrets.join(", ")
                },
                r.about.clone(),
            ]
        })
        .collect();
    crate::table::print_table(&["NAME", "SOURCE", "SECRETS", "ABOUT"], &table);
    Ok(0)
}

fn row(a: &Agent, store: &Store, env: &dyn Fn(&str) -> Option<String>) -> Row {
    Row {
        name: a.name.clone(),
        source: a.source.kind(),
        path: a.source.path().map(|p| p.display().to_string()),
        about: a.about.clone(),
        secrets: a
            .secrets
            .iter()
            .map(|s| SecretRow {
                name: s.name.clone(),
                hosts: s.hosts.clone(),
                optional: s.optional,
                available: secrets::lookup(store, env, &s.name).map(|(o, _)| o),
            })
            .collect(),
    }
}
