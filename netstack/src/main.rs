//! `ax-netstack`: the network of one agent.
//!
//! ```text
//! ax-netstack (--socket PATH | --stream PATH) --config - [--ca-out FILE] [--print-ca]
//!             [--mac MAC] [--config-space] [--no-jail] [--seccomp kill|log]
//! ```
//! Reads the per-agent config (TOML, `config::Config`; it holds secret values, so the
//! supervisor pipes it on stdin and it never touches the disk), generates the agent's CA,
//! writes its certificate to `--ca-out` (the supervisor hands it to the guest), starts the
//! stack, binds the socket (its existence means "ready") and serves one frontend until it
//! disconnects: a vhost-user frontend on `--socket` (ax-vmm), or QEMU's `-netdev stream` on
//! `--stream` (length-prefixed frames, `stream.rs`). Logs go to stderr
//! (`AX_NETSTACK_LOG=error|warn|info|debug|trace`, default info). Exit status: 0 when the
//! frontend disconnected, 1 on a runtime failure, 2 on a usage or config error (one line
//! naming the origin, line and column).
//!
//! Once the frontend has connected, before the stack starts, the process jails itself
//! (`ax_netstack::jail`, docs/jail.md).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ax_netstack::config::Config;
use ax_netstack::context::Context;
use ax_netstack::jail;
use ax_netstack::stack::{GuestPort, Netstack};
use ax_netstack::stream;
use ax_netstack::vhost_user::{self, FramePort, NetConfig};
use clap::Parser;

/// vhost-user-net backend with a userspace TCP/IP stack: DNS, egress policy, TLS
/// interception with a per-agent CA, secret substitution, LLM usage metering.
#[derive(Parser, Debug)]
#[command(name = "ax-netstack", version)]
#[command(group(clap::ArgGroup::new("frontend").required(true).args(["socket", "stream"])))]
struct Args {
    /// vhost-user-net socket to listen on (ax-vmm: [[vhost_user]] device_type = "net").
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Unix socket to listen on for QEMU's -netdev stream,server=off,addr.type=unix,addr.path=PATH
    /// (frames with a 4-byte big-endian length prefix).
    #[arg(long, value_name = "PATH")]
    stream: Option<PathBuf>,
    /// The config (TOML, docs/network.md): `-` for stdin, or a file.
    #[arg(long, value_name = "FILE|-")]
    config: String,
    /// Write the agent's CA certificate (PEM) to this file before listening.
    #[arg(long, value_name = "FILE")]
    ca_out: Option<PathBuf>,
    /// Print the agent's CA certificate (PEM) on stdout before listening.
    #[arg(long)]
    print_ca: bool,
    /// The guest's MAC address in the device's configuration space.
    #[arg(long, default_value = "52:54:00:12:34:56")]
    mac: String,
    /// Serve the configuration space (MAC, MTU) over vhost-user (protocol features CONFIG
    /// and MQ), for frontends that read it from the backend (ax-vmm). Not for QEMU 7.2, which
    /// fills it itself and enables rings before acking the protocol features.
    #[arg(long)]
    config_space: bool,
    /// Do not jail the process (Landlock, seccomp, capabilities, namespaces); for debugging
    /// only (docs/jail.md).
    #[arg(long)]
    no_jail: bool,
    /// What a syscall outside the jail's allowlist does: kill (default) or log (the kernel
    /// logs it, `dmesg | grep type=1326`, and lets it through).
    #[arg(long, value_name = "kill|log", default_value = "kill")]
    seccomp: ax_jail::SeccompMode,
}

/// The stack's guest port as the backend's [`FramePort`].
struct Port(GuestPort);

impl FramePort for Port {
    fn send(&self, frame: Vec<u8>) {
        self.0.send(frame)
    }
    fn try_recv(&self) -> Option<Vec<u8>> {
        self.0.try_recv()
    }
    fn rx_eventfd(&self) -> std::os::fd::RawFd {
        self.0.rx_eventfd()
    }
}

