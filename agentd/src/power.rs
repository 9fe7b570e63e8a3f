//! The power-off sequence (PID 1 only).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STARTED: AtomicBool = AtomicBool::new(false);

/// Stops everything and powers off (or reboots): `kill(-1, SIGTERM)` (every process but
/// PID 1), up to 2 s for them to exit, `kill(-1, SIGKILL)`, `sync(2)`, unmount what can be,
/// `sync(2)`, then `reboot(2)` with `RB_POWER_OFF` (`RB_AUTOBOOT` if `reboot`). QEMU runs with
/// `-no-reboot`, so a reboot ends the VM too. Only the first call acts; it never returns.
pub fn off(reboot: bool, why: &str) -> ! {
    if STARTED.swap(true, Ordering::SeqCst) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    log::info!(
        "{} ({why})",
        if reboot { "rebooting" } else { "powering off" }
    );
    // Let connection writers flush their last frames (OK of SHUTDOWN, EXIT).
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) with pid -1 signals every process we may signal except ourselves.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    if !agentd::reaper::wait_all(Duration::from_secs(2)) {
        log::info!("processes left after SIGTERM; sending SIGKILL");
        unsafe { libc::kill(-1, libc::SIGKILL) };
        agentd::reaper::wait_all(Duration::from_secs(1));
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    crate::mounts::unmount_all();
    unsafe { libc::sync() };
    let cmd = if reboot {
        libc::RB_AUTOBOOT
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: reboot(2); only returns on failure.
    unsafe { libc::reboot(cmd) };
    log::error!("reboot(2) failed: {}", std::io::Error::last_os_error());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
