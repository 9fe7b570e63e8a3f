//! Content digests: lowercase hex, sha256 of bytes and of files (streamed). Image ids, lock
//! hashes and the agents layer's cache keys are all built from these (docs/image.md).

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// sha256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// sha256 of a byte slice, hex.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// sha256 and size of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<Output> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok(Output {
        sha256: hex(&h.finalize()),
        size,
    })
}
