//! Latency bench: the same vhost-user frontend (tests/common) drives ax-fsd with a directory
//! lower, ax-fsd with a git lower, and virtiofsd (if installed) over the same tree, and prints
//! the median round trip per FUSE op and the ratios to virtiofsd.
//!
//! ```text
//! cargo test -p ax-fsd --release --test bench -- --ignored --nocapture
//! AX_BENCH_VIRTIOFSD=/path/to/virtiofsd AX_BENCH_ITERS=2000 (optional)
//! AX_BENCH_FSD_ARGS="--poll-us 0" (optional: extra ax-fsd flags, space-separated)
//! ```

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ax_fsd::fuse::abi::{self, opcode, read_struct, ROOT_ID};
use common::{cname, Harness};
use vm_memory::ByteValued;

const OPS: [&str; 6] = [
    "GETATTR",
    "LOOKUP",
    "READ 4 KiB",
    "READ 1 MiB",
    "READDIR 1000",
    "CREATE+WRITE 4 KiB",
];

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@example.com")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The tree: f4k (4 KiB), f1m (1 MiB), many/ (1000 files), as a directory and a commit.
fn build(root: &Path) -> (PathBuf, String) {
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("many")).unwrap();
    std::fs::write(repo.join("f4k"), vec![1u8; 4096]).unwrap();
    let m: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(repo.join("f1m"), m).unwrap();
    for i in 0..1000 {
        std::fs::write(repo.join(format!("many/file-{i:04}.txt")), b"x\n").unwrap();
    }
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "bench"]);
    git(&repo, &["gc", "-q"]);
    let tree = git(&repo, &["rev-parse", "HEAD^{tree}"]);
    (repo, tree)
}

/// Extra ax-fsd flags from `AX_BENCH_FSD_ARGS`.
fn extra_args() -> Vec<OsString> {
    std::env::var("AX_BENCH_FSD_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(OsString::from)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(n: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..n.min(50) {
        f(i); // warm up
    }
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i);
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    median(v)
}

fn open(h: &mut Harness, ino: u64, flags: i32, dir: bool) -> u64 {
    let o = abi::OpenIn {
        flags: flags as u32,
        open_flags: 0,
    };
    let op = if dir { opcode::OPENDIR } else { opcode::OPEN };
    let b = h.call(op, ino, o.as_slice()).expect("open");
    read_struct::<abi::OpenOut>(&b).unwrap().0.fh
}

/// Median µs per op, in the order of [`OPS`].
fn run(mut h: Harness, iters: usize) -> Vec<f64> {
    h.init();
    let f4k = h.lookup(ROOT_ID, b"f4k").unwrap().nodeid;
    let f1m = h.lookup(ROOT_ID, b"f1m").unwrap().nodeid;
    let many = h.lookup(ROOT_ID, b"many").unwrap().nodeid;
    let mut out = Vec::new();
    out.push(time(iters, |_| {
        h.call(opcode::GETATTR, f4k, abi::GetattrIn::default().as_slice())
            .unwrap();
    }));
    out.push(time(iters, |_| {
        h.call(opcode::LOOKUP, many, &cname(b"file-0500.txt"))
            .unwrap();
    }));
    let fh = open(&mut h, f4k, libc::O_RDONLY, false);
    out.push(time(iters, |_| {
        assert_eq!(h.read(f4k, fh, 0, 4096).unwrap().len(), 4096);
    }));
    let fh = open(&mut h, f1m, libc::O_RDONLY, false);
    out.push(time(iters / 10, |_| {
        assert_eq!(h.read(f1m, fh, 0, 1 << 20).unwrap().len(), 1 << 20);
    }));
    out.push(time(iters / 20, |_| {
        let fh = open(&mut h, many, libc::O_RDONLY, true);
        let mut off = 0;
        let mut n = 0;
        loop {
            let r = abi::ReadIn {
                fh,
                offset: off,
                size: 64 << 10,
                ..Default::default()
            };
            let b = h.call(opcode::READDIR, many, r.as_slice()).unwrap();
            if b.is_empty() {
                break;
            }
            let mut rest = &b[..];
            while let Some((d, _)) = read_struct::<abi::Dirent>(rest) {
                off = d.off;
                n += 1;
                rest = &rest[abi::dirent_size(d.namelen as usize).min(rest.len())..];
            }
        }
        assert_eq!(n, 1002);
        let rel = abi::ReleaseIn {
            fh,
            ..Default::default()
        };
        h.call(opcode::RELEASEDIR, many, rel.as_slice()).unwrap();
    }));
    let data = vec![5u8; 4096];
    let mut k = 0;
    out.push(time(iters / 4, |_| {
        k += 1;
        let (e, fh) = h
            .create(ROOT_ID, format!("new-{k}").as_bytes(), 0o644)
            .unwrap();
        h.write(e.nodeid, fh, 0, &data).unwrap();
        h.release(e.nodeid, fh);
    }));
    drop(h);
    out
}

