//! Snapshot and branch extraction against real git repositories. The `git` CLI sets
//! repositories up and checks results; the work itself is done by `ax_branch` (gix).
//! Upper layers are built by hand in overlayfs's format (whiteouts are `mknod c 0 0`, which
//! needs CAP_MKNOD: those tests print SKIP without it). The identity tests drive the real `axctl`
//! (`commit` on agent state dirs as `run` leaves them; one `run --author` with a real guest).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ax_branch::{
    build_branch, build_branch_with, snapshot, BranchOptions, Identity, Snapshot, SNAPSHOT_MESSAGE,
};
use sha2::Digest;

/// Runs git with a hermetic environment (no user/system config, fixed identity and dates).
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir.parent().unwrap().join("home"))
        .env(
            "XDG_CONFIG_HOME",
            dir.parent().unwrap().join("home/.config"),
        )
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test User")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test User")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A whiteout: character device 0:0. `false` without CAP_MKNOD.
fn whiteout(p: &Path) -> bool {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path string; mknod has no other memory effects.
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) == 0 }
}

fn opaque(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        let n = CString::new(name).unwrap();
        // SAFETY: valid strings and a 1-byte value.
        if unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), b"y".as_ptr().cast(), 1, 0) } == 0 {
            return;
        }
    }
    panic!("cannot set an opaque xattr on {}", p.display());
}

fn can_mknod(tmp: &Path) -> bool {
    let p = tmp.join("mknod-probe");
    let ok = whiteout(&p);
    let _ = std::fs::remove_file(&p);
    if !ok {
        eprintln!("SKIP: no CAP_MKNOD, cannot build whiteouts");
    }
    ok
}

/// sha256 of every file, symlink and directory under `root` (path → digest of type, mode and
/// content), not following symlinks.
fn hash_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mut h = sha2::Sha256::new();
            h.update(m.permissions().mode().to_le_bytes());
            if m.file_type().is_symlink() {
                h.update(std::fs::read_link(&p).unwrap().as_os_str().as_bytes());
            } else if m.is_file() {
                h.update(std::fs::read(&p).unwrap());
            }
            out.insert(p.strip_prefix(root).unwrap().to_owned(), hex(&h.finalize()));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Asserts the host repository (work tree + .git) is unchanged, except that new loose objects
/// and `ax/` refs and reflogs may appear (`allow_new_objects`).
fn assert_host_unchanged(
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
    allow_new_objects: bool,
) {
    let ax =
        |p: &Path| p.starts_with(".git/refs/heads/ax") || p.starts_with(".git/logs/refs/heads/ax");
    for (p, h) in before {
        if ax(p) {
            continue;
        }
        assert_eq!(after.get(p), Some(h), "{} changed or vanished", p.display());
    }
    for p in after.keys() {
        if before.contains_key(p) || ax(p) || p == Path::new(".git/logs/refs/heads") {
            continue;
        }
        assert!(
            allow_new_objects && p.starts_with(".git/objects"),
            "{} appeared in the host repository",
            p.display()
        );
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
}

impl Fixture {
    /// A repository with two commits: files, a subdirectory tree, an exec script, a symlink,
    /// a .gitignore.
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        std::fs::create_dir_all(root.join("home/.config")).unwrap();
        let repo = root.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        write(&repo.join("README.md"), "# demo\nline 2\nline 3\n");
        write(&repo.join("src/main.rs"), "fn main() {}\n");
        write(&repo.join("src/lib.rs"), "pub fn f() {}\n");
        write(&repo.join("docs/guide.md"), "guide\n");
        write(&repo.join("docs/api/index.md"), "api\n");
        write(&repo.join("old/one.txt"), "one\n");
        write(&repo.join("old/two.txt"), "two\n");
        write(&repo.join("run.sh"), "#!/bin/sh\necho hi\n");
        chmod(&repo.join("run.sh"), 0o755);
        write(&repo.join("tool.sh"), "#!/bin/sh\n");
        std::os::unix::fs::symlink("README.md", repo.join("readme-link")).unwrap();
        write(&repo.join(".gitignore"), "*.log\n/target/\nnode_modules/\n");
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "first"]);
        write(&repo.join("src/lib.rs"), "pub fn f() {}\npub fn g() {}\n");
        git(&repo, &["commit", "-q", "-am", "second"]);
        Fixture {
            _tmp: tmp,
            root,
            repo,
        }
    }

    /// Dirty the working tree: modified, deleted, untracked, ignored, staged, symlink, exec.
    fn dirty(&self) {
        let r = &self.repo;
        write(&r.join("README.md"), "# demo\nline 2 changed\nline 3\n");
        std::fs::remove_file(r.join("docs/guide.md")).unwrap();
        write(&r.join("notes/todo.txt"), "todo\n");
        write(&r.join("debug.log"), "ignored\n");
        write(&r.join("target/out.bin"), "ignored dir\n");
        write(&r.join("staged.txt"), "staged\n");
        git(r, &["add", "staged.txt"]);
        std::os::unix::fs::symlink("src/main.rs", r.join("main-link")).unwrap();
        chmod(&r.join("tool.sh"), 0o755);
        chmod(&r.join("run.sh"), 0o644);
    }

    fn head(&self) -> String {
        git(&self.repo, &["rev-parse", "HEAD"])
    }

    /// `git add -A && git write-tree` in a scratch copy of the repository.
    fn git_add_all_tree(&self) -> String {
        let copy = self.root.join("scratch-copy");
        let _ = std::fs::remove_dir_all(&copy);
        let st = Command::new("cp")
            .args(["-a"])
            .arg(&self.repo)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success());
        git(&copy, &["add", "-A"]);
        let t = git(&copy, &["write-tree"]);
        std::fs::remove_dir_all(&copy).unwrap();
        t
    }

    fn snap(&self) -> Snapshot {
        snapshot(&self.repo, &self.root.join("snap-objects")).unwrap()
    }

    fn upper(&self) -> PathBuf {
        let u = self.root.join("upper");
        std::fs::create_dir_all(&u).unwrap();
        u
    }

    fn name_status(&self, from: &str, to: &str) -> Vec<String> {
        let s = git(
            &self.repo,
            &["diff", "--no-renames", "--name-status", from, to],
        );
        s.lines().map(|l| l.replace('\t', " ")).collect()
    }
}

