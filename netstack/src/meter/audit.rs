//! Audit records: one per guest connection (at close, or at deny) and one per HTTP request on
//! an intercepted connection. They go to the ledger database (`connections` and `requests`
//! tables, docs/ledger.md) and to the log. No secret value ever reaches them: the proxy passes
//! the guest's view (placeholders), and paths are stored without their query string.

use super::ledger::{ConnRow, Ledger, RequestRow};
use super::now_ms;
use crate::config::Config;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// A guest TCP connection, recorded at close (or when denied).
#[derive(Debug, Clone)]
pub struct ConnRecord {
    /// [`Flow::id`](crate::Flow::id).
    pub flow_id: u64,
    /// The name the guest resolved, if known.
    pub host: Option<String>,
    /// The destination address as the guest saw it.
    pub ip: IpAddr,
    /// The destination port.
    pub port: u16,
    /// `"allow"`, `"deny"` or `"intercept"`.
    pub decision: &'static str,
    /// Why (deny reason, upstream connect failure), if anything is worth saying.
    pub reason: Option<String>,
    /// Bytes guest → upstream (TCP payload).
    pub bytes_up: u64,
    /// Bytes upstream → guest (TCP payload).
    pub bytes_down: u64,
}

/// An HTTP request on an intercepted connection, recorded when its response ended.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// [`Flow::id`](crate::Flow::id) of the connection it came on.
    pub flow_id: u64,
    /// The request's host (`:authority` / `Host`, else the SNI).
    pub host: String,
    /// The method (`GET`, `POST`, …).
    pub method: String,
    /// The path; anything from `?` on is dropped before it is stored.
    pub path: String,
    /// The response status sent to the guest; 0 if none.
    pub status: u16,
    /// Request body bytes (as the guest sent them).
    pub bytes_up: u64,
    /// Response body bytes (as the guest received them).
    pub bytes_down: u64,
    /// Why the proxy blocked the request itself (e.g. a placeholder bound for another host).
    pub blocked: Option<String>,
}

/// The audit log of one agent.
pub struct Audit {
    agent: String,
    ledger: Option<Mutex<Ledger>>,
    /// Rows kept per agent and table (`[meter] max_audit_rows`).
    keep: u64,
    /// Rows written since the last trim, per table (requests, connections).
    since_trim: [AtomicU64; 2],
}

impl Audit {
    /// How many rows may be written between two trims: a tenth of `keep`, at most 1,000 (so a
    /// table holds at most `keep` + that many rows of an agent).
    fn trim_every(&self) -> u64 {
        (self.keep / 10).clamp(1, 1000)
    }

    /// Trims `table` (index `i` of `since_trim`) when due. Failures are logged.
    fn maybe_trim(&self, l: &Ledger, i: usize, table: &str) {
        if self.since_trim[i].fetch_add(1, Ordering::Relaxed) + 1 < self.trim_every() {
            return;
        }
        self.since_trim[i].store(0, Ordering::Relaxed);
        match l.trim_audit(table, &self.agent, self.keep) {
            Ok(0) => {}
            Ok(n) => log::debug!(
                "audit: {n} oldest {table} rows of {} deleted (max_audit_rows = {})",
                self.agent,
                self.keep
            ),
            Err(e) => log::error!("audit: {e:#}"),
        }
    }
}

impl Audit {
    /// Opens the audit log (the ledger database, `[meter] ledger`; its own connection with
    /// `synchronous=NORMAL`). Without a ledger, records are only logged.
    /// Errors: not openable, or of a newer schema.
    pub fn open(config: &Config) -> anyhow::Result<Audit> {
        let ledger = match &config.meter.ledger {
            Some(p) => Some(Mutex::new(Ledger::open(p, false)?)),
            None => None,
        };
        Ok(Audit {
            agent: config.agent.clone(),
            ledger,
            keep: config
                .meter
                .max_audit_rows
                .unwrap_or(crate::config::MeterConfig::DEFAULT_AUDIT_ROWS),
            since_trim: Default::default(),
        })
    }

    /// Records a connection. Write failures are logged.
    pub fn connection(&self, rec: ConnRecord) {
        let row = ConnRow {
            time_ms: now_ms(),
            agent: self.agent.clone(),
            flow_id: rec.flow_id,
            host: rec.host,
            ip: rec.ip.to_string(),
            port: rec.port,
            decision: rec.decision.to_string(),
            reason: rec.reason,
            bytes_up: rec.bytes_up,
            bytes_down: rec.bytes_down,
        };
        log::info!(
            "audit: flow {} {} {}:{} {} {} up={} down={}",
            row.flow_id,
            row.host.as_deref().unwrap_or("-"),
            row.ip,
            row.port,
            row.decision,
            row.reason.as_deref().unwrap_or(""),
            row.bytes_up,
            row.bytes_down
        );
        if let Some(l) = &self.ledger {
            let l = l.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = l.insert_connection(&row) {
                log::error!("audit: ledger write failed: {e:#}");
            }
            self.maybe_trim(&l, 1, "connections");
        }
    }

    /// Records an HTTP request. Write failures are logged.
    pub fn request(&self, rec: RequestRecord) {
        let path = strip_query(&rec.path).to_string();
        let row = RequestRow {
            time_ms: now_ms(),
            agent: self.agent.clone(),
            flow_id: rec.flow_id,
            host: rec.host,
            method: rec.method,
            path,
            status: rec.status,
            bytes_up: rec.bytes_up,
            bytes_down: rec.bytes_down,
            blocked: rec.blocked,
        };
        log::info!(
            "audit: flow {} {} {}{} -> {} up={} down={}{}",
            row.flow_id,
            row.method,
            row.host,
            row.path,
            row.status,
            row.bytes_up,
            row.bytes_down,
            row.blocked
                .as_deref()
                .map(|b| format!(" blocked: {b}"))
                .unwrap_or_default()
        );
        if let Some(l) = &self.ledger {
            let l = l.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = l.insert_request(&row) {
                log::error!("audit: ledger write failed: {e:#}");
            }
            self.maybe_trim(&l, 0, "requests");
        }
    }
}

/// The path without query string or fragment (they may carry tokens).
pub(crate) fn strip_query(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}
