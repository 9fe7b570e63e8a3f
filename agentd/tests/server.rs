//! Host-side tests of the control protocol server: real processes, real PTYs, over
//! socketpairs instead of vsock.

use agentd::proto::*;
use agentd::server::{Config, Event, Server};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

struct Client {
    s: UnixStream,
}

fn server() -> (Server, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    (Server::new(Config::default(), tx), rx)
}

impl Client {
    fn raw(srv: &Server) -> Client {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        srv.serve(a);
        Client { s: b }
    }
    fn new(srv: &Server) -> Client {
        let mut c = Client::raw(srv);
        c.send(Frame::Hello(Hello {
            versions: vec![1],
            client: "test".into(),
        }));
        match c.recv() {
            Frame::HelloOk(h) => {
                assert_eq!(h.version, 1);
                assert_eq!(h.guest.pid, std::process::id() as i32);
                assert!(!h.guest.kernel_release.is_empty());
            }
            f => panic!("expected HELLO_OK, got {f:?}"),
        }
        c
    }
    fn send(&mut self, f: Frame) {
        write_frame(&mut self.s, &f).unwrap();
    }
    fn recv(&mut self) -> Frame {
        read_frame(&mut self.s).unwrap()
    }
    fn exec(srv: &Server, e: Exec) -> (Client, Started) {
        let mut c = Client::new(srv);
        c.send(Frame::Exec(e));
        match c.recv() {
            Frame::Started(s) => (c, s),
            f => panic!("expected STARTED, got {f:?}"),
        }
    }
    /// Collects output until EXIT; checks the connection is closed after it.
    fn drain(&mut self) -> (Vec<u8>, Vec<u8>, Exit) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match self.recv() {
                Frame::Stdout(b) => out.extend(b),
                Frame::Stderr(b) => err.extend(b),
                Frame::Exit(e) => {
                    assert!(matches!(read_frame(&mut self.s), Err(ProtoError::Closed)));
                    return (out, err, e);
                }
                f => panic!("unexpected {f:?}"),
            }
        }
    }
    /// Reads output until `needle` has appeared.
    fn until(&mut self, needle: &str) -> String {
        let mut all = Vec::new();
        while !String::from_utf8_lossy(&all).contains(needle) {
            match self.recv() {
                Frame::Stdout(b) | Frame::Stderr(b) => all.extend(b),
                f => panic!(
                    "waiting for {needle:?} in {:?}, got {f:?}",
                    String::from_utf8_lossy(&all)
                ),
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    }
}

fn sh(script: &str) -> Exec {
    Exec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: Default::default(),
        cwd: None,
        tty: None,
        role: Role::Aux,
    }
}

#[test]
fn exec_streams_stdout_stderr_and_exit_code() {
    let (srv, _rx) = server();
    let (mut c, st) = Client::exec(&srv, sh("echo out; echo err >&2; exit 7"));
    assert!(!st.tty && st.pid > 0 && st.session >= 1);
    let (out, err, exit) = c.drain();
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert_eq!(
        exit,
        Exit {
            code: Some(7),
            signal: None
        }
    );
}

#[test]
fn env_cwd_and_base_environment() {
    let (srv, _rx) = server();
    let mut e = sh("echo \"$FOO|$HOME|$TERM|$LANG|$(pwd)\"");
    e.env.insert("FOO".into(), "bar".into());
    e.cwd = Some("/tmp".into());
    let (mut c, _) = Client::exec(&srv, e);
    let (out, _, exit) = c.drain();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "bar|/root|dumb|C.UTF-8|/tmp\n"
    );
    assert_eq!(exit.code, Some(0));
}

#[test]
fn stdin_is_piped_and_empty_frame_closes_it() {
    let (srv, _rx) = server();
    let (mut c, _) = Client::exec(
        &srv,
        Exec {
            argv: vec!["cat".into()],
            ..sh("")
        },
    );
    c.send(Frame::Stdin(b"hello ".to_vec()));
    c.send(Frame::Stdin(b"world\n".to_vec()));
    c.send(Frame::Stdin(vec![]));
    let (out, _, exit) = c.drain();
    assert_eq!(out, b"hello world\n");
    assert_eq!(exit.code, Some(0));
}