fn id() -> Identity {
    Identity {
        time: Some(1_767_225_600),
        ..Identity::agent("t1")
    }
}

#[test]
fn snapshot_equals_git_add_all_and_writes_nothing() {
    let f = Fixture::new();
    f.dirty();
    let base = f.head();
    let expected = f.git_add_all_tree();
    let before = hash_tree(&f.repo);
    let snap = f.snap();
    let after = hash_tree(&f.repo);
    assert_host_unchanged(&before, &after, false);

    assert_eq!(snap.base_commit.unwrap().to_string(), base);
    assert_eq!(
        snap.tree.to_string(),
        expected,
        "snapshot tree == git add -A && git write-tree"
    );
    // Only the changed/untracked files were hashed: README, notes/todo.txt, main-link,
    // tool.sh, run.sh (staged.txt comes from the index).
    assert_eq!(snap.hashed_files, 5, "{snap:?}");
    let commit = snap.snapshot_commit.expect("dirty tree → snapshot commit");
    assert_eq!(snap.start_commit(), Some(commit));

    // The private objects are readable with the host as alternate, and not in the host.
    let env_objs = snap.objects_dir.to_str().unwrap().to_string();
    let out = Command::new("git")
        .args(["cat-file", "-p", &commit.to_string()])
        .current_dir(&f.repo)
        .env("GIT_ALTERNATE_OBJECT_DIRECTORIES", &env_objs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("tree {expected}")), "{text}");
    assert!(text.contains(&format!("parent {base}")), "{text}");
    assert!(text.ends_with(SNAPSHOT_MESSAGE), "{text}");
    let st = Command::new("git")
        .args(["cat-file", "-e", &commit.to_string()])
        .current_dir(&f.repo)
        .status()
        .unwrap();
    assert!(
        !st.success(),
        "the snapshot commit must not be in the host's object store"
    );

    // Round trip through JSON (the supervisor keeps it in the state dir).
    let json = serde_json::to_string(&snap).unwrap();
    assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), snap);
}

