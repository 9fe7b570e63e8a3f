//! The initrd: agentd as `/init`, the shared libraries and ELF interpreter it links against,
//! the kernel modules it loads (with `/etc/ax/modules`, their load order), mount points, and
//! `/dev/console`. Written as an uncompressed newc cpio by [`super::cpio`] (uncompressed: the
//! kernel unpacks it without a decompressor, which matters under TCG; it is a few MB).

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::cpio::{Archive, Node};
use super::kernel::Kernel;
use super::manifest::{self, FileHash, InitrdInfo};
use super::modules::LoadPlan;

/// Where the module load order lives in the initrd.
pub const MODULES_LIST: &str = "etc/ax/modules";

/// Directories agentd mounts things on (`newroot` is where the rootfs goes before switching).
pub const MOUNT_POINTS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("newroot", 0o755),
];

/// Absolute paths of the shared objects in `ldd` output (libraries and the interpreter).
/// `Err` names libraries ldd could not find. A static binary yields an empty list.
pub fn parse_ldd(text: &str) -> Result<Vec<String>, String> {
    let mut paths = Vec::new();
    let mut missing = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some((name, rest)) = line.split_once("=>") {
            let target = rest.trim();
            if target.starts_with("not found") {
                missing.push(name.trim().to_owned());
            } else if let Some(p) = target
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                paths.push(p.to_owned());
            }
        } else if let Some(p) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            paths.push(p.to_owned());
        }
    }
    if !missing.is_empty() {
        return Err(missing.join(", "));
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The shared objects `binary` needs, via `ldd`.
pub fn shared_objects(binary: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(super::tools::path("ldd"))
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Static binaries: "not a dynamic executable" (exit 1).
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        anyhow::bail!(
            "ldd {} failed: {}{}",
            binary.display(),
            text.trim(),
            err.trim()
        );
    }
    parse_ldd(&text)
        .map_err(|m| anyhow::anyhow!("{}: shared libraries not found: {m}", binary.display()))
}

/// Builds the initrd archive for `agentd` and the planned modules.
pub fn build(
    agentd: &Path,
    kernel: &Kernel,
    plan: &LoadPlan,
) -> anyhow::Result<(Archive, InitrdInfo)> {
    let mut a = Archive::new();
    let agentd_bytes =
        std::fs::read(agentd).with_context(|| format!("reading {}", agentd.display()))?;
    let agentd_sha256 = manifest::sha256_bytes(&agentd_bytes);
    a.file("init", 0o755, agentd_bytes);

    let mut libraries = Vec::new();
    for lib in shared_objects(agentd)? {
        let data = std::fs::read(&lib).with_context(|| format!("reading {lib}"))?;
        libraries.push(FileHash {
            path: lib.clone(),
            sha256: manifest::sha256_bytes(&data),
        });
        a.file(&lib, 0o755, data);
    }

    let mut modules = Vec::new();
    for rel in &plan.order {
        let src = kernel.modules_dir.join(rel);
        let data = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        modules.push(FileHash {
            path: rel.clone(),
            sha256: manifest::sha256_bytes(&data),
        });
        a.file(
            &format!("lib/modules/{}/{rel}", kernel.release),
            0o644,
            data,
        );
    }
    let list: String = plan.order.iter().map(|p| format!("{p}\n")).collect();
    a.file(MODULES_LIST, 0o644, list.into_bytes());

    for (d, mode) in MOUNT_POINTS {
        a.dir(d, *mode);
    }
    // The kernel opens /dev/console for init's stdio before /init runs.
    a.insert(
        "dev/console",
        Node::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    );

    let info = InitrdInfo {
        agentd_sha256,
        libraries,
        modules,
        builtin_modules: plan.builtin.clone(),
    };
    Ok((a, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                 \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                 \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                 \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(t).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n"),
            Err("libfoo.so.1".into())
        );
        assert_eq!(parse_ldd("\tstatically linked\n"), Ok(vec![]));
    }

    #[test]
    fn initrd_layout_for_a_real_binary() {
        // Any dynamically linked host binary stands in for agentd.
        let bin = Path::new("/bin/true");
        let dir = tempfile::tempdir().unwrap();
        let mods = dir.path().join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(mods.join("kernel/drivers/virtio")).unwrap();
        std::fs::write(mods.join("kernel/drivers/virtio/virtio_ring.ko"), b"ring").unwrap();
        std::fs::write(mods.join("kernel/drivers/virtio/virtio.ko"), b"virtio").unwrap();
        let kernel = Kernel {
            bzimage: dir.path().join("bz"),
            release: "6.1.0-test".into(),
            deb_sha256: String::new(),
            modules_dir: mods,
        };
        let plan = LoadPlan {
            order: vec![
                "kernel/drivers/virtio/virtio_ring.ko".into(),
                "kernel/drivers/virtio/virtio.ko".into(),
            ],
            builtin: vec!["overlay".into()],
        };
        let (a, info) = build(bin, &kernel, &plan).unwrap();
        for p in [
            "init",
            "etc/ax/modules",
            "dev/console",
            "proc",
            "sys",
            "run",
            "tmp",
            "newroot",
            "lib/modules/6.1.0-test/kernel/drivers/virtio/virtio.ko",
        ] {
            assert!(
                a.contains(p),
                "{p} missing: {:?}",
                a.paths().collect::<Vec<_>>()
            );
        }
        assert!(!info.libraries.is_empty());
        for l in &info.libraries {
            assert!(a.contains(&l.path), "{}", l.path);
        }
        assert!(info.libraries.iter().any(|l| l.path.contains("ld-linux")));
        assert_eq!(info.modules.len(), 2);
        assert_eq!(info.builtin_modules, ["overlay"]);
        let bytes = a.to_bytes(7);
        let list = b"kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio.ko\n";
        assert!(bytes.windows(list.len()).any(|w| w == list));
        // Same inputs → same bytes.
        let (b, _) = build(bin, &kernel, &plan).unwrap();
        assert_eq!(b.to_bytes(7), bytes);
    }
}
