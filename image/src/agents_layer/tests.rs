//! Tests of the agents layer: npm-style unpacking, staging (install steps, bin links), the
//! layer cache, and byte-for-byte reproducible erofs output.

use super::*;
use crate::agents::{self, NpmPackage, Runtime};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

/// One tar entry: path, mode, contents (`None` = directory, `Some(Err(target))` = symlink).
type Ent<'a> = (&'a str, u32, Option<Result<&'a [u8], &'a str>>);

fn tgz(entries: &[Ent]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (path, mode, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_mtime(499_162_500);
        match body {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Some(Ok(data)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            Some(Err(target)) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn unpack_follows_npm_rules() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("p.tgz");
    std::fs::write(
        &t,
        tgz(&[
            (
                "package/package.json",
                0o644,
                Some(Ok(br#"{"name":"p","bin":{"p":"./cli.js"}}"#)),
            ),
            ("package/cli.js", 0o600, Some(Ok(b"#!/usr/bin/env node\n"))),
            ("package/lib", 0o700, None),
            ("package/lib/native", 0o777, Some(Ok(b"\x7fELF"))),
            ("package/deep/er/file.txt", 0o640, Some(Ok(b"x"))),
            ("package/link", 0o777, Some(Err("/etc/passwd"))),
        ]),
    )
    .unwrap();
    let out = d.path().join("out/node_modules/p");
    unpack(&t, &out).unwrap();
    assert_eq!(
        std::fs::read(out.join("cli.js")).unwrap(),
        b"#!/usr/bin/env node\n"
    );
    // (mode | 0666) & ~022, plus x for package.json bins.
    assert_eq!(mode(&out.join("cli.js")), 0o755, "bin made executable");
    assert_eq!(mode(&out.join("package.json")), 0o644);
    assert_eq!(mode(&out.join("lib/native")), 0o755);
    assert_eq!(mode(&out.join("deep/er/file.txt")), 0o644);
    assert_eq!(mode(&out.join("lib")), 0o755);
    assert_eq!(mode(&out.join("deep/er")), 0o755);
    assert!(
        out.join("link").symlink_metadata().is_err(),
        "links are skipped"
    );
}

#[test]
fn unpack_rejects_paths_outside_the_package() {
    let d = tempfile::tempdir().unwrap();
    // tar::Builder refuses `..`, so write the name bytes directly.
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..16].copy_from_slice(b"package/../evil\0");
    h.set_mode(0o644);
    h.set_size(1);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(&[b'x'; 512]);
    raw.extend_from_slice(&[0; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let t = d.path().join("evil.tgz");
    std::fs::write(&t, gz.finish().unwrap()).unwrap();
    let e = unpack(&t, &d.path().join("out/p")).unwrap_err();
    assert!(format!("{e:#}").contains("unsafe path"), "{e:#}");
    assert!(!d.path().join("out/evil").exists());
}

/// A fake registry: tarballs on disk and the packages describing them.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn package(&self, name: &str, path: &str, entries: &[Ent]) -> (NpmPackage, PathBuf) {
        use base64::Engine;
        use sha2::Digest;
        let bytes = tgz(entries);
        let integrity = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&bytes))
        );
        let file = self
            .dir
            .path()
            .join(format!("{}.tgz", name.replace('/', "_")));
        std::fs::write(&file, bytes).unwrap();
        let pkg = NpmPackage {
            path: path.into(),
            name: name.into(),
            version: "1.0.0".into(),
            integrity,
        };
        (pkg, file)
    }
}

/// Two runtimes: `tool` (a wrapper whose placeholder gets the platform binary placed over
/// it) and `js` (a node script plus a dependency).
fn runtimes(fx: &Fixture) -> (Vec<Runtime>, BTreeMap<String, PathBuf>) {
    let mut files = BTreeMap::new();
    let mut pkg = |name: &str, path: &str, e: &[Ent]| {
        let (p, f) = fx.package(name, path, e);
        files.insert(p.integrity.clone(), f);
        p
    };
    let wrapper = pkg(
        "tool",
        "node_modules/tool",
        &[
            (
                "package/package.json",
                0o644,
                Some(Ok(br#"{"name":"tool","bin":{"tool":"bin/tool.exe"}}"#)),
            ),
            ("package/bin/tool.exe", 0o755, Some(Ok(b"echo placeholder"))),
        ],
    );
    let native = pkg(
        "tool-linux-x64",
        "node_modules/tool-linux-x64",
        &[("package/tool", 0o755, Some(Ok(b"\x7fELF native tool")))],
    );
    let js = pkg(
        "js",
        "node_modules/js",
        &[
            (
                "package/package.json",
                0o644,
                Some(Ok(br#"{"name":"js","bin":"main.js"}"#)),
            ),
            ("package/main.js", 0o644, Some(Ok(b"#!/usr/bin/env node\n"))),
        ],
    );
    let dep = pkg(
        "dep",
        "node_modules/dep",
        &[("package/index.js", 0o644, Some(Ok(b"module.exports=1")))],
    );
    let rt = |name: &str,
              node: bool,
              bins: &[(&str, &str)],
              place: Vec<Place>,
              packages: Vec<NpmPackage>| Runtime {
        name: name.into(),
        version: "1.0.0".into(),
        node,
        bins: bins
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        place,
        packages,
    };
    (
        vec![
            rt(
                "tool",
                false,
                &[("tool", "node_modules/tool/bin/tool.exe")],
                vec![Place {
                    from: "node_modules/tool-linux-x64/tool".into(),
                    to: "node_modules/tool/bin/tool.exe".into(),
                }],
                vec![wrapper, native],
            ),
            rt(
                "js",
                false,
                &[("js", "node_modules/js/main.js")],
                vec![],
                vec![js, dep],
            ),
        ],
        files,
    )
}

#[test]
fn stage_places_binaries_and_links_commands() {
    let fx = Fixture::new();
    let (rts, files) = runtimes(&fx);
    let refs: Vec<&Runtime> = rts.iter().collect();
    let root = fx.dir.path().join("tree");
    stage(&root, &refs, &|p| Ok(files[&p.integrity].clone())).unwrap();
    let exe = root.join("tool/node_modules/tool/bin/tool.exe");
    let native = root.join("tool/node_modules/tool-linux-x64/tool");
    assert_eq!(std::fs::read(&exe).unwrap(), b"\x7fELF native tool");
    assert_eq!(
        std::fs::metadata(&exe).unwrap().ino(),
        std::fs::metadata(&native).unwrap().ino(),
        "a hardlink, like the postinstall's"
    );
    assert_eq!(mode(&exe), 0o755);
    assert_eq!(
        std::fs::read_link(root.join("bin/tool")).unwrap(),
        Path::new("../tool/node_modules/tool/bin/tool.exe")
    );
    assert_eq!(
        std::fs::read(root.join("bin/tool")).unwrap(),
        b"\x7fELF native tool"
    );
    assert_eq!(
        std::fs::read(root.join("bin/js")).unwrap(),
        b"#!/usr/bin/env node\n"
    );
    assert_eq!(mode(&root.join("js/node_modules/js/main.js")), 0o755);
    assert!(root.join("js/node_modules/dep/index.js").is_file());

    // Two runtimes offering one command is an error.
    let mut dup = rts.clone();
    dup[1]
        .bins
        .insert("tool".into(), "node_modules/js/main.js".into());
    let refs: Vec<&Runtime> = dup.iter().collect();
    let e = stage(&fx.dir.path().join("tree2"), &refs, &|p| {
        Ok(files[&p.integrity].clone())
    })
    .unwrap_err();
    assert!(e.to_string().contains("provided by two runtimes"), "{e}");
}

fn lock_for(rts: Vec<Runtime>) -> agents::AgentsLock {
    agents::AgentsLock {
        schema: 1,
        erofs_uuid: "a7c0de00-0000-4000-8000-000000000002".into(),
        compression: "none".into(),
        runtimes: rts,
    }
}

#[test]
fn layer_is_reproducible_cached_and_keyed() {
    if super::super::tools::find("mkfs.erofs").is_none() {
        ax_common::testing::skip_missing(
            "layer_is_reproducible_cached_and_keyed",
            "mkfs.erofs not installed (apt-get install erofs-utils; scripts/deps does)",
        );
        return;
    }
    let fx = Fixture::new();
    let (rts, files) = runtimes(&fx);
    let lock = lock_for(rts);
    let refs: Vec<&Runtime> = lock.runtimes.iter().collect();
    // Seed two tarball caches as npm would have filled them; npm itself must not run.
    let mut layers = Vec::new();
    for i in 0..2 {
        let base = fx.dir.path().join(format!("b{i}"));
        let npm_cache = base.join("npm");
        std::fs::create_dir_all(&npm_cache).unwrap();
        for r in &lock.runtimes {
            // Reverse order the second time: creation order must not matter.
            let pkgs: Vec<&NpmPackage> = if i == 0 {
                r.packages.iter().collect()
            } else {
                r.packages.iter().rev().collect()
            };
            for p in pkgs {
                std::fs::copy(
                    &files[&p.integrity],
                    agents_fetch::cached_path(&npm_cache, p).unwrap(),
                )
                .unwrap();
            }
        }
        std::fs::create_dir_all(base.join("work")).unwrap();
        let job = LayerJob {
            lock: &lock,
            lock_text: "lock text",
            runtimes: &refs,
            epoch: 1_747_699_200,
            layers_dir: &base.join("layers"),
            npm_cache: &npm_cache,
            work: &base.join("work"),
            log: &base.join("log"),
            mkfs_version: "1.5-1",
        };
        let mut notes = Vec::new();
        let l = build_or_reuse(&job, &mut |n| notes.push(n.to_string())).unwrap();
        assert!(!l.reused && notes.is_empty(), "{notes:?}");
        assert!(!base.join("work/agents").exists(), "staging tree removed");
        let again = build_or_reuse(&job, &mut |_| {}).unwrap();
        assert!(again.reused);
        assert_eq!(again.output, l.output);
        let out = base.join("img");
        std::fs::create_dir_all(&out).unwrap();
        install_into(&l, &out).unwrap();
        assert_eq!(
            std::fs::metadata(out.join(FILE)).unwrap().ino(),
            std::fs::metadata(&l.path).unwrap().ino()
        );
        layers.push(l);
    }
    assert_eq!(layers[0].output, layers[1].output, "two builds, same bytes");
    assert_eq!(
        std::fs::read(&layers[0].path).unwrap(),
        std::fs::read(&layers[1].path).unwrap()
    );
    // The key covers the epoch, the lock bytes, the runtime set and the tool version.
    let k = layer_key("lock text", &refs, 1, "1.5-1");
    assert_ne!(k, layer_key("lock text", &refs, 2, "1.5-1"));
    assert_ne!(k, layer_key("lock text 2", &refs, 1, "1.5-1"));
    assert_ne!(k, layer_key("lock text", &refs[..1], 1, "1.5-1"));
    assert_ne!(k, layer_key("lock text", &refs, 1, "1.6-1"));
}

#[test]
fn prune_keeps_layers_images_link_to() {
    let d = tempfile::tempdir().unwrap();
    let keep = d.path().join("agents-a.erofs");
    let used = d.path().join("agents-b.erofs");
    let stale = d.path().join("agents-c.erofs");
    for p in [&keep, &used, &stale] {
        std::fs::write(p, b"x").unwrap();
        std::fs::write(p.with_extension("json"), b"{}").unwrap();
    }
    std::fs::hard_link(&used, d.path().join("image-agents.erofs")).unwrap();
    prune_unused(d.path(), Some(&keep));
    assert!(keep.exists() && used.exists());
    assert!(!stale.exists() && !stale.with_extension("json").exists());
    // Without a layer to keep (axctl image rm|prune), every unlinked one goes.
    prune_unused(d.path(), None);
    assert!(!keep.exists() && used.exists());
}
