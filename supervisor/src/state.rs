//! Per-agent state on disk: `$XDG_STATE_HOME/ax/agents/<name>/`.
//!
//! Every file in that directory (who writes and reads it, mode, lifetime, format) is in the
//! one table of `docs/state.md`; [`AgentState`] is `state.json`, replaced atomically (rename).

use crate::error::usage;
use crate::paths;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Life-cycle of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The supervisor is booting the VM; agentd has not answered yet.
    Starting,
    /// The agent's process runs in the guest.
    Running,
    /// The agent's process ended; `exit_code` says how.
    Exited,
    /// The VM or the supervisor died, or the agent could not start; `reason` says why.
    Failed,
}

impl Status {
    pub fn is_live(self) -> bool {
        matches!(self, Status::Starting | Status::Running)
    }
}

/// Milliseconds spent in each phase of running an agent (the split `bench` reports).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// `axctl run`: finding (or building) the image.
    pub image_ms: Option<u64>,
    /// Supervisor start → VMM process spawned (includes starting the vsock backend).
    pub vm_spawn_ms: Option<u64>,
    /// VMM spawned → agentd answered HELLO (VMM start, kernel boot, agentd init).
    pub agentd_ready_ms: Option<u64>,
    /// Guest clock (CLOCK_BOOTTIME) when agentd started as init: the kernel's boot.
    #[serde(default)]
    pub guest_init_ms: Option<u64>,
    /// Guest clock (CLOCK_BOOTTIME) when agentd began serving: kernel boot + agentd init.
    pub guest_ready_ms: Option<u64>,
    /// EXEC sent → EXIT received.
    pub command_ms: Option<u64>,
    /// EXIT received → VMM process gone.
    pub teardown_ms: Option<u64>,
}

/// `state.json`: everything known about one agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentState {
    pub name: String,
    /// Agent definition name (`shell`, …).
    pub agent: String,
    pub prompt: String,
    /// The command agentd runs in the guest.
    pub argv: Vec<String>,
    pub image_id: String,
    /// `qemu` or `ax`.
    pub vmm: String,
    /// The guest kernel command line, once the supervisor has started the VM.
    #[serde(default)]
    pub kernel_cmdline: Option<String>,
    /// Accelerator the VMM uses: `kvm`, `hvf` or `tcg`.
    pub accel: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Disk quota of the agent's upper layers in MiB (`axctl run --disk-quota`; ax-fsd
    /// `--quota`, docs/fsd.md "Quota"); `None`: the default, 0: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_quota_mib: Option<u64>,
    /// Seconds; `None` = no limit.
    pub timeout_secs: Option<u64>,
    /// The agent runs on a PTY (background runs) or on pipes (`--wait`).
    pub tty: bool,
    /// The repository (its work tree) mounted on the guest's `/workspace` through ax-fsd,
    /// snapshotted at `run` into `snapshot.json`; `None`: an empty `/workspace`.
    #[serde(default)]
    pub repo: Option<PathBuf>,
    /// The branch `ax/<name>` built when the agent ended.
    #[serde(default)]
    pub branch: Option<ax_branch::BranchResult>,
    /// Author and committer of ax's commits on `ax/<name>` (also `user.name`/`user.email` of
    /// the agent's `.git`), fixed at `run` from the config's `[branch]` and `--author`, so a
    /// later `axctl commit` uses the same. `None` (agents from before): the current config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ax_branch::Identity>,
    pub status: Status,
    /// Set when status is `exited`: the shell-style exit code (128+N for signal N).
    pub exit_code: Option<i32>,
    /// Set when status is `failed` (and for timeouts/stops): why.
    pub reason: Option<String>,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub supervisor_pid: Option<i32>,
    pub vmm_pid: Option<i32>,
    #[serde(default)]
    pub timings: Timings,
}

impl AgentState {
    /// The STATUS column of `ps`: `running`, `exited(N)`, `failed`, `starting`.
    pub fn status_label(&self) -> String {
        match self.status {
            Status::Exited => format!("exited({})", self.exit_code.unwrap_or(-1)),
            Status::Failed => "failed".to_string(),
            Status::Running => "running".to_string(),
            Status::Starting => "starting".to_string(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The directory of agent `name`.
pub fn agent_dir(name: &str) -> PathBuf {
    paths::agents_dir().join(name)
}

/// Checks an agent name: 1–63 chars of `a-z 0-9 -`, starting with a letter or digit, so it is
/// a valid host name (RFC 1123 label) and git ref component (`ax/<name>`).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(usage(
            format!("invalid agent name '{name}'"),
            "use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
        ))
    }
}

