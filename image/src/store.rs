//! The image store: `$XDG_CACHE_HOME/ax/images/<id>/`, listing, id-prefix resolution and
//! atomic installation of a freshly built image.
//!
//! Only directories whose name is a 12-hex-digit id and that hold a readable `manifest.json`
//! count as images; build directories (`.build-*`) are invisible. "Newest" is the directory's
//! mtime, which installation sets to the current time (a rebuild that reuses an id makes that
//! image the newest again).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::manifest::{self, Manifest};
use super::Image;
use crate::error;

/// Prefix of the temporary build directories inside the images directory.
pub const BUILD_PREFIX: &str = ".build-";

fn is_id(name: &str) -> bool {
    name.len() == manifest::ID_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn mtime_secs(p: &Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads one image directory (None if it is not a complete image).
pub fn open(dir: &Path) -> Option<Image> {
    let id = dir.file_name()?.to_str()?.to_owned();
    if !is_id(&id) {
        return None;
    }
    let m = Manifest::read(&dir.join(manifest::MANIFEST_FILE)).ok()?;
    let image = Image {
        id,
        dir: dir.to_path_buf(),
        kernel: dir.join(&m.kernel.file),
        vmlinux: m
            .outputs
            .vmlinux
            .as_ref()
            .map(|_| dir.join(manifest::VMLINUX_FILE))
            .filter(|p| p.is_file()),
        initrd: dir.join(manifest::INITRD_FILE),
        rootfs: dir.join(manifest::ROOTFS_FILE),
        agents: m
            .outputs
            .agents
            .as_ref()
            .map(|_| dir.join(manifest::AGENTS_FILE))
            .filter(|p| p.is_file()),
        kernel_release: m.kernel.release.clone(),
        created: mtime_secs(dir),
        size: m.outputs.kernel.size
            + m.outputs.initrd.size
            + m.outputs.rootfs.size
            + m.outputs.vmlinux.as_ref().map_or(0, |o| o.size)
            + m.outputs.agents.as_ref().map_or(0, |o| o.size),
    };
    let agents_ok = m.outputs.agents.is_none() || image.agents.is_some();
    (image.kernel.is_file() && image.initrd.is_file() && image.rootfs.is_file() && agents_ok)
        .then_some(image)
}

/// All images in `root`, newest first (ties: by id, for a stable order).
pub fn list_in(root: &Path) -> anyhow::Result<Vec<Image>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    let mut v: Vec<Image> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| open(&e.path()))
        .collect();
    v.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    Ok(v)
}

/// Picks an image: `Some(prefix)` must match exactly one id (usage error otherwise); `None`
/// picks the newest, or `Ok(None)` when there is no image.
pub fn resolve_in(images: Vec<Image>, id: Option<&str>) -> anyhow::Result<Option<Image>> {
    let Some(prefix) = id else {
        return Ok(images.into_iter().next());
    };
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.is_empty() {
        return Err(error::usage(
            "empty image id",
            "run `axctl image ls` to see the ids",
        ));
    }
    let mut hits: Vec<Image> = images
        .into_iter()
        .filter(|i| i.id.starts_with(&prefix))
        .collect();
    match hits.len() {
        0 => Err(error::usage(
            format!("no image matches {prefix:?}"),
            "run `axctl image ls` to see the ids, or `axctl image build` to build one",
        )),
        1 => Ok(hits.pop()),
        _ => {
            let ids: Vec<&str> = hits.iter().map(|i| i.id.as_str()).collect();
            Err(error::usage(
                format!("image id {prefix:?} is ambiguous: {}", ids.join(", ")),
                "give more digits of the id",
            ))
        }
    }
}

/// Mount points at or below `dir` (from /proc/self/mountinfo).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Removes a build directory, refusing when something is still mounted inside it (mmdebstrap
/// bind-mounts /dev, /proc and /sys into its chroot; deleting through those would hit the
/// host's).
pub fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    let mounts = mounts_below(dir);
    if !mounts.is_empty() {
        anyhow::bail!(
            "not removing {}: {} is still mounted (umount it first)",
            dir.display(),
            mounts[0].display()
        );
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Removes build directories left by builds that died (their pid no longer runs).
pub fn sweep_stale_builds(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(BUILD_PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            if let Err(err) = remove_tree(&e.path()) {
                eprintln!("axctl: warning: {err:#}");
            }
        }
    }
}

