//! `axctl accounts`: which credential each provider would use (stored, environment, none).

use crate::secrets::{self, mask, Origin, Store};
use anyhow::Result;
use serde::Serialize;

#[derive(Serialize)]
struct Account {
    provider: &'static str,
    /// The secret name that would be used, or null.
    credential: Option<&'static str>,
    /// `stored`, `environment`, or null (none).
    source: Option<Origin>,
    /// Masked value (docs/secrets.md), or null.
    value: Option<String>,
    hosts: Vec<String>,
}

/// `axctl accounts [--json]`.
pub fn accounts(json: bool) -> Result<i32> {
    let store = Store::open()?;
    let env = |n: &str| std::env::var(n).ok();
    let rows: Vec<Account> = secrets::PROVIDERS
        .iter()
        .map(|(provider, names)| {
            // Stored credentials win over the environment for every name of the provider.
            let found = names
                .iter()
                .find_map(|n| {
                    store
                        .secrets
                        .get(*n)
                        .map(|e| (*n, Origin::Stored, e.clone()))
                })
                .or_else(|| {
                    names
                        .iter()
                        .find_map(|n| secrets::lookup(&store, &env, n).map(|(o, e)| (*n, o, e)))
                });
            match found {
                Some((name, origin, e)) => Account {
                    provider,
                    credential: Some(name),
                    source: Some(origin),
                    value: Some(mask(&e.value)),
                    hosts: e.hosts,
                },
                None => Account {
                    provider,
                    credential: None,
                    source: None,
                    value: None,
                    hosts: Vec::new(),
                },
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|a| {
            [
                a.provider.to_string(),
                a.credential.unwrap_or("-").to_string(),
                match a.source {
                    Some(Origin::Stored) => "stored".into(),
                    Some(Origin::Environment) => "environment".into(),
                    None => "none".into(),
                },
                a.value.clone().unwrap_or_else(|| "-".into()),
                if a.hosts.is_empty() {
                    "-".into()
                } else {
                    a.hosts.join(",")
                },
            ]
        })
        .collect();
    crate::table::print_table(
        &["PROVIDER", "CREDENTIAL", "SOURCE", "VALUE", "HOSTS"],
        &table,
    );
    Ok(0)
}