/// A name from the first words of the prompt: `"Fix the flaky test!"` → `fix-the-flaky-test`.
/// At most 4 words and 32 characters; `agent` if nothing usable remains.
pub fn slug(prompt: &str) -> String {
    let mut out = String::new();
    let words = prompt
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(4);
    for w in words {
        let mut w = w.to_ascii_lowercase();
        w.truncate(32);
        if !out.is_empty() && out.len() + w.len() + 1 > 32 {
            break;
        }
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(&w);
    }
    if out.is_empty() {
        out.push_str("agent");
    }
    out
}

/// Creates the directory of a new agent atomically. A taken name is a usage error.
/// Mode 0700 (whatever the umask), and the agents directory above it too: everything in it
/// (the guest's files in `upper/`, which may be setuid or a device node it made; the snapshot's
/// objects; the logs) is the agent's owner's alone (docs/state.md).
pub fn create_dir(name: &str) -> Result<PathBuf> {
    create_dir_in(&paths::agents_dir(), name)
}

/// Creates `mode` directory `dir` if missing and sets it to exactly `mode` when it was made.
fn private_dir(dir: &Path, mode: u32) -> std::io::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            // The umask may have taken bits away, never added: set exactly `mode`.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// [`create_dir`] below `agents` (the agents directory).
fn create_dir_in(agents: &Path, name: &str) -> Result<PathBuf> {
    let dir = agents.join(name);
    if !agents.is_dir() {
        if let Some(parent) = agents.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        match private_dir(agents, 0o700) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", agents.display())),
        }
    }
    match private_dir(&dir, 0o700) {
        Ok(_) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(usage(
            format!("an agent named '{name}' already exists"),
            format!("choose another --name, or remove it first: axctl rm {name}"),
        )),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

/// Picks `base`, or `base-2`, `base-3`, … for the first name not in use, and creates its dir.
pub fn create_unique(base: &str) -> Result<(String, PathBuf)> {
    for i in 1..1000 {
        let name = if i == 1 {
            base.to_string()
        } else {
            format!("{base}-{i}")
        };
        match create_dir(&name) {
            Ok(d) => return Ok((name, d)),
            Err(e) if crate::error::exit_code(&e) == 2 => continue,
            Err(e) => return Err(e),
        }
    }
    anyhow::bail!("no free agent name starting with '{base}'")
}

/// Writes `state.json` atomically (temp file + rename).
pub fn save(dir: &Path, st: &AgentState) -> Result<()> {
    let tmp = dir.join(".state.json.tmp");
    let body = serde_json::to_vec_pretty(st)?;
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("state.json"))
        .with_context(|| format!("writing {}", dir.join("state.json").display()))?;
    Ok(())
}

/// Reads `state.json` as written, without the liveness check of [`load`].
pub fn load_raw(dir: &Path) -> Result<AgentState> {
    let p = dir.join("state.json");
    let body = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&body).with_context(|| format!("parsing {}", p.display()))
}

/// Loads agent `name`, failing with a usage error naming `axctl ps --all` if it does not
/// exist. A live status whose supervisor has died is reported (and recorded) as `failed`.
pub fn load(name: &str) -> Result<(PathBuf, AgentState)> {
    let dir = agent_dir(name);
    if validate_name(name).is_err() || !dir.join("state.json").is_file() {
        return Err(usage(
            format!("no agent named '{name}'"),
            "list agents with: axctl ps --all",
        ));
    }
    let st = reconcile(&dir, load_raw(&dir)?);
    Ok((dir, st))
}

/// All agents, oldest first. Unreadable entries are skipped with a warning on stderr.
pub fn list() -> Result<Vec<(PathBuf, AgentState)>> {
    let root = paths::agents_dir();
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    for ent in rd.flatten() {
        let dir = ent.path();
        if !dir.join("state.json").is_file() {
            continue;
        }
        match load_raw(&dir) {
            Ok(st) => out.push((dir.clone(), reconcile(&dir, st))),
            Err(e) => eprintln!("axctl: warning: skipping {}: {e:#}", dir.display()),
        }
    }
    out.sort_by_key(|(_, s)| (s.created_ms, s.name.clone()));
    Ok(out)
}