#[test]
fn clean_and_unborn_repositories() {
    let f = Fixture::new();
    let snap = f.snap();
    assert_eq!(snap.snapshot_commit, None);
    assert_eq!(
        snap.tree.to_string(),
        git(&f.repo, &["rev-parse", "HEAD^{tree}"])
    );
    assert_eq!(snap.hashed_files, 0);

    // No changes at all → the branch is the base commit.
    let upper = f.upper();
    let r = build_branch(&f.repo, &snap, &upper, None, "idle", &id()).unwrap();
    assert_eq!(r.commit.to_string(), f.head());
    assert!(!r.uncommitted_commit);
    assert_eq!((r.files_changed, r.insertions, r.deletions), (0, 0, 0));
    assert_eq!(git(&f.repo, &["rev-parse", "ax/idle"]), f.head());

    // Unborn repository with an untracked file.
    let u = f.root.join("unborn");
    std::fs::create_dir_all(&u).unwrap();
    git(&u, &["init", "-q", "-b", "main"]);
    write(&u.join("a.txt"), "a\n");
    let s = snapshot(&u, &f.root.join("unborn-objs")).unwrap();
    assert_eq!(s.base_commit, None);
    assert!(s.snapshot_commit.is_some());
    let up = f.root.join("unborn-upper");
    std::fs::create_dir_all(&up).unwrap();
    write(&up.join("b.txt"), "b\n");
    let r = build_branch(&u, &s, &up, None, "first", &id()).unwrap();
    assert_eq!(
        git(&u, &["ls-tree", "--name-only", "ax/first"]),
        "a.txt\nb.txt"
    );
    assert_eq!(git(&u, &["rev-list", "--count", "ax/first"]), "2");
    assert_eq!(r.files_changed, 2);
}

#[test]
fn upper_layer_becomes_one_commit() {
    let f = Fixture::new();
    if !can_mknod(&f.root) {
        return;
    }
    let base = f.head();
    let snap = f.snap();
    let up = f.upper();
    // create
    write(&up.join("src/new.rs"), "// new\n");
    // edit (copy-up)
    write(&up.join("README.md"), "# demo\nline 2\nline 3\nline 4\n");
    // delete via whiteout
    assert!(whiteout(&up.join("src/main.rs")));
    // rename directory old/ → renamed/: whiteout at old, new dir marked opaque
    assert!(whiteout(&up.join("old")));
    write(&up.join("renamed/one.txt"), "one\n");
    write(&up.join("renamed/two.txt"), "two\n");
    opaque(&up.join("renamed"));
    // docs/ replaced by an opaque dir holding one file: guide.md and api/ are gone
    write(&up.join("docs/new-guide.md"), "new guide\n");
    opaque(&up.join("docs"));
    // chmod +x (metadata copy-up: same content, new mode)
    write(&up.join("tool.sh"), "#!/bin/sh\n");
    chmod(&up.join("tool.sh"), 0o755);
    // symlink
    std::os::unix::fs::symlink("src/lib.rs", up.join("lib-link")).unwrap();
    // ignored files, by the lower's .gitignore and by a new .gitignore in upper
    write(&up.join("build.log"), "ignored\n");
    write(&up.join("target/debug/x"), "ignored\n");
    write(&up.join("node_modules/pkg/index.js"), "ignored\n");
    write(&up.join("gen/.gitignore"), "*.tmp\n");
    write(&up.join("gen/keep.txt"), "keep\n");
    write(&up.join("gen/drop.tmp"), "ignored\n");
    // ax's own file and the agent's .git never go in
    write(&up.join(".env"), "AX_TOKEN=placeholder\n");
    write(&up.join(".git/HEAD"), "ref: refs/heads/main\n");

    let before = hash_tree(&f.repo);
    let opts = BranchOptions {
        ax_files: vec![".env".into()],
        ..Default::default()
    };
    let r = build_branch_with(&f.repo, &snap, &up, None, "t1", &id(), &opts).unwrap();
    let after = hash_tree(&f.repo);
    assert_host_unchanged(&before, &after, true);
    assert_eq!(git(&f.repo, &["rev-parse", "HEAD"]), base, "HEAD untouched");
    assert_eq!(git(&f.repo, &["symbolic-ref", "HEAD"]), "refs/heads/main");

    let mut got = f.name_status(&base, "ax/t1");
    got.sort();
    let mut want: Vec<String> = [
        "M README.md",
        "A docs/new-guide.md",
        "D docs/api/index.md",
        "D docs/guide.md",
        "A gen/.gitignore",
        "A gen/keep.txt",
        "A lib-link",
        "D old/one.txt",
        "D old/two.txt",
        "A renamed/one.txt",
        "A renamed/two.txt",
        "A src/new.rs",
        "D src/main.rs",
        "M tool.sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        git(&f.repo, &["ls-tree", "ax/t1", "tool.sh", "lib-link"]),
        format!(
            "120000 blob {}\tlib-link\n100755 blob {}\ttool.sh",
            blob_of(&f.repo, "src/lib.rs"),
            git(&f.repo, &["rev-parse", "HEAD:tool.sh"]),
        )
    );

    // The numbers match `git diff --shortstat base ax/t1`.
    let shortstat = git(
        &f.repo,
        &["diff", "--no-renames", "--shortstat", &base, "ax/t1"],
    );
    assert_eq!(
        shortstat,
        format!(
            " {} files changed, {} insertions(+), {} deletions(-)",
            r.files_changed, r.insertions, r.deletions
        )
    );
    // One commit on top of the base (the host was clean), by the agent identity.
    assert_eq!(git(&f.repo, &["rev-parse", "ax/t1~1"]), base);
    assert_eq!(
        git(&f.repo, &["log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", "ax/t1"]),
        "ax agent t1 <t1@ax.invalid>|ax agent t1 <t1@ax.invalid>|ax: uncommitted changes of agent t1"
    );
    git(&f.repo, &["fsck", "--no-dangling", "--no-progress"]);
}

