//! The guest writes the upper layer while `axctl commit` reads it. A thread plays the guest:
//! it swaps, with `renameat2(RENAME_EXCHANGE)` in a loop, a regular file with a symlink to a
//! host secret file, and a directory with a symlink to a host directory holding a secret file,
//! while the branch is built again and again. The secret must never reach the host's object
//! store (so never the branch), whatever the timing. And a sparse file far above the size limit
//! is refused by name, without writing an object.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ax_branch::{build_branch_with, snapshot, BranchOptions, Identity};

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "T")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "T")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

fn exchange(a: &Path, b: &Path) -> bool {
    let a = CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings; renameat2 has no other memory effects.
    unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        ) == 0
    }
}

fn blob_id(content: &[u8]) -> gix::ObjectId {
    gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, content).unwrap()
}

/// All objects in the host's loose store whose content contains `needle` (checked by reading
/// every loose object through gix).
fn loose_objects_containing(repo: &Path, needle: &[u8]) -> Vec<gix::ObjectId> {
    let r = gix::open(repo).unwrap();
    let mut found = Vec::new();
    let mut buf = Vec::new();
    for id in r.objects.iter().unwrap() {
        let id = id.unwrap();
        use gix::objs::Find as _;
        if let Ok(Some(d)) = r.objects.try_find(&id, &mut buf) {
            if d.data.windows(needle.len()).any(|w| w == needle) {
                found.push(id);
            }
        }
    }
    found
}

#[test]
fn symlink_swaps_never_bring_host_files_into_the_branch() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "-qm", "base"]);
    let snap = snapshot(&repo, &t.path().join("objects")).unwrap();

    // The host's secrets, outside the upper layer.
    const SECRET: &[u8] = b"[secrets]\nANTHROPIC_API_KEY = \"sk-ant-TOPSECRET-race\"\n";
    let host_secrets = t.path().join("config-ax");
    std::fs::create_dir_all(&host_secrets).unwrap();
    std::fs::write(host_secrets.join("secrets.toml"), SECRET).unwrap();

    // The guest's files: `f` (a file) and `fl` (a symlink to the secret file); `d/secrets.toml`
    // (a directory with a harmless file) and `dl` (a symlink to the secret directory).
    let upper = t.path().join("upper");
    std::fs::create_dir_all(upper.join("d")).unwrap();
    std::fs::write(upper.join("f"), "harmless\n").unwrap();
    std::os::unix::fs::symlink(host_secrets.join("secrets.toml"), upper.join("fl")).unwrap();
    std::fs::write(upper.join("d/secrets.toml"), "harmless\n").unwrap();
    std::os::unix::fs::symlink(&host_secrets, upper.join("dl")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let guest = {
        let (stop, swaps, upper) = (stop.clone(), swaps.clone(), upper.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if exchange(&upper.join("f"), &upper.join("fl"))
                    && exchange(&upper.join("d"), &upper.join("dl"))
                {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let opts = BranchOptions {
        force: true,
        ..Default::default()
    };
    let rounds = 300;
    let (mut built, mut failed) = (0, 0);
    for _ in 0..rounds {
        // A build may fail when a name changes under it (that is fine); it must never read
        // through a symlink.
        match build_branch_with(
            &repo,
            &snap,
            &upper,
            None,
            "race",
            &Identity::agent("race"),
            &opts,
        ) {
            Ok(_) => built += 1,
            Err(_) => failed += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    guest.join().unwrap();
    eprintln!(
        "{built} builds, {failed} failed, {} swaps",
        swaps.load(Ordering::Relaxed)
    );
    assert!(built > rounds / 4, "most builds succeed ({built}/{rounds})");
    assert!(swaps.load(Ordering::Relaxed) > 100, "the guest raced");

    let host = gix::open(&repo).unwrap();
    assert!(
        !host.has_object(blob_id(SECRET)),
        "the host's secret file was read into the branch's object store"
    );
    let leaked = loose_objects_containing(&repo, b"TOPSECRET");
    assert!(leaked.is_empty(), "objects holding the secret: {leaked:?}");
}

#[test]
fn a_sparse_file_above_the_limit_is_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "-qm", "base"]);
    let snap = snapshot(&repo, &t.path().join("objects")).unwrap();
    let upper = t.path().join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    // 1 TiB apparent size, no blocks: the guest's `truncate -s 1T big`.
    let f = std::fs::File::create(upper.join("big")).unwrap();
    f.set_len(1 << 40).unwrap();
    drop(f);
    let before = loose_count(&repo);
    let t0 = std::time::Instant::now();
    let e = build_branch_with(
        &repo,
        &snap,
        &upper,
        None,
        "big",
        &Identity::agent("big"),
        &BranchOptions {
            max_file_bytes: Some(64 << 20),
            ..Default::default()
        },
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    eprintln!("{msg} ({:?})", t0.elapsed());
    assert!(msg.contains("big"), "names the file: {msg}");
    assert!(
        msg.contains("AX_BRANCH_MAX_FILE_BYTES"),
        "names the setting: {msg}"
    );
    assert!(t0.elapsed().as_secs() < 10, "refused before reading");
    assert_eq!(loose_count(&repo), before, "no object written");

    // Under the limit, a file is streamed in (bounded memory) and lands as a blob.
    std::fs::remove_file(upper.join("big")).unwrap();
    let f = std::fs::File::create(upper.join("mid")).unwrap();
    f.set_len(40 << 20).unwrap();
    drop(f);
    let r = build_branch_with(
        &repo,
        &snap,
        &upper,
        None,
        "mid",
        &Identity::agent("mid"),
        &BranchOptions {
            max_file_bytes: Some(64 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.files_changed, 1);
    let zeros = vec![0u8; 40 << 20];
    assert!(gix::open(&repo).unwrap().has_object(blob_id(&zeros)));
}

fn loose_count(repo: &Path) -> usize {
    let r = gix::open(repo).unwrap();
    r.objects.iter().unwrap().count()
}
