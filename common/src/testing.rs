//! What the test suites share about prerequisites: a test whose tool is missing prints a loud
//! `SKIP` line, except in CI, where `.ci/run` sets [`REQUIRE_VM`] and the same test fails
//! instead (a suite must never pass because nothing ran).

/// The environment variable that turns skips into failures (set by `.ci/run`).
pub const REQUIRE_VM: &str = "AX_TEST_REQUIRE_VM";

/// Whether [`REQUIRE_VM`] is set to anything but empty or `0`.
pub fn require_vm() -> bool {
    std::env::var_os(REQUIRE_VM).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `test` cannot run because something the project installs (scripts/deps) is missing:
/// prints `SKIP: <test>: <why>` straight to the stderr fd (the harness captures
/// `eprintln!`), or panics with the same text under [`require_vm`].
pub fn skip_missing(test: &str, why: &str) {
    assert!(
        !require_vm(),
        "{test}: {why}; {REQUIRE_VM} is set, so a missing prerequisite fails the test instead of \
         skipping it (scripts/deps installs what the tests need)"
    );
    print_skip(test, why);
}

/// Prints `SKIP: <test>: <why>` to the process's stderr even under output capture; for
/// prerequisites no package installs (hardware KVM, root), which skip also in CI.
pub fn print_skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIP: {test}: {why}");
}
