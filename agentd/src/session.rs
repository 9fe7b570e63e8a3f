//! Sessions: one process started by EXEC, its streams, its retained output and its exit.
//!
//! A session's output (PTY master, or stdout and stderr pipes) is read by one thread per
//! stream, always, whether or not a client is attached: each chunk (at most
//! [`MAX_CHUNK`] bytes) is appended to the session's retained buffer (the last
//! [`RETAIN_BYTES`] bytes, in order) and broadcast to the outboxes of attached connections.
//! When the process has exited and every output stream has reached EOF (or [`Limits::drain_grace`]
//! after the exit, if a background process keeps a stream open), the session *finishes*: every
//! attached or waiting connection gets EXIT and is closed.

use crate::outbox::Outbox;
use crate::proto::{Exec, Exit, Frame, Role, WinSize, MAX_CHUNK};
use crate::pty;
use crate::reaper::{self, ExitStatus};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes of recent output kept per session for ATTACH with `replay`: 64 KiB.
pub const RETAIN_BYTES: usize = 64 * 1024;

/// Retained chunks are coalesced up to this size (bytes) to keep replays to few frames.
const COALESCE: usize = 8 * 1024;

/// The base environment every session starts from; EXEC's `env` is added on top (and wins).
/// `TERM` is added separately: `xterm-256color` on a PTY, `dumb` on pipes. `/opt/ax/bin` (the
/// agents layer's commands and its node, ahead of Debian's) comes first on `PATH`.
pub const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/opt/ax/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
];

/// Tunables of session handling.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long after the process exits to wait for its output streams to reach EOF before
    /// EXIT is sent anyway (a background child may hold them open).
    pub drain_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            drain_grace: Duration::from_millis(500),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last [`RETAIN_BYTES`] of a session's output, as (is_stderr, bytes) chunks in order.
#[derive(Default)]
struct Retained {
    chunks: VecDeque<(bool, Vec<u8>)>,
    bytes: usize,
}

impl Retained {
    fn push(&mut self, stderr: bool, data: &[u8]) {
        match self.chunks.back_mut() {
            Some((s, last)) if *s == stderr && last.len() + data.len() <= COALESCE => {
                last.extend_from_slice(data)
            }
            _ => self.chunks.push_back((stderr, data.to_vec())),
        }
        self.bytes += data.len();
        while self.bytes > RETAIN_BYTES {
            let excess = self.bytes - RETAIN_BYTES;
            let front = self.chunks.front_mut().expect("bytes > 0 implies a chunk");
            if front.1.len() <= excess {
                self.bytes -= front.1.len();
                self.chunks.pop_front();
            } else {
                front.1.drain(..excess);
                self.bytes -= excess;
            }
        }
    }

    fn frames(&self) -> impl Iterator<Item = Frame> + '_ {
        self.chunks.iter().map(|(e, b)| {
            if *e {
                Frame::Stderr(b.clone())
            } else {
                Frame::Stdout(b.clone())
            }
        })
    }
}

/// A session's stdin, PTY master (if any) and output streams (is_stderr, reader).
type Wiring = (Option<Arc<File>>, Option<File>, Vec<(bool, File)>);

struct Sub {
    conn: u64,
    outbox: Arc<Outbox>,
    /// Receives output (EXEC/ATTACH); `false` for WAIT, which only gets EXIT.
    output: bool,
}

struct State {
    retained: Retained,
    subs: Vec<Sub>,
    exit: Option<Exit>,
    open_streams: u32,
    finished: bool,
    /// Connections attached for output (EXEC or ATTACH) that have not detached.
    attached: u32,
}

/// Called once when a session finishes, with its exit.
pub type OnFinish = Box<dyn Fn(&Session, Exit) + Send + Sync>;

/// One process started by EXEC. Shared (`Arc`) between the server's registry, its output
/// threads, the reaper callback and attached connections.
pub struct Session {
    /// Session id, unique for the life of the guest, starting at 1.
    pub id: u32,
    /// Guest PID of the process; also its process group and session id (it runs `setsid`).
    pub pid: i32,
    /// Whether it runs on a PTY.
    pub tty: bool,
    /// Its role (see [`Role`]).
    pub role: Role,
    stdin: Mutex<Option<Arc<File>>>,
    master: Option<File>,
    st: Mutex<State>,
    limits: Limits,
    on_finish: OnFinish,
}

/// Why EXEC failed; `code` is the ERROR code to send.
#[derive(Debug)]
pub struct SpawnError {
    pub code: &'static str,
    pub message: String,
}

fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

