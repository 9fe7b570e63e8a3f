#!/usr/bin/env python3
"""Benchmark: branch extraction for a one-file change in a large repository (goal <= 1 s).

Usage: bench/branch.py [-n RUNS] [--files N] [--mb MB] [--axctl PATH] [--dir DIR]

Generates a repository (default 50,000 files in 500 directories, ~300 MB of text, committed and
packed), then changes one tracked file in the host's working tree (so the snapshot has real work)
and times, per run:
  snapshot  `axctl __git snapshot REPO OBJS`: gix status (index stat data vs the working tree,
            HEAD tree vs index, untracked walk), hash the one changed file, write tree + commit
            into a fresh private object directory
  branch    `axctl __git branch`: an upper layer with one modified file (overlayfs format) ->
            scan, tree, commit, CAS update of refs/heads/ax/<name>, diff stat
  total     snapshot + branch
Each figure is the in-process time the command prints on stderr (ms) and the wall time of the
process. Anchor, measured in the same run on a scratch copy of the repository (whose index is
refreshed once, untimed): change the same file, then `git add -A && git write-tree &&
git commit-tree` (what a shell script would do to turn a dirty tree into a commit).
Figures are medians of N runs; ratios are against the anchor's median.
"""
import argparse, json, os, random, shutil, statistics, subprocess, sys, tempfile, time

ENV = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="b@b.invalid",
           GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="b@b.invalid",
           GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="gc.auto", GIT_CONFIG_VALUE_0="0")


def git(cwd, *args, **kw):
    return subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, stdout=subprocess.PIPE,
                          **kw).stdout.decode().strip()


def generate(repo, files, mb):
    os.makedirs(repo)
    git(repo, "init", "-q", "-b", "main")
    size = mb * 1024 * 1024 // files
    rnd = random.Random(4)
    words = [("".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))))
             for _ in range(2000)]
    blob = (" ".join(rnd.choice(words) for _ in range(size // 4)) + "\n").encode()
    per_dir = 100
    for i in range(files):
        d = os.path.join(repo, f"d{i // per_dir // 10:03d}", f"s{i // per_dir % 10}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:06d}.txt"), "wb") as f:
            f.write(f"file {i}\n".encode())
            f.write(blob[: size])
    with open(os.path.join(repo, ".gitignore"), "w") as f:
        f.write("*.log\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "generated")
    git(repo, "repack", "-a", "-d", "-q")
    git(repo, "prune-packed")


def timed(cmd, **kw):
    t = time.monotonic()
    r = subprocess.run(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    wall = (time.monotonic() - t) * 1000
    if r.returncode != 0:
        sys.exit(f"{cmd} failed: {r.stderr.decode()}")
    inproc = None
    for line in r.stderr.decode().splitlines():
        if line.endswith(" ms") and ":" in line:
            inproc = float(line.split(":")[1].split()[0])
    return wall, inproc, r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--files", type=int, default=50000)
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--axctl", default=os.path.join(os.path.dirname(__file__), "../target/release/axctl"))
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    axctl = os.path.abspath(a.axctl)
    work = a.dir or tempfile.mkdtemp(prefix="ax-bench-branch-")
    repo = os.path.join(work, "repo")
    try:
        if not os.path.exists(repo):
            t = time.monotonic()
            generate(repo, a.files, a.mb)
            print(f"generated {a.files} files, {a.mb} MB in {time.monotonic() - t:.0f} s", file=sys.stderr)
        target = "d000/s0/f000000.txt"
        # Scratch copy for the anchor; refresh its index once (cp changes inode/ctime).
        copy = os.path.join(work, "copy")
        shutil.rmtree(copy, ignore_errors=True)
        subprocess.run(["cp", "-a", repo, copy], check=True)
        git(copy, "update-index", "-q", "--refresh")
        time.sleep(1.1)  # no racily-clean entries in either index

        rows = {"snapshot": [], "branch": [], "total": [], "anchor": []}
        walls = {"snapshot": [], "branch": [], "anchor": []}
        for i in range(a.n):
            # The host's one dirty file.
            with open(os.path.join(repo, target), "a") as f:
                f.write(f"host change {i}\n")
            objs = os.path.join(work, f"objs-{i}")
            shutil.rmtree(objs, ignore_errors=True)
            wall, ms, out = timed([axctl, "__git", "snapshot", repo, objs])
            snap = os.path.join(work, "snap.json")
            with open(snap, "wb") as f:
                f.write(out)
            rows["snapshot"].append(ms)
            walls["snapshot"].append(wall)
            # A one-file upper layer.
            upper = os.path.join(work, f"upper-{i}")
            shutil.rmtree(upper, ignore_errors=True)
            os.makedirs(os.path.join(upper, "d001/s3"))
            with open(os.path.join(upper, "d001/s3/f001300.txt"), "w") as f:
                f.write(f"agent change {i}\n")
            wall, ms, out = timed([axctl, "__git", "branch", repo, "--snapshot", snap, "--upper", upper,
                                   f"bench-{i}"])
            r = json.loads(out)
            assert r["files_changed"] == 2, r
            rows["branch"].append(ms)
            walls["branch"].append(wall)
            rows["total"].append(rows["snapshot"][-1] + ms)
            # Anchor.
            with open(os.path.join(copy, target), "a") as f:
                f.write(f"host change {i}\n")
            t = time.monotonic()
            git(copy, "add", "-A")
            tree = git(copy, "write-tree")
            git(copy, "commit-tree", "-p", "HEAD", "-m", "anchor", tree)
            rows["anchor"].append((time.monotonic() - t) * 1000)
            walls["anchor"].append(rows["anchor"][-1])
            for d in (objs, upper):
                shutil.rmtree(d, ignore_errors=True)
            git(repo, "update-ref", "-d", f"refs/heads/ax/bench-{i}")
        # Leave the host as it was.
        git(repo, "checkout", "-q", "--", target)

        anchor = statistics.median(rows["anchor"])
        print(f"repository: {a.files} files, {a.mb} MB, packed; one changed file in host and upper; n={a.n}")
        print(f"{'step':<10} {'median ms':>10} {'min':>8} {'max':>8} {'wall ms':>9} {'x anchor':>9}")
        for k, v in rows.items():
            w = statistics.median(walls[k]) if k in walls else float("nan")
            print(f"{k:<10} {statistics.median(v):>10.1f} {min(v):>8.1f} {max(v):>8.1f} {w:>9.1f} "
                  f"{statistics.median(v) / anchor:>9.2f}")
    finally:
        if not a.dir and not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
