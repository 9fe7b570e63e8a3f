//! `axctl stop` and `axctl rm`.

use crate::error::usage;
use crate::state;
use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// `axctl stop NAME`: SIGTERM to the agent (through its supervisor); the VM is torn down
/// after the grace period if the agent ignores it. Waits until the supervisor is gone, then
/// prints the name on stdout (as `docker stop` does) and the final status on stderr.
pub fn stop(name: &str) -> Result<i32> {
    let st = stop_agent(name)?;
    println!("{name}");
    eprintln!("axctl: {name} {}", st.status_label());
    Ok(0)
}

/// Stops agent `name` if it is live and returns its final state.
fn stop_agent(name: &str) -> Result<state::AgentState> {
    let (_, st) = state::load(name)?;
    if !st.status.is_live() {
        return Ok(st);
    }
    let pid = st
        .supervisor_pid
        .context("the agent has no supervisor yet; try again in a moment")?;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + ax_supervisor::STOP_GRACE + Duration::from_secs(15);
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
    Ok(state::load(name)?.1)
}

/// `axctl rm NAME… [-f]`: delete the state of ended agents (`-f` stops live ones first).
pub fn rm(names: &[String], force: bool) -> Result<i32> {
    for name in names {
        let (dir, st) = state::load(name)?;
        if st.status.is_live() {
            if !force {
                return Err(usage(
                    format!("agent '{name}' is {}", st.status_label()),
                    format!("stop it first (axctl stop {name}) or use axctl rm -f {name}"),
                ));
            }
            stop_agent(name)?;
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        println!("{name}");
    }
    Ok(0)
}
