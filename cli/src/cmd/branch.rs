//! `axctl diff` and `axctl commit`: the agent's changes to its repository.

use crate::cmd::supervise::CliHost;
use crate::state::{self, no_repo};
use anyhow::{Context, Result};

/// `axctl commit NAME`: (re)builds `ax/<name>` now and prints the branch and commit.
pub fn commit(name: &str) -> Result<i32> {
    let (dir, mut st) = state::load(name)?;
    let b = state::build_branch(&dir, &st, &CliHost)?;
    println!(
        "{} {}",
        b.branch.trim_start_matches("refs/heads/"),
        b.commit
    );
    eprintln!(
        "axctl: {} files changed, {} insertions(+), {} deletions(-)",
        b.files_changed, b.insertions, b.deletions
    );
    // Record it unless the supervisor still owns the state (it records its own at the end).
    if !st.status.is_live() {
        st.branch = Some(b);
        state::save(&dir, &st)?;
    }
    Ok(0)
}

/// `axctl diff NAME [--json]`: the paths the agent created (A), modified (M) and deleted (D),
/// from ax-fsd's live change journal; directories end in `/`; the agent's `.git` is left out.
pub fn diff(name: &str, json: bool) -> Result<i32> {
    let (dir, st) = state::load(name)?;
    if st.repo.is_none() {
        return Err(no_repo(name));
    }
    let journal = dir.join("journal.jsonl");
    let mut changes = match ax_fsd::journal::read(&journal) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", journal.display())),
    };
    // The agent's own .git is ax's plumbing, not part of its work.
    changes.retain(|(p, _, _)| p.as_slice() != b".git" && !p.starts_with(b".git/"));
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    let rows: Vec<(char, Vec<u8>)> = changes
        .iter()
        .map(|(path, change, kind)| {
            let c = match change {
                ax_fsd::journal::Change::Created => 'A',
                ax_fsd::journal::Change::Modified => 'M',
                ax_fsd::journal::Change::Deleted => 'D',
            };
            let mut p = path.to_vec();
            if matches!(kind, ax_fsd::journal::Kind::Dir) {
                p.push(b'/');
            }
            (c, p)
        })
        .collect();
    if json {
        // JSON escapes control characters itself; bytes that are not UTF-8 become U+FFFD.
        let v: Vec<_> = rows
            .iter()
            .map(|(c, p)| {
                serde_json::json!({"change": c.to_string(), "path": String::from_utf8_lossy(p)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        // Guest-chosen names, C-quoted as git does (core.quotePath): no escape sequence or
        // newline of a file name reaches the terminal raw.
        for (c, p) in rows {
            println!("{c}\t{}", ax_common::quote::quote_path(&p));
        }
    }
    Ok(0)
}
