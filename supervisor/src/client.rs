//! Host side of the control channel: hybrid vsock connect, then the agentd protocol.
//!
//! Hybrid vsock (Firecracker's convention, `docs/vsock.md`): connect to `<state>/vsock.sock`,
//! send `CONNECT <port>\n`, read `OK <host-port>\n`; the stream then reaches the guest's
//! listener on `<port>`.

use agentd::proto::{self, Frame, Hello, HelloOk};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Connects to guest vsock `port` through the hybrid socket `uds`. Fails if the guest does not
/// accept (no listener yet, or the VM is gone).
pub fn connect_port(uds: &Path, port: u32) -> Result<UnixStream> {
    let mut s =
        UnixStream::connect(uds).with_context(|| format!("connecting to {}", uds.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read the reply byte by byte so nothing after the newline is consumed.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => bail!("guest refused vsock port {port} (connection closed)"),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(e).context("waiting for the vsock OK line"),
        }
        if line.len() > 64 {
            bail!(
                "bad hybrid vsock reply {:?}",
                String::from_utf8_lossy(&line)
            );
        }
    }
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK ") {
        bail!("bad hybrid vsock reply {line:?}");
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// Connects to agentd's control port and completes HELLO.
pub fn connect(state_dir: &Path) -> Result<(UnixStream, HelloOk)> {
    let mut s = connect_port(&state_dir.join("vsock.sock"), proto::CONTROL_PORT)?;
    let hello = Frame::Hello(Hello {
        versions: proto::VERSIONS.to_vec(),
        client: format!("axctl {}", env!("CARGO_PKG_VERSION")),
    });
    proto::write_frame(&mut s, &hello)?;
    match proto::read_frame(&mut s).context("reading HELLO_OK from agentd")? {
        Frame::HelloOk(ok) => Ok((s, ok)),
        Frame::Error(e) => bail!("agentd refused the connection: {} ({})", e.message, e.code),
        other => bail!("agentd answered HELLO with {:?}", other.kind()),
    }
}

/// Retries [`connect`] until agentd answers, `deadline` passes, or `give_up()` says the VM is
/// gone (then its message is the error).
pub fn connect_when_ready(
    state_dir: &Path,
    deadline: Instant,
    mut give_up: impl FnMut() -> Option<String>,
) -> Result<(UnixStream, HelloOk)> {
    let mut last_err;
    loop {
        if let Some(why) = give_up() {
            bail!("{why}");
        }
        match connect(state_dir) {
            Ok(c) => return Ok(c),
            Err(e) => last_err = e,
        }
        if Instant::now() >= deadline {
            return Err(last_err.context("agentd did not answer in time"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
