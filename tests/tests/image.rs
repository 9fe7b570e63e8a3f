//! `axctl image ls|rm|prune` on a store of stand-in images (real manifests, empty payloads),
//! and the in-use check against a live agent.

use ax_tests::{ensure_image, Env};
use std::path::Path;
use std::process::Command;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A stand-in image `id` in `cache/ax/images/` with the real image's manifest.
fn fake(cache: &Path, manifest: &str, id: &str, mtime_secs: u64) {
    let d = cache.join("ax/images").join(id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("manifest.json"), manifest).unwrap();
    // Every payload the manifest names (agents.erofs too when the real image has a layer).
    for f in ["bzImage", "initrd", "rootfs.erofs", "agents.erofs"] {
        std::fs::write(d.join(f), b"").unwrap();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime_secs);
    std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
}

#[test]
fn ls_rm_prune_and_in_use() {
    ensure_image();
    // The manifest of the real test image.
    let env = Env::new();
    let o = env.run(&["image", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let real =
        std::fs::read_to_string(Path::new(v[0]["dir"].as_str().unwrap()).join("manifest.json"))
            .unwrap();

    let cache = tempfile::tempdir().unwrap();
    fake(cache.path(), &real, "aaaaaaaaaaaa", 1_000);
    fake(cache.path(), &real, "bbbbbbbbbbbb", 2_000);
    fake(cache.path(), &real, "cccccccccccc", 3_000);
    let ax = |args: &[&str]| {
        env.axctl()
            .env("XDG_CACHE_HOME", cache.path())
            .args(args)
            .output()
            .unwrap()
    };
    let ls = text(&ax(&["image", "ls"]).stdout);
    let ids: Vec<&str> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["cccccccccccc", "bbbbbbbbbbbb", "aaaaaaaaaaaa"],
        "newest first: {ls}"
    );

    // Unknown and ambiguous prefixes are usage errors.
    assert_eq!(ax(&["image", "rm", "zzz"]).status.code(), Some(2));
    let o = ax(&["image", "rm", "aaa"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "aaaaaaaaaaaa\n");

    // An image a live agent boots from is kept by rm and prune.
    let sup = Command::new("sh")
        .args(["-c", "sleep 60", "__supervise"])
        .spawn()
        .unwrap();
    let dir = env.agent_dir("user");
    std::fs::create_dir_all(&dir).unwrap();
    let state = serde_json::json!({
        "name": "user", "agent": "shell", "prompt": "p", "argv": ["sh"], "image_id": "bbbbbbbbbbbb",
        "vmm": "qemu", "accel": "tcg", "cpus": 1, "memory_mib": 512, "timeout_secs": null,
        "tty": true, "status": "running", "exit_code": null, "reason": null,
        "created_ms": 1, "finished_ms": null, "supervisor_pid": sup.id(), "vmm_pid": null
    });
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    let o = ax(&["image", "rm", "bbbbbbbbbbbb"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("in use"), "{}", text(&o.stderr));
    let mut sup = sup;
    // Prune keeps the newest (cccc…) and the one in use (bbbb…).
    assert_eq!(text(&ax(&["image", "prune"]).stdout), "");
    sup.kill().unwrap();
    sup.wait().unwrap();
    // With its supervisor gone the agent reads as failed, and the image is free.
    assert_eq!(env.inspect("user")["status"], "failed");
    assert_eq!(text(&ax(&["image", "prune"]).stdout), "bbbbbbbbbbbb\n");
    let ls = text(&ax(&["image", "ls"]).stdout);
    assert_eq!(ls.lines().count(), 2, "{ls}");
}