/// The agent's own `.git/info/exclude` (in the upper layer) keeps paths out of the branch, as
/// git in the guest would: agentd puts the synthesized `.env` there (agentd/src/dotenv.rs).
#[test]
fn agents_info_exclude_keeps_paths_out_of_the_branch() {
    let f = Fixture::new();
    let base = f.head();
    let snap = f.snap();
    let up = f.upper();
    write(
        &up.join(".env"),
        "ANTHROPIC_API_KEY=sk-ant-api03-axphPLACEHOLDER\n",
    );
    write(&up.join("notes/scratch.txt"), "scratch\n");
    write(&up.join("src/new.rs"), "// new\n");
    write(
        &up.join(".git/info/exclude"),
        "# ax: the synthesized .env (placeholders only)\n/.env\nscratch.txt\n",
    );
    build_branch(&f.repo, &snap, &up, None, "ex", &id()).unwrap();
    assert_eq!(
        f.name_status(&base, "ax/ex"),
        vec!["A src/new.rs".to_string()]
    );
    // Without the agent's exclude file both would be committed.
    std::fs::remove_file(up.join(".git/info/exclude")).unwrap();
    build_branch_with(
        &f.repo,
        &snap,
        &up,
        None,
        "ex2",
        &id(),
        &BranchOptions::default(),
    )
    .unwrap();
    let mut got = f.name_status(&base, "ax/ex2");
    got.sort();
    assert_eq!(got, vec!["A .env", "A notes/scratch.txt", "A src/new.rs"]);
}