#[test]
#[ignore = "benchmark: cargo test -p ax-fsd --release --test bench -- --ignored --nocapture"]
fn fuse_latency_vs_virtiofsd() {
    let iters: usize = std::env::var("AX_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let work = tempfile::tempdir().unwrap();
    let (repo, tree) = build(work.path());
    let mut results: Vec<(String, Vec<f64>)> = Vec::new();

    // ax-fsd, directory lower (a copy of the work tree without .git).
    let w = work.path().join("dir");
    let lower = w.join("lower");
    std::fs::create_dir_all(w.join("upper")).unwrap();
    let st = Command::new("cp")
        .args(["-a"])
        .arg(&repo)
        .arg(&lower)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_dir_all(lower.join(".git")).unwrap();
    let mut args: Vec<OsString> = vec!["--lower".into(), lower.clone().into()];
    args.extend(extra_args());
    let h = Harness::spawn_lower(&w, &args, &w.join("upper"), None);
    results.push(("ax-fsd --lower".into(), run(h, iters)));

    // ax-fsd, git lower.
    let w = work.path().join("git");
    std::fs::create_dir_all(w.join("upper")).unwrap();
    let mut args: Vec<OsString> = vec![
        "--lower-git".into(),
        repo.join(".git").into(),
        "--tree".into(),
        tree.into(),
    ];
    args.extend(extra_args());
    let h = Harness::spawn_lower(&w, &args, &w.join("upper"), None);
    results.push(("ax-fsd --lower-git".into(), run(h, iters)));

    // virtiofsd over a copy of the same tree (it writes into the shared dir).
    let vfsd = std::env::var("AX_BENCH_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/virtiofsd")
        });
    if vfsd.exists() {
        let w = work.path().join("virtiofsd");
        let shared = w.join("shared");
        std::fs::create_dir_all(&w).unwrap();
        let st = Command::new("cp")
            .args(["-a"])
            .arg(&lower)
            .arg(&shared)
            .status()
            .unwrap();
        assert!(st.success());
        let socket = w.join("vfsd.sock");
        let mut cmd = Command::new(&vfsd);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--sandbox", "none", "--cache", "auto", "--tag", "workspace"]);
        let h = Harness::spawn_cmd(&w, cmd, socket);
        results.push(("virtiofsd --sandbox none".into(), run(h, iters)));
    } else {
        eprintln!("SKIP virtiofsd: {} not found", vfsd.display());
    }

    println!("\nmedian µs per round trip (same harness, {iters} iterations for GETATTR)");
    print!("| op |");
    for (n, _) in &results {
        print!(" {n} |");
    }
    let base = results.iter().position(|(n, _)| n.starts_with("virtiofsd"));
    if base.is_some() {
        print!(" ratio dir / git vs virtiofsd |");
    }
    println!();
    print!("| --- |");
    for _ in 0..results.len() + usize::from(base.is_some()) {
        print!(" ---: |");
    }
    println!();
    for (i, op) in OPS.iter().enumerate() {
        print!("| {op} |");
        for (_, r) in &results {
            print!(" {:.1} |", r[i]);
        }
        if let Some(b) = base {
            let v = results[b].1[i];
            print!(
                " {:.2}× / {:.2}× |",
                results[0].1[i] / v,
                results[1].1[i] / v
            );
        }
        println!();
    }
}
