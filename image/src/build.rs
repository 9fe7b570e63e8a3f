//! `axctl image build`: checks, then kernel → initrd → rootfs → rootfs.erofs → manifest, in a
//! build directory beside the store that is renamed into place when complete.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::manifest::{self, LockInfo, Manifest, Outputs, Package};
use super::progress::Progress;
use super::{
    agents, agents_fetch, agents_layer, initrd, kernel, lock, rootfs, store, tools, Image,
};
use crate::{error, paths};

/// Default apt sources handed to mmdebstrap (the host's, deb822 format).
pub const DEFAULT_SOURCES: &[&str] = &[
    "/etc/apt/sources.list.d/debian.sources",
    "/etc/apt/sources.list",
];

/// Environment variable naming the apt sources file.
pub const SOURCES_ENV: &str = "AX_APT_SOURCES";

/// What a build needs beyond the lock file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// agentd binary (default: beside axctl).
    pub agentd: Option<PathBuf>,
    /// apt sources file (default: `$AX_APT_SOURCES`, then the host's).
    pub sources: Option<PathBuf>,
    /// Lock file (default: the embedded `image/debian.lock.toml`).
    pub lock: Option<PathBuf>,
    /// No progress display.
    pub quiet: bool,
    /// Keep the build directory (rootfs tree, logs) after success or failure.
    pub keep_work: bool,
    /// Store to build into (default: `$XDG_CACHE_HOME/ax/images`).
    pub images_dir: Option<PathBuf>,
    /// SOURCE_DATE_EPOCH (default: the environment's, then the lock file's).
    pub epoch: Option<u64>,
    /// Which agent runtimes go into the agents layer (default: all).
    pub agents: agents::Selection,
    /// Agents lock file (default: the embedded `image/agents.lock.toml`).
    pub agents_lock: Option<PathBuf>,
    /// npm tarball cache (default: `$XDG_CACHE_HOME/ax/npm`).
    pub npm_cache: Option<PathBuf>,
}

/// SOURCE_DATE_EPOCH from the environment, else the lock file's default.
pub fn source_date_epoch(env: Option<&str>, default: u64) -> anyhow::Result<u64> {
    match env.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            error::usage(
                format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"),
                "set it to a Unix time, e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct), or unset it",
            )
        }),
    }
}

/// The apt sources file: flag, then `$AX_APT_SOURCES`, then the host's.
pub fn sources_file(
    flag: Option<&Path>,
    env: Option<&str>,
    defaults: &[&str],
) -> anyhow::Result<PathBuf> {
    let chosen = flag
        .map(Path::to_path_buf)
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from));
    match chosen {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(error::usage(
            format!("apt sources file {} does not exist", p.display()),
            format!("pass an existing sources file (.sources deb822 or .list) to --sources or ${SOURCES_ENV}"),
        )),
        None => defaults.iter().map(PathBuf::from).find(|p| p.is_file()).ok_or_else(|| {
            error::usage(
                "no apt sources file found (looked for the host's /etc/apt/sources.list.d/debian.sources)",
                format!("pass one with --sources FILE or ${SOURCES_ENV}"),
            )
        }),
    }
}

/// The agentd binary: flag, else beside axctl.
pub fn agentd_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) => Err(error::usage(
            format!("agentd binary {} does not exist", p.display()),
            "pass the path of a built agentd to --agentd",
        )),
        None => paths::sibling_binary("agentd").ok_or_else(|| {
            error::usage(
                "agentd binary not found beside axctl",
                "run `cargo build -p agentd` (or install agentd beside axctl, or pass --agentd PATH)",
            )
        }),
    }
}

fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(error::usage(
        "image build needs root: mmdebstrap runs in --mode=root (chroot, device nodes, file owners)",
        "run it as root, e.g. `sudo -E axctl image build` (-E keeps XDG_CACHE_HOME, so the image lands in your cache)",
    ))
}

fn host_tool_versions() -> Vec<Package> {
    ["mmdebstrap", "erofs-utils", "kmod", "libc-bin"]
        .iter()
        .map(|p| {
            let version = std::process::Command::new(tools::path("dpkg-query"))
                .args(["-W", "-f=${Version}", p])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|| "unknown".into());
            Package {
                name: (*p).into(),
                version,
                arch: String::new(),
                deb_sha256: None,
            }
        })
        .collect()
}

/// Removes the build directory on drop unless told to keep it.
struct BuildDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if self.keep {
            if self.path.exists() {
                eprintln!("axctl: build directory kept: {}", self.path.display());
            }
        } else if let Err(e) = store::remove_tree(&self.path) {
            eprintln!("axctl: warning: {e:#}");
        }
    }
}

