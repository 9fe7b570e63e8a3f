//! The QEMU driver: `qemu-system-x86_64 -M microvm` with virtio-mmio devices.
//!
//! Guest RAM is a shared memfd (`memory-backend-memfd,share=on`), which vhost-user backends
//! need to map it. Devices: the serial console (to `console.log`), `virtio-blk-device` for the
//! read-only rootfs, `vhost-user-vsock-device` for the control channel, `vhost-user-fs-device`
//! for each ax-fsd share, and `virtio-net-device` on a `stream` netdev connected to ax-netstack
//! (QEMU 7.2's vhost-user-net enables vrings before acking features, which the vhost crate's
//! back-end refuses; see netstack/src/stream.rs).

use super::VmSpec;
use crate::error::usage;
use anyhow::Result;
use std::ffi::OsString;
use std::path::PathBuf;

/// The QEMU binary name looked up in `PATH` (or `$AX_QEMU`).
pub const BINARY: &str = "qemu-system-x86_64";

/// Finds QEMU: `$AX_QEMU`, else `qemu-system-x86_64` in `PATH`.
pub fn find_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AX_QEMU") {
        return Ok(PathBuf::from(p));
    }
    which(BINARY).ok_or_else(|| {
        usage(
            format!(
                "{BINARY} not found in PATH, and this host has no usable hardware KVM for ax-vmm"
            ),
            "install QEMU: apt-get install qemu-system-x86",
        )
    })
}

/// Looks a program up in `PATH`.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The QEMU arguments (without the program) for `spec`.
pub fn args(spec: &VmSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    let machine = format!("microvm,accel={},acpi=on", spec.accel.as_str());
    let cpu = if spec.accel == super::Accel::Tcg {
        "max"
    } else {
        "host"
    };
    let mem = format!("{}M", spec.memory_mib);
    for s in [
        "-M",
        &machine,
        "-cpu",
        cpu,
        "-smp",
        &spec.cpus.to_string(),
        "-m",
        &mem,
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-numa",
        "node,memdev=mem",
        "-chardev",
        &format!("file,id=console,path={}", spec.console_log.display()),
        "-serial",
        "chardev:console",
        "-kernel",
        &spec.kernel.to_string_lossy(),
        "-initrd",
        &spec.initrd.to_string_lossy(),
        "-append",
        &spec.cmdline,
        "-drive",
        &format!(
            "id=rootfs,file={},format=raw,if=none,readonly=on",
            spec.rootfs.display()
        ),
        "-device",
        "virtio-blk-device,drive=rootfs",
        "-chardev",
        &format!("socket,id=vsock,path={}", spec.vhost_vsock_socket.display()),
        // QEMU 7.2 reads the guest CID from the backend's config space (no guest-cid property).
        "-device",
        "vhost-user-vsock-device,chardev=vsock",
    ] {
        push(s);
    }
    if let Some(agents) = &spec.agents {
        // After the rootfs, so the guest sees it as /dev/vdb (super::AGENTS_DEVICE).
        for s in [
            "-drive",
            &format!(
                "id=agents,file={},format=raw,if=none,readonly=on",
                agents.display()
            ),
            "-device",
            "virtio-blk-device,drive=agents",
        ] {
            a.push(s.into());
        }
    }
    for (i, (sock, tag)) in spec.fs_shares.iter().enumerate() {
        for s in [
            "-chardev",
            &format!("socket,id=fs{i},path={}", sock.display()),
            "-device",
            &format!("vhost-user-fs-device,chardev=fs{i},tag={tag}"),
        ] {
            a.push(s.into());
        }
    }
    if let Some(net) = &spec.net {
        for s in [
            "-netdev",
            &format!(
                "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                net.socket.display()
            ),
            "-device",
            &format!("virtio-net-device,netdev=n0,mac={}", net.mac),
        ] {
            a.push(s.into());
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Accel;

    #[test]
    fn args_have_shared_memory_and_devices() {
        let spec = VmSpec {
            kernel: "/i/bzImage".into(),
            initrd: "/i/initrd".into(),
            rootfs: "/i/rootfs.erofs".into(),
            cmdline: "console=ttyS0".into(),
            cpus: 2,
            memory_mib: 512,
            console_log: "/s/console.log".into(),
            vhost_vsock_socket: "/s/vhost-vsock.sock".into(),
            accel: Accel::Tcg,
            fs_shares: Vec::new(),
            net: None,
            agents: Some("/i/agents.erofs".into()),
        };
        let mut with_net = spec.clone();
        with_net.net = Some(crate::driver::NetDevice {
            socket: "/s/net.sock".into(),
            mac: "52:54:00:12:34:56".into(),
        });
        let n = args(&with_net)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(n.contains(
            "-netdev stream,id=n0,server=off,addr.type=unix,addr.path=/s/net.sock \
             -device virtio-net-device,netdev=n0,mac=52:54:00:12:34:56"
        ));
        let a: Vec<String> = args(&spec)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = a.join(" ");
        assert!(joined.contains("-M microvm,accel=tcg"));
        assert!(joined.contains("memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(joined.contains("file=/i/rootfs.erofs,format=raw,if=none,readonly=on"));
        assert!(joined.contains("vhost-user-vsock-device,chardev=vsock"));
        assert!(joined.contains("-no-reboot"));
        let root = joined.find("drive=rootfs").unwrap();
        let agents = joined
            .find(
                "-drive id=agents,file=/i/agents.erofs,format=raw,if=none,readonly=on \
                 -device virtio-blk-device,drive=agents",
            )
            .expect("agents disk");
        assert!(root < agents, "the agents disk comes second (/dev/vdb)");
        assert!(
            !joined.contains("-netdev"),
            "no network device without a netstack"
        );
    }
}
