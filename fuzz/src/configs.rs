//! The TOML (and JSON) files ax reads: ax-netstack's config (written by the supervisor, but
//! its `[[route]]`s, policy and secrets come from the user's files), `vm.toml` of ax-vmm,
//! axctl's `config.toml`, and `launch.json` (the agent's state directory). A parser must
//! return an error, never panic, on any text.

use std::path::Path;

/// ax-netstack's `--config` text ([`ax_netstack::config::Config::parse`]); an accepted config
/// also builds its secret tables.
pub fn netstack(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = ax_netstack::config::Config::parse(text, "fuzz.toml") {
        let _ = ax_netstack::secrets::Secrets::new(&cfg.secrets);
    }
}

/// ax-vmm's `vm.toml` (TOML, and the same text as JSON).
pub fn vmm(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ax_vmm::VmConfig::parse(text, false);
    let _ = ax_vmm::VmConfig::parse(text, true);
}

/// axctl's `config.toml` ([`ax_cli::config::parse`]).
pub fn cli(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ax_cli::config::parse(text, Path::new("config.toml"));
}

/// `launch.json` ([`ax_supervisor::launch::LaunchRecord`]): an accepted record serializes
/// and reads back equal.
pub fn launch_record(data: &[u8]) {
    let Ok(rec) = serde_json::from_slice::<ax_supervisor::launch::LaunchRecord>(data) else {
        return;
    };
    let bytes = serde_json::to_vec(&rec).expect("a record serializes");
    let back: ax_supervisor::launch::LaunchRecord =
        serde_json::from_slice(&bytes).expect("a serialized record reads back");
    assert_eq!(back, rec, "launch.json round trip");
}
