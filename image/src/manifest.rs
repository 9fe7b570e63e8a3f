//! `manifest.json`: every input of an image (with version and sha256) and its outputs.
//!
//! The file is part of the reproducible output: it holds no wall-clock time, host name or
//! path, only SOURCE_DATE_EPOCH and content hashes, and serialises in a fixed field order.
//! The image id is derived from the output hashes alone ([`image_id`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Current manifest format version.
pub const SCHEMA: u32 = 1;

/// The file names inside an image directory.
pub const KERNEL_FILE: &str = "bzImage";
/// The uncompressed kernel (ELF, PVH entry) extracted from the bzImage, when possible.
pub const VMLINUX_FILE: &str = "vmlinux";
/// Initrd file name.
pub const INITRD_FILE: &str = "initrd";
/// Root filesystem file name.
pub const ROOTFS_FILE: &str = "rootfs.erofs";
/// Manifest file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The agents layer's file name (optional; see [`super::agents_layer`]).
pub const AGENTS_FILE: &str = super::agents_layer::FILE;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Image id: see [`image_id`].
    pub id: String,
    /// SOURCE_DATE_EPOCH used for every timestamp in the image.
    pub source_date_epoch: u64,
    /// Debian suite.
    pub suite: String,
    /// The lock file.
    pub lock: LockInfo,
    /// Host tools that shaped the bytes (Debian package versions).
    pub tools: Vec<Package>,
    /// The kernel.
    pub kernel: KernelInfo,
    /// The initrd's inputs.
    pub initrd: InitrdInfo,
    /// The rootfs's inputs.
    pub rootfs: RootfsInfo,
    /// The agents layer's inputs, when the image has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<super::agents_layer::AgentsInfo>,
    /// Output files.
    pub outputs: Outputs,
}

/// Which lock file was used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// sha256 of the lock file's bytes.
    pub sha256: String,
}

/// A Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Architecture (`amd64`, `all`), empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arch: String,
    /// sha256 of the `.deb`, when the build saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deb_sha256: Option<String>,
}

/// The kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Package name.
    pub package: String,
    /// Package version.
    pub version: String,
    /// sha256 of the `.deb`.
    pub deb_sha256: String,
    /// `uname -r`.
    pub release: String,
    /// Output file name (`bzImage`).
    pub file: String,
}

/// A file with its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    /// Path (inside the initrd, or relative to `/lib/modules/<release>/` for modules).
    pub path: String,
    /// sha256 of the contents.
    pub sha256: String,
}

/// What went into the initrd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdInfo {
    /// sha256 of the agentd binary (installed as `/init`).
    pub agentd_sha256: String,
    /// Shared libraries and the ELF interpreter agentd needs.
    pub libraries: Vec<FileHash>,
    /// Kernel modules in load order (the content of `/etc/ax/modules`).
    pub modules: Vec<FileHash>,
    /// Requested modules that are built into the kernel.
    pub builtin_modules: Vec<String>,
}

/// What went into the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsInfo {
    /// mmdebstrap variant.
    pub variant: String,
    /// Packages asked for.
    pub requested: Vec<String>,
    /// Every installed package (`dpkg-query -W`), sorted by name.
    pub packages: Vec<Package>,
    /// mkfs.erofs compression.
    pub compression: String,
    /// Filesystem UUID.
    pub uuid: String,
}

pub use crate::digest::Output;

/// The image's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    /// `bzImage`.
    #[serde(rename = "bzImage")]
    pub kernel: Output,
    /// `initrd`.
    pub initrd: Output,
    /// `rootfs.erofs`.
    #[serde(rename = "rootfs.erofs")]
    pub rootfs: Output,
    /// `vmlinux`, derived from the bzImage (so not part of the image id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmlinux: Option<Output>,
    /// `agents.erofs`, when the image has an agents layer (part of the image id).
    #[serde(
        rename = "agents.erofs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub agents: Option<Output>,
}

impl Manifest {
    /// The JSON text written to `manifest.json` (pretty, trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }

    /// Reads `manifest.json`.
    pub fn read(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }
}

pub use crate::digest::{hex, sha256_bytes, sha256_file};

/// Length of an image id in hex digits.
pub const ID_LEN: usize = 12;

/// The image id: the first 12 hex digits of sha256 over `"<file> <sha256>\n"` for bzImage,
/// initrd, rootfs.erofs and (when present) agents.erofs, in that order. Same bytes → same id;
/// an image without agents layer keeps the id it had before layers existed.
pub fn image_id(outputs: &Outputs) -> String {
    let mut text = format!(
        "{KERNEL_FILE} {}\n{INITRD_FILE} {}\n{ROOTFS_FILE} {}\n",
        outputs.kernel.sha256, outputs.initrd.sha256, outputs.rootfs.sha256
    );
    if let Some(a) = &outputs.agents {
        text.push_str(&format!("{AGENTS_FILE} {}\n", a.sha256));
    }
    sha256_bytes(text.as_bytes())[..ID_LEN].to_owned()
}

