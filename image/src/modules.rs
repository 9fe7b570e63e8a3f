//! Kernel module selection and load order, from `depmod`'s `modules.dep`, `modules.softdep`
//! and the kernel package's `modules.builtin`.
//!
//! The guest has no `modprobe`: agentd loads the files listed in `/etc/ax/modules` one by one
//! with `finit_module(2)`, so that list must already be in dependency order (a module after
//! every module it uses symbols from, else "Unknown symbol register_virtio_driver").

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

/// The name the kernel gives a module file: basename without `.ko[.xz|.zst|.gz]`, `-` → `_`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Parsed `modules.dep` (+ optional `modules.softdep` and `modules.builtin`).
#[derive(Debug, Default)]
pub struct ModuleDb {
    /// Module path (relative to `/lib/modules/<release>/`) → its dependencies' paths.
    deps: HashMap<String, Vec<String>>,
    /// Module name → path.
    by_name: HashMap<String, String>,
    /// Module name → names that must be loaded first (`softdep X pre: …`).
    soft_pre: HashMap<String, Vec<String>>,
    /// Names of modules built into the kernel image.
    builtin: HashSet<String>,
}

/// Why a load order could not be computed.
#[derive(Debug, PartialEq, Eq)]
pub enum ModError {
    /// A requested module is neither a module file nor built in.
    Unknown(String),
    /// `modules.dep` names a dependency that has no line of its own.
    MissingDep { module: String, dep: String },
    /// A dependency cycle (modules.dep is broken).
    Cycle(String),
}

impl fmt::Display for ModError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModError::Unknown(m) => {
                write!(
                    f,
                    "kernel module {m} is neither in modules.dep nor in modules.builtin"
                )
            }
            ModError::MissingDep { module, dep } => {
                write!(
                    f,
                    "modules.dep: {module} depends on {dep}, which has no entry"
                )
            }
            ModError::Cycle(m) => write!(f, "modules.dep: dependency cycle through {m}"),
        }
    }
}

impl std::error::Error for ModError {}

/// The modules to put into the initrd, in load order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoadPlan {
    /// Paths relative to `/lib/modules/<release>/`, each after all of its dependencies.
    pub order: Vec<String>,
    /// Requested modules that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
}

