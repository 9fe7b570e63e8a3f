//! Guest images: build (Debian path: mmdebstrap + erofs), list, resolve.
//!
//! An image is a directory `$XDG_CACHE_HOME/ax/images/<id>/` holding the guest kernel
//! (`bzImage`), the initrd (agentd as `/init` plus kernel modules), `rootfs.erofs` and
//! `manifest.json`. See `docs/image.md`.
//!
//! Modules: [`build`] drives a build from the pins in [`lock`] through [`kernel`] (+
//! [`modules`] for the load order), [`initrd`] (written by [`cpio`]), [`rootfs`] and
//! [`manifest`]; [`store`] lists, resolves and installs; [`tools`] checks host programs.

use std::path::PathBuf;

pub mod agents;
pub mod agents_fetch;
pub mod agents_layer;
pub mod build;
pub mod cpio;
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

/// `axctl image …`
#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// Build the guest image (kernel, initrd with agentd, rootfs.erofs, manifest.json) into
    /// $XDG_CACHE_HOME/ax/images/<id>/ and print its id. Needs root (mmdebstrap).
    Build(BuildArgs),
    /// List built images, newest (the default) first.
    Ls {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove images by id (or unique prefix); refuses images a live agent boots from.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove every image except the newest (the default) and those live agents use.
    Prune,
}

/// Flags of `axctl image build`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BuildArgs {
    /// agentd binary to install as /init [default: the agentd beside axctl]
    #[arg(long, value_name = "PATH")]
    pub agentd: Option<PathBuf>,
    /// apt sources file handed to mmdebstrap (deb822 .sources or one-line .list)
    /// [default: /etc/apt/sources.list.d/debian.sources]
    #[arg(long, value_name = "FILE", env = "AX_APT_SOURCES")]
    pub sources: Option<PathBuf>,
    /// Lock file with the pins [default: the image/debian.lock.toml built into axctl]
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
    /// No progress display on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Keep the build directory (rootfs tree, build.log) for inspection.
    #[arg(long)]
    pub keep_work: bool,
    /// Build the image without the agents layer (agents.erofs: the agent CLIs on /opt/ax).
    #[arg(long, conflicts_with = "agents")]
    pub no_agents: bool,
    /// Only these runtimes in the agents layer, comma-separated, e.g. claude,codex (node is
    /// added when one needs it) [default: all in the agents lock]
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub agents: Option<Vec<String>>,
    /// Agents lock file [default: the image/agents.lock.toml built into axctl]
    #[arg(long, value_name = "FILE")]
    pub agents_lock: Option<PathBuf>,
}

impl From<&BuildArgs> for build::Options {
    fn from(a: &BuildArgs) -> Self {
        build::Options {
            agentd: a.agentd.clone(),
            sources: a.sources.clone(),
            lock: a.lock.clone(),
            quiet: a.quiet,
            keep_work: a.keep_work,
            agents: match (&a.agents, a.no_agents) {
                (_, true) => agents::Selection::None,
                (Some(names), false) => agents::Selection::Only(names.clone()),
                (None, false) => agents::Selection::All,
            },
            agents_lock: a.agents_lock.clone(),
            ..Default::default()
        }
    }
}

/// Runs an `axctl image` subcommand; returns the exit code.
pub fn run(cmd: ImageCmd) -> anyhow::Result<i32> {
    match cmd {
        ImageCmd::Build(args) => {
            let img = build::build(&(&args).into())?;
            println!("{}", img.id);
            Ok(0)
        }
        ImageCmd::Rm { ids } => {
            let in_use = images_in_use()?;
            for id in ids {
                let img = resolve(Some(&id))?.expect("resolve(Some) finds or errs");
                if in_use.contains(&img.id) {
                    return Err(crate::error::usage(
                        format!("image {} is in use by a running agent", img.id),
                        "stop the agents that boot from it first (axctl ps shows them)",
                    ));
                }
                store::remove_tree(&img.dir)?;
                println!("{}", img.id);
            }
            prune_layers();
            Ok(0)
        }
        ImageCmd::Prune => {
            let in_use = images_in_use()?;
            for img in list()?.into_iter().skip(1) {
                if !in_use.contains(&img.id) {
                    store::remove_tree(&img.dir)?;
                    println!("{}", img.id);
                }
            }
            prune_layers();
            Ok(0)
        }
        ImageCmd::Ls { json } => {
            let images = list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                print!("{}", table(&images, now_secs()));
            }
            Ok(0)
        }
    }
}

/// Drops cached agents layers no image links to any more (after `rm` and `prune`).
fn prune_layers() {
    agents_layer::prune_unused(&crate::paths::images_dir().join(build::LAYERS_DIR), None);
}

/// Ids of the images live (starting or running) agents boot from.
fn images_in_use() -> anyhow::Result<Vec<String>> {
    Ok(crate::state::list()?
        .into_iter()
        .filter(|(_, s)| s.status.is_live())
        .map(|(_, s)| s.image_id)
        .collect())
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

fn now_secs() -> u64 {
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

    #[test]
    fn build_flags_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            c: ImageCmd,
        }
        let t = T::try_parse_from([
            "t",
            "build",
            "--agentd",
            "/a",
            "--sources",
            "/s.sources",
            "-q",
        ])
        .unwrap();
        let ImageCmd::Build(b) = t.c else { panic!() };
        assert_eq!(b.agentd.as_deref(), Some(std::path::Path::new("/a")));
        assert!(b.quiet && !b.keep_work);
        assert_eq!(build::Options::from(&b).agents, agents::Selection::All);
        let t = T::try_parse_from(["t", "build", "--agents", "claude,codex"]).unwrap();
        let ImageCmd::Build(b) = t.c else { panic!() };
        assert_eq!(
            build::Options::from(&b).agents,
            agents::Selection::Only(vec!["claude".into(), "codex".into()])
        );
        let t = T::try_parse_from(["t", "build", "--no-agents"]).unwrap();
        let ImageCmd::Build(b) = t.c else { panic!() };
        assert_eq!(build::Options::from(&b).agents, agents::Selection::None);
        assert!(T::try_parse_from(["t", "build", "--no-agents", "--agents", "claude"]).is_err());
        let t = T::try_parse_from(["t", "ls", "--json"]).unwrap();
        assert!(matches!(t.c, ImageCmd::Ls { json: true }));
    }
}
