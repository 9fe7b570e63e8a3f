//! `axctl __git …` (hidden): the snapshot and branch steps of ax-branch by hand.

use anyhow::{Context, Result};
use ax_branch::{build_branch, snapshot, Identity, Snapshot};
use std::path::PathBuf;

/// `axctl __git …` (hidden): run the snapshot / branch steps by hand, for tests and debugging.
#[derive(Debug, clap::Subcommand)]
pub enum GitCmd {
    /// Snapshot REPO's working tree into OBJECTS (a private loose-object dir); prints JSON.
    Snapshot { repo: PathBuf, objects: PathBuf },
    /// Build branch ax/NAME from a snapshot (JSON file from `snapshot`) and an upper dir.
    Branch {
        repo: PathBuf,
        /// The JSON printed by `axctl __git snapshot`.
        #[arg(long)]
        snapshot: PathBuf,
        #[arg(long)]
        upper: PathBuf,
        /// The guest's .git directory (default: UPPER/.git when it exists).
        #[arg(long)]
        guest_git: Option<PathBuf>,
        /// Email domain of the agent identity.
        #[arg(long, default_value = "ax.invalid")]
        email_domain: String,
        name: String,
    },
}

/// Runs a hidden `__git` subcommand; results as JSON on stdout.
pub fn run(cmd: GitCmd) -> Result<i32> {
    match cmd {
        GitCmd::Snapshot { repo, objects } => {
            let t = std::time::Instant::now();
            let snap = snapshot(&repo, &objects)?;
            eprintln!("snapshot: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
            println!("{}", serde_json::to_string_pretty(&snap)?);
        }
        GitCmd::Branch {
            repo,
            snapshot: snap_file,
            upper,
            guest_git,
            email_domain,
            name,
        } => {
            let snap: Snapshot = serde_json::from_slice(
                &std::fs::read(&snap_file)
                    .with_context(|| format!("reading {}", snap_file.display()))?,
            )
            .with_context(|| format!("parsing {}", snap_file.display()))?;
            let guest_git = guest_git.or_else(|| {
                let g = upper.join(".git");
                std::fs::symlink_metadata(&g)
                    .is_ok_and(|m| !m.is_file())
                    .then_some(g)
            });
            let id = Identity::agent_with_domain(&name, &email_domain);
            let t = std::time::Instant::now();
            let r = build_branch(&repo, &snap, &upper, guest_git.as_deref(), &name, &id)?;
            eprintln!("branch: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
    }
    Ok(0)
}