#[test]
fn exec_failure_is_an_error() {
    let (srv, _rx) = server();
    let mut c = Client::new(&srv);
    c.send(Frame::Exec(Exec {
        argv: vec!["no-such-command-ax".into()],
        ..sh("")
    }));
    match c.recv() {
        Frame::Error(e) => {
            assert_eq!(e.code, "exec_failed");
            assert_eq!(e.message, "no-such-command-ax: No such file or directory");
        }
        f => panic!("{f:?}"),
    }
    let mut c = Client::new(&srv);
    c.send(Frame::Exec(Exec {
        cwd: Some("/no/such/dir".into()),
        ..sh("true")
    }));
    match c.recv() {
        Frame::Error(e) => assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("exec_failed", "cwd /no/such/dir: No such file or directory")
        ),
        f => panic!("{f:?}"),
    }
    // The server still works.
    let (mut c, _) = Client::exec(&srv, sh("exit 3"));
    assert_eq!(c.drain().2.code, Some(3));
}

#[test]
fn pty_session_is_a_tty_and_resize_is_seen() {
    let (srv, _rx) = server();
    let mut e = sh("[ -t 0 ] && echo IS-TTY; echo \"T=$TERM\"; stty size; read x; stty size");
    e.tty = Some(WinSize { rows: 24, cols: 80 });
    let (mut c, st) = Client::exec(&srv, e);
    assert!(st.tty);
    let got = c.until("24 80");
    assert!(got.contains("IS-TTY"), "{got:?}");
    assert!(got.contains("T=xterm-256color"), "{got:?}");
    c.send(Frame::Resize(WinSize {
        rows: 50,
        cols: 132,
    }));
    c.send(Frame::Stdin(b"\n".to_vec()));
    let (out, _, exit) = c.drain();
    assert!(
        String::from_utf8_lossy(&out).contains("50 132"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(exit.code, Some(0));
}

#[test]
fn attach_replays_and_broadcasts() {
    let (srv, _rx) = server();
    let (mut a, st) = Client::exec(&srv, sh("echo first; read x; echo second; exit 4"));
    a.until("first");
    let mut b = Client::new(&srv);
    b.send(Frame::Attach(Attach {
        session: Some(st.session),
        replay: true,
    }));
    assert_eq!(b.recv(), Frame::Started(st.clone()));
    assert_eq!(b.until("first"), "first\n");
    // Either attached client may type.
    b.send(Frame::Stdin(b"\n".to_vec()));
    for c in [&mut a, &mut b] {
        let (out, _, exit) = c.drain();
        assert_eq!(out, b"second\n");
        assert_eq!(exit.code, Some(4));
    }
    // Attaching to an ended session: STARTED, replay, EXIT.
    let mut c = Client::new(&srv);
    c.send(Frame::Attach(Attach {
        session: Some(st.session),
        replay: true,
    }));
    assert_eq!(c.recv(), Frame::Started(st.clone()));
    let (out, _, exit) = c.drain();
    assert_eq!(out, b"first\nsecond\n");
    assert_eq!(exit.code, Some(4));
}

#[test]
fn signal_reaches_the_process_group() {
    let (srv, _rx) = server();
    let (mut c, _) = Client::exec(
        &srv,
        Exec {
            argv: vec!["sleep".into(), "100".into()],
            ..sh("")
        },
    );
    c.send(Frame::Signal(Signal { signal: 15 }));
    let (_, _, exit) = c.drain();
    assert_eq!(
        exit,
        Exit {
            code: None,
            signal: Some(15)
        }
    );
}

#[test]
fn aux_gets_sighup_when_last_client_leaves_and_wait_reports_it() {
    let (srv, _rx) = server();
    let (c, st) = Client::exec(
        &srv,
        Exec {
            argv: vec!["sleep".into(), "100".into()],
            ..sh("")
        },
    );
    let mut w = Client::new(&srv);
    w.send(Frame::Wait(Wait {
        session: Some(st.session),
    }));
    drop(c);
    assert_eq!(
        w.recv(),
        Frame::Exit(Exit {
            code: None,
            signal: Some(libc::SIGHUP)
        })
    );
    // WAIT on an ended session answers at once.
    let mut w = Client::new(&srv);
    w.send(Frame::Wait(Wait {
        session: Some(st.session),
    }));
    assert_eq!(
        w.recv(),
        Frame::Exit(Exit {
            code: None,
            signal: Some(libc::SIGHUP)
        })
    );
}

#[test]
fn primary_survives_detach_is_unique_and_reports_exit() {
    let (srv, rx) = server();
    let mut e = sh("read x; echo bye; exit 5");
    e.role = Role::Primary;
    let (c, st) = Client::exec(&srv, e.clone());
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    // A second primary is refused.
    let mut c2 = Client::new(&srv);
    c2.send(Frame::Exec(e));
    match c2.recv() {
        Frame::Error(er) => assert_eq!(er.code, "busy"),
        f => panic!("{f:?}"),
    }
    // Re-attach to the primary (session None) and finish it.
    let mut a = Client::new(&srv);
    a.send(Frame::Attach(Attach {
        session: None,
        replay: false,
    }));
    assert_eq!(a.recv(), Frame::Started(st.clone()));
    a.send(Frame::Stdin(b"\n".to_vec()));
    let (out, _, exit) = a.drain();
    assert_eq!((out.as_slice(), exit.code), (&b"bye\n"[..], Some(5)));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Event::PrimaryExited(exit)
    );
}

#[test]
fn protocol_errors_close_only_that_connection() {
    let (srv, rx) = server();
    let (mut live, _) = Client::exec(&srv, sh("read x; echo alive"));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0, 0, 0, 0, 1], "bad_frame"),
        (vec![1, 0, 0, 0, 0x55], "unknown_kind"),
        (vec![3, 0, 0, 0, 0x01, b'{', b'x'], "bad_json"),
        (Frame::Ok.encode(), "unexpected"),
    ];
    for (bytes, code) in cases {
        let mut c = Client::raw(&srv);
        c.s.write_all(&bytes).unwrap();
        match c.recv() {
            Frame::Error(e) => assert_eq!(e.code, code, "{bytes:?}: {e:?}"),
            f => panic!("{f:?}"),
        }
        assert!(matches!(read_frame(&mut c.s), Err(ProtoError::Closed)));
    }
    // Unsupported version.
    let mut c = Client::raw(&srv);
    c.send(Frame::Hello(Hello {
        versions: vec![99],
        client: String::new(),
    }));
    match c.recv() {
        Frame::Error(e) => assert_eq!(e.code, "unsupported_version"),
        f => panic!("{f:?}"),
    }
    // Out of order after HELLO; and a bad frame in the streaming phase.
    let mut c = Client::new(&srv);
    c.send(Frame::Stdin(b"x".to_vec()));
    assert!(matches!(c.recv(), Frame::Error(e) if e.code == "unexpected"));
    let (mut c, _) = Client::exec(
        &srv,
        Exec {
            argv: vec!["sleep".into(), "100".into()],
            ..sh("")
        },
    );
    c.send(Frame::Hello(Hello {
        versions: vec![1],
        client: String::new(),
    }));
    assert!(matches!(c.recv(), Frame::Error(e) if e.code == "unexpected"));
    // The first session was never disturbed.
    live.send(Frame::Stdin(b"\n".to_vec()));
    let (out, _, exit) = live.drain();
    assert_eq!((out.as_slice(), exit.code), (&b"alive\n"[..], Some(0)));
    assert!(rx.try_recv().is_err());
}

