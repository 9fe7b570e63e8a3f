//! `axctl ps` and `axctl inspect`: read the state directories.

use crate::state::{self, now_ms, AgentState};
use crate::table::{age, print_table};
use anyhow::Result;

/// `axctl ps [--all] [--json]`: live agents (all with `--all`), oldest first.
pub fn ps(all: bool, json: bool) -> Result<i32> {
    let agents: Vec<AgentState> = state::list()?
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| all || s.status.is_live())
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(0);
    }
    let rows: Vec<[String; 4]> = agents
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.agent.clone(),
                s.status_label(),
                age(s.created_ms),
            ]
        })
        .collect();
    print_table(&["NAME", "AGENT", "STATUS", "AGE"], &rows);
    Ok(0)
}

/// The agent's metered LLM calls from the ledger (docs/ledger.md): the calls recorded under
/// its name since it was created (a name reused after `axctl rm` starts from zero). `None`
/// when there is no ledger yet.
fn usage(s: &AgentState) -> Result<Option<crate::cmd::cost::Sums>> {
    use ax_netstack::meter::ledger::{Filter, Ledger};
    let Some(l) = Ledger::open_read(&crate::paths::ledger_path())? else {
        return Ok(None);
    };
    let rows = l.calls(&Filter {
        agent: Some(s.name.clone()),
        since_ms: Some(s.created_ms as i64),
    })?;
    let (_, total) = crate::cmd::cost::summarize(&rows, crate::cmd::cost::By::Agent);
    Ok(Some(total))
}

/// `axctl inspect NAME [--json]`. The JSON is the agent's state plus `state_dir` and
/// `usage` (the `axctl cost --json` sums of its LLM calls: `calls`, `input_tokens`,
/// `output_tokens`, `cache_read_tokens`, `cache_write_tokens`, `cost_micro_usd`,
/// `cost_usd`, `unpriced_calls`; null without a ledger).
pub fn inspect(name: &str, json: bool) -> Result<i32> {
    let (dir, s) = state::load(name)?;
    let used = usage(&s).unwrap_or_else(|e| {
        eprintln!("axctl: cannot read the ledger: {e:#}");
        None
    });
    if json {
        let mut v = serde_json::to_value(&s)?;
        v["state_dir"] = dir.display().to_string().into();
        v["usage"] = serde_json::to_value(&used)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let ms = |v: Option<u64>| v.map(|m| format!("{m} ms")).unwrap_or_else(|| "-".into());
    let duration = s
        .finished_ms
        .unwrap_or_else(now_ms)
        .saturating_sub(s.created_ms);
    let mut rows = vec![
        ("Name", s.name.clone()),
        ("Agent", s.agent.clone()),
        ("Status", s.status_label()),
        ("Prompt", s.prompt.clone()),
        ("Command", format!("{:?}", s.argv)),
        ("Image", s.image_id.clone()),
        (
            "VMM",
            format!(
                "{} ({}), {} vCPU, {} MiB",
                s.vmm, s.accel, s.cpus, s.memory_mib
            ),
        ),
        ("Created", format!("{} ago", age(s.created_ms))),
        (
            "Duration",
            humantime::format_duration(std::time::Duration::from_secs(duration / 1000)).to_string(),
        ),
        ("State dir", dir.display().to_string()),
        (
            "Cmdline",
            s.kernel_cmdline.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    if let Some(repo) = &s.repo {
        rows.push(("Repo", repo.display().to_string()));
    }
    if let Some(b) = &s.branch {
        rows.push((
            "Branch",
            format!(
                "{} at {}",
                b.branch.trim_start_matches("refs/heads/"),
                b.commit
            ),
        ));
        if let Some(base) = &b.base {
            rows.push(("Base", base.to_string()));
        }
        rows.push((
            "Changes",
            format!(
                "{} files changed, {} insertions(+), {} deletions(-); {} commits from the guest",
                b.files_changed, b.insertions, b.deletions, b.imported_commits
            ),
        ));
    }
    if let Some(r) = &s.reason {
        rows.push(("Reason", r.clone()));
    }
    if let Some(u) = used.filter(|u| u.calls > 0) {
        rows.push((
            "Tokens",
            format!(
                "{} in, {} out, {} cache read, {} cache write ({} LLM calls)",
                u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.calls
            ),
        ));
        rows.push((
            "Cost",
            format!(
                "${:.4}{}",
                u.cost_micro_usd as f64 / 1e6,
                if u.unpriced_calls > 0 {
                    format!(
                        " ({} calls of unpriced models counted as 0)",
                        u.unpriced_calls
                    )
                } else {
                    String::new()
                }
            ),
        ));
    }
    if let Some(t) = s.timeout_secs {
        rows.push(("Timeout", format!("{t}s")));
    }
    let t = &s.timings;
    rows.push((
        "Timings",
        format!(
            "image {}, vm spawn {}, agentd ready {} (guest: kernel {}, ready {}), command {}, teardown {}",
            ms(t.image_ms), ms(t.vm_spawn_ms), ms(t.agentd_ready_ms), ms(t.guest_init_ms), ms(t.guest_ready_ms),
            ms(t.command_ms), ms(t.teardown_ms)
        ),
    ));
    for (k, v) in rows {
        println!("{:<10} {v}", format!("{k}:"));
    }
    Ok(0)
}
