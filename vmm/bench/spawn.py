#!/usr/bin/env python3
"""ax-vmm spawn benchmark: VMM spawn to first guest serial byte, whole run, teardown.

Usage: vmm/bench/spawn.py [-n RUNS] [--vmm PATH] [--firecracker PATH] [--cloud-hypervisor PATH]
                          [--memory-mib N] [--ax-arg=--no-jail ...] [--markdown]

Measures, for the `serial_hello` test guest (vmm/tests/guests/serial_hello.S, built here with gcc):
  spawn -> first serial byte   wall clock from just before fork/exec of the VMM to the arrival, on
                               the VMM's stdout pipe, of the first byte of the guest's line
                               ("hello from guest\n"; anything a VMM prints before it is skipped)
  spawn -> exit                the whole run: spawn, boot, "hello from guest", i8042 reset, exit
  teardown                     last serial byte -> VMM process reaped (reset exit, vCPU join,
                               KVM VM and guest RAM torn down, process exit)
for ax-vmm and, side by side in the same run (runs interleaved), Firecracker and Cloud
Hypervisor when their binaries are given or on PATH (this script never builds them).
Cloud Hypervisor reboots the VM on an i8042 reset instead of exiting, so for it the run ends
with SIGKILL once the line has arrived, and spawn -> exit and teardown are not reported.
For every VMM (idle guest: prints "idle\n", then halts with interrupts off):
  RSS outside guest RAM        Rss (and Pss, and private pages) of every mapping but the guest RAM
                               (ax-vmm: the memfd "ax-guest-ram"; the others: the anonymous
                               mapping of exactly the guest RAM size), from /proc/PID/smaps
  kill teardown                SIGKILL of a running idle VM (up for >= 50 ms) -> reaped
For ax-vmm also:
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
    # No API socket: the whole VM from a config file (firecracker --help: --no-api needs
    # --config-file). Logs at Error level go to stderr; the serial console is stdout.
    cfg = {
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k panic=1"},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": mem},
    }
    path = os.path.join(tmp, "fc-%s.json" % os.path.basename(kernel))
    with open(path, "w") as f:
        json.dump(cfg, f)
    return [fc, "--no-api", "--config-file", path, "--level", "Error"]


def cmd_ch(ch, kernel, mem, _tmp):
    # --kernel takes the PVH ELF directly (the guests carry XEN_ELFNOTE_PHYS32_ENTRY).
    return [ch, "--kernel", kernel, "--cpus", "boot=1", "--memory", "size=%dM" % mem,
            "--serial", "tty", "--console", "off"]


# VMMs that reboot the guest on an i8042 reset rather than exit: killed once the line is out.
REBOOTS_ON_RESET = {"cloud-hypervisor"}


def one_run(cmd, expect=b"hello from guest\n", timeout=30.0, kill_after=False):
    """Returns (first_byte_ms, exit_ms, teardown_ms, rc) or raises. With kill_after, the VMM is
    SIGKILLed once `expect` has arrived and exit/teardown are None."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    fd = p.stdout.fileno()
    buf = b""
    chunks = []  # (end offset in buf, arrival time)
    while expect not in buf:
        b = os.read(fd, 4096)
        if not b:
            break
        buf += b
        chunks.append((len(buf), time.perf_counter()))
    at = buf.find(expect)
    if at < 0:
        p.kill()
        p.wait()
        p.stdout.close()
        raise RuntimeError("%s: unexpected output %r" % (cmd[0], buf[:200]))
    # The first byte of the guest's line arrived with the first chunk that reaches past `at`.
    t1 = next(t for end, t in chunks if end > at)
    t_last = chunks[-1][1]
    if kill_after:
        p.kill()
        p.wait()
        p.stdout.close()
        return (t1 - t0) * 1e3, None, None, None
    rc = p.wait(timeout=timeout)
    t2 = time.perf_counter()
    p.stdout.close()
    return (t1 - t0) * 1e3, (t2 - t0) * 1e3, (t2 - t_last) * 1e3, rc


def guest_ram_mapping(header, name, mem):
    """True if this smaps header line is the guest RAM: ax-vmm's memfd, or (other VMMs) a
    mapping of exactly the guest RAM size."""
    if "memfd:ax-guest-ram" in header:
        return True
    if name == "ax-vmm":
        return False
    lo, hi = (int(x, 16) for x in header.split()[0].split("-"))
    return hi - lo == mem << 20