#[test]
fn shutdown_is_acknowledged_and_reported() {
    let (srv, rx) = server();
    let mut c = Client::new(&srv);
    c.send(Frame::Shutdown(Shutdown { reboot: true }));
    assert_eq!(c.recv(), Frame::Ok);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        Event::Shutdown { reboot: true }
    );
}

#[test]
fn setup_env_reaches_later_sessions_under_exec_env() {
    let (srv, _rx) = server();
    let mut c = Client::new(&srv);
    c.send(Frame::Setup(Setup {
        ca_pem: None,
        env: [("KEY", "placeholder"), ("FOO", "from-setup")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }));
    assert_eq!(c.recv(), Frame::Ok);
    assert!(matches!(read_frame(&mut c.s), Err(ProtoError::Closed)));
    let mut e = sh("echo \"$KEY|$FOO|$HOME\"");
    e.env.insert("FOO".into(), "from-exec".into());
    let (mut c, _) = Client::exec(&srv, e);
    let (out, _, _) = c.drain();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "placeholder|from-exec|/root\n"
    );
}

fn failing_hook(s: &Setup) -> Result<std::collections::BTreeMap<String, String>, String> {
    match &s.ca_pem {
        Some(p) if p.starts_with("-----BEGIN CERTIFICATE-----") => Ok([(
            "SSL_CERT_FILE".to_string(),
            "/etc/ssl/certs/ca-certificates.crt".to_string(),
        )]
        .into()),
        _ => Err("not a PEM certificate".into()),
    }
}

