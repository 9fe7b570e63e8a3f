//! The ax-vmm driver: our own KVM microVM monitor (`vmm/`), used where hardware KVM exists.
//!
//! The supervisor writes the VM's configuration to `<state>/vm.toml` (format:
//! `docs/vmm-config.md`) and runs `ax-vmm --config <state>/vm.toml`. ax-vmm has virtio-blk and
//! hybrid vsock built in, so no vhost-user backend process is needed for them: ax-vmm binds
//! `<state>/vsock.sock` itself. virtio-fs (ax-fsd) and virtio-net (ax-netstack) are
//! `[[vhost_user]]` devices.

use super::VmSpec;
use crate::error::usage;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The binary name, found beside axctl (`paths::sibling_binary`) or in `PATH`.
pub const BINARY: &str = "ax-vmm";

/// Finds the ax-vmm binary: beside axctl, else in `PATH`.
pub fn find_binary() -> Result<PathBuf> {
    crate::paths::sibling_binary(BINARY)
        .or_else(|| super::qemu::which(BINARY))
        .ok_or_else(|| {
            usage(
                "ax-vmm not found beside axctl or in PATH",
                "install it (scripts/install, or cargo build -p ax-vmm), or use --vmm qemu",
            )
        })
}

/// The TOML configuration for `spec`, with the hybrid vsock socket at `vsock_uds`.
pub fn config(spec: &VmSpec, vsock_uds: &Path) -> String {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let mut fs = String::new();
    for (sock, tag) in &spec.fs_shares {
        fs.push_str(&format!(
            "\n[[vhost_user]]\nsocket = {}\ndevice_type = \"fs\"\ntag = {}\n",
            q(sock),
            toml::Value::String(tag.clone())
        ));
    }
    if let Some(net) = &spec.net {
        fs.push_str(&format!(
            "\n[[vhost_user]]\nsocket = {}\ndevice_type = \"net\"\nmac = {}\n",
            q(&net.socket),
            toml::Value::String(net.mac.clone())
        ));
    }
    // The agents layer is the second disk (/dev/vdb in the guest).
    let agents = spec
        .agents
        .as_ref()
        .map(|p| format!("[[block]]\npath = {}\nread_only = true\n\n", q(p)))
        .unwrap_or_default();
    format!(
        "# written by the ax supervisor; format: docs/vmm-config.md\n\
         kernel = {}\ninitrd = {}\ncmdline = {}\ncpus = {}\nmemory_mib = {}\nserial = {}\n\n\
         [[block]]\npath = {}\nread_only = true\n\n{agents}\
         [vsock]\nguest_cid = 3\nuds_path = {}\n{fs}",
        q(&spec.kernel),
        q(&spec.initrd),
        toml::Value::String(spec.cmdline.clone()),
        spec.cpus,
        spec.memory_mib,
        toml::Value::String(format!("file:{}", spec.console_log.display())),
        q(&spec.rootfs),
        q(vsock_uds),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Accel;

    #[test]
    fn config_is_valid_toml_with_the_devices() {
        let spec = VmSpec {
            kernel: "/i/vmlinux".into(),
            initrd: "/i/initrd".into(),
            rootfs: "/i/rootfs \"q\".erofs".into(),
            cmdline: "console=ttyS0 ax.name=a".into(),
            cpus: 2,
            memory_mib: 512,
            console_log: "/s/console.log".into(),
            vhost_vsock_socket: "/s/unused".into(),
            accel: Accel::Kvm,
            fs_shares: vec![("/s/ws.sock".into(), "workspace".into())],
            agents: Some("/i/agents.erofs".into()),
            net: Some(crate::driver::NetDevice {
                socket: "/s/net.sock".into(),
                mac: "52:54:00:12:34:56".into(),
            }),
        };
        let t: toml::Table = config(&spec, Path::new("/s/vsock.sock")).parse().unwrap();
        let vu = t["vhost_user"].as_array().unwrap();
        assert_eq!(vu[0]["device_type"].as_str(), Some("fs"));
        assert_eq!(vu[1]["device_type"].as_str(), Some("net"));
        assert_eq!(vu[1]["socket"].as_str(), Some("/s/net.sock"));
        assert_eq!(vu[1]["mac"].as_str(), Some("52:54:00:12:34:56"));
        assert_eq!(t["kernel"].as_str(), Some("/i/vmlinux"));
        assert_eq!(t["cpus"].as_integer(), Some(2));
        assert_eq!(t["serial"].as_str(), Some("file:/s/console.log"));
        assert_eq!(
            t["block"][0]["path"].as_str(),
            Some("/i/rootfs \"q\".erofs")
        );
        assert_eq!(t["block"][0]["read_only"].as_bool(), Some(true));
        assert_eq!(t["block"][1]["path"].as_str(), Some("/i/agents.erofs"));
        assert_eq!(t["block"][1]["read_only"].as_bool(), Some(true));
        assert_eq!(t["vsock"]["uds_path"].as_str(), Some("/s/vsock.sock"));
    }
}
