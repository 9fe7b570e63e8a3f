//! Boots the bare-metal test guests (tests/guests/*.S) under the real ax-vmm binary and
//! checks what they print over COM1 and how ax-vmm exits. Needs /dev/kvm; without it each
//! test prints a loud SKIP line.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn serial_hello_prints_and_exits_cleanly() {
    if skip_without_kvm("serial_hello_prints_and_exits_cleanly") {
        return;
    }
    let g = guest("serial_hello");
    let (code, out, err) = boot(&g, &["--memory-mib", "32"], T);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(out, "hello from guest\n");
    assert!(
        err.contains("guest boot complete:"),
        "boot timer not logged: {err}"
    );
    assert!(err.contains("since ax-vmm started"), "{err}");
    assert!(err.contains("clean shutdown"), "{err}");
}

#[test]
fn serial_output_to_a_file() {
    if skip_without_kvm("serial_output_to_a_file") {
        return;
    }
    let g = guest("serial_hello");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("console.log");
    let serial = format!("file:{}", f.display());
    let (code, out, err) = boot(&g, &["--serial", &serial], T);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(out, "");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "hello from guest\n");
}

#[test]
fn two_vcpus_stop_cleanly() {
    if skip_without_kvm("two_vcpus_stop_cleanly") {
        return;
    }
    // vCPU 1 waits for an INIT/SIPI that never comes; the VMM must still stop it.
    let g = guest("serial_hello");
    let (code, out, err) = boot(&g, &["--cpus", "2"], T);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(out, "hello from guest\n");
}

#[test]
fn config_file_toml_and_json() {
    if skip_without_kvm("config_file_toml_and_json") {
        return;
    }
    let g = guest("serial_hello");
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("vm.toml");
    std::fs::write(
        &toml,
        format!(
            "kernel = {:?}\nmemory_mib = 16\ncpus = 1\nserial = \"stdout\"\n",
            g
        ),
    )
    .unwrap();
    let o = run_vmm(&["--config", toml.to_str().unwrap()], T);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "hello from guest\n"),
        "{}",
        stderr(&o)
    );
    let json = dir.path().join("vm.json");
    std::fs::write(
        &json,
        format!("{{\"kernel\": {:?}, \"serial\": \"none\"}}", g),
    )
    .unwrap();
    let o = run_vmm(&["--config", json.to_str().unwrap()], T);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), ""),
        "{}",
        stderr(&o)
    );
}

/// Parses "pvh: memmap addr=0x.. size=0x.. type=.." lines into (addr, size, type).
fn memmap(out: &str) -> Vec<(u64, u64, u32)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("pvh: memmap addr=0x"))
        .map(|l| {
            let (a, rest) = l.split_once(" size=0x").unwrap();
            let (s, t) = rest.split_once(" type=").unwrap();
            (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(s, 16).unwrap(),
                u32::from_str_radix(t, 16).unwrap(),
            )
        })
        .collect()
}

#[test]
fn pvh_start_info_memmap_cmdline_and_acpi() {
    if skip_without_kvm("pvh_start_info_memmap_cmdline_and_acpi") {
        return;
    }
    let g = guest("pvh_params");
    let (code, out, err) = boot(
        &g,
        &[
            "--memory-mib",
            "64",
            "--cmdline",
            "console=ttyS0 ax.test=42 -- init-arg",
        ],
        T,
    );
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("pvh: magic=0x336ec578 version=00000001\n"),
        "{out}"
    );
    assert_eq!(
        memmap(&out),
        vec![
            (0, 0x9fc00, 1),
            (0xe0000, 0x20000, 2),
            (0x100000, 64 * 1024 * 1024 - 0x100000, 1)
        ],
        "{out}"
    );
    assert!(
        out.contains("pvh: cmdline=console=ttyS0 ax.test=42 -- init-arg\n"),
        "{out}"
    );
    assert!(out.contains("pvh: modules=00000000\n"), "{out}");
    assert!(out.contains("pvh: rsdp=0x00000000000e0000\n"), "{out}");
    assert!(out.contains("acpi: RSDP checksum ok\n"), "{out}");
    for sig in ["XSDT", "FACP", "DSDT", "APIC"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("acpi: {sig} ")) && l.ends_with("checksum ok")),
            "{sig}: {out}"
        );
    }
    assert!(!out.contains("BAD"), "{out}");
}

#[test]
fn pvh_initrd_is_module_zero_and_no_acpi_means_no_rsdp() {
    if skip_without_kvm("pvh_initrd_is_module_zero_and_no_acpi_means_no_rsdp") {
        return;
    }
    let g = guest("pvh_params");
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, vec![0x5a; 10_000]).unwrap();
    let (code, out, err) = boot(&g, &["--initrd", initrd.to_str().unwrap(), "--no-acpi"], T);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("pvh: modules=00000001\n"), "{out}");
    assert!(out.contains("pvh: rsdp=0x0000000000000000\n"), "{out}");
    assert!(!out.contains("acpi:"), "{out}");
}

