//! `ax-fsd`: the vhost-user-fs backend of one agent (issue #4).
//!
//! ```text
//! ax-fsd --socket PATH --lower DIR --upper DIR [--tag workspace] [--journal FILE]
//! ```
//! Serves one vhost-user frontend (QEMU `-device vhost-user-fs-device,chardev=…,tag=workspace`
//! or ax-vmm) and exits when it disconnects. Logs go to stderr (`AX_FSD_LOG=debug`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ax_fsd::fuse::server::Server;
use ax_fsd::journal::Journal;
use ax_fsd::union::{UnionFs, UnionOptions};
use ax_fsd::vhost_user::{listen, serve, FsConfig};
use clap::Parser;

/// vhost-user-fs backend: a read-only lower directory under a copy-on-write upper directory
/// (overlayfs format), served to a guest over virtio-fs.
#[derive(Parser, Debug)]
#[command(name = "ax-fsd", version)]
struct Args {
    /// vhost-user socket to listen on (QEMU: -chardev socket,id=fs,path=PATH).
    #[arg(long)]
    socket: PathBuf,
    /// Read-only lower layer (the repository snapshot). Never written.
    #[arg(long)]
    lower: PathBuf,
    /// Upper layer (per agent, overlayfs format). Must exist.
    #[arg(long)]
    upper: PathBuf,
    /// virtio-fs mount tag (at most 36 bytes).
    #[arg(long, default_value = "workspace")]
    tag: String,
    /// Change journal file (JSON lines, docs/fsd.md); none when absent.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Number of request queues.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// How long the guest may cache names and attributes, in seconds.
    #[arg(long, default_value_t = 1.0)]
    cache_timeout: f64,
}

struct StderrLogger(log::LevelFilter);

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("ax-fsd: {}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let level = match std::env::var("AX_FSD_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    let _ = log::set_logger(Box::leak(Box::new(StderrLogger(level))));
    log::set_max_level(level);
    let args = Args::parse();
    for (what, dir) in [("--lower", &args.lower), ("--upper", &args.upper)] {
        if !dir.is_dir() {
            eprintln!(
                "ax-fsd: {what} {} is not a directory; create it first (mkdir -p {})",
                dir.display(),
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    if !args.cache_timeout.is_finite() || args.cache_timeout < 0.0 {
        eprintln!("ax-fsd: --cache-timeout must be a number of seconds ≥ 0, e.g. 1");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ax-fsd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context;
    let journal = match &args.journal {
        Some(p) => {
            Journal::create(p).with_context(|| format!("cannot create journal {}", p.display()))?
        }
        None => Journal::memory(),
    };
    let fs = UnionFs::new(
        &args.lower,
        &args.upper,
        Arc::new(journal),
        UnionOptions {
            cache_timeout: Duration::from_secs_f64(args.cache_timeout),
        },
    )
    .context("cannot open the layers")?;
    let listener = listen(&args.socket)?;
    log::info!(
        "serving {} (lower) + {} (upper) as tag {:?} on {}",
        args.lower.display(),
        args.upper.display(),
        args.tag,
        args.socket.display()
    );
    serve(
        listener,
        Arc::new(Server::new(fs)),
        FsConfig {
            tag: args.tag,
            num_request_queues: args.queues,
        },
    )
}
