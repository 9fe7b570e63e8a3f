//! Store, lookup and mask tests against real files in temp dirs.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

fn req(name: &str, optional: bool) -> SecretReq {
    SecretReq {
        name: name.into(),
        hosts: vec!["api.example.com".into()],
        env: None,
        optional,
        body: false,
    }
}

fn store() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ax/secrets.toml");
    (d, p)
}

#[test]
fn masks_show_prefix_and_at_most_four_chars() {
    assert_eq!(mask("sk-ant-api03-AAAAAAAAAAAAAAAAf3a9"), "sk-ant-…f3a9");
    assert_eq!(mask("ghp_0123456789abcdefWXYZ"), "ghp_…WXYZ");
    assert_eq!(
        mask("github_pat_11ABCDEFG0123456789_zz12"),
        "github_pat_…zz12"
    );
    assert_eq!(mask("AIzaSyA-0123456789abcdef"), "…cdef");
    assert_eq!(mask("short-secret"), "…");
    assert_eq!(mask(""), "…");
    // A long lowercase word is no prefix: it would give the secret away.
    assert_eq!(mask("abcdefghijklmnopqrstuv-wxyz1234"), "…1234");
}

#[test]
fn add_writes_0600_in_0700_and_round_trips() {
    let (_d, p) = store();
    add_at(
        &p,
        "K",
        "v4lue-123".into(),
        vec!["api.example.com".into()],
        true,
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let s = Store::open_at(&p).unwrap();
    let e = &s.secrets["K"];
    assert_eq!(
        (e.value.as_str(), e.hosts.as_slice(), e.body),
        ("v4lue-123", &["api.example.com".to_string()][..], true)
    );
    assert!(!format!("{e:?}").contains("v4lue-123"));
    mark_used_at(&p, &["K", "nope"]).unwrap();
    assert!(Store::open_at(&p).unwrap().secrets["K"].last_used.is_some());
    remove_at(&p, &["K".into()]).unwrap();
    assert!(Store::open_at(&p).unwrap().secrets.is_empty());
    let e = remove_at(&p, &["K".into()]).unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2);
}

#[test]
fn readable_store_is_refused_with_the_fix() {
    let (_d, p) = store();
    add_at(&p, "K", "value".into(), vec!["h.example".into()], false).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Store::open_at(&p).unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2);
    let msg = e.to_string();
    assert!(
        msg.contains("mode 0644") && msg.contains(&format!("chmod 600 {}", p.display())),
        "{msg}"
    );
    // Writing is refused too (update reads first), and the file is left as it was.
    assert!(add_at(&p, "J", "v".into(), vec!["h.example".into()], false).is_err());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dir = p.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let msg = Store::open_at(&p).unwrap_err().to_string();
    assert!(msg.contains("chmod 700"), "{msg}");
}

#[test]
fn broken_store_names_line() {
    let (_d, p) = store();
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::set_permissions(p.parent().unwrap(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(&p, "version = 1\n[secret.K]\nvalue = \"x\"\nhost = []\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let msg = Store::open_at(&p).unwrap_err().to_string();
    assert!(
        msg.contains("secrets.toml:4:1:") && msg.contains("host"),
        "{msg}"
    );
}

#[test]
fn resolve_prefers_store_then_known_environment() {
    let (_d, p) = store();
    add_at(
        &p,
        "OPENAI_API_KEY",
        "stored-val".into(),
        vec!["gw.corp.example".into()],
        false,
    )
    .unwrap();
    let s = Store::open_at(&p).unwrap();
    let env = |n: &str| match n {
        "OPENAI_API_KEY" => Some("env-openai".to_string()),
        "ANTHROPIC_API_KEY" => Some("env-anthropic".to_string()),
        "CUSTOM" => Some("env-custom".to_string()),
        _ => None,
    };
    let mut a = req("ANTHROPIC_API_KEY", false);
    a.env = Some("AK".into());
    let r = resolve_with(
        &s,
        &env,
        &[req("OPENAI_API_KEY", false), a, req("GEMINI_API_KEY", true)],
    )
    .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].value.as_str(), r[0].origin),
        ("stored-val", Origin::Stored)
    );
    // The store's binding, not the definition's hosts.
    assert_eq!(r[0].hosts, ["gw.corp.example"]);
    assert_eq!(
        (r[1].value.as_str(), r[1].origin, r[1].env.as_str()),
        ("env-anthropic", Origin::Environment, "AK")
    );
    assert_eq!(r[1].hosts, ["api.anthropic.com"]);
    assert!(!format!("{r:?}").contains("env-anthropic"));
    // Unknown names never come from the environment: they have no safe binding.
    let e = resolve_with(
        &s,
        &env,
        &[req("CUSTOM", false), req("GITHUB_TOKEN", false)],
    )
    .unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2);
    let msg = e.to_string();
    assert!(
        msg.contains("secret CUSTOM, GITHUB_TOKEN is not stored"),
        "{msg}"
    );
    assert!(
        msg.contains("axctl secrets add CUSTOM --host api.example.com"),
        "{msg}"
    );
}

#[test]
fn names_and_hosts_are_checked() {
    assert!(check_name("GITHUB_TOKEN").is_ok());
    for bad in ["", "1X", "A-B", "A B"] {
        assert!(check_name(bad).is_err(), "{bad}");
    }
    assert_eq!(
        check_hosts(&["API.Example.com".into(), "api.example.com".into()]).unwrap(),
        ["api.example.com"]
    );
    for bad in ["https://x.com", "x.com:443", "*.x.com", "x.com/p", ""] {
        assert!(check_hosts(&[bad.into()]).is_err(), "{bad}");
    }
}
