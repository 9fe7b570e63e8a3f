//! The control protocol server (`docs/protocol.md`): one HELLO, then one request per
//! connection, served over any connected byte stream.
//!
//! Each connection gets a reader thread (parses frames, runs the request) and a writer thread
//! (drains the connection's [`Outbox`]). Handlers run under `catch_unwind`: a bug in one
//! connection logs, closes that connection and leaves every other connection and session
//! alone. The server never powers anything off itself; it reports [`Event`]s to its owner.

use crate::outbox::{Outbox, DEFAULT_BUDGET};
use crate::proto::{self, read_frame, write_frame, Frame, GuestInfo, HelloOk, ProtoError, Role};
use crate::session::{Limits, Session};
use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

/// A connected, bidirectional byte stream the server can serve (a `UnixStream` on the host,
/// an `AF_VSOCK` stream in the guest).
pub trait Stream: Read + Write + Send + Sync + Sized + 'static {
    /// A second handle to the same connection (`dup(2)`).
    fn try_clone(&self) -> io::Result<Self>;
    /// `shutdown(2)` both directions; wakes a thread blocked reading or writing it.
    fn shutdown(&self);
}

impl Stream for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self) {
        let _ = UnixStream::shutdown(self, std::net::Shutdown::Both);
    }
}

/// What the server asks of its owner (PID 1 turns these into the power-off sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A client sent SHUTDOWN (and was answered OK).
    Shutdown { reboot: bool },
    /// The primary session finished; EXIT has been queued to its clients.
    PrimaryExited(proto::Exit),
}

/// Applies a SETUP's guest-wide part (in the guest: the CA into the trust store) and returns
/// environment variables to add for every later session; `Err` is sent as `setup_failed`.
pub type SetupHook = fn(&proto::Setup) -> Result<BTreeMap<String, String>, String>;

/// Server settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// CLOCK_BOOTTIME milliseconds at which the server became ready (`GuestInfo::ready_ms`).
    pub ready_ms: u64,
    /// CLOCK_BOOTTIME milliseconds at which agentd started (`GuestInfo::init_ms`).
    pub init_ms: u64,
    /// Per-connection outgoing queue budget, in bytes (see [`Outbox`]).
    pub outbox_budget: usize,
    /// Session tunables.
    pub limits: Limits,
    /// What SETUP does beyond storing its `env` (PID 1 installs the CA); `None`: SETUP only
    /// stores the environment (host tests).
    pub setup_hook: Option<SetupHook>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ready_ms: boottime_ms(),
            init_ms: 0,
            outbox_budget: DEFAULT_BUDGET,
            limits: Limits::default(),
            setup_hook: None,
        }
    }
}

#[derive(Default)]
struct Registry {
    sessions: BTreeMap<u32, Arc<Session>>,
    next_id: u32,
    primary: Option<u32>,
}

struct Inner {
    reg: Mutex<Registry>,
    /// Environment from the last SETUP, under every later session's EXEC `env`.
    setup_env: Mutex<BTreeMap<String, String>>,
    events: Mutex<Sender<Event>>,
    cfg: Config,
    next_conn: AtomicU64,
}

/// The control protocol server. Cheap to clone; all clones share sessions.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds of CLOCK_BOOTTIME (clock_gettime(2)).
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn cstr_field(b: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = b
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Facts about the running system for HELLO_OK (uname(2), gethostname(2), CLOCK_BOOTTIME).
pub fn guest_info(init_ms: u64, ready_ms: u64) -> GuestInfo {
    // SAFETY: uname fills a zeroed utsname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    GuestInfo {
        hostname: cstr_field(&u.nodename),
        kernel_release: cstr_field(&u.release),
        machine: cstr_field(&u.machine),
        uptime_ms: boottime_ms(),
        init_ms,
        ready_ms,
        pid: std::process::id() as i32,
    }
}