/// The blob id git gives `s` (a symlink's target is stored as its content).
fn blob_of(repo: &Path, s: &str) -> String {
    let out = Command::new("git")
        .args(["hash-object", "--stdin"])
        .current_dir(repo)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn dirty_host_guest_commits_and_forward_moves() {
    let f = Fixture::new();
    f.dirty();
    let base = f.head();
    let snap = f.snap();
    let start = snap.snapshot_commit.unwrap().to_string();

    // The agent's .git: a clone borrowing the host's and the snapshot's objects through
    // alternates, HEAD at the snapshot commit (what the supervisor will set up).
    let guest = f.root.join("guest");
    git(
        &f.root,
        &[
            "clone",
            "-q",
            "--shared",
            "--no-checkout",
            f.repo.to_str().unwrap(),
            "guest",
        ],
    );
    let alt = guest.join(".git/objects/info/alternates");
    let mut a = std::fs::read_to_string(&alt).unwrap();
    a.push_str(&format!("{}\n", snap.objects_dir.display()));
    std::fs::write(&alt, a).unwrap();
    git(&guest, &["update-ref", "refs/heads/main", &start]);
    git(&guest, &["reset", "-q", "--hard", "main"]);
    // First guest commit, then packed (exercise the pack reader), then a loose second one.
    write(
        &guest.join("src/lib.rs"),
        "pub fn f() {}\npub fn g() {}\npub fn h() {}\n",
    );
    git(&guest, &["commit", "-q", "-am", "guest: add h"]);
    git(&guest, &["repack", "-q", "-d", "-l"]);
    write(&guest.join("feature.txt"), "feature\n");
    git(&guest, &["add", "feature.txt"]);
    git(&guest, &["commit", "-q", "-m", "guest: feature"]);
    let guest_head = git(&guest, &["rev-parse", "HEAD"]);

    // The upper layer holds what the agent changed + its .git.
    let up = f.upper();
    write(
        &up.join("src/lib.rs"),
        "pub fn f() {}\npub fn g() {}\npub fn h() {}\n",
    );
    write(&up.join("feature.txt"), "feature\n");
    write(&up.join("wip.txt"), "not committed yet\n");
    let st = Command::new("cp")
        .arg("-a")
        .arg(guest.join(".git"))
        .arg(up.join(".git"))
        .status()
        .unwrap();
    assert!(st.success());

    let before = hash_tree(&f.repo);
    let r = build_branch(&f.repo, &snap, &up, Some(&up.join(".git")), "t2", &id()).unwrap();
    assert_host_unchanged(&before, &hash_tree(&f.repo), true);
    assert_eq!(r.imported_commits, 2);
    assert!(r.uncommitted_commit);
    // History: base → snapshot → guest commits → uncommitted changes.
    let log = git(&f.repo, &["log", "--format=%s", "ax/t2"]);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "ax: uncommitted changes of agent t2",
            "guest: feature",
            "guest: add h",
            "ax: working tree at run start",
            "second",
            "first"
        ]
    );
    assert_eq!(git(&f.repo, &["rev-parse", "ax/t2~1"]), guest_head);
    assert_eq!(git(&f.repo, &["rev-parse", "ax/t2~3"]), start);
    assert_eq!(git(&f.repo, &["rev-parse", "ax/t2~4"]), base);
    assert_eq!(f.name_status("ax/t2~1", "ax/t2"), ["A wip.txt"]);
    git(&f.repo, &["fsck", "--no-dangling", "--no-progress"]);
    // The host's dirty work tree is still dirty exactly as before.
    assert_eq!(f.git_add_all_tree(), snap.tree.to_string());

    // More uncommitted work → the branch moves forward on top of its own commit.
    let first = r.commit.to_string();
    write(&up.join("wip.txt"), "not committed yet\nmore\n");
    let r2 = build_branch(&f.repo, &snap, &up, Some(&up.join(".git")), "t2", &id()).unwrap();
    assert!(r2.updated);
    assert_eq!(git(&f.repo, &["rev-parse", "ax/t2~1"]), first);
    git(&f.repo, &["merge-base", "--is-ancestor", &first, "ax/t2"]);
    // Nothing new → unchanged.
    let r3 = build_branch(&f.repo, &snap, &up, Some(&up.join(".git")), "t2", &id()).unwrap();
    assert!(!r3.updated);
    assert_eq!(r3.commit, r2.commit);

    // Someone moves the branch elsewhere → refused (compare-and-swap protects it) unless forced.
    git(&f.repo, &["update-ref", "refs/heads/ax/t2", &base]);
    git(
        &f.repo,
        &[
            "commit-tree",
            "-p",
            &base,
            "-m",
            "user work",
            &format!("{base}^{{tree}}"),
        ],
    );
    let user = git(
        &f.repo,
        &[
            "commit-tree",
            "-p",
            &base,
            "-m",
            "user work 2",
            &format!("{base}^{{tree}}"),
        ],
    );
    git(&f.repo, &["update-ref", "refs/heads/ax/t2", &user]);
    let err = build_branch(&f.repo, &snap, &up, Some(&up.join(".git")), "t2", &id()).unwrap_err();
    assert!(format!("{err:#}").contains("moved outside ax"), "{err:#}");
    assert_eq!(git(&f.repo, &["rev-parse", "ax/t2"]), user);
    let opts = BranchOptions {
        force: true,
        ..Default::default()
    };
    build_branch_with(
        &f.repo,
        &snap,
        &up,
        Some(&up.join(".git")),
        "t2",
        &id(),
        &opts,
    )
    .unwrap();
    assert_eq!(git(&f.repo, &["rev-parse", "ax/t2~1"]), guest_head);
}