/// Moves the finished build directory `tmp` to `root/<id>`, replacing an image with the same id
/// (same id = same bytes), and stamps its mtime with the current time so it becomes the newest.
pub fn install(tmp: &Path, root: &Path, id: &str) -> anyhow::Result<PathBuf> {
    let dest = root.join(id);
    let now = SystemTime::now();
    std::fs::File::open(tmp)
        .and_then(|f| f.set_modified(now))
        .with_context(|| format!("setting the mtime of {}", tmp.display()))?;
    if dest.exists() {
        let old = root.join(format!("{BUILD_PREFIX}{}-old-{id}", std::process::id()));
        std::fs::rename(&dest, &old).with_context(|| format!("moving {} aside", dest.display()))?;
        std::fs::rename(tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
        remove_tree(&old)?;
    } else {
        std::fs::rename(tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    fn fake_image(root: &Path, id: &str, mtime: u64) {
        let d = root.join(id);
        std::fs::create_dir_all(&d).unwrap();
        let mut m = sample();
        m.id = id.into();
        std::fs::write(d.join("manifest.json"), m.to_json()).unwrap();
        for f in ["bzImage", "initrd", "rootfs.erofs"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let t = UNIX_EPOCH + std::time::Duration::from_secs(mtime);
        std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn list_newest_first_and_skip_non_images() {
        let d = tempfile::tempdir().unwrap();
        fake_image(d.path(), "aaaaaaaaaaaa", 100);
        fake_image(d.path(), "bbbbbbbbbbbb", 300);
        fake_image(d.path(), "abcabcabcabc", 200);
        std::fs::create_dir_all(d.path().join(".build-1-x")).unwrap();
        std::fs::create_dir_all(d.path().join("cccccccccccc")).unwrap(); // no manifest
        let l = list_in(d.path()).unwrap();
        let ids: Vec<&str> = l.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["bbbbbbbbbbbb", "abcabcabcabc", "aaaaaaaaaaaa"]);
        assert_eq!(l[0].created, 300);
        assert_eq!(l[0].kernel_release, "6.1.0-56-cloud-amd64");
        assert_eq!(l[0].kernel, d.path().join("bbbbbbbbbbbb/bzImage"));
        assert_eq!(l[0].size, 6);
        assert!(list_in(&d.path().join("nope")).unwrap().is_empty());
    }

    #[test]
    fn resolve_prefixes() {
        let d = tempfile::tempdir().unwrap();
        fake_image(d.path(), "aaaaaaaaaaaa", 100);
        fake_image(d.path(), "abcabcabcabc", 200);
        let l = || list_in(d.path()).unwrap();
        assert_eq!(resolve_in(l(), None).unwrap().unwrap().id, "abcabcabcabc");
        assert_eq!(
            resolve_in(l(), Some("aa")).unwrap().unwrap().id,
            "aaaaaaaaaaaa"
        );
        assert_eq!(
            resolve_in(l(), Some("ABC")).unwrap().unwrap().id,
            "abcabcabcabc"
        );
        let e = resolve_in(l(), Some("a")).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        assert!(e.to_string().contains("ambiguous"), "{e}");
        let e = resolve_in(l(), Some("ff")).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        assert!(e.to_string().contains("no image matches"), "{e}");
        assert!(resolve_in(Vec::new(), None).unwrap().is_none());
    }

    #[test]
    fn install_replaces_same_id_and_becomes_newest() {
        let d = tempfile::tempdir().unwrap();
        fake_image(d.path(), "aaaaaaaaaaaa", 100);
        fake_image(d.path(), "bbbbbbbbbbbb", 200);
        let tmp = d.path().join(".build-1-new");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::copy(
            d.path().join("aaaaaaaaaaaa/manifest.json"),
            tmp.join("manifest.json"),
        )
        .unwrap();
        for f in ["bzImage", "initrd", "rootfs.erofs"] {
            std::fs::write(tmp.join(f), b"new").unwrap();
        }
        install(&tmp, d.path(), "aaaaaaaaaaaa").unwrap();
        assert!(!tmp.exists());
        assert_eq!(
            std::fs::read(d.path().join("aaaaaaaaaaaa/initrd")).unwrap(),
            b"new"
        );
        let l = list_in(d.path()).unwrap();
        assert_eq!(l[0].id, "aaaaaaaaaaaa");
        assert_eq!(l.len(), 2);
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn sweep_removes_dead_builds_only() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join(".build-999999999-1");
        let live = d.path().join(format!(".build-{}-1", std::process::id()));
        std::fs::create_dir_all(dead.join("work")).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        sweep_stale_builds(d.path());
        assert!(!dead.exists());
        assert!(live.exists());
    }
}
