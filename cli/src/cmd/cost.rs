//! `axctl cost [--by agent|model|day] [--agent NAME] [--since DURATION] [--json]`: what the
//! agents' LLM calls cost, from the ledger the netstacks write (`paths::ledger_path()`,
//! schema in docs/ledger.md). Human output: a table with a TOTAL row; `--json`: the stable
//! document described in docs/ledger.md ("axctl cost --json").

use crate::error;
use crate::paths;
use anyhow::Result;
use ax_netstack::meter::ledger::{CallRow, Filter, Ledger};
use std::collections::BTreeMap;

/// How `axctl cost` groups calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// One row per agent.
    Agent,
    /// One row per model (as named in the responses).
    Model,
    /// One row per UTC day (YYYY-MM-DD).
    Day,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::Agent => "agent",
            By::Model => "model",
            By::Day => "day",
        }
    }
}

/// Flags of `axctl cost`.
#[derive(Debug, clap::Args)]
pub struct CostArgs {
    /// Group by agent, model or UTC day.
    #[arg(long, value_enum, default_value = "agent")]
    pub by: By,
    /// Only this agent's calls.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Only calls in the last DURATION (e.g. 90m, 24h, 7d).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Print JSON (format: docs/ledger.md).
    #[arg(long)]
    pub json: bool,
}

/// Sums of one group (or of all).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Sums {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_micro_usd: i64,
    /// `cost_micro_usd / 1e6`, for convenience.
    pub cost_usd: f64,
    /// Calls whose model had no price (counted with cost 0).
    pub unpriced_calls: u64,
}

impl Sums {
    fn add(&mut self, r: &CallRow) {
        self.calls += 1;
        self.input_tokens += r.input_tokens;
        self.output_tokens += r.output_tokens;
        self.cache_read_tokens += r.cache_read_tokens;
        self.cache_write_tokens += r.cache_write_tokens;
        self.cost_micro_usd += r.cost_micro_usd;
        self.cost_usd = self.cost_micro_usd as f64 / 1e6;
        self.unpriced_calls += u64::from(!r.priced);
    }
}

/// Groups `rows` by `by`: (key, sums) sorted by key, and the total.
pub fn summarize(rows: &[CallRow], by: By) -> (Vec<(String, Sums)>, Sums) {
    let mut groups: BTreeMap<String, Sums> = BTreeMap::new();
    let mut total = Sums::default();
    for r in rows {
        let key = match by {
            By::Agent => r.agent.clone(),
            By::Model if r.model.is_empty() => "(unknown)".to_string(),
            By::Model => r.model.clone(),
            By::Day => crate::table::utc_date(r.time_ms),
        };
        groups.entry(key).or_default().add(r);
        total.add(r);
    }
    (groups.into_iter().collect(), total)
}

/// USD with 4 decimals (single calls cost fractions of a cent; one format for the column).
fn usd(micro: i64) -> String {
    format!("${:.4}", micro as f64 / 1e6)
}

/// Runs `axctl cost`.
pub fn cost(args: CostArgs) -> Result<i32> {
    let since_ms = match &args.since {
        None => None,
        Some(s) => {
            let d = humantime::parse_duration(s).map_err(|e| {
                error::usage(
                    format!("--since {s:?} is not a duration ({e})"),
                    "use e.g. --since 90m, 24h or 7d",
                )
            })?;
            Some(crate::state::now_ms() as i64 - d.as_millis() as i64)
        }
    };
    let path = paths::ledger_path();
    let rows = match Ledger::open_read(&path).map_err(|e| {
        error::runtime(
            format!("cannot read the ledger {}: {e:#}", path.display()),
            "check the file's permissions, or move it away to start a new ledger",
        )
    })? {
        Some(l) => l.calls(&Filter {
            agent: args.agent.clone(),
            since_ms,
        })?,
        None => {
            eprintln!(
                "axctl: no ledger at {} yet (no metered LLM call so far)",
                path.display()
            );
            Vec::new()
        }
    };
    let (groups, total) = summarize(&rows, args.by);
    if args.json {
        let doc = serde_json::json!({
            "version": 1,
            "by": args.by.name(),
            "agent": args.agent,
            "since_ms": since_ms,
            "groups": groups
                .iter()
                .map(|(k, s)| {
                    let mut v = serde_json::to_value(s).unwrap();
                    v["key"] = k.clone().into();
                    v
                })
                .collect::<Vec<_>>(),
            "total": total,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    let header = [
        match args.by {
            By::Agent => "AGENT",
            By::Model => "MODEL",
            By::Day => "DAY",
        },
        "CALLS",
        "INPUT",
        "OUTPUT",
        "CACHE_READ",
        "CACHE_WRITE",
        "COST",
    ];
    let row = |k: &str, s: &Sums| -> [String; 7] {
        [
            format!("{k}{}", if s.unpriced_calls > 0 { " *" } else { "" }),
            s.calls.to_string(),
            s.input_tokens.to_string(),
            s.output_tokens.to_string(),
            s.cache_read_tokens.to_string(),
            s.cache_write_tokens.to_string(),
            usd(s.cost_micro_usd),
        ]
    };
    let mut table: Vec<[String; 7]> = groups.iter().map(|(k, s)| row(k, s)).collect();
    table.push(row("TOTAL", &total));
    crate::table::print_table(&header, &table);
    if total.unpriced_calls > 0 {
        let mut models: Vec<&str> = rows
            .iter()
            .filter(|r| !r.priced)
            .map(|r| r.model.as_str())
            .collect();
        models.sort_unstable();
        models.dedup();
        eprintln!(
            "axctl: * {} call(s) of models without a price counted as $0 ({}); add them to the [meter] prices file",
            total.unpriced_calls,
            models.join(", ")
        );
    }
    Ok(0)
}
