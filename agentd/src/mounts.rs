//! Early mounts and the switch from the initramfs to the overlay root (mount(2),
//! switch_root(8) semantics).

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the read-only root image is mounted (kept visible in the final root).
pub const LOWER: &str = "/run/ax/lower";
/// tmpfs holding the overlay's `upper/` and `work/` directories.
pub const RW: &str = "/run/ax/rw";
/// Where the overlay is assembled in the initramfs before it becomes `/`.
const NEWROOT: &str = "/newroot";

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn mnt(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| err(&format!("mkdir {target}"), e))?;
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // Already mounted (e.g. the kernel automounted devtmpfs).
        Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(err(&format!("mount {fstype} on {target}"), e)),
    }
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// A fresh tmpfs on `/tmp` (mode 1777), in the initramfs and again in the new root.
fn mount_tmp() -> Result<(), String> {
    mnt(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
}

/// Mounts the virtio-fs share `tag` on `/workspace` (virtio 1.2 §5.11; the kernel's
/// `virtiofs` file system, whose source is the tag).
pub fn workspace(tag: &str) -> Result<(), String> {
    mnt(tag, "/workspace", "virtiofs", MsFlags::MS_NODEV, None)
}

/// Where the host repository's objects are mounted (read-only) for the agent's `.git`.
pub const HOST_OBJECTS: &str = "/run/ax/objects";

/// Mounts the virtio-fs share `tag` read-only on [`HOST_OBJECTS`].
pub fn host_objects(tag: &str) -> Result<(), String> {
    mnt(
        tag,
        HOST_OBJECTS,
        "virtiofs",
        MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
        None,
    )
}

/// Mounts the API file systems in the initramfs: `/proc`, `/sys`, `/dev` (devtmpfs),
/// `/dev/pts` (devpts, needed for PTY sessions), `/dev/shm`, `/run` and `/tmp` (tmpfs).
pub fn early() -> Result<(), String> {
    mnt("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None)?;
    mnt("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None)?;
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,gid=5,ptmxmode=0666"),
    )?;
    mnt(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mnt(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_tmp()?;
    Ok(())
}

/// Waits up to `timeout` for `path` (a device node devtmpfs creates when its driver probes).
pub fn wait_for(path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if Path::new(path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Path::new(path).exists()
}

/// Switches from the initramfs to an overlay of `dev` (erofs, read-only) under a tmpfs:
///
/// 1. `dev` → [`LOWER`] (erofs, `MS_RDONLY`); tmpfs → [`RW`] with `upper/` and `work/`.
/// 2. overlay `lowerdir=LOWER,upperdir=RW/upper,workdir=RW/work` → `/newroot`.
/// 3. `MS_MOVE` `/dev`, `/proc`, `/sys`, `/run` into it (the lower and rw mounts live under
///    `/run`, so they move along and stay reachable); detach the initramfs `/tmp`.
/// 4. Delete the initramfs's files (without crossing mount points) to free its memory.
/// 5. `chdir /newroot`, `mount --move . /`, `chroot .`, `chdir /` (as busybox switch_root).
/// 6. Fresh tmpfs on `/tmp`; create `/workspace`.
pub fn switch_root(dev: &str) -> Result<(), String> {
    if !wait_for(dev, Duration::from_secs(10)) {
        return Err(format!(
            "root device {dev} did not appear within 10 s (is virtio_blk loaded?)"
        ));
    }
    mnt(dev, LOWER, "erofs", MsFlags::MS_RDONLY, None)?;
    mnt("tmpfs", RW, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
    for d in ["upper", "work"] {
        std::fs::create_dir_all(format!("{RW}/{d}")).map_err(|e| err("mkdir", e))?;
    }
    let opts = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
    mnt("overlay", NEWROOT, "overlay", MsFlags::empty(), Some(&opts))?;
    for d in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("{NEWROOT}{d}");
        std::fs::create_dir_all(&target).map_err(|e| err(&format!("mkdir {target}"), e))?;
        mount(
            Some(d),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| err(&format!("move {d} to {target}"), e))?;
    }
    let _ = umount2("/tmp", MntFlags::MNT_DETACH);
    let root_dev = std::fs::metadata("/").map_err(|e| err("stat /", e))?.dev();
    if let Ok(rd) = std::fs::read_dir("/") {
        for ent in rd.flatten() {
            let p = ent.path();
            if p != Path::new(NEWROOT) {
                remove_same_dev(&p, root_dev);
            }
        }
    }
    std::env::set_current_dir(NEWROOT).map_err(|e| err("chdir /newroot", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| err("move /newroot to /", e))?;
    nix::unistd::chroot(".").map_err(|e| err("chroot", e))?;
    std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;
    mount_tmp()?;
    std::fs::create_dir_all("/workspace").map_err(|e| err("mkdir /workspace", e))?;
    Ok(())
}

/// Removes `p` recursively, but nothing on a device other than `dev` (mount points stay).
fn remove_same_dev(p: &Path, dev: u64) {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return;
    };
    if m.dev() != dev {
        return;
    }
    if m.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for ent in rd.flatten() {
                remove_same_dev(&ent.path(), dev);
            }
        }
        let _ = std::fs::remove_dir(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// Best-effort unmount of everything but the API file systems and `/`, deepest first
/// (`/proc/self/mounts` order reversed), then a read-only remount of `/`. Errors are ignored.
pub fn unmount_all() {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let targets: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|t| t.replace("\\040", " "))
        .collect();
    for t in targets.iter().rev() {
        if matches!(
            t.as_str(),
            "/" | "/proc" | "/sys" | "/dev" | "/dev/pts" | "/run"
        ) {
            continue;
        }
        if let Err(e) = umount2(t.as_str(), MntFlags::empty()) {
            log::debug!("umount {t}: {e}");
        }
    }
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    );
}
