//! `axctl logs NAME [-f]`: the agent's output (`output.log`).

use crate::state;
use anyhow::Result;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

pub fn logs(name: &str, follow: bool) -> Result<i32> {
    let (dir, _) = state::load(name)?;
    let path = dir.join("output.log");
    let mut pos = 0u64;
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Ok(mut f) = std::fs::File::open(&path) {
            f.seek(SeekFrom::Start(pos))?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                pos += n as u64;
                if out.write_all(&buf[..n]).is_err() {
                    return Ok(0); // reader went away (e.g. `| head`)
                }
            }
            out.flush()?;
        }
        if !follow {
            return Ok(0);
        }
        // Stop once the agent has ended and everything it wrote has been printed.
        let st = state::load_raw(&dir)?;
        let live = st.status.is_live()
            && st
                .supervisor_pid
                .map(state::supervisor_alive)
                .unwrap_or(true);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if !live && size <= pos {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