/// Parses `dpkg-query -W -f='${Package}\t${Version}\t${Architecture}\n'` output and attaches
/// `.deb` hashes from `sha256sum`-style lines keyed by deb file name (`name_version_arch.deb`,
/// with `:` in the version written `%3a` as apt does).
pub fn packages_from_dpkg(dpkg_query: &str, deb_hashes: &[(String, String)]) -> Vec<Package> {
    let mut out: Vec<Package> = dpkg_query
        .lines()
        .filter_map(|l| {
            let mut it = l.split('\t');
            let (name, version, arch) = (it.next()?, it.next()?, it.next().unwrap_or(""));
            if name.is_empty() || version.is_empty() {
                return None;
            }
            let deb = format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"));
            let deb_sha256 = deb_hashes
                .iter()
                .find(|(f, _)| *f == deb)
                .map(|(_, h)| h.clone());
            Some(Package {
                name: name.into(),
                version: version.into(),
                arch: arch.into(),
                deb_sha256,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let o = |c: char, size| Output {
            sha256: c.to_string().repeat(64),
            size,
        };
        let outputs = Outputs {
            kernel: o('a', 1),
            initrd: o('b', 2),
            rootfs: o('c', 3),
            vmlinux: None,
            agents: None,
        };
        Manifest {
            schema: SCHEMA,
            id: image_id(&outputs),
            source_date_epoch: 1747699200,
            suite: "bookworm".into(),
            lock: LockInfo {
                sha256: "d".repeat(64),
            },
            tools: vec![Package {
                name: "mmdebstrap".into(),
                version: "1.3.5-1".into(),
                arch: String::new(),
                deb_sha256: None,
            }],
            kernel: KernelInfo {
                package: "linux-image-6.1.0-56-cloud-amd64".into(),
                version: "6.1.192-2".into(),
                deb_sha256: "e".repeat(64),
                release: "6.1.0-56-cloud-amd64".into(),
                file: KERNEL_FILE.into(),
            },
            initrd: InitrdInfo {
                agentd_sha256: "f".repeat(64),
                libraries: vec![],
                modules: vec![FileHash {
                    path: "kernel/drivers/virtio/virtio_ring.ko".into(),
                    sha256: "0".repeat(64),
                }],
                builtin_modules: vec![],
            },
            rootfs: RootfsInfo {
                variant: "minbase".into(),
                requested: vec!["git".into()],
                packages: vec![],
                compression: "none".into(),
                uuid: "a7c0de00-0000-4000-8000-000000000001".into(),
            },
            agents: None,
            outputs,
        }
    }

    #[test]
    fn id_depends_on_outputs_only() {
        let m = sample();
        assert_eq!(m.id.len(), ID_LEN);
        assert!(m.id.chars().all(|c| c.is_ascii_hexdigit()));
        let mut o2 = m.outputs.clone();
        o2.kernel.size = 999; // sizes are not part of the id
        assert_eq!(image_id(&o2), m.id);
        o2.rootfs.sha256 = "9".repeat(64);
        assert_ne!(image_id(&o2), m.id);
        // Pinned value: the id scheme is part of the on-disk format.
        let text = format!(
            "bzImage {}\ninitrd {}\nrootfs.erofs {}\n",
            "a".repeat(64),
            "b".repeat(64),
            "c".repeat(64)
        );
        assert_eq!(m.id, sha256_bytes(text.as_bytes())[..12]);
        // An agents layer is covered by the id.
        let mut o3 = m.outputs.clone();
        o3.agents = Some(Output {
            sha256: "e".repeat(64),
            size: 4,
        });
        let with = format!("{text}agents.erofs {}\n", "e".repeat(64));
        assert_eq!(image_id(&o3), sha256_bytes(with.as_bytes())[..12]);
        o3.agents.as_mut().unwrap().sha256 = "f".repeat(64);
        assert_ne!(image_id(&o3), sha256_bytes(with.as_bytes())[..12]);
    }

    #[test]
    fn json_round_trip_and_stable_text() {
        let m = sample();
        let j = m.to_json();
        assert_eq!(j, sample().to_json());
        assert!(j.contains("\"bzImage\": {"));
        assert!(j.contains("\"rootfs.erofs\": {"));
        assert!(j.ends_with("}\n"));
        let back: Manifest = serde_json::from_str(&j).unwrap();
        assert_eq!(back, m);
        assert!(!j.contains("agents"), "no agents layer, no agents keys");
        // Field order is the struct order.
        assert!(j.find("\"schema\"").unwrap() < j.find("\"outputs\"").unwrap());
    }

    #[test]
    fn dpkg_packages_with_deb_hashes() {
        let q = "zlib1g\t1:1.2.13.dfsg-1\tamd64\nbash\t5.2.15-2+b8\tamd64\ngit-man\t1:2.39.5-0+deb12u2\tall\n\n";
        let h = vec![
            ("bash_5.2.15-2+b8_amd64.deb".to_string(), "1".repeat(64)),
            (
                "zlib1g_1%3a1.2.13.dfsg-1_amd64.deb".to_string(),
                "2".repeat(64),
            ),
        ];
        let p = packages_from_dpkg(q, &h);
        assert_eq!(
            p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["bash", "git-man", "zlib1g"]
        );
        assert_eq!(p[0].deb_sha256.as_deref(), Some("1".repeat(64).as_str()));
        assert_eq!(p[1].deb_sha256, None);
        assert_eq!(p[2].deb_sha256.as_deref(), Some("2".repeat(64).as_str()));
        assert_eq!(p[2].version, "1:1.2.13.dfsg-1");
    }

    #[test]
    fn hashing() {
        assert_eq!(
            sha256_bytes(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let o = sha256_file(&p).unwrap();
        assert_eq!(o.size, 3);
        assert_eq!(
            o.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
