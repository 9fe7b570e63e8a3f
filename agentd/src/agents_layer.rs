//! The agents layer: a second read-only erofs disk with the agent CLIs (Claude Code, Codex,
//! Gemini CLI, OpenCode and the node runtime they need), built by `axctl image build`
//! (docs/image.md, "The agents layer"). `ax.agents=<device>` on the kernel command line names
//! it; agentd mounts it on [`MOUNT_POINT`], whose `bin/` heads every session's `PATH`
//! (`session::BASE_ENV`).

use nix::mount::{mount, MsFlags};
use std::time::Duration;

/// Where the layer is mounted.
pub const MOUNT_POINT: &str = "/opt/ax";

/// The device of `ax.agents=<device>` in a kernel command line, if any.
pub fn device(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("ax.agents="))
        .next_back()
        .filter(|d| !d.is_empty())
}

/// Mounts the layer named on `/proc/cmdline` (erofs, read-only, nodev, nosuid) on
/// [`MOUNT_POINT`]. Without `ax.agents=` it does nothing. A failure is logged, not fatal: the
/// guest still runs commands, just without the agent CLIs.
pub fn mount_from_cmdline() {
    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(dev) = device(&text) else {
        return;
    };
    match mount_layer(dev) {
        Ok(()) => log::info!("agents: {dev} (erofs) on {MOUNT_POINT}"),
        Err(e) => log::error!("agents layer not mounted: {e}"),
    }
}

fn mount_layer(dev: &str) -> Result<(), String> {
    if !crate::mounts::wait_for(dev, Duration::from_secs(10)) {
        return Err(format!(
            "{dev} did not appear within 10 s (is it attached as the second virtio-blk disk?)"
        ));
    }
    std::fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("mkdir {MOUNT_POINT}: {e}"))?;
    mount(
        Some(dev),
        MOUNT_POINT,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| format!("mount erofs {dev} on {MOUNT_POINT}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_from_cmdline() {
        assert_eq!(
            device("console=ttyS0 ax.name=a ax.agents=/dev/vdb quiet\n"),
            Some("/dev/vdb")
        );
        assert_eq!(device("console=ttyS0 ax.name=a"), None);
        assert_eq!(device("ax.agents= x"), None);
        assert_eq!(
            device("ax.agents=/dev/vdb ax.agents=/dev/vdc"),
            Some("/dev/vdc")
        );
    }
}
