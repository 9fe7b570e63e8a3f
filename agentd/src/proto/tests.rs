use super::*;
use std::collections::BTreeMap;
use std::io::Cursor;

fn roundtrip(f: Frame) {
    let bytes = f.encode();
    let back = read_frame(&mut Cursor::new(&bytes)).expect("decodes");
    assert_eq!(back, f);
}

#[test]
fn every_kind_roundtrips() {
    let mut env = BTreeMap::new();
    env.insert("A".to_string(), "b c".to_string());
    for f in [
        Frame::Hello(Hello {
            versions: vec![1, 2],
            client: "t".into(),
        }),
        Frame::HelloOk(HelloOk {
            version: 1,
            agentd_version: "0.1.0".into(),
            guest: GuestInfo {
                hostname: "h".into(),
                pid: 1,
                ..Default::default()
            },
        }),
        Frame::Exec(Exec {
            argv: vec!["sh".into(), "-c".into(), "exit 7".into()],
            env,
            cwd: Some("/tmp".into()),
            tty: Some(WinSize { rows: 24, cols: 80 }),
            role: Role::Primary,
        }),
        Frame::Attach(Attach {
            session: None,
            replay: true,
        }),
        Frame::Started(Started {
            session: 3,
            pid: 42,
            tty: false,
        }),
        Frame::Wait(Wait { session: Some(3) }),
        Frame::Shutdown(Shutdown { reboot: false }),
        Frame::Ok,
        Frame::Setup(Setup {
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n".into()),
            env: BTreeMap::from([("K".to_string(), "ph".to_string())]),
        }),
        Frame::Setup(Setup::default()),
        Frame::Stdin(vec![]),
        Frame::Stdin(b"in".to_vec()),
        Frame::Stdout(vec![0, 255, 10]),
        Frame::Stderr(b"err".to_vec()),
        Frame::Resize(WinSize {
            rows: 50,
            cols: 132,
        }),
        Frame::Signal(Signal { signal: 15 }),
        Frame::Exit(Exit {
            code: Some(7),
            signal: None,
        }),
        Frame::error("bad_json", "nope"),
    ] {
        roundtrip(f);
    }
}

#[test]
fn wire_layout_is_len_kind_payload() {
    let b = Frame::Stdout(b"hi".to_vec()).encode();
    assert_eq!(b, vec![3, 0, 0, 0, 0x11, b'h', b'i']);
    assert_eq!(Frame::Ok.encode(), vec![1, 0, 0, 0, 0x08]);
    assert_eq!(Frame::Setup(Setup::default()).encode()[4], 0x09);
    // Both fields are optional on the wire.
    assert_eq!(
        Frame::decode(0x09, b"{}").unwrap(),
        Frame::Setup(Setup::default())
    );
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0, 0, 0, 0, 1], "bad_frame"),               // len 0
        (vec![0xff, 0xff, 0xff, 0xff, 1], "bad_frame"),   // huge len
        (vec![1, 0, 0, 0, 0x55], "unknown_kind"),         // unknown kind
        (vec![3, 0, 0, 0, 0x01, b'{', b'x'], "bad_json"), // bad json
        (vec![10, 0, 0, 0, 0x11, 1], "bad_frame"),        // truncated
        (vec![2, 0], "bad_frame"),                        // truncated header
    ];
    for (bytes, code) in cases {
        let e = read_frame(&mut Cursor::new(&bytes)).unwrap_err();
        assert_eq!(e.code(), code, "{bytes:?}: {e}");
    }
    assert!(matches!(
        read_frame(&mut Cursor::new(&[] as &[u8])),
        Err(ProtoError::Closed)
    ));
}

#[test]
fn negotiation_picks_newest_common() {
    assert_eq!(negotiate(&[1]), Some(1));
    assert_eq!(negotiate(&[9, 1]), Some(1));
    assert_eq!(negotiate(&[9]), None);
}

#[test]
fn exit_shell_code() {
    assert_eq!(
        Exit {
            code: Some(7),
            signal: None
        }
        .shell_code(),
        7
    );
    assert_eq!(
        Exit {
            code: None,
            signal: Some(9)
        }
        .shell_code(),
        137
    );
}