impl Server {
    /// A server with no sessions; events go to `events` (a closed receiver is fine).
    pub fn new(cfg: Config, events: Sender<Event>) -> Server {
        Server {
            inner: Arc::new(Inner {
                reg: Mutex::new(Registry {
                    next_id: 1,
                    ..Default::default()
                }),
                setup_env: Mutex::new(BTreeMap::new()),
                events: Mutex::new(events),
                cfg,
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// Accepts connections on `listener` forever, serving each with [`Server::serve`].
    pub fn serve_unix(&self, listener: UnixListener) -> io::Result<()> {
        loop {
            match listener.accept() {
                Ok((s, _)) => self.serve(s),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }

    /// Serves one connection on new threads; returns at once.
    pub fn serve<S: Stream>(&self, stream: S) {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (writer, closer) = match (stream.try_clone(), stream.try_clone()) {
            (Ok(w), Ok(c)) => (w, c),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("conn {id}: dup: {e}");
                return;
            }
        };
        let outbox = Arc::new(Outbox::new(
            self.inner.cfg.outbox_budget,
            Box::new(move || closer.shutdown()),
        ));
        let ob = outbox.clone();
        let w = std::thread::Builder::new()
            .name(format!("c{id}-w"))
            .spawn(move || {
                let mut writer = writer;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    while let Some(f) = ob.pop() {
                        if let Err(e) = write_frame(&mut writer, &f) {
                            log::debug!("conn {id}: write: {e}");
                            ob.abort();
                            return;
                        }
                    }
                }));
                if r.is_err() {
                    log::error!("conn {id}: writer panicked");
                }
                ob.shutdown_socket();
            });
        if let Err(e) = w {
            log::error!("conn {id}: spawn writer: {e}");
            return;
        }
        let inner = self.inner.clone();
        let r = std::thread::Builder::new()
            .name(format!("c{id}-r"))
            .spawn(move || {
                let ob = outbox.clone();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Conn {
                        id,
                        inner: &inner,
                        outbox: &ob,
                    }
                    .run(BufReader::new(stream))
                }));
                if r.is_err() {
                    log::error!("conn {id}: handler panicked; closing the connection");
                    outbox.push_final(Frame::error(
                        "internal",
                        "agentd bug: connection handler panicked",
                    ));
                }
                // Whatever happened, the writer drains what is queued and closes the socket.
                outbox.close();
            });
        if let Err(e) = r {
            log::error!("conn {id}: spawn reader: {e}");
        }
    }

    /// The session with `id`, or the primary session for `None`.
    pub fn session(&self, id: Option<u32>) -> Option<Arc<Session>> {
        let reg = lock(&self.inner.reg);
        let id = id.or(reg.primary)?;
        reg.sessions.get(&id).cloned()
    }
}

struct Conn<'a> {
    id: u64,
    inner: &'a Arc<Inner>,
    outbox: &'a Arc<Outbox>,
}