def rss_outside_guest_ram(name, cmd, mem):
    """Runs the idle guest under `cmd`; returns (VmRSS, {Rss, Pss, Private} outside the guest RAM
    mapping, guest RAM Rss, SIGKILL->reaped ms). Sizes in KiB."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    while b"idle\n" not in buf:  # the guest is up
        b = os.read(p.stdout.fileno(), 4096)
        if not b:
            raise RuntimeError("%s: idle guest did not start" % cmd[0])
        buf += b
    time.sleep(0.05)
    outside = {"Rss": 0, "Pss": 0, "Private": 0}
    guest = 0
    in_guest = False
    with open("/proc/%d/smaps" % p.pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and "-" in parts[0] and ":" not in parts[0]:
                in_guest = guest_ram_mapping(line, name, mem)
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
    makers = [("ax-vmm", a.vmm, cmd_ax)]
    for name, path, mk in (("firecracker", a.firecracker, cmd_fc), ("cloud-hypervisor", a.cloud_hypervisor, cmd_ch)):
        if path and os.access(path, os.X_OK):
            makers.append((name, path, mk))
        else:
            print("note: %s not given and not on PATH; not measured" % name, file=sys.stderr)
    vmms = [(name, mk(path, hello, a.memory_mib, tmp)) for name, path, mk in makers]
    idles = [(name, mk(path, idle, a.memory_mib, tmp)) for name, path, mk in makers]

    # Warm-up (page cache, binaries), then interleaved runs.
    for name, cmd in vmms:
        one_run(cmd, kill_after=name in REBOOTS_ON_RESET)
    res = {name: [] for name, _ in vmms}
    for _ in range(a.n):
        for name, cmd in vmms:
            res[name].append(one_run(cmd, kill_after=name in REBOOTS_ON_RESET))

    rss = {name: [] for name, _ in idles}
    for _ in range(5):
        for name, cmd in idles:
            rss[name].append(rss_outside_guest_ram(name, cmd, a.memory_mib))
    cps1 = creations_per_second(vmms[0][1], a.n, 1)
    cps2 = creations_per_second(vmms[0][1], a.n, 2)

    def fmt(x):
        return "n/a" if x is None else "%.2f" % x

    ax_first = med([x[0] for x in res["ax-vmm"]])
    rows = []
    for name, _ in vmms:
        r = res[name]
        first = med([x[0] for x in r])
        done = [x for x in r if x[1] is not None]
        rows.append((name, first, min(x[0] for x in r), max(x[0] for x in r),
                     med([x[1] for x in done]) if done else None,
                     med([x[2] for x in done]) if done else None,
                     first / ax_first))
    mem_rows = []
    for name, _ in idles:
        vmrss, outside, guest, _ = sorted(rss[name], key=lambda r: r[1]["Rss"])[len(rss[name]) // 2]
        kill = med([x[3] for x in rss[name]])
        mem_rows.append((name, vmrss, guest, outside["Rss"], outside["Private"], outside["Pss"], kill))
    if a.markdown:
        print("| VMM | spawn → first serial byte, median ms | min | max | spawn → exit, median ms | teardown (last byte → reaped), median ms | first byte: this VMM / ax-vmm |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print("| %s | %.2f | %.2f | %.2f | %s | %s | %.2f× |" % (r[0], r[1], r[2], r[3], fmt(r[4]), fmt(r[5]), r[6]))
        print()
        print("| VMM (idle guest, %d MiB) | VmRSS KiB | guest RAM touched KiB | RSS outside guest RAM KiB | of which private KiB | PSS outside guest RAM KiB | SIGKILL → reaped, median ms |" % a.memory_mib)
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in mem_rows:
            print("| %s | %d | %d | %d (%.2f MiB) | %d | %d | %.2f |" % (r[0], r[1], r[2], r[3], r[3] / 1024, r[4], r[5], r[6]))
        print()
        print("| ax-vmm | value |")
        print("| --- | ---: |")
        print("| VM creations per second, 1 worker (%d runs) | %.1f |" % (a.n, cps1))
        print("| VM creations per second, 2 workers (%d runs) | %.1f |" % (a.n, cps2))
    else:
        for r in rows:
            print("%-17s first byte %7.2f ms (min %.2f, max %.2f)  exit %7s ms  teardown %6s ms  first byte / ax-vmm %.2fx"
                  % (r[0], r[1], r[2], r[3], fmt(r[4]), fmt(r[5]), r[6]))
        for r in mem_rows:
            print("%-17s idle: VmRSS %d KiB, guest RAM touched %d KiB; outside guest RAM: Rss %d KiB, private %d KiB, Pss %d KiB; SIGKILL -> reaped %.2f ms" % r)
        print("ax-vmm VM creations/s: %.1f (1 worker), %.1f (2 workers)" % (cps1, cps2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
