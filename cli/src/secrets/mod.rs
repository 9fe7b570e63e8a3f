//! The secret store: `$XDG_CONFIG_HOME/ax/secrets.toml` (format: `docs/secrets.md`).
//!
//! The file is mode 0600 in a 0700 directory, replaced atomically (write + fsync + rename)
//! under an exclusive `flock` on `secrets.toml.lock`, so concurrent `axctl secrets` and
//! supervisors recording use never lose an update. A store readable or writable by anyone
//! but its owner is refused with a fix-it error rather than used.
//!
//! [`resolve`] is the lookup for the supervisor: stored values first, then `axctl`'s own
//! environment for the well-known names ([`known_hosts`]), each bound to hosts.

mod store;

pub use store::{
    add_at, mark_used, mark_used_at, now, remove_at, store_path, update, Entry, Store, VERSION,
};

use crate::error::usage;
use anyhow::Result;
use ax_supervisor::launch::SecretReq;

/// Hosts a well-known secret name is bound to when it comes from the environment or from
/// `secrets import` / `secrets add` without `--host`.
pub fn known_hosts(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "ANTHROPIC_API_KEY" => &["api.anthropic.com"],
        "OPENAI_API_KEY" => &["api.openai.com"],
        "GEMINI_API_KEY" | "GOOGLE_API_KEY" => &["generativelanguage.googleapis.com"],
        "GITHUB_TOKEN" | "GH_TOKEN" => &["github.com", "api.github.com"],
        _ => return None,
    })
}

/// Providers for `axctl accounts`: name and the credential names it uses, in preference order.
pub const PROVIDERS: &[(&str, &[&str])] = &[
    ("anthropic", &["ANTHROPIC_API_KEY"]),
    ("openai", &["OPENAI_API_KEY"]),
    ("google", &["GEMINI_API_KEY", "GOOGLE_API_KEY"]),
    ("github", &["GITHUB_TOKEN", "GH_TOKEN"]),
];

pub use ax_supervisor::secret::{mask, Origin, ResolvedSecret};

/// Looks one name up: the store, then (for well-known names) the environment via `env`.
/// The hosts are the store's binding, or the well-known binding for environment values.
pub fn lookup(
    store: &Store,
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Option<(Origin, Entry)> {
    if let Some(e) = store.secrets.get(name) {
        return Some((Origin::Stored, e.clone()));
    }
    let hosts = known_hosts(name)?;
    let value = env(name).filter(|v| !v.is_empty())?;
    Some((
        Origin::Environment,
        Entry {
            value,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            body: false,
            added: 0,
            last_used: None,
        },
    ))
}

/// Resolves an agent's secret requirements from the default store and the process
/// environment (see [`resolve_with`]).
pub fn resolve(reqs: &[SecretReq]) -> Result<Vec<ResolvedSecret>> {
    resolve_with(&Store::open()?, &|n| std::env::var(n).ok(), reqs)
}

/// Resolves `reqs`: each from the store, else from `env` if the name is well known
/// ([`known_hosts`]). A secret is only ever bound to the store's hosts or the well-known
/// ones, never to hosts a definition names (a repository's definition must not be able to
/// send your token elsewhere). Missing optional secrets are skipped; missing required ones
/// are one usage error naming the `axctl secrets add` commands that fix it.
pub fn resolve_with(
    store: &Store,
    env: &dyn Fn(&str) -> Option<String>,
    reqs: &[SecretReq],
) -> Result<Vec<ResolvedSecret>> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for r in reqs {
        match lookup(store, env, &r.name) {
            Some((origin, e)) => out.push(ResolvedSecret {
                name: r.name.clone(),
                value: e.value,
                hosts: e.hosts,
                body: e.body || r.body,
                env: r.env_var().to_string(),
                origin,
            }),
            None if r.optional => {}
            None => missing.push(r),
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let names: Vec<&str> = missing.iter().map(|r| r.name.as_str()).collect();
    let fixes: Vec<String> = missing
        .iter()
        .map(|r| {
            let hosts: Vec<String> = if r.hosts.is_empty() {
                vec!["HOST".into()]
            } else {
                r.hosts.clone()
            };
            let flags: Vec<String> = hosts.iter().map(|h| format!("--host {h}")).collect();
            format!(
                "axctl secrets add {} {} (value on stdin)",
                r.name,
                flags.join(" ")
            )
        })
        .collect();
    Err(usage(
        format!(
            "secret {} is not stored{}",
            names.join(", "),
            if missing.iter().all(|r| known_hosts(&r.name).is_some()) {
                " and not in axctl's environment"
            } else {
                ""
            }
        ),
        format!("add it: {}", fixes.join("; ")),
    ))
}

/// Checks a secret name: `[A-Za-z_][A-Za-z0-9_]*` (an environment variable name).
pub fn check_name(name: &str) -> Result<()> {
    let ok = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if ok && !name.is_empty() && name.len() <= 128 {
        Ok(())
    } else {
        Err(usage(
            format!("invalid secret name {name:?}"),
            "use an environment variable name: letters, digits and '_', not starting with a digit",
        ))
    }
}

/// Checks and lowercases host names (`--host`): exact DNS names, no scheme, port or wildcard.
pub fn check_hosts(hosts: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for h in hosts {
        let l = h.trim().to_ascii_lowercase();
        if !ax_supervisor::launch::valid_host(&l) {
            return Err(usage(
                format!("--host {h:?} is not a host name"),
                "give the exact name the secret may be sent to, e.g. --host api.example.com (no https://, port, path or *)",
            ));
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
