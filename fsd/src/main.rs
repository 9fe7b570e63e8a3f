//! `ax-fsd`: the vhost-user-fs backend of one agent.
//!
//! ```text
//! ax-fsd --socket PATH (--lower DIR | --lower-git GIT_DIR --tree OID [--objects DIR]
//!        [--mtime SECS]) [--lower-freeze FILE] --upper DIR [--quota BYTES] [--tag workspace]
//!        [--journal FILE]
//!        [--no-jail] [--seccomp kill|log]
//! ```
//! Serves one vhost-user frontend (QEMU `-device vhost-user-fs-device,chardev=…,tag=workspace`
//! or ax-vmm) and exits when it disconnects. Logs go to stderr (`AX_FSD_LOG=debug`).
//! Once the frontend has connected, the process jails itself (`ax_fsd::jail`, docs/jail.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ax_fsd::fuse::server::Server;
use ax_fsd::jail;
use ax_fsd::journal::Journal;
use ax_fsd::union::freeze::Frozen;
use ax_fsd::union::git::{GitLower, GitOptions};
use ax_fsd::union::lower::Lower;
use ax_fsd::union::{sys, UnionFs, UnionOptions};
use ax_fsd::vhost_user::{listen, serve, FsConfig, VhostUserListener};
use clap::Parser;

/// vhost-user-fs backend: a read-only lower layer (a directory, or a git tree read straight
/// from the object database) under a copy-on-write upper directory (overlayfs format), served
/// to a guest over virtio-fs.
#[derive(Parser, Debug)]
#[command(name = "ax-fsd", version)]
#[command(group(clap::ArgGroup::new("lower_layer").required(true).args(["lower", "lower_git"])))]
struct Args {
    /// vhost-user socket to listen on (QEMU: -chardev socket,id=fs,path=PATH).
    #[arg(long)]
    socket: PathBuf,
    /// Read-only lower layer: a directory. Never written.
    #[arg(long, value_name = "DIR")]
    lower: Option<PathBuf>,
    /// Read-only lower layer: a git tree (see --tree) in the repository whose git directory
    /// (`.git` or a bare repository) is given here. Read from the object database on demand.
    #[arg(long, value_name = "GIT_DIR", requires = "tree")]
    lower_git: Option<PathBuf>,
    /// With --lower-git: the tree (or commit) id to serve, full hex.
    #[arg(long, value_name = "OID", requires = "lower_git")]
    tree: Option<String>,
    /// With --lower-git: an extra objects directory searched first (the snapshot's own objects).
    #[arg(long, value_name = "DIR", requires = "lower_git")]
    objects: Option<PathBuf>,
    /// With --lower-git: mtime/ctime/atime of lower nodes, seconds since the epoch (default: the
    /// commit's committer time; for a tree id, that of the repository's HEAD commit).
    #[arg(long, value_name = "SECS", requires = "lower_git")]
    mtime: Option<i64>,
    /// With --lower-git: owner of lower nodes.
    #[arg(long, value_name = "UID", default_value_t = 0)]
    lower_uid: u32,
    /// With --lower-git: group of lower nodes.
    #[arg(long, value_name = "GID", default_value_t = 0)]
    lower_gid: u32,
    /// With --lower-git: how long the guest may cache names and attributes of nodes only in the
    /// (immutable) git lower layer, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 86400.0)]
    lower_cache_timeout: f64,
    /// With --lower: show only the lower nodes that existed, unchanged, when FILE was written
    /// (it is taken and written now when absent, read when present; docs/fsd.md).
    #[arg(long, value_name = "FILE", requires = "lower")]
    lower_freeze: Option<PathBuf>,
    /// Upper layer (per agent, overlayfs format). Must exist.
    #[arg(long)]
    upper: PathBuf,
    /// Disk quota of the upper layer in bytes (apparent sizes of its regular files); a write,
    /// truncate or fallocate past it fails with ENOSPC. 0 = unlimited (the default).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    quota: u64,
    /// virtio-fs mount tag (at most 36 bytes).
    #[arg(long, default_value = "workspace")]
    tag: String,
    /// Change journal file (JSON lines, docs/fsd.md); none when absent.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Number of request queues (1..=63), one worker thread each.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Write whiteouts as xattr whiteouts (the format for unprivileged overlayfs, docs/fsd.md)
    /// even when mknod of a 0:0 device is allowed; without it only when mknod is refused.
    #[arg(long)]
    xattr_whiteouts: bool,
    /// Keep polling a request queue this many microseconds after it runs dry before sleeping
    /// (default 0: never; it only pays off with a core to spare, docs/fsd.md).
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0)]
    poll_us: u64,
    /// How long the guest may cache names and attributes, in seconds.
    #[arg(long, default_value_t = 1.0)]
    cache_timeout: f64,
    /// Do not jail the process (Landlock, seccomp, capabilities, namespaces); for debugging
    /// only (docs/jail.md).
    #[arg(long)]
    no_jail: bool,
    /// What a syscall outside the jail's allowlist does: kill (default) or log (the kernel
    /// logs it, `dmesg | grep type=1326`, and lets it through; for debugging).
    #[arg(long, value_name = "MODE", default_value = "kill")]
    seccomp: ax_jail::SeccompMode,
}

