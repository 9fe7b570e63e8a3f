//! Kernel module loading with `finit_module(2)`, in the order given by `/etc/ax/modules`.
//!
//! File format (written by the image builder): one module per line, `<path> [params…]`.
//! `<path>` is absolute or relative to `/lib/modules/<uname -r>/`; the rest of the line, if
//! any, is passed as the module's parameter string (e.g. `foo.ko debug=1`). Blank lines and
//! lines starting with `#` are ignored. No dependency resolution: list modules in load order.
//! `.ko.xz`, `.ko.zst` and `.ko.gz` files are handed to the kernel with
//! `MODULE_INIT_COMPRESSED_FILE` (Linux ≥ 6.4 with the matching CONFIG_MODULE_DECOMPRESS;
//! older kernels reject them with EINVAL, which is logged).

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `finit_module` flag: the file is compressed and the kernel should decompress it.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Where the module list lives in the initramfs.
pub const MODULE_LIST: &str = "/etc/ax/modules";

/// Loads one module file with `params`. `Ok(false)` if it was already loaded (`EEXIST`).
pub fn load(path: &Path, params: &str) -> io::Result<bool> {
    let f = std::fs::File::open(path)?;
    let name = path.to_string_lossy();
    let flags = if name.ends_with(".xz") || name.ends_with(".zst") || name.ends_with(".gz") {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    let params = CString::new(params).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: finit_module(2) with an open fd and a NUL-terminated parameter string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Loads every module listed in `list` (see the module docs for the format), resolving
/// relative paths against `/lib/modules/<release>/`. Failures are logged and skipped.
/// Returns (loaded, failed) counts; a missing list file loads nothing.
pub fn load_list(list: &Path, release: &str) -> (usize, usize) {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) => {
            log::info!(
                "no module list {} ({e}); loading no modules",
                list.display()
            );
            return (0, 0);
        }
    };
    let base = PathBuf::from("/lib/modules").join(release);
    let (mut ok, mut failed) = (0, 0);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (file, params) = match line.split_once(char::is_whitespace) {
            Some((f, p)) => (f, p.trim()),
            None => (line, ""),
        };
        let path = if file.starts_with('/') {
            PathBuf::from(file)
        } else {
            base.join(file)
        };
        match load(&path, params) {
            Ok(true) => {
                log::debug!("loaded {}", path.display());
                ok += 1;
            }
            Ok(false) => log::debug!("{} already loaded", path.display()),
            Err(e) => {
                log::warn!("module {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    (ok, failed)
}