/// Builds an image into the store and returns it. Progress goes to stderr.
pub fn build(opts: &Options) -> anyhow::Result<Image> {
    // Everything that can be checked before minutes of work.
    tools::check(tools::BUILD_TOOLS)?;
    let loaded = lock::load(opts.lock.as_deref())?;
    let lock = &loaded.lock;
    let epoch = match opts.epoch {
        Some(e) => e,
        None => source_date_epoch(
            std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(),
            lock.source_date_epoch,
        )?,
    };
    let sources = sources_file(
        opts.sources.as_deref(),
        std::env::var(SOURCES_ENV).ok().as_deref(),
        DEFAULT_SOURCES,
    )?;
    let sources = std::fs::canonicalize(&sources).unwrap_or(sources);
    let agentd = agentd_binary(opts.agentd.as_deref())?;
    let agents_loaded = agents::load(opts.agents_lock.as_deref())?;
    let runtimes = agents_loaded.lock.select(&opts.agents)?;
    let npm_cache = opts
        .npm_cache
        .clone()
        .unwrap_or_else(|| paths::cache_dir().join("npm"));
    let all_cached = runtimes
        .iter()
        .flat_map(|r| &r.packages)
        .all(|p| agents_fetch::cached_path(&npm_cache, p).is_ok_and(|c| c.is_file()));
    if !all_cached {
        agents_fetch::find_npm()?;
    }
    require_root()?;

    let root = opts.images_dir.clone().unwrap_or_else(paths::images_dir);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    store::sweep_stale_builds(&root);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let bd = BuildDir {
        path: root.join(format!(
            "{}{}-{nanos:x}",
            store::BUILD_PREFIX,
            std::process::id()
        )),
        keep: opts.keep_work,
    };
    let out = bd.path.join("out");
    let work = bd.path.join("work");
    std::fs::create_dir_all(&out)?;
    std::fs::create_dir_all(&work)?;
    let log = bd.path.join("build.log");

    let mut p = Progress::new(if runtimes.is_empty() { 5 } else { 6 }, opts.quiet);
    let agents_job = AgentsJob {
        loaded: &agents_loaded,
        runtimes: &runtimes,
        layers_dir: root.join(LAYERS_DIR),
        npm_cache,
    };
    let r = steps(
        &mut p,
        lock,
        &loaded.text,
        &sources,
        &agentd,
        epoch,
        &out,
        &work,
        &log,
        &agents_job,
    );
    let manifest = match r {
        Ok(m) => m,
        Err(e) => {
            p.abandon();
            return Err(e);
        }
    };
    let image_dir = store::install(&out, &root, &manifest.id)?;
    p.finish(&format!("image {} built", manifest.id));
    store::open(&image_dir)
        .ok_or_else(|| anyhow::anyhow!("{} is incomplete after install", image_dir.display()))
}

/// Directory of cached agents layers inside the images directory (not an image: its name is
/// no id).
pub const LAYERS_DIR: &str = ".layers";

/// The agents part of a build.
struct AgentsJob<'a> {
    loaded: &'a agents::Loaded,
    runtimes: &'a [&'a agents::Runtime],
    layers_dir: PathBuf,
    npm_cache: PathBuf,
}

