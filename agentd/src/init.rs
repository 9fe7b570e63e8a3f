//! PID 1: boot duties, then serve the control port and wait for the reason to power off.

use crate::cmdline::Cmdline;
use crate::{console, modules, mounts, net, power, trust, vsock};
use agentd::proto::CONTROL_PORT;
use agentd::server::{boottime_ms, Config, Event, Server};
use std::sync::mpsc;
use std::time::Duration;

/// Runs the boot sequence and then the guest's life; never returns. Any fatal error is logged
/// and the guest powers off, so the host sees the VM end and the console says why.
pub fn run() -> ! {
    let init_ms = boottime_ms();
    // Show as `agentd`, not `init`, in /proc/1/comm and ps.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"agentd".as_ptr()) };
    console::init(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| log::error!("panic: {info}")));
    let r = std::panic::catch_unwind(|| boot_and_serve(init_ms));
    let why = match r {
        Ok(Err(e)) => format!("fatal: {e}"),
        Ok(Ok(never)) => match never {},
        Err(_) => "fatal: panic in init".to_string(),
    };
    log::error!("{why}");
    power::off(false, &why)
}

enum Never {}

fn boot_and_serve(init_ms: u64) -> Result<Never, String> {
    if let Err(e) = mounts::early() {
        // Without /dev there is no console to log to; try anyway, then give up.
        console::attach_console();
        return Err(e);
    }
    console::attach_console();
    let cmd = Cmdline::read();
    if cmd.debug {
        log::set_max_level(log::LevelFilter::Debug);
    }
    log::info!(
        "agentd {} starting (uptime {} ms)",
        env!("CARGO_PKG_VERSION"),
        boottime_ms()
    );
    agentd::reaper::start();

    let rel = agentd::server::guest_info(0, 0).kernel_release;
    let (ok, failed) = modules::load_list(std::path::Path::new(modules::MODULE_LIST), &rel);
    log::info!("kernel {rel}: {ok} modules loaded, {failed} failed");

    match &cmd.root {
        Some(dev) => {
            mounts::switch_root(dev)?;
            log::info!("root: overlay of {dev} (erofs) under tmpfs");
        }
        None => {
            log::info!("ax.root=none: staying in the initramfs");
            let _ = std::fs::create_dir_all("/workspace");
        }
    }
    crate::agents_layer::mount_from_cmdline();
    if let Some(tag) = &cmd.objects {
        mounts::host_objects(tag)?;
    }
    if let Some(tag) = &cmd.workspace {
        mounts::workspace(tag)?;
        log::info!("workspace: virtio-fs {tag:?} on /workspace");
    }
    if let Some(name) = &cmd.name {
        if let Err(e) = net::set_hostname(name) {
            log::warn!("sethostname {name:?}: {e}");
        }
    }
    if let Err(e) = net::link_up("lo") {
        log::warn!("lo up: {e}");
    }
    if let Some(n) = &cmd.net {
        // Not fatal: the agent runs without a network and the console says why.
        match net::configure("eth0", n, Duration::from_secs(5)) {
            Ok(()) => log::info!(
                "eth0: {}/{} via {} (DNS {}), MTU {}",
                n.addr,
                n.prefix,
                n.gateway,
                n.gateway,
                n.mtu.map_or("default".to_string(), |m| m.to_string())
            ),
            Err(e) => log::error!("eth0: {e}; the guest has no network"),
        }
    }

    let listener = bind_control()?;
    let (tx, rx) = mpsc::channel();
    let ready = boottime_ms();
    let server = Server::new(
        Config {
            ready_ms: ready,
            init_ms,
            setup_hook: Some(setup_hook),
            ..Config::default()
        },
        tx,
    );
    std::thread::Builder::new()
        .name("vsock-accept".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok(s) => server.serve(s),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("vsock accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
        .map_err(|e| format!("spawn accept thread: {e}"))?;
    log::info!("ready: control port vsock:{CONTROL_PORT} (uptime {ready} ms)");

    match rx.recv() {
        Ok(Event::Shutdown { reboot }) => power::off(reboot, "SHUTDOWN requested"),
        Ok(Event::PrimaryExited(exit)) => {
            log::info!(
                "primary session exited ({}); waiting up to {:?} for SHUTDOWN",
                exit.shell_code(),
                cmd.grace
            );
            match rx.recv_timeout(cmd.grace) {
                Ok(Event::Shutdown { reboot }) => {
                    power::off(reboot, "primary session exited; SHUTDOWN requested")
                }
                _ => power::off(
                    false,
                    "primary session exited; no SHUTDOWN within the grace period",
                ),
            }
        }
        Err(_) => Err("event channel closed".into()),
    }
}

/// Binds the control port, retrying for up to 10 s while the vsock transport is not there
/// yet (`EAFNOSUPPORT`, `ENODEV`, `EADDRNOTAVAIL` until the virtio-vsock device probes).
fn bind_control() -> Result<vsock::VsockListener, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match vsock::VsockListener::bind(CONTROL_PORT) {
            Ok(l) => return Ok(l),
            Err(e) if std::time::Instant::now() < deadline => {
                log::debug!("vsock bind: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(format!("cannot listen on vsock port {CONTROL_PORT}: {e} (are vsock and vmw_vsock_virtio_transport in /etc/ax/modules?)"))
            }
        }
    }
}

/// PID 1's SETUP hook: the CA into the trust store ([`trust::setup_hook`]), then the
/// placeholders into `/workspace/.env` ([`dotenv::write`]; a failure there is logged, not
/// fatal: the environment still carries them).
fn setup_hook(
    s: &agentd::proto::Setup,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let env = trust::setup_hook(s)?;
    match crate::dotenv::write(std::path::Path::new("/workspace"), &s.env) {
        Ok(o) => log::info!("/workspace/.env: {o:?}"),
        Err(e) => log::warn!("/workspace/.env: {e}"),
    }
    Ok(env)
}