#[test]
fn setup_hook_adds_env_or_fails_the_request() {
    let (tx, _rx) = mpsc::channel();
    let srv = Server::new(
        Config {
            setup_hook: Some(failing_hook),
            ..Config::default()
        },
        tx,
    );
    let mut c = Client::new(&srv);
    c.send(Frame::Setup(Setup {
        ca_pem: Some("garbage".into()),
        env: Default::default(),
    }));
    match c.recv() {
        Frame::Error(e) => {
            assert_eq!(e.code, "setup_failed");
            assert_eq!(e.message, "not a PEM certificate");
        }
        f => panic!("expected ERROR, got {f:?}"),
    }
    let mut c = Client::new(&srv);
    c.send(Frame::Setup(Setup {
        ca_pem: Some("-----BEGIN CERTIFICATE-----\n".into()),
        env: Default::default(),
    }));
    assert_eq!(c.recv(), Frame::Ok);
    let (mut c, _) = Client::exec(&srv, sh("echo \"$SSL_CERT_FILE\""));
    assert_eq!(c.drain().0, b"/etc/ssl/certs/ca-certificates.crt\n");
}

#[test]
fn slow_client_is_dropped_and_never_blocks_the_child() {
    let (tx, _rx) = mpsc::channel();
    let srv = Server::new(
        Config {
            outbox_budget: 256 * 1024,
            ..Config::default()
        },
        tx,
    );
    // 32 MiB of output to a client that never reads. (Primary, so dropping the slow client
    // does not SIGHUP it as it would an Aux session.)
    let mut e = sh("head -c 33554432 /dev/zero; echo done >&2");
    e.role = Role::Primary;
    let (mut slow, st) = Client::exec(&srv, e);
    let mut w = Client::new(&srv);
    w.send(Frame::Wait(Wait {
        session: Some(st.session),
    }));
    assert_eq!(
        w.recv(),
        Frame::Exit(Exit {
            code: Some(0),
            signal: None
        })
    );
    // The slow client was cut off: reading ends before EXIT (queue dropped, socket shut).
    let mut saw_exit = false;
    while let Ok(f) = read_frame(&mut slow.s) {
        saw_exit |= matches!(f, Frame::Exit(_));
    }
    assert!(!saw_exit);
    // The retained buffer keeps only the last 64 KiB, ending with stderr "done\n".
    let mut a = Client::new(&srv);
    a.send(Frame::Attach(Attach {
        session: Some(st.session),
        replay: true,
    }));
    a.recv();
    let (out, err, _) = a.drain();
    assert_eq!(out.len() + err.len(), 64 * 1024);
    assert_eq!(err, b"done\n");
}