#[allow(clippy::too_many_arguments)]
fn steps(
    p: &mut Progress,
    lock: &lock::Lock,
    lock_text: &str,
    sources: &Path,
    agentd: &Path,
    epoch: u64,
    out: &Path,
    work: &Path,
    log: &Path,
    aj: &AgentsJob,
) -> anyhow::Result<Manifest> {
    p.step(&format!(
        "kernel (mmdebstrap extract {}={})",
        lock.kernel.package, lock.kernel.version
    ));
    let k = kernel::fetch(lock, sources, work, epoch, log)?;
    let kernel_out = out.join(manifest::KERNEL_FILE);
    std::fs::copy(&k.bzimage, &kernel_out).context("copying the kernel")?;
    let bz = std::fs::read(&kernel_out).context("reading the kernel")?;
    let has_vmlinux = match super::vmlinux::extract(&bz) {
        Ok(elf) => {
            std::fs::write(out.join(manifest::VMLINUX_FILE), elf).context("writing vmlinux")?;
            true
        }
        Err(e) => {
            p.note(&format!("no vmlinux (VMMs will boot the bzImage): {e:#}"));
            false
        }
    };

    p.step("initrd (agentd, libraries, kernel modules)");
    let plan = kernel::plan_modules(&k, &lock.kernel.modules)?;
    p.note(&format!(
        "{} modules; built in: {}",
        plan.order.len(),
        if plan.builtin.is_empty() {
            "none".into()
        } else {
            plan.builtin.join(", ")
        }
    ));
    let (archive, initrd_info) = initrd::build(agentd, &k, &plan)?;
    let mtime = u32::try_from(epoch).map_err(|_| {
        anyhow::anyhow!("SOURCE_DATE_EPOCH {epoch} does not fit cpio's 32-bit mtime")
    })?;
    std::fs::write(out.join(manifest::INITRD_FILE), archive.to_bytes(mtime))
        .context("writing the initrd")?;

    p.step(&format!(
        "rootfs (mmdebstrap {} {}, {} packages)",
        lock.suite,
        lock.rootfs.variant,
        lock.rootfs.packages.len()
    ));
    let (tree, packages) = rootfs::debootstrap(lock, sources, work, epoch, log)?;

    p.step("rootfs.erofs (mkfs.erofs)");
    let erofs = out.join(manifest::ROOTFS_FILE);
    rootfs::mkfs_erofs(lock, &tree, &erofs, epoch, log)?;

    let tools = host_tool_versions();
    let agents_out = if aj.runtimes.is_empty() {
        None
    } else {
        let names: Vec<String> = aj
            .runtimes
            .iter()
            .map(|r| format!("{} {}", r.name, r.version))
            .collect();
        p.step(&format!("agents layer ({})", names.join(", ")));
        let mkfs_version = tools
            .iter()
            .find(|t| t.name == "erofs-utils")
            .map_or("unknown", |t| t.version.as_str());
        let job = agents_layer::LayerJob {
            lock: &aj.loaded.lock,
            lock_text: &aj.loaded.text,
            runtimes: aj.runtimes,
            epoch,
            layers_dir: &aj.layers_dir,
            npm_cache: &aj.npm_cache,
            work,
            log,
            mkfs_version,
        };
        let layer = agents_layer::build_or_reuse(&job, &mut |n| p.note(n))?;
        if layer.reused {
            p.note(&format!("cached layer {}", layer.path.display()));
        }
        agents_layer::install_into(&layer, out)?;
        Some((
            agents_layer::info(&aj.loaded.lock, &aj.loaded.text, aj.runtimes),
            layer.output,
        ))
    };

    p.step("manifest");
    let hash =
        |f: &str| manifest::sha256_file(&out.join(f)).with_context(|| format!("hashing {f}"));
    let outputs = Outputs {
        kernel: hash(manifest::KERNEL_FILE)?,
        initrd: hash(manifest::INITRD_FILE)?,
        rootfs: hash(manifest::ROOTFS_FILE)?,
        vmlinux: if has_vmlinux {
            Some(hash(manifest::VMLINUX_FILE)?)
        } else {
            None
        },
        agents: agents_out.as_ref().map(|(_, o)| o.clone()),
    };
    let m = Manifest {
        schema: manifest::SCHEMA,
        id: manifest::image_id(&outputs),
        source_date_epoch: epoch,
        suite: lock.suite.clone(),
        lock: LockInfo {
            sha256: manifest::sha256_bytes(lock_text.as_bytes()),
        },
        tools,
        kernel: manifest::KernelInfo {
            package: lock.kernel.package.clone(),
            version: lock.kernel.version.clone(),
            deb_sha256: k.deb_sha256.clone(),
            release: k.release.clone(),
            file: manifest::KERNEL_FILE.into(),
        },
        initrd: initrd_info,
        rootfs: rootfs::info(lock, packages),
        agents: agents_out.map(|(i, _)| i),
        outputs,
    };
    std::fs::write(out.join(manifest::MANIFEST_FILE), m.to_json())
        .context("writing manifest.json")?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_from_env_or_lock() {
        assert_eq!(source_date_epoch(None, 5).unwrap(), 5);
        assert_eq!(source_date_epoch(Some(""), 5).unwrap(), 5);
        assert_eq!(
            source_date_epoch(Some("1700000000"), 5).unwrap(),
            1_700_000_000
        );
        let e = source_date_epoch(Some("yesterday"), 5).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
    }

    #[test]
    fn sources_resolution_order() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.sources");
        let b = d.path().join("b.list");
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "x").unwrap();
        let defaults = [b.to_str().unwrap()];
        assert_eq!(sources_file(Some(&a), Some("/nope"), &defaults).unwrap(), a);
        assert_eq!(
            sources_file(None, Some(a.to_str().unwrap()), &defaults).unwrap(),
            a
        );
        assert_eq!(sources_file(None, None, &defaults).unwrap(), b);
        let e = sources_file(None, Some("/nope/x.sources"), &defaults).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        let e = sources_file(None, None, &["/nope/1"]).unwrap_err();
        assert!(e.to_string().contains("--sources"), "{e}");
    }

    /// The real thing (minutes; needs root, the apt mirror and a built agentd): two builds with
    /// the same SOURCE_DATE_EPOCH into two stores give byte-identical files and the same id,
    /// and the image boots under QEMU TCG to the point where the kernel runs /init (agentd).
    ///
    /// `cargo build -p agentd && cargo test -p ax-image build::tests::real_build -- --ignored --nocapture`
    #[test]
    #[ignore = "slow (minutes): real mmdebstrap builds and a QEMU boot; needs root"]
    fn real_build_is_reproducible_and_boots() {
        // target/debug/deps/ax_image-… → target/debug/agentd
        let exe = std::env::current_exe().unwrap();
        let agentd = exe.parent().unwrap().parent().unwrap().join("agentd");
        assert!(
            agentd.is_file(),
            "run `cargo build -p agentd` first ({})",
            agentd.display()
        );
        let stores = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let mut images = Vec::new();
        for s in &stores {
            let t = std::time::Instant::now();
            let img = build(&Options {
                agentd: Some(agentd.clone()),
                images_dir: Some(s.path().to_path_buf()),
                epoch: Some(1_747_699_200),
                quiet: true,
                ..Default::default()
            })
            .unwrap();
            eprintln!(
                "built {} in {:.1}s: {} bytes",
                img.id,
                t.elapsed().as_secs_f64(),
                img.size
            );
            images.push(img);
        }
        assert_eq!(images[0].id, images[1].id);
        for f in [
            manifest::KERNEL_FILE,
            manifest::INITRD_FILE,
            manifest::ROOTFS_FILE,
            manifest::AGENTS_FILE,
            manifest::MANIFEST_FILE,
        ] {
            let a = manifest::sha256_file(&images[0].dir.join(f)).unwrap();
            let b = manifest::sha256_file(&images[1].dir.join(f)).unwrap();
            assert_eq!(a, b, "{f} differs between the two builds");
            eprintln!("{f}: {} bytes, identical", a.size);
        }
        let m = Manifest::read(&images[0].dir.join(manifest::MANIFEST_FILE)).unwrap();
        assert_eq!(m.id, images[0].id);
        assert!(m
            .rootfs
            .packages
            .iter()
            .any(|p| p.name == "git" && p.deb_sha256.is_some()));
        // The agents layer: every runtime of the lock, built twice (one layer cache per
        // store) into the same bytes, and covered by the id.
        let agents = m.agents.as_ref().expect("agents layer in the manifest");
        let lock = agents::parse(agents::EMBEDDED, "embedded").unwrap();
        assert_eq!(agents.runtimes.len(), lock.runtimes.len());
        assert!(m.outputs.agents.is_some());
        assert!(images[0].agents.is_some());

        let console = boot_console(&images[0], std::time::Duration::from_secs(180));
        assert!(
            console.contains("Run /init as init process"),
            "no /init on the console:\n{console}"
        );
        assert!(!console.contains("Kernel panic"), "{console}");
    }

    /// Boots `img` under `qemu-system-x86_64 -M microvm,accel=tcg` with the rootfs on
    /// virtio-blk; returns the console once agentd has spoken (or at the timeout).
    fn boot_console(img: &Image, timeout: std::time::Duration) -> String {
        use std::io::Read;
        let mut child = std::process::Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,accel=tcg",
                "-cpu",
                "max",
                "-m",
                "512",
                "-nographic",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-initrd")
            .arg(&img.initrd)
            // The same TSC hand-over as every TCG guest (driver::kernel_cmdline): without it
            // a busy host can stall the boot in PIT calibration.
            .args([
                "-append",
                &format!(
                    "console=ttyS0 panic=-1 tsc_early_khz={}",
                    ax_common::host::tsc_khz().unwrap_or(0)
                ),
            ])
            .arg("-drive")
            .arg(format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                img.rootfs.display()
            ))
            .args(["-device", "virtio-blk-device,drive=root"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64");
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + timeout;
        let mut console = Vec::new();
        let mut seen_init = None;
        while std::time::Instant::now() < deadline {
            match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(b) => console.extend(b),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
            let text = String::from_utf8_lossy(&console);
            if seen_init.is_none() && text.contains("Run /init as init process") {
                seen_init = Some(std::time::Instant::now());
            }
            // Give agentd a few seconds to report after /init starts.
            if seen_init.is_some_and(|t| t.elapsed() > std::time::Duration::from_secs(5)) {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = String::from_utf8_lossy(&console).into_owned();
        eprintln!(
            "{}",
            text.lines()
                .filter(|l| l.contains("/init") || l.contains("agentd"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        text
    }

    #[test]
    fn missing_agentd_says_how_to_build_it() {
        let e = agentd_binary(Some(Path::new("/nope/agentd"))).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
    }
}