fn main() -> ExitCode {
    ax_vhost::log_to_stderr("ax-fsd", "AX_FSD_LOG");
    let args = Args::parse();
    let mut dirs = vec![("--upper", &args.upper)];
    if let Some(l) = &args.lower {
        dirs.push(("--lower", l));
    }
    if let Some(g) = &args.lower_git {
        dirs.push(("--lower-git", g));
    }
    if let Some(o) = &args.objects {
        dirs.push(("--objects", o));
    }
    for (what, dir) in dirs {
        if !dir.is_dir() {
            eprintln!(
                "ax-fsd: {what} {} is not a directory; create it first (mkdir -p {})",
                dir.display(),
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    for (what, t) in [
        ("--cache-timeout", args.cache_timeout),
        ("--lower-cache-timeout", args.lower_cache_timeout),
    ] {
        if !t.is_finite() || !(0.0..=1e9).contains(&t) {
            eprintln!("ax-fsd: {what} must be a number of seconds ≥ 0, e.g. 1");
            return ExitCode::from(2);
        }
    }
    let lower = match open_lower(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ax-fsd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args, lower) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ax-fsd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The lower layer from the flags (usage errors: exit 2).
fn open_lower(args: &Args) -> Result<(Lower, String), String> {
    match (&args.lower, &args.lower_git, &args.tree) {
        (Some(dir), None, None) if args.objects.is_none() && args.mtime.is_none() => {
            let fd = sys::open_root(dir)
                .map_err(|e| format!("cannot open --lower {}: {e}", dir.display()))?;
            Ok((Lower::Dir(fd), dir.display().to_string()))
        }
        (None, Some(git), Some(tree)) => {
            let g = GitLower::open(
                git,
                args.objects.as_deref(),
                tree,
                GitOptions {
                    mtime: args.mtime,
                    uid: args.lower_uid,
                    gid: args.lower_gid,
                    ..GitOptions::default()
                },
            )
            .map_err(|e| {
                format!(
                    "cannot serve --tree {tree} from --lower-git {}: {e} (give the git directory \
                     and a full tree or commit id, e.g. $(git rev-parse HEAD^{{tree}}))",
                    git.display()
                )
            })?;
            let what = format!("tree {} of {}", g.root_tree(), git.display());
            Ok((Lower::Git(g), what))
        }
        _ => Err(
            "give exactly one of --lower DIR or --lower-git GIT_DIR --tree OID \
                  (--objects and --mtime go with --lower-git)"
                .into(),
        ),
    }
}

/// Waits for the frontend to connect, removes the socket file (nobody else may connect, and
/// the jail could not remove it later), then jails the process (docs/jail.md).
fn enter_jail(args: &Args, listener: &VhostUserListener) -> anyhow::Result<()> {
    use anyhow::Context;
    listener
        .wait_for_frontend()
        .context("waiting for the vhost-user frontend")?;
    let _ = std::fs::remove_file(&args.socket);
    let read_only = match (&args.lower, &args.lower_git) {
        (Some(dir), _) => vec![dir.clone()],
        (None, Some(git)) => jail::git_object_dirs(git, args.objects.as_deref()),
        (None, None) => Vec::new(),
    };
    let policy = jail::Policy {
        read_only,
        read_write: vec![args.upper.clone()],
        files: args.journal.iter().cloned().collect(),
        seccomp: args.seccomp,
        // Each thread installs its own allowlist (`vhost_user::serve`).
        per_thread_filters: true,
    };
    let report = jail::apply(&policy)?;
    log::debug!("{report}");
    Ok(())
}

fn run(args: Args, (lower, lower_desc): (Lower, String)) -> anyhow::Result<()> {
    use anyhow::Context;
    let journal = match &args.journal {
        Some(p) => {
            Journal::create(p).with_context(|| format!("cannot create journal {}", p.display()))?
        }
        None => Journal::memory(),
    };
    let fs = UnionFs::with_lower(
        lower,
        &args.upper,
        Arc::new(journal),
        UnionOptions {
            cache_timeout: Duration::from_secs_f64(args.cache_timeout),
            immutable_lower_timeout: Duration::from_secs_f64(args.lower_cache_timeout),
            xattr_whiteouts: args.xattr_whiteouts,
            quota: (args.quota > 0).then_some(args.quota),
        },
    )
    .context("cannot open the layers")?;
    let fs = match &args.lower_freeze {
        Some(file) => {
            let root = sys::open_root(args.lower.as_deref().unwrap_or(&args.upper))?;
            let t = std::time::Instant::now();
            let (frozen, taken) = Frozen::load_or_take(file, &root)
                .with_context(|| format!("--lower-freeze {}", file.display()))?;
            log::info!(
                "lower frozen: {} nodes ({} {}, {:?})",
                frozen.len(),
                if taken { "taken now into" } else { "read from" },
                file.display(),
                t.elapsed()
            );
            fs.with_frozen_lower(frozen)
        }
        None => fs,
    };
    if args.quota > 0 {
        log::info!("upper quota {} bytes, {} used", args.quota, fs.quota_used());
    }
    let listener = listen(&args.socket)?;
    if args.no_jail {
        log::warn!("running WITHOUT the jail (--no-jail): a guest exploit reaches the host");
    } else {
        enter_jail(&args, &listener)?;
    }
    log::info!(
        "serving {} (lower) + {} (upper) as tag {:?} on {}",
        lower_desc,
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
            poll: Duration::from_micros(args.poll_us.min(1_000_000)),
        },
    )
}
