//! `axctl attach` and `axctl exec`: interactive streams to a running guest.

use crate::client;
use crate::error::{runtime, usage};
use crate::state::{self, Status};
use agentd::proto::{self, Attach, Exec, Frame, Role, WinSize};
use anyhow::{bail, Context, Result};
use nix::sys::termios::{self, SetArg, Termios};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

/// The detach sequence of `attach`: Ctrl+] then `d`.
const ESCAPE: u8 = 0x1d;

/// Puts the terminal on stdin in raw mode until dropped.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let orig = termios::tcgetattr(stdin.as_fd()).context("reading terminal settings")?;
        let mut raw = orig.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// The size of the terminal on stdout (or stdin), if there is one.
fn window_size() -> Option<WinSize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    for fd in [1, 0] {
        // SAFETY: TIOCGWINSZ writes a winsize into `ws`.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some(WinSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            });
        }
    }
    None
}

fn live(name: &str) -> Result<std::path::PathBuf> {
    let (dir, st) = state::load(name)?;
    match st.status {
        Status::Running => Ok(dir),
        Status::Starting => Err(runtime(
            format!("agent '{name}' is still starting"),
            "wait a moment (axctl ps shows when it is running)",
        )),
        _ => Err(usage(
            format!("agent '{name}' is not running ({})", st.status_label()),
            format!("see its output with: axctl logs {name}"),
        )),
    }
}

enum Ev {
    Exit(i32),
    Detach,
    Lost(String),
}

/// `axctl exec NAME -- CMD…`: runs a command in the live guest, exits with its code.
pub fn exec(name: &str, argv: Vec<String>, tty: Option<bool>) -> Result<i32> {
    if argv.is_empty() {
        return Err(usage(
            "no command given",
            "usage: axctl exec NAME -- COMMAND [ARGS…]",
        ));
    }
    let dir = live(name)?;
    let use_tty =
        tty.unwrap_or_else(|| std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let (mut conn, _) = client::connect(&dir)?;
    let exec = Exec {
        argv,
        env: BTreeMap::new(),
        cwd: Some("/workspace".into()),
        tty: use_tty.then(|| window_size().unwrap_or(WinSize { rows: 24, cols: 80 })),
        role: Role::Aux,
    };
    proto::write_frame(&mut conn, &Frame::Exec(exec))?;
    expect_started(&mut conn)?;
    let _raw = if use_tty && std::io::stdin().is_terminal() {
        Some(RawMode::enter()?)
    } else {
        None
    };
    pump(conn, false)
}

/// `axctl attach NAME`: joins the agent's PTY; Ctrl+] then `d` detaches.
pub fn attach(name: &str) -> Result<i32> {
    let dir = live(name)?;
    let (mut conn, _) = client::connect(&dir)?;
    proto::write_frame(
        &mut conn,
        &Frame::Attach(Attach {
            session: None,
            replay: true,
        }),
    )?;
    expect_started(&mut conn)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        if let Some(ws) = window_size() {
            proto::write_frame(&mut conn, &Frame::Resize(ws))?;
        }
        eprint!("[attached to {name}; detach with Ctrl+] d]\r\n");
    }
    let raw = if interactive {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let code = pump(conn, true)?;
    drop(raw);
    if code < 0 {
        eprintln!("\r\n[detached from {name}; it keeps running]");
        return Ok(0);
    }
    Ok(code)
}

fn expect_started(conn: &mut UnixStream) -> Result<()> {
    match proto::read_frame(conn)? {
        Frame::Started(_) => Ok(()),
        Frame::Error(e) => bail!("agentd: {} ({})", e.message, e.code),
        other => bail!("agentd answered with {:?}", other.kind()),
    }
}

/// Streams stdin → guest and guest → stdout/stderr until EXIT (returns its shell-style code),
/// or until the user detaches (returns -1, only with `detachable`).
fn pump(conn: UnixStream, detachable: bool) -> Result<i32> {
    let writer = Arc::new(Mutex::new(conn.try_clone()?));
    let (tx, rx) = channel::<Ev>();
    spawn_winch(writer.clone()); // first: it blocks SIGWINCH for the threads spawned after it
    spawn_stdin(writer, tx.clone(), detachable);
    {
        let tx = tx.clone();
        let mut reader = conn.try_clone()?;
        std::thread::spawn(move || {
            let mut out = std::io::stdout();
            let mut err = std::io::stderr();
            loop {
                let ev = match proto::read_frame(&mut reader) {
                    Ok(Frame::Stdout(b)) => {
                        let _ = out.write_all(&b).and_then(|_| out.flush());
                        continue;
                    }
                    Ok(Frame::Stderr(b)) => {
                        let _ = err.write_all(&b);
                        continue;
                    }
                    Ok(Frame::Exit(e)) => Ev::Exit(e.shell_code()),
                    Ok(Frame::Error(e)) => Ev::Lost(format!("agentd: {}", e.message)),
                    Ok(_) => continue,
                    Err(e) => Ev::Lost(e.to_string()),
                };
                let _ = tx.send(ev);
                return;
            }
        });
    }
    match rx.recv() {
        Ok(Ev::Exit(code)) => Ok(code),
        Ok(Ev::Detach) => {
            let _ = conn.shutdown(std::net::Shutdown::Both);
            Ok(-1)
        }
        Ok(Ev::Lost(why)) => Err(runtime(
            format!("lost the connection to the guest: {why}"),
            "check axctl ps",
        )),
        Err(_) => bail!("stream threads ended"),
    }
}

fn spawn_stdin(writer: Arc<Mutex<UnixStream>>, tx: Sender<Ev>, detachable: bool) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        let mut pending_escape = false;
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                // EOF: close the guest's stdin (attach keeps streaming output).
                if !detachable {
                    let _ =
                        proto::write_frame(&mut *writer.lock().unwrap(), &Frame::Stdin(Vec::new()));
                }
                return;
            }
            let mut data = Vec::with_capacity(n + 1);
            for &b in &buf[..n] {
                if detachable && pending_escape {
                    pending_escape = false;
                    if b == b'd' {
                        let _ = tx.send(Ev::Detach);
                        return;
                    }
                    data.push(ESCAPE);
                }
                if detachable && b == ESCAPE {
                    pending_escape = true;
                    continue;
                }
                data.push(b);
            }
            if !data.is_empty()
                && proto::write_frame(&mut *writer.lock().unwrap(), &Frame::Stdin(data)).is_err()
            {
                return;
            }
        }
    });
}

/// Sends RESIZE whenever the local terminal changes size (SIGWINCH).
fn spawn_winch(writer: Arc<Mutex<UnixStream>>) {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGWINCH);
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        while set.wait().is_ok() {
            if let Some(ws) = window_size() {
                if proto::write_frame(&mut *writer.lock().unwrap(), &Frame::Resize(ws)).is_err() {
                    return;
                }
            }
        }
    });
}
