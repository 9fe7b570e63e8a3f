//! The uncompressed ELF `vmlinux` inside a bzImage, for PVH boot.
//!
//! A bzImage's protected-mode part carries the compressed kernel: the setup header
//! (Documentation/x86/boot.rst) gives `setup_sects` (0x1f1), `payload_offset` (0x248) and
//! `payload_length` (0x24c), the payload's place relative to the protected-mode code, which
//! starts at `(setup_sects + 1) * 512`. Booting the ELF directly through its PVH entry
//! (`XEN_ELFNOTE_PHYS32_ENTRY`) skips the in-guest decompression, which under TCG costs
//! ~0.2 s per boot. Debian's cloud kernels compress with LZ4 in the legacy frame format
//! (`lz4 -l`, as `lib/decompress_unlz4.c` reads it), followed by the kernel build's 4-byte
//! uncompressed size; other compressions are reported as unsupported and the image keeps
//! only the bzImage.

use anyhow::{bail, Context, Result};

/// LZ4 legacy frame magic (little endian on disk: `02 21 4c 18`).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Largest uncompressed size of one legacy block.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// Refuse absurd outputs (a corrupt size field must not allocate gigabytes).
const MAX_VMLINUX: usize = 512 << 20;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage.
pub fn payload(bzimage: &[u8]) -> Result<&[u8]> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS setup header signature)");
    }
    let setup_sects = match bzimage.get(0x1f1) {
        Some(0) => 4,
        Some(n) => *n as usize,
        None => bail!("truncated bzImage"),
    };
    let off = u32_at(bzimage, 0x248).context("truncated bzImage")? as usize;
    let len = u32_at(bzimage, 0x24c).context("truncated bzImage")? as usize;
    let start = (setup_sects + 1) * 512 + off;
    bzimage
        .get(start..start + len)
        .context("bzImage payload outside the file")
}

/// Decompresses the kernel in `bzimage` and checks the result is an ELF with a PVH entry note.
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>> {
    let p = payload(bzimage)?;
    let out = match p.get(..4) {
        Some([0x02, 0x21, 0x4c, 0x18]) => unlz4_legacy(p)?,
        Some(m) => bail!("unsupported kernel compression (payload magic {:02x?})", m),
        None => bail!("empty bzImage payload"),
    };
    if out.get(..4) != Some(b"\x7fELF") {
        bail!("the decompressed kernel is not an ELF file");
    }
    Ok(out)
}

/// Decodes an LZ4 legacy-format stream (magic, then `u32 LE size` + block, repeated; a
/// repeated magic starts a new stream; a final 4 bytes may hold the total size).
pub fn unlz4_legacy(input: &[u8]) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    while pos < input.len() {
        let word = u32_at(input, pos).context("truncated LZ4 stream")?;
        pos += 4;
        if word == LZ4_LEGACY_MAGIC {
            continue;
        }
        let size = word as usize;
        if pos == input.len() {
            // The kernel build's size_append trailer.
            if size != out.len() {
                bail!(
                    "LZ4 stream decoded to {} bytes, trailer says {size}",
                    out.len()
                );
            }
            break;
        }
        let block = input
            .get(pos..pos + size)
            .context("LZ4 block runs past the end")?;
        pos += size;
        let at = out.len();
        if at + LZ4_LEGACY_BLOCK > MAX_VMLINUX {
            bail!("decompressed kernel larger than {} MiB", MAX_VMLINUX >> 20);
        }
        out.resize(at + LZ4_LEGACY_BLOCK, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[at..])
            .map_err(|e| anyhow::anyhow!("corrupt LZ4 block at offset {}: {e}", pos - size))?;
        out.truncate(at + n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(data: &[u8], trailer: bool) -> Vec<u8> {
        let mut s = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            s.extend_from_slice(&(c.len() as u32).to_le_bytes());
            s.extend_from_slice(&c);
        }
        if trailer {
            s.extend_from_slice(&(data.len() as u32).to_le_bytes());
        }
        s
    }

    #[test]
    fn legacy_stream_roundtrips_across_blocks() {
        let data: Vec<u8> = (0..(LZ4_LEGACY_BLOCK + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        assert_eq!(unlz4_legacy(&legacy(&data, true)).unwrap(), data);
        assert_eq!(unlz4_legacy(&legacy(&data, false)).unwrap(), data);
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let data = b"\x7fELF and some kernel".repeat(100);
        let good = legacy(&data, true);
        let mut bad_trailer = good.clone();
        let n = bad_trailer.len();
        bad_trailer[n - 1] ^= 1;
        assert!(unlz4_legacy(&bad_trailer).is_err());
        assert!(unlz4_legacy(&good[..good.len() - 9]).is_err());
        let mut garbage = good.clone();
        for b in &mut garbage[8..40] {
            *b = 0xff;
        }
        assert!(unlz4_legacy(&garbage).is_err());
    }

    #[test]
    fn bzimage_header_locates_the_payload() {
        let elf = b"\x7fELF-pretend-kernel".repeat(50);
        let pl = legacy(&elf, true);
        let mut bz = vec![0u8; 5 * 512];
        bz[0x1f1] = 4; // setup_sects
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(pl.len() as u32).to_le_bytes());
        bz.extend_from_slice(&[0u8; 16]);
        bz.extend_from_slice(&pl);
        assert_eq!(extract(&bz).unwrap(), elf);
        assert!(extract(b"not a kernel at all, far too short to have a header").is_err());
    }
}
