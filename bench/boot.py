#!/usr/bin/env python3
"""Benchmark: `axctl run --wait --prompt true`, wall time split into phases.

Usage: bench/boot.py [-n RUNS] [--axctl PATH]

Each run is timed end to end (wall clock around the axctl process) and split with the
supervisor's own timings from `axctl inspect --json`:
  image       finding the image (axctl run: image lookup)
  vm start    supervisor start -> VMM process spawned (vsock backend up)
  boot        VMM spawned -> agentd answers (kernel boot + agentd init), host clock
  guest kernel  guest clock when agentd started (the kernel's boot)
  guest ready   guest clock when agentd served the control port (modules, root switch)
  command     EXEC -> EXIT of `true`
  teardown    EXIT -> VMM gone
Anchor, measured in the same run (one anchor boot after each run): the same QEMU machine booting
the same kernel with the same command line but no initrd and no devices; it finds no root,
panics and exits (panic=-1, -no-reboot): the floor of any guest boot on this host.
Figures are medians; ratios are against the anchor's median.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--axctl", default=os.path.join(os.path.dirname(__file__), "../target/release/axctl"))
    a = ap.parse_args()
    axctl = os.path.abspath(a.axctl)
    state = tempfile.mkdtemp(prefix="ax-bench-")
    env = dict(os.environ, XDG_STATE_HOME=state)
    img = json.loads(subprocess.check_output([axctl, "image", "ls", "--json"], env=env))
    if not img:
        sys.exit("no image: run `axctl image build` first")
    kernel = img[0].get("vmlinux") or img[0]["kernel"]  # what the QEMU driver boots

    def anchor_run(cmdline):
        # The same QEMU machine and kernel command line, no initrd, no devices: the kernel
        # boots, finds no root and panics; panic=-1 + -no-reboot make QEMU exit.
        t = time.monotonic()
        subprocess.run(["qemu-system-x86_64", "-M", "microvm,accel=tcg,acpi=on", "-cpu", "max",
                        "-m", "1024M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                        "-monitor", "none", "-kernel", kernel, "-append", cmdline],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return (time.monotonic() - t) * 1000

    anchor = []
    rows = {k: [] for k in ["wall", "image", "vm start", "boot", "guest kernel", "guest ready", "command", "teardown"]}
    for i in range(a.n):
        name = f"bench-{i}"
        t = time.monotonic()
        r = subprocess.run([axctl, "run", "--name", name, "--wait", "--prompt", "true"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = (time.monotonic() - t) * 1000
        if r.returncode != 0:
            sys.exit(f"run {i} failed: {r.stderr.decode()}")
        st = json.loads(subprocess.check_output([axctl, "inspect", name, "--json"], env=env))
        tm = st["timings"]
        rows["wall"].append(wall)
        rows["image"].append(tm["image_ms"])
        rows["vm start"].append(tm["vm_spawn_ms"])
        rows["boot"].append(tm["agentd_ready_ms"])
        rows["guest kernel"].append(tm["guest_init_ms"])
        rows["guest ready"].append(tm["guest_ready_ms"])
        rows["command"].append(tm["command_ms"])
        rows["teardown"].append(tm["teardown_ms"])
        subprocess.run([axctl, "rm", name], env=env, stdout=subprocess.DEVNULL)
        anchor.append(anchor_run(st["kernel_cmdline"]))

    base = statistics.median(anchor)
    print(f"runs: {a.n}   anchor (bare kernel boot to panic under the same QEMU): median {base:.0f} ms")
    print(f"{'phase':<12} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'x anchor':>9}")
    for k, v in rows.items():
        m = statistics.median(v)
        print(f"{k:<12} {m:>10.0f} {min(v):>8.0f} {max(v):>8.0f} {m / base:>9.2f}")

if __name__ == "__main__":
    main()