fn main() -> ExitCode {
    ax_vhost::log_to_stderr("ax-netstack", "AX_NETSTACK_LOG");
    let args = Args::parse();
    let mac = match vhost_user::parse_mac(&args.mac) {
        Ok(m) => m,
        Err(e) => return usage(&format!("--mac: {e}")),
    };
    let config = match read_config(&args.config) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    match run(&args, config, mac) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ax-netstack: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("ax-netstack: {msg}");
    ExitCode::from(2)
}

/// The config from stdin (`-`) or a file; errors are one line with origin, line and column.
fn read_config(arg: &str) -> Result<Config, String> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("stdin: cannot read the config: {e}"))?;
        Config::parse(&text, "stdin").map_err(|e| e.to_string())
    } else {
        Config::load(Path::new(arg)).map_err(|e| e.to_string())
    }
}

fn run(args: &Args, config: Config, mac: [u8; 6]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let agent = config.agent.clone();
    let net = NetConfig {
        mac,
        mtu: config.network.mtu,
        protocol_features: args.config_space,
    };
    let (guest, gateway, prefix) = (
        config.network.guest,
        config.network.gateway,
        config.network.prefix_len,
    );
    let ctx = Context::new(config).context("cannot set up the netstack")?;
    let pem = ctx.ca.cert_pem().to_string();
    if let Some(path) = &args.ca_out {
        write_atomic(path, pem.as_bytes())
            .with_context(|| format!("cannot write the CA certificate to {}", path.display()))?;
    }
    if args.print_ca {
        print!("{pem}");
        use std::io::Write;
        std::io::stdout().flush()?;
    }
    let what = format!(
        "agent {agent}: guest {guest}/{prefix}, gateway and DNS {gateway}, MTU {}",
        net.mtu
    );
    // The stack (its threads) starts after the jail, which needs a single-threaded process.
    let (path, stats) = match (&args.socket, &args.stream) {
        (Some(sock), _) => {
            let listener = vhost_user::listen(sock)?;
            log::info!("{what}; serving vhost-user-net on {}", sock.display());
            enter_jail(args, &ctx, sock, listener.as_raw_fd())?;
            let (stack, port) = Netstack::start(ctx).context("cannot start the stack")?;
            let stats = vhost_user::serve(listener, Port(port), net);
            drop(stack);
            (sock, stats)
        }
        (None, Some(path)) => {
            let listener = stream::listen(path)?;
            log::info!("{what}; serving a QEMU netdev stream on {}", path.display());
            enter_jail(args, &ctx, path, listener.as_raw_fd())?;
            let (stack, port) = Netstack::start(ctx).context("cannot start the stack")?;
            let stats = stream::serve(listener, Port(port)).map_err(anyhow::Error::from);
            drop(stack);
            (path, stats)
        }
        (None, None) => unreachable!("clap requires --socket or --stream"),
    };
    let _ = std::fs::remove_file(path); // --no-jail: still there
    let stats = stats?;
    log::info!(
        "frontend disconnected: {} frames from the guest ({} dropped), {} to the guest ({} dropped)",
        stats.tx_frames,
        stats.tx_dropped,
        stats.rx_frames,
        stats.rx_dropped
    );
    Ok(())
}

/// Loads what the jail would refuse later ([`jail::prepare`]), waits until the frontend has
/// connected to `socket` (`listener`: its listening fd), removes the socket file (no second
/// frontend can connect, and the jailed process could not remove it later), then jails the
/// process (docs/jail.md). With `--no-jail` it only warns.
fn enter_jail(
    args: &Args,
    ctx: &Context,
    socket: &Path,
    listener: std::os::fd::RawFd,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if args.no_jail {
        log::warn!("running WITHOUT the jail (--no-jail): a guest exploit reaches the host");
        return Ok(());
    }
    jail::prepare(ctx);
    ax_vhost::wait_for_frontend(&listener).context("waiting for the frontend to connect")?;
    let _ = std::fs::remove_file(socket);
    let mut policy = jail::Policy::for_ledger(ctx.config.meter.ledger.as_deref(), args.seccomp);
    // Each thread installs its own allowlist (the stack's runtime, vhost_user, stream).
    policy.per_thread_filters = true;
    let report = jail::apply(&policy)?;
    log::info!("{report}");
    Ok(())
}

/// Writes `data` to `path` through a temporary file and a rename, so a reader never sees a
/// partial certificate.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