impl Session {
    /// Starts `req` as session `id`. The child runs in a new session and process group
    /// (`setsid(2)`); with `req.tty` it gets a new PTY as controlling terminal (`TIOCSCTTY`),
    /// otherwise three pipes. `argv[0]` is looked up in the session's `PATH`.
    ///
    /// Errors: empty argv, a `cwd` that is not a directory, a PTY that cannot be opened, or
    /// `execve(2)` failing (message `"<argv0>: <strerror>"`, e.g.
    /// `"nosuch: No such file or directory"`).
    pub fn spawn(
        id: u32,
        req: &Exec,
        limits: Limits,
        on_finish: OnFinish,
    ) -> Result<Arc<Session>, SpawnError> {
        let fail = |code: &'static str, message: String| SpawnError { code, message };
        let argv0 = req
            .argv
            .first()
            .ok_or_else(|| fail("exec_failed", "empty argv".into()))?;
        let cwd = req.cwd.clone().unwrap_or_else(|| "/".into());
        match std::fs::metadata(&cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(fail("exec_failed", format!("cwd {cwd}: Not a directory"))),
            Err(e) => {
                return Err(fail(
                    "exec_failed",
                    format!("cwd {cwd}: {}", errno_text(&e)),
                ))
            }
        }
        let mut cmd = Command::new(argv0);
        cmd.args(&req.argv[1..]).env_clear().current_dir(&cwd);
        for (k, v) in BASE_ENV {
            cmd.env(k, v);
        }
        cmd.env(
            "TERM",
            if req.tty.is_some() {
                "xterm-256color"
            } else {
                "dumb"
            },
        );
        cmd.envs(&req.env);

        let pty = match req.tty {
            Some(size) => {
                Some(pty::open(size).map_err(|e| fail("internal", format!("openpty: {e}")))?)
            }
            None => None,
        };
        let tty = pty.is_some();
        if let Some(p) = &pty {
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|e| fail("internal", format!("dup: {e}")))
            };
            cmd.stdin(Stdio::from(dup(&p.slave)?))
                .stdout(Stdio::from(dup(&p.slave)?))
                .stderr(Stdio::from(dup(&p.slave)?));
            // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: only setsid(2) between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }

        let role = req.role;
        let spawned = reaper::spawn(move || {
            let mut child = cmd.spawn()?;
            drop(cmd); // closes our copies of the PTY slave
            let pid = child.id() as i32;
            let (stdin, master, streams): Wiring = match pty {
                Some(p) => {
                    drop(p.slave);
                    let input = p.master.try_clone()?;
                    let reader = p.master.try_clone()?;
                    (Some(Arc::new(input)), Some(p.master), vec![(false, reader)])
                }
                None => {
                    let i = child
                        .stdin
                        .take()
                        .map(|s| Arc::new(File::from(OwnedFd::from(s))));
                    let o = File::from(OwnedFd::from(child.stdout.take().expect("piped")));
                    let e = File::from(OwnedFd::from(child.stderr.take().expect("piped")));
                    (i, None, vec![(false, o), (true, e)])
                }
            };
            let sess = Arc::new(Session {
                id,
                pid,
                tty,
                role,
                stdin: Mutex::new(stdin),
                master,
                st: Mutex::new(State {
                    retained: Retained::default(),
                    subs: Vec::new(),
                    exit: None,
                    open_streams: streams.len() as u32,
                    finished: false,
                    attached: 0,
                }),
                limits,
                on_finish,
            });
            for (is_err, f) in streams {
                let s = sess.clone();
                std::thread::Builder::new()
                    .name(format!("s{id}-{}", if is_err { "err" } else { "out" }))
                    .spawn(move || pump(s, f, is_err))?;
            }
            let s = sess.clone();
            let on_exit: reaper::OnExit = Box::new(move |st| Session::exited(&s, st));
            Ok((pid, sess, on_exit))
        });
        match spawned {
            Ok((_, s)) => Ok(s),
            Err(e) => Err(fail("exec_failed", format!("{argv0}: {}", errno_text(&e)))),
        }
    }

    fn exited(self: &Arc<Self>, st: ExitStatus) {
        let exit = match st {
            ExitStatus::Code(c) => Exit {
                code: Some(c),
                signal: None,
            },
            ExitStatus::Signal(s) => Exit {
                code: None,
                signal: Some(s),
            },
        };
        log::info!("session {} (pid {}) ended: {:?}", self.id, self.pid, exit);
        // The process is gone: its stdin is useless now.
        lock(&self.stdin).take();
        let mut g = lock(&self.st);
        g.exit = Some(exit);
        if g.open_streams == 0 {
            self.finish(g);
        } else {
            drop(g);
            let s = self.clone();
            let grace = self.limits.drain_grace;
            let _ = std::thread::Builder::new()
                .name("drain".into())
                .spawn(move || {
                    std::thread::sleep(grace);
                    let g = lock(&s.st);
                    if !g.finished {
                        log::info!(
                            "session {}: output still open {grace:?} after exit; sending EXIT",
                            s.id
                        );
                    }
                    s.finish(g);
                });
        }
    }

    fn finish(&self, mut g: MutexGuard<'_, State>) {
        let exit = match (g.finished, g.exit) {
            (false, Some(e)) => e,
            _ => return,
        };
        g.finished = true;
        for sub in g.subs.drain(..) {
            sub.outbox.push_final(Frame::Exit(exit));
        }
        drop(g);
        (self.on_finish)(self, exit);
    }

    fn output(&self, stderr: bool, data: &[u8]) {
        let mut g = lock(&self.st);
        g.retained.push(stderr, data);
        let frame = if stderr {
            Frame::Stderr(data.to_vec())
        } else {
            Frame::Stdout(data.to_vec())
        };
        g.subs.retain(|s| !s.output || s.outbox.push(frame.clone()));
    }

    fn stream_eof(&self) {
        let mut g = lock(&self.st);
        g.open_streams = g.open_streams.saturating_sub(1);
        if g.open_streams == 0 {
            self.finish(g);
        }
    }

    /// Whether the session has finished (EXIT was or would be sent).
    pub fn exit(&self) -> Option<Exit> {
        let g = lock(&self.st);
        if g.finished {
            g.exit
        } else {
            None
        }
    }

    /// Subscribes connection `conn` to this session.
    ///
    /// Queues, in order: `STARTED` if `started`; the retained output if `replay`; then, if
    /// the session already finished, `EXIT` as the final frame. Otherwise the connection
    /// stays subscribed: live output if `output` (EXEC/ATTACH; it then counts as attached
    /// until [`Session::detach`]), and `EXIT` when the session finishes. Done under the
    /// session lock, so no output is lost or duplicated between replay and live output.
    pub fn subscribe(
        &self,
        conn: u64,
        outbox: &Arc<Outbox>,
        started: bool,
        replay: bool,
        output: bool,
    ) {
        let mut g = lock(&self.st);
        if started {
            outbox.push_forced(Frame::Started(crate::proto::Started {
                session: self.id,
                pid: self.pid,
                tty: self.tty,
            }));
        }
        if replay {
            for f in g.retained.frames() {
                outbox.push_forced(f);
            }
        }
        if output {
            g.attached += 1;
        }
        if g.finished {
            outbox.push_final(Frame::Exit(g.exit.expect("finished sessions have an exit")));
            return;
        }
        g.subs.push(Sub {
            conn,
            outbox: outbox.clone(),
            output,
        });
    }

    /// Unsubscribes connection `conn`. `output` must be what it subscribed with. When the
    /// last attached connection of a running [`Role::Aux`] session detaches, its process
    /// group gets `SIGHUP`.
    pub fn detach(&self, conn: u64, output: bool) {
        let mut g = lock(&self.st);
        g.subs.retain(|s| s.conn != conn);
        if !output {
            return;
        }
        g.attached = g.attached.saturating_sub(1);
        if g.attached == 0 && g.exit.is_none() && self.role == Role::Aux {
            log::info!("session {}: last client gone, sending SIGHUP", self.id);
            // SAFETY: kill(2) on the session's own process group.
            unsafe { libc::kill(-self.pid, libc::SIGHUP) };
        }
    }

    /// Writes `data` to the process's stdin. An empty `data` closes stdin (pipes); on a PTY
    /// it is ignored (send `^D` as data for the line discipline's end-of-file). Writes to a
    /// process that has exited or closed stdin are dropped.
    pub fn stdin(&self, data: &[u8]) {
        if data.is_empty() {
            if !self.tty {
                lock(&self.stdin).take();
            }
            return;
        }
        let f = lock(&self.stdin).clone();
        if let Some(f) = f {
            if let Err(e) = (&*f).write_all(data) {
                log::debug!("session {}: stdin: {e}", self.id);
            }
        }
    }

    /// Sets the PTY's window size (`TIOCSWINSZ`); ignored for pipe sessions.
    pub fn resize(&self, size: WinSize) {
        if let Some(m) = &self.master {
            if let Err(e) = pty::set_size(m, size) {
                log::warn!("session {}: resize: {e}", self.id);
            }
        }
    }

    /// Sends signal `sig` (1..=64) to the session's process group; ignored once the process
    /// has exited (its process group id may be reused) or for an out-of-range number.
    pub fn signal(&self, sig: i32) {
        if !(1..=64).contains(&sig) {
            log::warn!("session {}: ignoring signal {sig}", self.id);
            return;
        }
        let g = lock(&self.st);
        if g.exit.is_none() {
            // SAFETY: kill(2) on the session's own process group.
            unsafe { libc::kill(-self.pid, sig) };
        }
    }

    /// Raw fd of the PTY master, if any (for tests and diagnostics).
    pub fn master_fd(&self) -> Option<i32> {
        self.master.as_ref().map(|m| m.as_raw_fd())
    }
}

/// Reads one output stream until EOF (or `EIO`, which a PTY master returns once every slave
/// fd is closed), feeding the session.
fn pump(sess: Arc<Session>, mut f: File, stderr: bool) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sess.output(stderr, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.raw_os_error() != Some(libc::EIO) {
                    log::warn!("session {}: read: {e}", sess.id);
                }
                break;
            }
        }
    }
    sess.stream_eof();
}
