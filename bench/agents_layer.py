#!/usr/bin/env python3
"""Benchmark: the agents layer's erofs compression under QEMU TCG.

Usage: bench/agents_layer.py --image ID[,ID…] [-n RUNS] [--axctl PATH] [--cmd 'claude --version']

For each image (built with different `compression` in the agents lock, e.g. `none` and
`lz4hc`), runs `axctl run --wait --image ID --prompt '<timing wrapper around CMD>'` RUNS times,
interleaving the images, and reports medians of:
  wall      the whole `axctl run --wait` (boot, command, teardown), host clock
  boot      VMM spawned -> agentd answers (from `axctl inspect`)
  command   CMD alone, guest clock (date +%s.%N around it): cold guest page cache, so
            it includes reading the binary from the erofs disk (and decompressing it)
Anchor, in the same run: `axctl run --wait --prompt true` on --anchor-image (default: the first
image; pass an image built with --no-agents to see what attaching the layer costs). Ratios are
against the anchor's median wall time. The `true` row repeats that on each image.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

WRAP = ("t0=$(date +%s.%N); {cmd} >/dev/null 2>&1 </dev/null; rc=$?; t1=$(date +%s.%N); "
        "awk -v a=$t0 -v b=$t1 -v rc=$rc 'BEGIN {{ printf \"cmd_ms=%d rc=%d\\n\", (b - a) * 1000, rc }}'")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True, help="comma-separated image ids")
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--axctl", default=os.path.join(os.path.dirname(__file__), "../target/debug/axctl"))
    ap.add_argument("--cmd", default="claude --version")
    ap.add_argument("--anchor-image")
    a = ap.parse_args()
    axctl = os.path.abspath(a.axctl)
    state = tempfile.mkdtemp(prefix="ax-bench-agents-")
    env = dict(os.environ, XDG_STATE_HOME=state)
    images = a.image.split(",")
    infos = {i["id"]: i for i in json.loads(subprocess.check_output([axctl, "image", "ls", "--json"], env=env))}
    comp = {}
    for img in images:
        m = json.load(open(os.path.join(infos[img]["dir"], "manifest.json")))
        comp[img] = (m["agents"]["compression"], m["outputs"]["agents.erofs"]["size"])

    def run(img, prompt, tag):
        name = f"b-{tag}"
        t = time.monotonic()
        r = subprocess.run([axctl, "run", "--name", name, "--wait", "--image", img, "--prompt", prompt],
                           env=env, cwd=state, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wall = (time.monotonic() - t) * 1000
        if r.returncode != 0:
            sys.exit(f"{tag} failed: {r.stderr.decode()} {r.stdout.decode()}")
        st = json.loads(subprocess.check_output([axctl, "inspect", name, "--json"], env=env))
        out = r.stdout.decode()
        cmd_ms = None
        for w in out.split():
            if w.startswith("cmd_ms="):
                cmd_ms = int(w[7:])
            if w.startswith("rc=") and w != "rc=0":
                sys.exit(f"{tag}: {a.cmd} failed in the guest: {out}")
        return wall, st["timings"]["agentd_ready_ms"], cmd_ms

    rows = {img: {"wall": [], "boot": [], "command": [], "true": []} for img in images}
    anchor, anchor_boot = [], []
    anchor_img = a.anchor_image or images[0]
    for i in range(a.n):
        for img in images:
            w, b, c = run(img, WRAP.format(cmd=a.cmd), f"{img}-{i}")
            rows[img]["wall"].append(w)
            rows[img]["boot"].append(b)
            rows[img]["command"].append(c)
            rows[img]["true"].append(run(img, "true", f"true-{img}-{i}")[0])
        w, b, _ = run(anchor_img, "true", f"anchor-{i}")
        anchor.append(w)
        anchor_boot.append(b)
    am = statistics.median(anchor)
    print(f"anchor: `--prompt true` on {anchor_img}: wall median {am:.0f} ms, boot "
          f"{statistics.median(anchor_boot):.0f} ms, over {len(anchor)}")
    print(f"| agents.erofs | size MB | wall ms | boot ms | `{a.cmd}` ms (guest) | wall × anchor | `true` wall ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for img in images:
        r = rows[img]
        med = {k: statistics.median(v) for k, v in r.items()}
        print(f"| {comp[img][0]} ({img}) | {comp[img][1] / 1e6:.0f} | {med['wall']:.0f} | {med['boot']:.0f} "
              f"| {med['command']:.0f} ({min(r['command'])}–{max(r['command'])}) | {med['wall'] / am:.2f} "
              f"| {med['true']:.0f} |")


if __name__ == "__main__":
    main()
