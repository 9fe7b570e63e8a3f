//! `axctl stop` and `axctl rm`.

use crate::error::usage;
use crate::state::{self, Status};
use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// `axctl stop NAME`: SIGTERM to the agent (through its supervisor); the VM is torn down
/// after the grace period if the agent ignores it. Waits until the supervisor is gone.
pub fn stop(name: &str) -> Result<i32> {
    let (dir, st) = state::load(name)?;
    if !st.status.is_live() {
        eprintln!("axctl: {name} is not running ({})", st.status_label());
        return Ok(0);
    }
    let pid = st
        .supervisor_pid
        .context("the agent has no supervisor yet; try again in a moment")?;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + crate::supervisor::STOP_GRACE + Duration::from_secs(15);
    while state::supervisor_alive(pid) {
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            if let Some(vmm) = st.vmm_pid {
                let _ = kill(Pid::from_raw(vmm), Signal::SIGKILL);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = state::load(name)?.1;
    eprintln!("axctl: {name} {}", st.status_label());
    let _ = dir;
    Ok(0)
}

/// `axctl rm NAME… [-f]`: delete the state of ended agents (`-f` stops live ones first).
pub fn rm(names: &[String], force: bool) -> Result<i32> {
    for name in names {
        let (dir, st) = state::load(name)?;
        if st.status == Status::Starting || st.status == Status::Running {
            if !force {
                return Err(usage(
                    format!("agent '{name}' is {}", st.status_label()),
                    format!("stop it first (axctl stop {name}) or use axctl rm -f {name}"),
                ));
            }
            stop(name)?;
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        println!("{name}");
    }
    Ok(0)
}
