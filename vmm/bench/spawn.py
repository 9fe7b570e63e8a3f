#!/usr/bin/env python3
"""ax-vmm spawn benchmark (issue #3, "Must show").

Usage: vmm/bench/spawn.py [-n RUNS] [--vmm PATH] [--firecracker PATH] [--cloud-hypervisor PATH]
                          [--memory-mib N] [--ax-arg=--no-jail ...] [--markdown]

Measures, for the `serial_hello` test guest (vmm/tests/guests/serial_hello.S, built here with gcc):
  spawn -> first serial byte   wall clock from just before fork/exec of the VMM to the first byte
                               the guest wrote to COM1 arriving on the VMM's stdout pipe
  spawn -> exit                the whole run: spawn, boot, "hello from guest", i8042 reset, exit
  teardown                     last serial byte -> VMM process reaped (reset exit, vCPU join,
                               KVM VM and guest RAM torn down, process exit)
for ax-vmm and, side by side in the same run (runs interleaved), Firecracker and Cloud
Hypervisor when their binaries are given or on PATH (this script never builds them).
For ax-vmm also:
  RSS outside guest RAM        the `idle` guest keeps running; Rss (and Pss, and private pages) of
                               every mapping but the guest RAM memfd (from /proc/PID/smaps)
  kill teardown                SIGKILL of a running `idle` VM -> reaped
  VM creations per second      serial_hello runs back to back, 1 worker and 2 workers (2 cores)
All figures are medians over RUNS (default 30) unless said otherwise.
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
GUESTS = os.path.join(HERE, "..", "tests", "guests")
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def build_guest(name, out_dir):
    out = os.path.join(out_dir, name + ".elf")
    subprocess.run(
        ["gcc", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
         "-Wl,-T," + os.path.join(GUESTS, "guest.ld"), "-I", GUESTS, "-o", out,
         os.path.join(GUESTS, name + ".S")], check=True)
    return out


AX_EXTRA = []


def cmd_ax(vmm, kernel, mem, _tmp):
    return [vmm, "--kernel", kernel, "--memory-mib", str(mem), "--log-level", "warn"] + AX_EXTRA


def cmd_fc(fc, kernel, mem, tmp):
    cfg = {
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k panic=1"},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": mem},
    }
    path = os.path.join(tmp, "fc.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return [fc, "--no-api", "--config-file", path, "--level", "Error"]


def cmd_ch(ch, kernel, mem, _tmp):
    return [ch, "--kernel", kernel, "--cpus", "boot=1", "--memory", "size=%dM" % mem,
            "--serial", "tty", "--console", "off"]


def one_run(cmd, expect=b"hello from guest\n", timeout=30.0):
    """Returns (first_byte_ms, exit_ms, teardown_ms, rc) or raises."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    fd = p.stdout.fileno()
    first = os.read(fd, 1)
    t1 = time.perf_counter()
    buf = first
    t_last = t1
    while not buf.endswith(expect):
        b = os.read(fd, 4096)
        if not b:
            break
        buf += b
        t_last = time.perf_counter()
    rc = p.wait(timeout=timeout)
    t2 = time.perf_counter()
    p.stdout.close()
    if expect not in buf:
        raise RuntimeError("%s: unexpected output %r (rc %s)" % (cmd[0], buf[:200], rc))
    return (t1 - t0) * 1e3, (t2 - t0) * 1e3, (t2 - t_last) * 1e3, rc


