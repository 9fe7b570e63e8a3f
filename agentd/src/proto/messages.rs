//! JSON bodies of the control frames (protocol version 1).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `HELLO` (client → agentd): the versions the client speaks and who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the client speaks.
    pub versions: Vec<u32>,
    /// Free-form client identification, e.g. `"axctl 0.1.0"`; logged by agentd.
    #[serde(default)]
    pub client: String,
}

/// `HELLO_OK` (agentd → client): the chosen version and facts about the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    /// The protocol version used for the rest of the connection.
    pub version: u32,
    /// agentd's crate version.
    pub agentd_version: String,
    /// Facts about the guest.
    pub guest: GuestInfo,
}

/// What agentd reports about the guest in [`HelloOk`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GuestInfo {
    /// The guest's host name (the agent's name).
    pub hostname: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// `uname -m`, e.g. `x86_64`.
    pub machine: String,
    /// Milliseconds since the guest kernel booted (CLOCK_BOOTTIME) when HELLO was answered.
    pub uptime_ms: u64,
    /// Milliseconds of CLOCK_BOOTTIME at which agentd started as init (the kernel's boot
    /// time); 0 when agentd is not init.
    #[serde(default)]
    pub init_ms: u64,
    /// Milliseconds of CLOCK_BOOTTIME at which agentd started serving the control port.
    pub ready_ms: u64,
    /// PID of agentd itself (1 when it is init).
    pub pid: i32,
}

/// Terminal window size, in character cells (TIOCSWINSZ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// What a session is to the guest's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The agent: at most one per guest. It keeps running when its connection drops, can be
    /// re-attached, and when it exits agentd powers the guest off (after reporting the exit
    /// to connected clients and a short grace period, see `docs/protocol.md`).
    Primary,
    /// A helper command (`axctl exec`): it is sent SIGHUP when its last connection drops.
    #[default]
    Aux,
}

/// `EXEC` (client → agentd): start a process in a new session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// Environment added to agentd's base environment (PATH, HOME, TERM, LANG).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; `None` means `/`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// `Some(size)` runs the process on a new PTY of that size (stdout and stderr merged into
    /// [`super::Frame::Stdout`]); `None` uses three pipes.
    #[serde(default)]
    pub tty: Option<WinSize>,
    /// See [`Role`].
    #[serde(default)]
    pub role: Role,
}

/// `ATTACH` (client → agentd): join a running session's streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    /// Session id from [`Started`]; `None` means the primary session.
    #[serde(default)]
    pub session: Option<u32>,
    /// Send the session's retained recent output (up to 64 KiB) before live output.
    #[serde(default)]
    pub replay: bool,
}

/// `STARTED` (agentd → client): the answer to EXEC or ATTACH; streaming begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub session: u32,
    /// Guest PID of the session's process.
    pub pid: i32,
    /// Whether the session runs on a PTY.
    pub tty: bool,
}

/// `SIGNAL` (client → agentd): deliver a signal to the session's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// Linux signal number, e.g. 15 for SIGTERM.
    pub signal: i32,
}

/// `WAIT` (client → agentd): report a session's end without streaming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    /// Session id; `None` means the primary session.
    #[serde(default)]
    pub session: Option<u32>,
}

/// `EXIT` (agentd → client): how the session's process ended. Exactly one field is set.
/// Sent after all of the session's output; the server closes the connection after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit status, 0..=255, if the process exited.
    pub code: Option<i32>,
    /// Signal number, if the process was killed by a signal.
    pub signal: Option<i32>,
}

impl Exit {
    /// The shell convention: the exit code, or 128 + signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// `SHUTDOWN` (client → agentd): stop every process, sync file systems and power off (or
/// reboot). agentd answers OK before it powers off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Shutdown {
    #[serde(default)]
    pub reboot: bool,
}

/// `SETUP` (client → agentd): guest-wide settings for every later session, sent by the
/// supervisor before it starts the agent. agentd answers OK, or ERROR `setup_failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Setup {
    /// A CA certificate (PEM) to trust: agentd adds it to the guest's trust store and sets
    /// `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CODEX_CA_CERTIFICATE` (the bundle) and
    /// `NODE_EXTRA_CA_CERTS` (the CA alone) for later sessions (`docs/network.md`).
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Environment added to the base environment of every later session (EXEC's own `env`
    /// still wins), e.g. the secrets' placeholders. Replaces what an earlier SETUP gave.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// `ERROR` (agentd → client, also client → agentd): why a request failed; the sender closes
/// the connection after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Stable machine-readable code: `bad_frame`, `unknown_kind`, `bad_json`,
    /// `unsupported_version`, `unexpected`, `no_session`, `exec_failed`, `busy`,
    /// `setup_failed`, `internal`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorMsg {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorMsg {
            code: code.to_string(),
            message: message.into(),
        }
    }
}
