//! Guest images: build (Debian path: mmdebstrap + erofs), list, resolve.
//!
//! An image is a directory `$XDG_CACHE_HOME/ax/images/<id>/` holding the guest kernel
//! (`bzImage`), the initrd (agentd as `/init` plus kernel modules), `rootfs.erofs` and
//! `manifest.json`. See `docs/image.md`.
//!
//! Modules: [`build`] drives a build from the pins in [`lock`] through [`kernel`] (+
//! [`modules`] for the load order), [`initrd`] (written by [`cpio`]), [`rootfs`] and
//! [`manifest`] (ids from [`digest`]); [`store`] lists, resolves and installs; [`tools`] checks host programs.

use std::path::PathBuf;

// The error and path helpers every ax crate shares, under their usual names.
pub(crate) use ax_common::{error, paths};

pub mod agents;
pub mod agents_fetch;
pub mod agents_layer;
pub mod build;
pub mod cpio;
pub mod digest;
pub mod exec;
pub mod initrd;
pub mod kernel;
pub mod lock;
pub mod manifest;
pub mod modules;
pub mod progress;
pub mod rootfs;
pub mod store;
pub mod tools;
pub mod vmlinux;

/// A built image on disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Image {
    /// Content id (hex), also the directory name.
    pub id: String,
    /// The image directory.
    pub dir: PathBuf,
    /// The kernel as a bzImage.
    pub kernel: PathBuf,
    /// The same kernel as an uncompressed ELF with a PVH entry, when the build could extract
    /// it (`vmlinux`); VMMs boot it in preference (no in-guest decompression).
    pub vmlinux: Option<PathBuf>,
    /// The initrd (newc cpio).
    pub initrd: PathBuf,
    /// The root filesystem (erofs).
    pub rootfs: PathBuf,
    /// The agents layer (erofs, the guest's `/opt/ax`), when the image has one.
    pub agents: Option<PathBuf>,
    /// Kernel release string, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
    /// Seconds since the epoch at which the image was built or last rebuilt here (the
    /// directory's mtime; the bytes' own timestamp is SOURCE_DATE_EPOCH, in the manifest).
    pub created: u64,
    /// Total size of kernel, initrd and rootfs in bytes.
    pub size: u64,
}

/// Removes the images `ids` (each an id or unique prefix) in order, calling `removed` with
/// each id once it is gone, unless `in_use` (the ids live agents boot from) holds one; then
/// drops agents layers no image links to. Errors: an unknown or ambiguous id, or an image in
/// use (usage, exit 2; the images before it stay removed).
pub fn remove(
    ids: &[String],
    in_use: &[String],
    mut removed: impl FnMut(&str),
) -> anyhow::Result<()> {
    for id in ids {
        let img = resolve(Some(id))?.expect("resolve(Some) finds or errs");
        if in_use.contains(&img.id) {
            return Err(crate::error::usage(
                format!("image {} is in use by a running agent", img.id),
                "stop the agents that boot from it first (axctl ps shows them)",
            ));
        }
        store::remove_tree(&img.dir)?;
        removed(&img.id);
    }
    prune_layers();
    Ok(())
}

/// Removes every image except the newest (the default) and those in `in_use`, calling
/// `removed` with each id once it is gone, then drops unreferenced agents layers.
pub fn prune(in_use: &[String], mut removed: impl FnMut(&str)) -> anyhow::Result<()> {
    for img in list()?.into_iter().skip(1) {
        if !in_use.contains(&img.id) {
            store::remove_tree(&img.dir)?;
            removed(&img.id);
        }
    }
    prune_layers();
    Ok(())
}

/// Drops cached agents layers no image links to any more (after `rm` and `prune`).
fn prune_layers() {
    agents_layer::prune_unused(&crate::paths::images_dir().join(build::LAYERS_DIR), None);
}

/// All built images, newest first.
pub fn list() -> anyhow::Result<Vec<Image>> {
    store::list_in(&crate::paths::images_dir())
}

/// The image `axctl run` uses: `id` (a prefix is enough) or the newest. `Ok(None)` when no
/// image is built; an unknown or ambiguous prefix is a usage error (exit 2).
pub fn resolve(id: Option<&str>) -> anyhow::Result<Option<Image>> {
    store::resolve_in(list()?, id)
}

/// Builds the default image with the progress display on stderr.
pub fn build_default() -> anyhow::Result<Image> {
    let opts = build::Options {
        sources: std::env::var_os(build::SOURCES_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        ..Default::default()
    };
    build::build(&opts)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "3 minutes ago"-style age.
fn age(created: u64, now: u64) -> String {
    let s = now.saturating_sub(created);
    let (n, unit) = match s {
        0..=59 => return "just now".into(),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Human size, binary units.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The `image ls` table (header + one row per image, newest first).
pub fn table(images: &[Image], now: u64) -> String {
    let rows: Vec<[String; 4]> = images
        .iter()
        .map(|i| {
            [
                i.id.clone(),
                i.kernel_release.clone(),
                age(i.created, now),
                size(i.size),
            ]
        })
        .collect();
    let header = ["ID", "KERNEL", "CREATED", "SIZE"];
    let mut w = header.map(str::len);
    for r in &rows {
        for (k, c) in r.iter().enumerate() {
            w[k] = w[k].max(c.len());
        }
    }
    let line = |c: [&str; 4]| {
        format!(
            "{:<a$}  {:<b$}  {:<d$}  {}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            a = w[0],
            b = w[1],
            d = w[2]
        )
    };
    let mut s = line(header);
    for r in &rows {
        s.push_str(&line([&r[0], &r[1], &r[2], &r[3]]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, created: u64, size: u64) -> Image {
        Image {
            id: id.into(),
            dir: PathBuf::from("/x"),
            kernel: PathBuf::from("/x/bzImage"),
            vmlinux: None,
            initrd: PathBuf::from("/x/initrd"),
            rootfs: PathBuf::from("/x/rootfs.erofs"),
            agents: None,
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            created,
            size,
        }
    }

    #[test]
    fn ls_table_golden() {
        let now = 1_000_000;
        let t = table(
            &[
                img("0123456789ab", now - 120, 371_000_000),
                img("ba9876543210", now - 90_000, 900),
            ],
            now,
        );
        assert_eq!(
            t,
            "ID            KERNEL                CREATED        SIZE\n\
             0123456789ab  6.1.0-56-cloud-amd64  2 minutes ago  353.8 MiB\n\
             ba9876543210  6.1.0-56-cloud-amd64  1 day ago      900 B\n"
        );
        assert_eq!(table(&[], now), "ID  KERNEL  CREATED  SIZE\n");
    }
}
