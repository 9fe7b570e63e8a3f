//! `ax-vmm`: boot one microVM and exit when it stops.
//!
//! Exit status: 0 the guest shut down cleanly (i8042 reset, ACPI S5/reset), 1 the VM failed
//! (triple fault, KVM internal error, setup error), 2 usage or configuration error.
//! Guest serial output goes where `serial` says (stdout by default); logs go to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ax_vmm::config::{BlockConfig, Overrides, SerialOutput, VhostUserConfig, VmConfig};
use ax_vmm::cpuid::CpuTemplate;
use ax_vmm::Machine;
use clap::Parser;

/// Boot a KVM microVM (PVH vmlinux or bzImage) and run it until it stops.
#[derive(Parser, Debug)]
#[command(name = "ax-vmm", version, about, long_about = None)]
struct Args {
    /// VM config file (TOML, or JSON if it ends in .json); flags override it. See docs/vmm-config.md.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Kernel: ELF vmlinux with a PVH note, or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// initrd / initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    cpus: Option<u8>,
    /// Guest RAM in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Serial output: stdout, none or file:PATH.
    #[arg(long)]
    serial: Option<SerialOutput>,
    /// CPUID template: auto, host or pvm.
    #[arg(long)]
    cpu_template: Option<CpuTemplate>,
    /// Create the in-kernel PIT (default: only with --no-acpi).
    #[arg(long, conflicts_with = "no_pit")]
    pit: bool,
    /// Do not create the in-kernel PIT.
    #[arg(long)]
    no_pit: bool,
    /// Do not write ACPI tables.
    #[arg(long)]
    no_acpi: bool,
    /// Do not jail the VMM (seccomp, Landlock, capabilities, namespaces): debugging only.
    #[arg(long)]
    no_jail: bool,
    /// Seccomp violation: kill (default) or log (the kernel logs it; for finding missing
    /// syscalls, see docs/jail.md).
    #[arg(long, value_name = "kill|log")]
    seccomp: Option<ax_vmm::jail::SeccompMode>,
    /// Jail: also enter a new network namespace (root only; costs ~0.5 ms of spawn time).
    #[arg(long)]
    jail_netns: bool,
    /// Add a read-only virtio-blk disk backed by PATH (repeatable; after the config's disks).
    #[arg(long, value_name = "PATH")]
    block: Vec<PathBuf>,
    /// Add a writable virtio-blk disk backed by PATH (repeatable; after the --block disks).
    #[arg(long, value_name = "PATH")]
    block_rw: Vec<PathBuf>,
    /// Hybrid vsock: the host Unix socket (adds the vsock device).
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Hybrid vsock: the guest CID (default 3).
    #[arg(long, value_name = "CID")]
    vsock_cid: Option<u64>,
    /// Add a vhost-user virtio-fs device: the backend's socket and the tag the guest mounts
    /// (repeatable; after the config's [[vhost_user]] devices).
    #[arg(long, value_name = "SOCKET:TAG", value_parser = VhostUserConfig::fs_flag)]
    vhost_user_fs: Vec<VhostUserConfig>,
    /// Add a vhost-user virtio-net device: the backend's socket (repeatable; after the
    /// --vhost-user-fs devices).
    #[arg(long, value_name = "SOCKET")]
    vhost_user_net: Vec<PathBuf>,
    /// Print the resolved config as JSON on stdout and exit.
    #[arg(long)]
    print_config: bool,
    /// Log level: error, warn, info, debug, trace (also AX_VMM_LOG).
    #[arg(long, env = "AX_VMM_LOG", default_value = "info", value_parser = parse_level)]
    log_level: log::LevelFilter,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?}; use error, warn, info, debug or trace"))
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "ax-vmm: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// The jail for `cfg` (docs/jail.md).
fn jail_policy(cfg: &VmConfig) -> ax_vmm::jail::Policy {
    ax_vmm::jail::Policy {
        seccomp: cfg.seccomp,
        net_namespace: cfg.jail_netns,
        // Guest-initiated vsock connections go to `<uds_path>_<port>` beside the socket.
        unix_connect_dirs: cfg
            .vsock
            .iter()
            .filter_map(|v| v.uds_path.parent())
            .map(|d| {
                if d.as_os_str().is_empty() {
                    ".".into()
                } else {
                    d.to_path_buf()
                }
            })
            .collect(),
        device_threads: cfg.virtio_device_count() > 0,
        ..Default::default()
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(args.log_level);

    let overrides = Overrides {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory_mib: args.memory_mib,
        serial: args.serial,
        cpu_template: args.cpu_template,
        pit: if args.pit {
            Some(true)
        } else if args.no_pit {
            Some(false)
        } else {
            None
        },
        no_acpi: args.no_acpi,
        no_jail: args.no_jail,
        seccomp: args.seccomp,
        jail_netns: args.jail_netns,
        block: (args.block.into_iter().map(|p| (p, true)))
            .chain(args.block_rw.into_iter().map(|p| (p, false)))
            .map(|(path, read_only)| BlockConfig { path, read_only })
            .collect(),
        vsock_uds: args.vsock_uds,
        vsock_cid: args.vsock_cid,
        vhost_user: (args.vhost_user_fs.into_iter())
            .chain(
                args.vhost_user_net
                    .into_iter()
                    .map(VhostUserConfig::net_flag),
            )
            .collect(),
    };
    let cfg = match VmConfig::resolve(args.config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ax-vmm: error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg).unwrap_or_default());
        return ExitCode::SUCCESS;
    }

    let mut machine = match Machine::new(&cfg, start) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ax-vmm: error: {e}");
            return ExitCode::from(1);
        }
    };
    log::debug!("VM built in {:?}", start.elapsed());
    // The VM is built: nothing past this point opens a file, a socket or gains a privilege.
    if cfg.jail {
        let t = Instant::now();
        match ax_vmm::jail::apply_process(&jail_policy(&cfg)) {
            Ok(r) => log::debug!("{r} (applied in {:?})", t.elapsed()),
            Err(e) => {
                eprintln!("ax-vmm: error: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        log::warn!("jail off (--no-jail or jail = false): a guest escape would own this process; debugging only");
    }
    match machine.run() {
        Ok(reason) if reason.is_clean() => {
            log::info!("{reason}");
            ExitCode::SUCCESS
        }
        Ok(reason) => {
            eprintln!("ax-vmm: error: {reason}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ax-vmm: error: {e}");
            ExitCode::from(1)
        }
    }
}