def rss_outside_guest_ram(vmm, idle, mem):
    """Runs the idle guest; returns (VmRSS, {Rss, Pss, Private} outside the guest RAM mapping,
    guest RAM Rss, SIGKILL->reaped ms). Sizes in KiB."""
    p = subprocess.Popen([vmm, "--kernel", idle, "--memory-mib", str(mem), "--log-level", "warn"] + AX_EXTRA,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    os.read(p.stdout.fileno(), 5)  # "idle\n": the guest is up
    time.sleep(0.05)
    outside = {"Rss": 0, "Pss": 0, "Private": 0}
    guest = 0
    in_guest = False
    with open("/proc/%d/smaps" % p.pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and "-" in parts[0] and ":" not in parts[0]:
                in_guest = "memfd:ax-guest-ram" in line
                continue
            if not parts:
                continue
            key = parts[0].rstrip(":")
            if key == "Rss" and in_guest:
                guest += int(parts[1])
            if in_guest:
                continue
            if key in ("Rss", "Pss"):
                outside[key] += int(parts[1])
            elif key in ("Private_Clean", "Private_Dirty"):
                outside["Private"] += int(parts[1])
    with open("/proc/%d/status" % p.pid) as f:
        vmrss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    t0 = time.perf_counter()
    p.send_signal(signal.SIGKILL)
    p.wait()
    kill_ms = (time.perf_counter() - t0) * 1e3
    p.stdout.close()
    return vmrss, outside, guest, kill_ms


def creations_per_second(cmd, n, workers):
    t0 = time.perf_counter()
    live = []
    started = done = 0
    while done < n:
        while len(live) < workers and started < n:
            live.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL))
            started += 1
        pid, status = os.wait()
        for p in live:
            if p.pid == pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                if p.returncode != 0:
                    raise RuntimeError("run failed: rc %d" % p.returncode)
                live.remove(p)
                break
        done += 1
    return n / (time.perf_counter() - t0)


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=30)
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target", "release", "ax-vmm"))
    ap.add_argument("--firecracker", default=shutil.which("firecracker"))
    ap.add_argument("--cloud-hypervisor", default=shutil.which("cloud-hypervisor"))
    ap.add_argument("--memory-mib", type=int, default=128)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table for docs/benchmarks.md")
    ap.add_argument("--ax-arg", action="append", default=[], help="extra ax-vmm argument (repeatable), e.g. --ax-arg=--no-jail")
    a = ap.parse_args()
    AX_EXTRA.extend(a.ax_arg)
    if not os.access(a.vmm, os.X_OK):
        sys.exit("%s not found; build it: cargo build --release -p ax-vmm" % a.vmm)
    try:
        open("/dev/kvm", "r+b").close()
    except OSError as e:
        sys.exit("SKIP: cannot open /dev/kvm: %s" % e)

    tmp = tempfile.mkdtemp(prefix="ax-vmm-bench-")
    hello = build_guest("serial_hello", tmp)
    idle = build_guest("idle", tmp)
    vmms = [("ax-vmm", cmd_ax(a.vmm, hello, a.memory_mib, tmp))]
    for name, path, mk in (("firecracker", a.firecracker, cmd_fc), ("cloud-hypervisor", a.cloud_hypervisor, cmd_ch)):
        if path and os.access(path, os.X_OK):
            vmms.append((name, mk(path, hello, a.memory_mib, tmp)))
        else:
            print("note: %s not given and not on PATH; measuring ax-vmm alone" % name, file=sys.stderr)

    # Warm-up (page cache, binaries), then interleaved runs.
    for _, cmd in vmms:
        one_run(cmd)
    res = {name: [] for name, _ in vmms}
    for _ in range(a.n):
        for name, cmd in vmms:
            res[name].append(one_run(cmd))

    rss = [rss_outside_guest_ram(a.vmm, idle, a.memory_mib) for _ in range(5)]
    cps1 = creations_per_second(vmms[0][1], a.n, 1)
    cps2 = creations_per_second(vmms[0][1], a.n, 2)

    rows = []
    for name, _ in vmms:
        r = res[name]
        rows.append((name, med([x[0] for x in r]), min(x[0] for x in r), max(x[0] for x in r),
                     med([x[1] for x in r]), med([x[2] for x in r])))
    vmrss, outside, guest, _ = sorted(rss, key=lambda r: r[0])[len(rss) // 2]
    kill = med([x[3] for x in rss])
    if a.markdown:
        print("| VMM | spawn → first serial byte, median ms | min | max | spawn → exit, median ms | teardown (last byte → reaped), median ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print("| %s | %.2f | %.2f | %.2f | %.2f | %.2f |" % r)
        print()
        print("| ax-vmm | value |")
        print("| --- | ---: |")
        print("| VmRSS with a running guest (%d MiB RAM, guest touched %d KiB) | %d KiB |" % (a.memory_mib, guest, vmrss))
        print("| RSS outside guest RAM | %d KiB (%.2f MiB) |" % (outside["Rss"], outside["Rss"] / 1024))
        print("| of which private to this VMM (Private_Clean + Private_Dirty) | %d KiB |" % outside["Private"])
        print("| PSS outside guest RAM (shared libc/binary pages split among sharers) | %d KiB |" % outside["Pss"])
        print("| SIGKILL of a running VM → reaped (median of 5) | %.2f ms |" % kill)
        print("| VM creations per second, 1 worker (%d runs) | %.1f |" % (a.n, cps1))
        print("| VM creations per second, 2 workers (%d runs) | %.1f |" % (a.n, cps2))
    else:
        for r in rows:
            print("%-17s first byte %7.2f ms (min %.2f, max %.2f)  exit %7.2f ms  teardown %6.2f ms" % r)
        print("ax-vmm RSS: VmRSS %d KiB, guest RAM touched %d KiB; outside guest RAM: Rss %d KiB, Pss %d KiB, private %d KiB"
              % (vmrss, guest, outside["Rss"], outside["Pss"], outside["Private"]))
        print("ax-vmm SIGKILL -> reaped: %.2f ms" % kill)
        print("ax-vmm VM creations/s: %.1f (1 worker), %.1f (2 workers)" % (cps1, cps2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