#[test]
fn memory_above_the_mmio_hole_starts_at_4g() {
    if skip_without_kvm("memory_above_the_mmio_hole_starts_at_4g") {
        return;
    }
    let g = guest("pvh_params");
    let (code, out, err) = boot(&g, &["--memory-mib", "3584"], T);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    let m = memmap(&out);
    assert_eq!(m[2], (0x100000, 0xc000_0000 - 0x100000, 1), "{out}");
    assert_eq!(m[3], (0x1_0000_0000, 512 << 20, 1), "{out}");
}

#[test]
fn triple_fault_is_an_error_naming_exit_and_rip() {
    if skip_without_kvm("triple_fault_is_an_error_naming_exit_and_rip") {
        return;
    }
    let g = guest("triple_fault");
    let (code, out, err) = boot(&g, &[], T);
    assert_eq!(code, Some(1), "stderr: {err}");
    assert_eq!(out, "about to triple fault\n");
    assert!(err.contains("triple fault (KVM_EXIT_SHUTDOWN)"), "{err}");
    assert!(err.contains("at RIP 0x10"), "{err}");
}

#[test]
fn usage_and_config_errors_exit_2() {
    // No KVM needed: these fail before /dev/kvm is opened.
    let o = run_vmm(&[], T);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no kernel given"), "{}", stderr(&o));
    let o = run_vmm(&["--kernel", "/nonexistent/vmlinux"], T);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("fix the kernel path"), "{}", stderr(&o));
    let o = run_vmm(&["--kernel", VMM, "--serial", "tty"], T);
    assert_eq!(o.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("vm.toml");
    std::fs::write(&bad, "kernel = \"/k\"\nmemory = 5\n").unwrap();
    let o = run_vmm(&["--config", bad.to_str().unwrap()], T);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown field"), "{}", stderr(&o));
}

#[test]
fn a_non_kernel_file_is_a_clear_error() {
    if skip_without_kvm("a_non_kernel_file_is_a_clear_error") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0u8; 4096]).unwrap();
    let (code, _, err) = boot(&junk, &[], T);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot load kernel"), "{err}");
}

#[test]
fn linux_64bit_boot_protocol_zero_page() {
    if skip_without_kvm("linux_64bit_boot_protocol_zero_page") {
        return;
    }
    let k = bzimage_guest("linux64_params");
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, vec![0xa5; 5000]).unwrap();
    let (code, out, err) = boot(
        &k,
        &[
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory-mib",
            "64",
            "--cmdline",
            "console=ttyS0 hello=64",
        ],
        T,
    );
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.starts_with("linux64: long mode entry\n"), "{out}");
    assert!(
        out.contains("linux64: type_of_loader=0x00000000000000ff\n"),
        "{out}"
    );
    assert!(
        out.contains("linux64: cmdline=console=ttyS0 hello=64\n"),
        "{out}"
    );
    // The initrd sits page-aligned at the top of RAM.
    let top = 64u64 << 20;
    let want = format!(
        "linux64: ramdisk={:#018x} size={:#018x}\n",
        (top - 5000) & !0xfff,
        5000
    );
    assert!(out.contains(&want), "{want} not in {out}");
    for (a, s, t) in [
        (0u64, 0x9fc00u64, 1u64),
        (0xe0000, 0x20000, 2),
        (0x100000, top - 0x100000, 1),
    ] {
        let line = format!("linux64: e820 addr={a:#018x} size={s:#018x} type={t:#018x}\n");
        assert!(out.contains(&line), "{line} not in {out}");
    }
}

#[test]
fn acpi_s5_power_off_is_a_clean_exit() {
    if skip_without_kvm("acpi_s5_power_off_is_a_clean_exit") {
        return;
    }
    let g = guest("acpi_poweroff");
    let (code, out, err) = boot(&g, &[], T);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(out, "powering off\n");
    assert!(err.contains("powered off"), "{err}");
}

#[test]
fn guest_halted_forever_is_stopped_by_sigkill_only() {
    if skip_without_kvm("guest_halted_forever_is_stopped_by_sigkill_only") {
        return;
    }
    // The idle guest halts with interrupts off: the VMM must keep running (no spurious exit).
    let g = guest("idle");
    let (code, out, err) = boot(&g, &[], Duration::from_millis(1500));
    assert_eq!(out, "idle\n");
    assert_eq!(code, None, "ax-vmm exited on its own: {err}");
}

#[test]
fn odd_accesses_and_unmapped_io_do_not_crash_the_vmm() {
    if skip_without_kvm("odd_accesses_and_unmapped_io_do_not_crash_the_vmm") {
        return;
    }
    let g = guest("rough");
    let (code, out, err) = boot(&g, &[], T);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    // Unmapped ports float high; unmapped MMIO reads as zero.
    assert_eq!(
        out,
        "rough: unmapped port=0xffffffff unmapped mmio=0x00000000\nrough: survived\n"
    );
}