impl Conn<'_> {
    fn fail(&self, code: &str, message: String) {
        log::warn!("conn {}: {code}: {message}", self.id);
        self.outbox.push_final(Frame::error(code, message));
    }

    fn proto_fail(&self, e: ProtoError) {
        match e {
            ProtoError::Closed => {}
            // Our own writer closed the socket after a final frame, or the peer vanished.
            ProtoError::Io(_) if self.outbox.is_closed() => {}
            e => self.fail(e.code(), e.to_string()),
        }
    }

    fn run<R: Read>(&self, mut r: R) {
        let hello = match read_frame(&mut r) {
            Ok(Frame::Hello(h)) => h,
            Ok(f) => {
                return self.fail(
                    "unexpected",
                    format!("expected HELLO first, got {:?}", f.kind()),
                )
            }
            Err(e) => return self.proto_fail(e),
        };
        let Some(version) = proto::negotiate(&hello.versions) else {
            return self.fail(
                "unsupported_version",
                format!(
                    "agentd speaks protocol versions {:?}, client offered {:?}",
                    proto::VERSIONS,
                    hello.versions
                ),
            );
        };
        log::debug!(
            "conn {}: hello from {:?}, version {version}",
            self.id,
            hello.client
        );
        self.outbox.push_forced(Frame::HelloOk(HelloOk {
            version,
            agentd_version: env!("CARGO_PKG_VERSION").to_string(),
            guest: guest_info(self.inner.cfg.init_ms, self.inner.cfg.ready_ms),
        }));
        match read_frame(&mut r) {
            Ok(Frame::Exec(req)) => match self.exec(&req) {
                Ok(s) => {
                    // replay: output produced before this subscription belongs to this client.
                    s.subscribe(self.id, self.outbox, true, true, true);
                    self.stream(r, &s);
                }
                Err(e) => self.fail(e.code, e.message),
            },
            Ok(Frame::Attach(a)) => match self.lookup(a.session) {
                Some(s) => {
                    s.subscribe(self.id, self.outbox, true, a.replay, true);
                    self.stream(r, &s);
                }
                None => self.no_session(a.session),
            },
            Ok(Frame::Wait(w)) => match self.lookup(w.session) {
                Some(s) => {
                    s.subscribe(self.id, self.outbox, false, false, false);
                    match read_frame(&mut r) {
                        Ok(f) => self.fail("unexpected", format!("{:?} after WAIT", f.kind())),
                        Err(e) => self.proto_fail(e),
                    }
                    s.detach(self.id, false);
                }
                None => self.no_session(w.session),
            },
            Ok(Frame::Shutdown(sd)) => {
                log::info!("conn {}: SHUTDOWN (reboot: {})", self.id, sd.reboot);
                self.outbox.push_final(Frame::Ok);
                let _ = lock(&self.inner.events).send(Event::Shutdown { reboot: sd.reboot });
            }
            Ok(Frame::Setup(setup)) => {
                let hook_env = match self.inner.cfg.setup_hook {
                    Some(hook) => match hook(&setup) {
                        Ok(env) => env,
                        Err(e) => return self.fail("setup_failed", e),
                    },
                    None => BTreeMap::new(),
                };
                let mut env = hook_env;
                env.extend(setup.env);
                log::info!(
                    "conn {}: SETUP: CA {}, {} environment variables for later sessions",
                    self.id,
                    if setup.ca_pem.is_some() {
                        "installed"
                    } else {
                        "none"
                    },
                    env.len()
                );
                *lock(&self.inner.setup_env) = env;
                self.outbox.push_final(Frame::Ok);
            }
            Ok(f) => self.fail(
                "unexpected",
                format!(
                    "{:?} before EXEC, ATTACH, WAIT, SHUTDOWN or SETUP",
                    f.kind()
                ),
            ),
            Err(e) => self.proto_fail(e),
        }
    }

    fn lookup(&self, id: Option<u32>) -> Option<Arc<Session>> {
        let reg = lock(&self.inner.reg);
        let id = id.or(reg.primary)?;
        reg.sessions.get(&id).cloned()
    }

    fn no_session(&self, id: Option<u32>) {
        match id {
            Some(id) => self.fail("no_session", format!("no session {id}")),
            None => self.fail("no_session", "no primary session".into()),
        }
    }

    fn exec(&self, req: &proto::Exec) -> Result<Arc<Session>, crate::session::SpawnError> {
        let mut reg = lock(&self.inner.reg);
        if req.role == Role::Primary {
            if let Some(p) = reg.primary {
                return Err(crate::session::SpawnError {
                    code: "busy",
                    message: format!("a primary session already exists (session {p})"),
                });
            }
        }
        let id = reg.next_id;
        let events = self
            .inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let on_finish: crate::session::OnFinish = Box::new(move |s, exit| {
            if s.role == Role::Primary {
                let _ = events.send(Event::PrimaryExited(exit));
            }
        });
        // SETUP's environment under EXEC's own.
        let mut req = req.clone();
        let mut env = lock(&self.inner.setup_env).clone();
        env.append(&mut req.env);
        req.env = env;
        let req = &req;
        let s = Session::spawn(id, req, self.inner.cfg.limits, on_finish)?;
        log::info!(
            "conn {}: session {id} pid {} {:?} tty={} role={:?}",
            self.id,
            s.pid,
            req.argv,
            s.tty,
            s.role
        );
        reg.next_id += 1;
        if req.role == Role::Primary {
            reg.primary = Some(id);
        }
        reg.sessions.insert(id, s.clone());
        Ok(s)
    }

    /// The streaming phase of EXEC/ATTACH: STDIN, RESIZE and SIGNAL until the client closes
    /// (detach) or the session's EXIT closes the connection.
    fn stream<R: Read>(&self, mut r: R, s: &Arc<Session>) {
        loop {
            match read_frame(&mut r) {
                Ok(Frame::Stdin(d)) => s.stdin(&d),
                Ok(Frame::Resize(ws)) => s.resize(ws),
                Ok(Frame::Signal(sig)) => s.signal(sig.signal),
                Ok(f) => {
                    self.fail("unexpected", format!("{:?} while attached", f.kind()));
                    break;
                }
                Err(e) => {
                    self.proto_fail(e);
                    break;
                }
            }
        }
        s.detach(self.id, true);
    }
}