impl ModuleDb {
    /// Parses the text of `modules.dep` (`path: dep dep …` per line).
    pub fn parse(modules_dep: &str) -> Self {
        let mut db = ModuleDb::default();
        for line in modules_dep.lines() {
            let Some((path, rest)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = rest.split_whitespace().map(str::to_owned).collect();
            db.by_name.insert(module_name(path), path.to_owned());
            db.deps.insert(path.to_owned(), deps);
        }
        db
    }

    /// Adds `modules.softdep` (`softdep NAME pre: a b post: c`); only `pre:` matters here.
    pub fn with_softdeps(mut self, modules_softdep: &str) -> Self {
        for line in modules_softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(name) = words.next() else { continue };
            let mut pre = Vec::new();
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    w if in_pre => pre.push(module_name(w)),
                    _ => {}
                }
            }
            if !pre.is_empty() {
                self.soft_pre
                    .entry(module_name(name))
                    .or_default()
                    .extend(pre);
            }
        }
        self
    }

    /// Adds `modules.builtin` (one path per line).
    pub fn with_builtin(mut self, modules_builtin: &str) -> Self {
        self.builtin.extend(
            modules_builtin
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(module_name),
        );
        self
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// The load order for `wanted` (module names) and their dependencies: a depth-first
    /// post-order walk, so every module comes after what it needs, and otherwise in the order
    /// asked for. Soft `pre:` dependencies are followed when they name a module file (names
    /// that are built in or are aliases are skipped: the kernel has them already).
    pub fn load_plan(&self, wanted: &[impl AsRef<str>]) -> Result<LoadPlan, ModError> {
        let mut plan = LoadPlan::default();
        let mut done = HashSet::new();
        let mut active = BTreeSet::new();
        for w in wanted {
            let name = module_name(w.as_ref());
            if let Some(path) = self.by_name.get(&name) {
                self.visit(path, &mut done, &mut active, &mut plan.order)?;
            } else if self.builtin.contains(&name) {
                plan.builtin.push(name);
            } else {
                return Err(ModError::Unknown(name));
            }
        }
        Ok(plan)
    }

    fn visit(
        &self,
        path: &str,
        done: &mut HashSet<String>,
        active: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), ModError> {
        if done.contains(path) {
            return Ok(());
        }
        if !active.insert(path.to_owned()) {
            return Err(ModError::Cycle(module_name(path)));
        }
        let name = module_name(path);
        if let Some(pre) = self.soft_pre.get(&name) {
            for p in pre {
                if let Some(pp) = self.by_name.get(p) {
                    self.visit(pp, done, active, out)?;
                }
            }
        }
        let deps = self.deps.get(path).map(Vec::as_slice).unwrap_or(&[]);
        // modules.dep lists the deepest dependencies last: walk from the end so the order
        // reads naturally (virtio_ring, virtio, …) — any order would be correct.
        for d in deps.iter().rev() {
            if !self.deps.contains_key(d) {
                return Err(ModError::MissingDep {
                    module: name.clone(),
                    dep: d.clone(),
                });
            }
            self.visit(d, done, active, out)?;
        }
        active.remove(path);
        done.insert(path.to_owned());
        out.push(path.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines from the 6.1.0-56-cloud-amd64 kernel's modules.dep (after `depmod -b`).
    const DEP: &str = "\
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/cuse.ko: kernel/fs/fuse/fuse.ko
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/fs/overlayfs/overlay.ko:
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    fn pos(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|p| module_name(p) == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(module_name("kernel/fs/erofs/erofs.ko.xz"), "erofs");
        assert_eq!(module_name("virtio-mmio"), "virtio_mmio");
    }

    #[test]
    fn order_respects_every_dependency() {
        let db = ModuleDb::parse(DEP);
        let wanted = [
            "virtio_mmio",
            "virtio_blk",
            "virtio_net",
            "vsock",
            "vmw_vsock_virtio_transport",
            "fuse",
            "virtiofs",
            "overlay",
            "erofs",
        ];
        let plan = db.load_plan(&wanted).unwrap();
        let names: Vec<String> = plan.order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "fuse",
                "virtiofs",
                "overlay",
                "libcrc32c",
                "erofs",
            ]
        );
        // Checked generically too: each module after all of its modules.dep entries.
        for p in &plan.order {
            for d in &db.deps[p] {
                assert!(pos(&plan.order, &module_name(d)) < pos(&plan.order, &module_name(p)));
            }
        }
        assert!(plan.builtin.is_empty());
        // Unrelated modules stay out.
        assert!(!names.contains(&"cuse".to_string()));
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let db = ModuleDb::parse(
            DEP.replace("kernel/fs/overlayfs/overlay.ko:\n", "")
                .as_str(),
        )
        .with_builtin("kernel/fs/overlayfs/overlay.ko\nkernel/fs/ext4/ext4.ko\n");
        let plan = db.load_plan(&["overlay", "fuse"]).unwrap();
        assert_eq!(plan.order, ["kernel/fs/fuse/fuse.ko"]);
        assert_eq!(plan.builtin, ["overlay"]);
    }

    #[test]
    fn softdep_pre_loads_first_when_it_is_a_module() {
        let db = ModuleDb::parse(DEP).with_softdeps(
            "# comment\nsoftdep erofs pre: crc32c_intel post: nothing\nsoftdep libcrc32c pre: crc32c\n",
        );
        let plan = db.load_plan(&["erofs"]).unwrap();
        let names: Vec<String> = plan.order.iter().map(|p| module_name(p)).collect();
        // crc32c (an alias / built-in algorithm) is not a module file: skipped.
        assert_eq!(names, ["crc32c_intel", "libcrc32c", "erofs"]);
    }

    #[test]
    fn unknown_missing_and_cycles_are_errors() {
        let db = ModuleDb::parse(DEP);
        assert_eq!(
            db.load_plan(&["nosuch"]),
            Err(ModError::Unknown("nosuch".into()))
        );
        let db = ModuleDb::parse("a.ko: b.ko\n");
        assert!(matches!(
            db.load_plan(&["a"]),
            Err(ModError::MissingDep { .. })
        ));
        let db = ModuleDb::parse("a.ko: b.ko\nb.ko: a.ko\n");
        assert!(matches!(db.load_plan(&["a"]), Err(ModError::Cycle(_))));
    }

    #[test]
    fn deterministic() {
        let db = ModuleDb::parse(DEP);
        let a = db.load_plan(&["virtio_net", "virtiofs"]).unwrap();
        let b = ModuleDb::parse(DEP)
            .load_plan(&["virtio_net", "virtiofs"])
            .unwrap();
        assert_eq!(a, b);
    }
}
