//! Guest images: build (Debian path: mmdebstrap + erofs), list, resolve.
//!
//! An image is a directory `$XDG_CACHE_HOME/ax/images/<id>/` holding the guest kernel, the
//! initrd (agentd as `/init` plus kernel modules), `rootfs.erofs` and `manifest.json`.
//! See `docs/image.md`.

use std::path::PathBuf;

/// A built image on disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Image {
    /// Content id (hex), also the directory name.
    pub id: String,
    pub dir: PathBuf,
    /// bzImage or vmlinux.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    /// Kernel release string, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
    /// Seconds since the epoch at which the image was built (directory mtime).
    pub created: u64,
}

/// `axctl image …`
#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// Build the guest image (kernel, initrd with agentd, rootfs.erofs, manifest.json).
    Build,
    /// List built images, newest (the default) first.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(_cmd: ImageCmd) -> anyhow::Result<i32> {
    anyhow::bail!("image: not implemented yet")
}

/// The image `axctl run` uses: `id` (a prefix is enough) or the newest. `Ok(None)` when no
/// image is built.
pub fn resolve(_id: Option<&str>) -> anyhow::Result<Option<Image>> {
    Ok(None)
}

/// Builds the default image with the progress display on stderr.
pub fn build_default() -> anyhow::Result<Image> {
    anyhow::bail!("image build: not implemented yet")
}
