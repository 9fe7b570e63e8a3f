//! The ACPI tables parse with ACPICA's own tools: each is dumped to a file and disassembled with
//! `iasl -d`, and the DSDT's disassembly is compiled back with `iasl` (acpica-tools; CI installs it
//! via scripts/deps).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ax_vmm::acpi::{build_tables, AcpiConfig, MmioDeviceDesc, ACPI_SLEEP_CONTROL_PORT};

fn iasl_installed() -> bool {
    Command::new("iasl").arg("-v").output().is_ok()
}

fn config() -> AcpiConfig {
    AcpiConfig {
        num_cpus: 4,
        serial: Some((0x3f8, 4)),
        mmio_devices: (0..3)
            .map(|i| MmioDeviceDesc {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                gsi: 5 + i as u32,
            })
            .collect(),
    }
}

fn run(dir: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new("iasl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run iasl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// Writes every table but the RSDP (not a table: iasl cannot disassemble it alone; the unit tests
/// check it) to `<dir>/<sig>.dat` and disassembles it; returns (signature, .dsl text).
fn disassemble_all(dir: &Path, cfg: &AcpiConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in build_tables(cfg).expect("build tables") {
        if t.name == "RSDP" {
            continue;
        }
        let name = t.name.to_lowercase();
        let dat: PathBuf = dir.join(format!("{name}.dat"));
        std::fs::write(&dat, &t.bytes).unwrap();
        let (o, log) = run(dir, &["-d", dat.file_name().unwrap().to_str().unwrap()]);
        assert!(o.status.success(), "iasl -d {name}.dat failed:\n{log}");
        let lower = log.to_lowercase();
        assert!(
            !lower.contains("incorrect checksum") && !lower.contains("invalid"),
            "iasl -d {name}.dat complained:\n{log}"
        );
        let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl")))
            .unwrap_or_else(|e| panic!("iasl -d {name}.dat wrote no {name}.dsl ({e}):\n{log}"));
        eprintln!(
            "iasl -d {name}.dat: ok ({} lines of disassembly)",
            dsl.lines().count()
        );
        out.push((t.name.to_string(), dsl));
    }
    out
}

#[test]
fn iasl_disassembles_every_table() {
    if !iasl_installed() {
        common::skip_missing_tool(
            "iasl_disassembles_every_table",
            "iasl not installed (apt-get install acpica-tools; scripts/deps does)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dsls = disassemble_all(dir.path(), &config());
    let names: Vec<&str> = dsls.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["XSDT", "FACP", "APIC", "DSDT"]);
    let get = |n: &str| &dsls.iter().find(|(name, _)| name == n).unwrap().1;

    let dsdt = get("DSDT");
    assert_eq!(dsdt.matches("\"LNRO0005\"").count(), 3, "{dsdt}");
    assert!(dsdt.contains("PNP0501"), "{dsdt}");
    assert!(dsdt.contains("_S5_"), "{dsdt}");
    assert!(dsdt.contains("Memory32Fixed (ReadWrite,"), "{dsdt}");
    assert!(dsdt.contains("0xD0002000"), "{dsdt}");
    assert!(dsdt.contains("IO (Decode16,"), "{dsdt}");

    let facp = get("FACP");
    assert!(
        facp.contains("Hardware Reduced (V5) : 1"),
        "HW_REDUCED_ACPI flag not shown set:\n{facp}"
    );
    let port = format!("{:016X}", ACPI_SLEEP_CONTROL_PORT);
    assert!(
        facp.contains(&port),
        "sleep control register {port} not in:\n{facp}"
    );

    let apic = get("APIC");
    assert_eq!(apic.matches("Processor Local APIC").count(), 4, "{apic}");
    assert_eq!(apic.matches("I/O APIC").count(), 1, "{apic}");

    // The DSDT's disassembly compiles back to AML without errors.
    let (o, log) = run(dir.path(), &["-p", "recompiled", "dsdt.dsl"]);
    assert!(o.status.success(), "iasl dsdt.dsl failed:\n{log}");
    assert!(log.contains(" 0 Errors"), "{log}");
    eprintln!(
        "iasl dsdt.dsl: {}",
        log.lines()
            .filter(|l| l.contains("Errors"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
