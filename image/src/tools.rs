//! Host tools the image build runs, and the Debian packages that provide them.
//!
//! A missing tool is an environment problem the user fixes by installing a package, so it is a
//! usage/config error (exit code 2) whose hint is the `apt-get install` line.

use std::path::{Path, PathBuf};

use crate::error;

/// A host program and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// Program name looked up in `$PATH` (and the sbin directories).
    pub program: &'static str,
    /// Debian package to install.
    pub package: &'static str,
}

/// Everything `axctl image build` runs. qemu-system-x86_64 is not needed to build, but an
/// image is useless without it on this kind of host, so the build says so up front.
pub const BUILD_TOOLS: &[Tool] = &[
    Tool {
        program: "mmdebstrap",
        package: "mmdebstrap",
    },
    Tool {
        program: "mkfs.erofs",
        package: "erofs-utils",
    },
    Tool {
        program: "depmod",
        package: "kmod",
    },
    Tool {
        program: "ldd",
        package: "libc-bin",
    },
    Tool {
        program: "dpkg-query",
        package: "dpkg",
    },
    Tool {
        program: "qemu-system-x86_64",
        package: "qemu-system-x86",
    },
];

/// Directories searched after `$PATH` (depmod lives in /usr/sbin, often not in a user's PATH).
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Finds `program` in `path_var` (a `$PATH` value) or the sbin directories.
pub fn find_in(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = path_var
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds `program` in the environment's `$PATH` (or sbin).
pub fn find(program: &str) -> Option<PathBuf> {
    find_in(program, std::env::var_os("PATH").as_deref())
}

/// The error for a missing tool: `<program> not found; install it: apt-get install <pkg>`.
/// Several missing tools are reported together, with one install line.
pub fn missing_error(missing: &[Tool]) -> anyhow::Error {
    let progs: Vec<&str> = missing.iter().map(|t| t.program).collect();
    let mut pkgs: Vec<&str> = missing.iter().map(|t| t.package).collect();
    pkgs.dedup();
    error::usage(
        format!("{} not found", progs.join(", ")),
        format!(
            "install {}: apt-get install {}",
            if missing.len() == 1 { "it" } else { "them" },
            pkgs.join(" ")
        ),
    )
}

/// Checks that every tool in `tools` is installed; the error names the packages to install.
pub fn check(tools: &[Tool]) -> anyhow::Result<()> {
    check_with(tools, |t| find(t.program).is_some())
}

/// [`check`] with a custom "is it there" probe (tests).
pub fn check_with(tools: &[Tool], present: impl Fn(&Tool) -> bool) -> anyhow::Result<()> {
    let missing: Vec<Tool> = tools.iter().copied().filter(|t| !present(t)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing_error(&missing))
    }
}

/// The full path of a checked tool (falls back to the bare name).
pub fn path(program: &str) -> PathBuf {
    find(program).unwrap_or_else(|| PathBuf::from(program))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package() {
        let e = check_with(BUILD_TOOLS, |t| t.program != "mkfs.erofs").unwrap_err();
        assert_eq!(
            e.to_string(),
            "mkfs.erofs not found; install it: apt-get install erofs-utils"
        );
        assert_eq!(crate::error::exit_code(&e), 2);
    }

    #[test]
    fn several_missing_tools_one_line() {
        let e = check_with(BUILD_TOOLS, |t| {
            !matches!(t.program, "mmdebstrap" | "qemu-system-x86_64")
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mmdebstrap, qemu-system-x86_64 not found; install them: apt-get install mmdebstrap qemu-system-x86"
        );
    }

    #[test]
    fn all_present_is_ok() {
        assert!(check_with(BUILD_TOOLS, |_| true).is_ok());
    }

    #[test]
    fn lookup_uses_path_then_sbin() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            find_in("ax-no-such-tool", Some(dir.path().as_os_str())),
            None
        );
        let p = dir.path().join("ax-fake-tool");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        assert_eq!(
            find_in("ax-fake-tool", Some(dir.path().as_os_str())),
            None,
            "not executable"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_in("ax-fake-tool", Some(dir.path().as_os_str())),
            Some(p)
        );
    }
}