/// Whether `pid` is alive and is a supervisor (`axctl __supervise`), not a reused PID.
pub fn supervisor_alive(pid: i32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false);
            alive && cmd.split(|b| *b == 0).any(|a| a == b"__supervise")
        }
        Err(_) => false,
    }
}

/// A live status with a dead supervisor becomes `failed` (and is saved so).
fn reconcile(dir: &Path, mut st: AgentState) -> AgentState {
    if st.status.is_live() {
        let alive = st.supervisor_pid.map(supervisor_alive).unwrap_or(false);
        // A fresh run has no supervisor pid for a few milliseconds; give it 10 s.
        let young = st.supervisor_pid.is_none() && now_ms().saturating_sub(st.created_ms) < 10_000;
        if !alive && !young {
            // Re-read: the supervisor may have finished between our read and the check.
            if let Ok(fresh) = load_raw(dir) {
                if !fresh.status.is_live() {
                    return fresh;
                }
            }
            st.status = Status::Failed;
            st.reason = Some(match st.supervisor_pid {
                Some(pid) => {
                    format!("supervisor (pid {pid}) died unexpectedly; see supervisor.log")
                }
                None => "supervisor never started; see supervisor.log".to_string(),
            });
            st.finished_ms.get_or_insert_with(now_ms);
            let _ = save(dir, &st);
        }
    }
    st
}

/// Builds (or moves forward) branch `ax/<name>` for the agent `st` whose state directory is
/// `dir` (ax_branch::build_for_agent), with the identity recorded at `run`, else `host`'s
/// default for agents from before identities were recorded. Errors: an agent without a
/// repository (usage, exit 2), and those of building the branch.
pub fn build_branch(
    dir: &Path,
    st: &AgentState,
    host: &dyn crate::Host,
) -> Result<ax_branch::BranchResult> {
    let repo = st.repo.as_ref().ok_or_else(|| no_repo(&st.name))?;
    let identity = match &st.identity {
        Some(id) => id.clone(),
        None => host.default_identity(&st.name)?,
    };
    ax_branch::build_for_agent(dir, repo, &st.name, &identity)
}

/// The usage error for branch commands on an agent started without `--repo`.
pub fn no_repo(name: &str) -> anyhow::Error {
    usage(
        format!("agent '{name}' has no repository"),
        "only agents started with --repo have a branch",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_dirs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let agents = t.path().join("ax/agents");
        // With the usual umask (022) a plain create_dir gives 0755.
        let dir = create_dir_in(&agents, "a1").unwrap();
        for d in [&agents, &dir] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let e = create_dir_in(&agents, "a1").unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
    }

    #[test]
    fn slugs() {
        for (p, want) in [
            ("Fix the flaky test!", "fix-the-flaky-test"),
            ("uname -a", "uname-a"),
            ("exit 7", "exit-7"),
            ("   ", "agent"),
            ("été ünïcode", "t-n-code"),
            ("a b c d e f", "a-b-c-d"),
            (
                "supercalifragilisticexpialidocious word",
                "supercalifragilisticexpialidocio",
            ),
        ] {
            let s = slug(p);
            assert_eq!(s, want, "{p}");
            assert!(s.len() <= 32);
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "fix-test", "x1", "0abc"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", "..", &"x".repeat(64)] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2, "{bad}");
        }
    }

    #[test]
    fn status_labels() {
        let mut st = AgentState {
            name: "n".into(),
            agent: "shell".into(),
            prompt: "p".into(),
            argv: vec![],
            image_id: "i".into(),
            vmm: "qemu".into(),
            kernel_cmdline: None,
            accel: "tcg".into(),
            cpus: 1,
            memory_mib: 512,
            disk_quota_mib: None,
            timeout_secs: None,
            tty: false,
            repo: None,
            branch: None,
            identity: None,
            status: Status::Exited,
            exit_code: Some(7),
            reason: None,
            created_ms: 0,
            finished_ms: None,
            supervisor_pid: None,
            vmm_pid: None,
            timings: Timings::default(),
        };
        assert_eq!(st.status_label(), "exited(7)");
        st.status = Status::Failed;
        assert_eq!(st.status_label(), "failed");
    }
}
