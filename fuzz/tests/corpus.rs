//! Replays every committed corpus input (`corpus/NAME/*`) and every crash input
//! (`regressions/NAME/*`) through its target's body, on stable (docs/fuzzing.md). A
//! directory named after no target fails the test, so a renamed target cannot leave its
//! corpus unreplayed.

use std::path::Path;

fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(&root) else {
        return 0;
    };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let Some((_, f)) = ax_fuzz::TARGETS.iter().find(|(t, _)| *t == name) else {
            panic!("{dir}/{name}: no fuzz target of that name (ax_fuzz::TARGETS)");
        };
        let mut files: Vec<_> = std::fs::read_dir(e.path())
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        for p in files {
            let data = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{} fails target {name}", p.display());
            n += 1;
        }
    }
    n
}

#[test]
fn corpora_replay_clean() {
    let n = replay("corpus");
    assert!(n > 0, "no corpus inputs found under fuzz/corpus");
}

#[test]
fn regressions_replay_clean() {
    replay("regressions");
}

/// Every target runs on a few fixed inputs (empty, short, long) without a corpus.
#[test]
fn every_target_takes_trivial_input() {
    for (name, f) in ax_fuzz::TARGETS {
        for data in [&b""[..], b"\0", b"\xff\xff\xff\xff", &[0x41u8; 300][..]] {
            let r = std::panic::catch_unwind(|| f(data));
            assert!(r.is_ok(), "target {name} panics on {data:?}");
        }
    }
}