#[test]
fn bad_names_are_refused() {
    let f = Fixture::new();
    let snap = f.snap();
    let up = f.upper();
    for bad in ["", "a/b", "..", "x..y", "a b", "x.lock"] {
        assert!(
            build_branch(&f.repo, &snap, &up, None, bad, &id()).is_err(),
            "{bad:?} accepted"
        );
    }
}

/// Writes an agent's state dir as `axctl run` leaves it for a repository run: `state.json`
/// (exited), `snapshot.json` + `objects/` (the snapshot), `upper/` with one new file.
fn crafted_agent(env: &ax_tests::Env, f: &Fixture, name: &str, identity: Option<Identity>) {
    use ax_supervisor::state::{AgentState, Status, Timings};
    let dir = env.agent_dir(name);
    std::fs::create_dir_all(dir.join("upper")).unwrap();
    let snap = snapshot(&f.repo, &dir.join("objects")).unwrap();
    std::fs::write(
        dir.join("snapshot.json"),
        serde_json::to_vec_pretty(&snap).unwrap(),
    )
    .unwrap();
    write(&dir.join("upper/notes.txt"), &format!("from {name}\n"));
    let st = AgentState {
        name: name.into(),
        agent: "shell".into(),
        prompt: "p".into(),
        argv: vec![],
        image_id: "i".into(),
        vmm: "qemu".into(),
        kernel_cmdline: None,
        accel: "tcg".into(),
        cpus: 1,
        memory_mib: 512,
        disk_quota_mib: None,
        timeout_secs: None,
        tty: false,
        repo: Some(f.repo.clone()),
        branch: None,
        identity,
        status: Status::Exited,
        exit_code: Some(0),
        reason: None,
        created_ms: 0,
        finished_ms: Some(1),
        supervisor_pid: None,
        vmm_pid: None,
        timings: Timings::default(),
    };
    std::fs::write(dir.join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();
}

/// `%an <%ae>|%cn <%ce>` of the tip of `ax/<name>`.
fn who(f: &Fixture, name: &str) -> String {
    git(
        &f.repo,
        &[
            "log",
            "-1",
            "--format=%an <%ae>|%cn <%ce>",
            &format!("ax/{name}"),
        ],
    )
}

#[test]
fn configured_identity_and_recorded_author_land_on_the_branch() {
    // The real axctl (`axctl commit`) on agent state dirs as `run` leaves them; no VM needed.
    let env = ax_tests::Env::new();
    let f = Fixture::new();
    let cfg = env.state.path().join("config/ax/config.toml");
    write(
        &cfg,
        "# ax config\n[branch]\nauthor_name = \"Robot {name}\"\nauthor_email = \"{name}@bots.example\"\n\
         committer_name = \"CI\"\ncommitter_email = \"ci@example.com\"\n",
    );
    // No identity recorded (an agent from before it was): the config's, templated.
    crafted_agent(&env, &f, "cfg", None);
    // Recorded at run (`--author`, or the config of that moment): used as is.
    let ada = Identity {
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
        committer: None,
        time: None,
    };
    crafted_agent(&env, &f, "pinned", Some(ada));
    for name in ["cfg", "pinned"] {
        let o = env.run(&["commit", name]);
        assert!(
            o.status.success(),
            "commit {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).starts_with(&format!("ax/{name} ")));
        assert_eq!(
            git(&f.repo, &["show", &format!("ax/{name}:notes.txt")]),
            format!("from {name}")
        );
    }
    assert_eq!(
        who(&f, "cfg"),
        "Robot cfg <cfg@bots.example>|CI <ci@example.com>"
    );
    assert_eq!(
        who(&f, "pinned"),
        "Ada Lovelace <ada@example.com>|Ada Lovelace <ada@example.com>"
    );
    // The host's own identity is never read: not in the commit, whatever git config says.
    git(&f.repo, &["config", "user.name", "Host User"]);
    git(&f.repo, &["config", "user.email", "host@example.com"]);
    write(&env.agent_dir("cfg").join("upper/more.txt"), "more\n");
    assert!(env.run(&["commit", "cfg"]).status.success());
    assert_eq!(
        who(&f, "cfg"),
        "Robot cfg <cfg@bots.example>|CI <ci@example.com>"
    );

    // A typo in the config: exit 2, file and line named, nothing written.
    let before = git(&f.repo, &["rev-parse", "ax/cfg"]);
    write(&cfg, "[branch]\nauthor_name = \"x\"\nauthor_mail = \"y\"\n");
    write(&env.agent_dir("cfg").join("upper/third.txt"), "3\n");
    let o = env.run(&["commit", "cfg"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}:3:1: unknown field `author_mail`",
            cfg.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(git(&f.repo, &["rev-parse", "ax/cfg"]), before);
    // The recorded identity needs no config.
    write(&env.agent_dir("pinned").join("upper/third.txt"), "3\n");
    assert!(env.run(&["commit", "pinned"]).status.success());
}

#[test]
fn run_refuses_bad_author_and_config_before_starting_anything() {
    let env = ax_tests::Env::new();
    for (args, want) in [
        (vec!["--author", "Ada"], "is not of the form"),
        (vec!["--author", "Ada <a\tb@x>"], "--author"),
    ] {
        let mut a = vec!["run", "--no-repo", "--name", "x", "--prompt", "true"];
        a.extend(args);
        let o = env.run(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
    }
    write(
        &env.state.path().join("config/ax/config.toml"),
        "[branch]\nauthor_email = \"{user}@x\"\n",
    );
    let o = env.run(&["run", "--no-repo", "--name", "x", "--prompt", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown placeholder {user}"), "{err}");
    assert!(!env.agent_dir("x").exists(), "no agent was created");
}

#[test]
fn guest_git_config_holds_any_identity() {
    // The agent's .git gets the author as user.name/user.email, quoted so git reads it back
    // exactly (real git parses the file).
    let f = Fixture::new();
    let snap = f.snap();
    let gitdir = f.root.join("guest/.git");
    let odd = Identity {
        name: "Dr. \"Q\" O'Neil #1; x\\y".into(),
        email: "q+{tag}@example.com".into(),
        committer: None,
        time: None,
    };
    ax_branch::prepare_guest_git(&f.repo, &snap, &gitdir, "t1", &odd, "/run/ax/objects").unwrap();
    let cfg = gitdir.join("config");
    let get = |key: &str| {
        git(
            &f.root,
            &["config", "--file", cfg.to_str().unwrap(), "--get", key],
        )
    };
    assert_eq!(get("user.name"), odd.name);
    assert_eq!(get("user.email"), odd.email);
}

#[test]
fn run_author_is_recorded_and_used_in_the_guest_and_on_the_branch() {
    if !ax_tests::require_qemu() {
        return;
    }
    ax_tests::ensure_image();
    let env = ax_tests::Env::new();
    let f = Fixture::new();
    let base = f.head();
    write(
        &env.state.path().join("config/ax/config.toml"),
        "[branch]\ncommitter_name = \"CI\"\ncommitter_email = \"ci@example.com\"\n",
    );
    let prompt = "set -e; echo a > a.txt; git add a.txt; git commit -q -m 'agent commit'; \
                  echo b > b.txt";
    let o = env.run(&[
        "run",
        "--repo",
        f.repo.to_str().unwrap(),
        "--name",
        "au",
        "--author",
        "Ada Lovelace <ada@example.com>",
        "--wait",
        "--prompt",
        prompt,
    ]);
    if !o.status.success() {
        env.dump("au");
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = env.inspect("au");
    assert_eq!(st["identity"]["name"], "Ada Lovelace", "{st}");
    assert_eq!(
        st["identity"]["committer"]["email"], "ci@example.com",
        "{st}"
    );
    // The guest's commit: its .git has the author as user.name/email (git commits with it as
    // both author and committer); ax's commit on top: the author, committed by the config's CI.
    let log = git(
        &f.repo,
        &[
            "log",
            "--format=%an <%ae>|%cn <%ce>|%s",
            &format!("{base}..ax/au"),
        ],
    );
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "Ada Lovelace <ada@example.com>|CI <ci@example.com>|ax: uncommitted changes of agent au",
            "Ada Lovelace <ada@example.com>|Ada Lovelace <ada@example.com>|agent commit",
        ]
    );
    // A later `axctl commit` keeps the recorded identity even if the config changed.
    std::fs::remove_file(env.state.path().join("config/ax/config.toml")).unwrap();
    write(&env.agent_dir("au").join("upper/late.txt"), "late\n");
    assert!(env.run(&["commit", "au"]).status.success());
    assert_eq!(
        who(&f, "au"),
        "Ada Lovelace <ada@example.com>|CI <ci@example.com>"
    );
}
