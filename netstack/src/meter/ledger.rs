//! The ledger: one SQLite database (`[meter] ledger`, by default
//! `$XDG_STATE_HOME/ax/ledger.sqlite`) shared by the netstacks of all agents and read by
//! `axctl cost` / `axctl audit`. Schema, units and the migration rule: `docs/ledger.md`.
//!
//! Writers: each netstack opens it once for LLM calls ([`Ledger::open`] with `durable`:
//! `synchronous=FULL`, so a committed row survives a power cut) and once for audit records
//! (`synchronous=NORMAL`: may lose the last records on a power cut, never corrupts). WAL
//! journal so readers never block writers; `busy_timeout` so concurrent writers wait their turn.

use anyhow::Context as _;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::Path;
use std::time::Duration;

/// The schema version this code writes (`PRAGMA user_version`). See docs/ledger.md.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a writer waits for another process's write transaction before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`Ledger::open`] retries a setup that found the database busy (about 4 s).
const OPEN_RETRIES: u32 = 30;

/// SQLITE_BUSY or SQLITE_LOCKED: another connection holds a lock.
fn is_busy(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<rusqlite::Error>()
            .and_then(|e| e.sqlite_error_code()),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS calls (
    id                 INTEGER PRIMARY KEY,
    time_ms            INTEGER NOT NULL,
    agent              TEXT    NOT NULL,
    provider           TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    input_tokens       INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    cache_read_tokens  INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cost_micro_usd     INTEGER NOT NULL,
    priced             INTEGER NOT NULL,
    status             INTEGER NOT NULL,
    outcome            TEXT    NOT NULL,
    first_byte_ms      INTEGER,
    total_ms           INTEGER NOT NULL,
    method             TEXT    NOT NULL,
    path               TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_agent_time ON calls (agent, time_ms);
CREATE TABLE IF NOT EXISTS connections (
    id         INTEGER PRIMARY KEY,
    time_ms    INTEGER NOT NULL,
    agent      TEXT    NOT NULL,
    flow_id    INTEGER NOT NULL,
    host       TEXT,
    ip         TEXT    NOT NULL,
    port       INTEGER NOT NULL,
    decision   TEXT    NOT NULL,
    reason     TEXT,
    bytes_up   INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS connections_agent_time ON connections (agent, time_ms);
CREATE TABLE IF NOT EXISTS requests (
    id         INTEGER PRIMARY KEY,
    time_ms    INTEGER NOT NULL,
    agent      TEXT    NOT NULL,
    flow_id    INTEGER NOT NULL,
    host       TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    bytes_up   INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    blocked    TEXT
);
CREATE INDEX IF NOT EXISTS requests_agent_time ON requests (agent, time_ms);
";

/// One row of `calls`: a metered LLM call. Tokens are counts; cost in micro-dollars
/// (1e-6 USD); times in milliseconds (`time_ms` since the Unix epoch, when the request began).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CallRow {
    pub time_ms: i64,
    pub agent: String,
    /// `anthropic`, `openai` or `gemini`.
    pub provider: String,
    /// The model named in the response (else the request's); empty if neither was seen.
    pub model: String,
    /// Uncached input tokens (Anthropic `input_tokens`; OpenAI `prompt_tokens - cached_tokens`).
    pub input_tokens: u64,
    /// Output tokens (incl. reasoning/thinking tokens).
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_micro_usd: i64,
    /// false: the model had no price; cost is 0.
    pub priced: bool,
    /// HTTP status of the response, 0 if none arrived.
    pub status: u16,
    /// `complete`, `complete (unmetered: …)` or `aborted: <reason>`.
    pub outcome: String,
    /// Request start → response head, ms.
    pub first_byte_ms: Option<i64>,
    /// Request start → finish, ms.
    pub total_ms: i64,
    pub method: String,
    /// Path only, never the query string.
    pub path: String,
}

/// One row of `connections` (a guest TCP connection, recorded at close or at deny).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnRow {
    pub time_ms: i64,
    pub agent: String,
    pub flow_id: u64,
    pub host: Option<String>,
    pub ip: String,
    pub port: u16,
    /// `allow`, `deny` or `intercept`.
    pub decision: String,
    pub reason: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// One row of `requests` (an HTTP request on an intercepted connection).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RequestRow {
    pub time_ms: i64,
    pub agent: String,
    pub flow_id: u64,
    pub host: String,
    pub method: String,
    /// Path only, never the query string.
    pub path: String,
    /// 0 if no response was sent.
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Why the proxy blocked it (e.g. a placeholder sent to a host it is not bound to).
    pub blocked: Option<String>,
}

/// Which calls to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this agent.
    pub agent: Option<String>,
    /// Only rows with `time_ms >= since_ms`.
    pub since_ms: Option<i64>,
}

/// An open ledger database.
pub struct Ledger {
    conn: Connection,
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Ledger {
    /// Opens (creating the file, parent directory and schema if needed) for writing.
    /// `durable`: `synchronous=FULL` (every commit fsynced); else `NORMAL`.
    ///
    /// Errors: not creatable/openable, or written by a newer ax (`user_version` >
    /// [`SCHEMA_VERSION`]) — upgrade ax.
    pub fn open(path: &Path, durable: bool) -> anyhow::Result<Ledger> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("ledger: cannot create {}", dir.display()))?;
            }
        }
        let conn = Connection::open(path)
            .with_context(|| format!("ledger: cannot open {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let l = Ledger { conn };
        // Two netstacks opening a new ledger at once (agents started together): switching
        // the journal mode can fail with SQLITE_BUSY at once, without the busy handler
        // (SQLite does not wait where waiting could deadlock). Retry the setup a while.
        let mut attempt = 0;
        loop {
            match l.setup(durable) {
                Ok(()) => return Ok(l),
                Err(e) if is_busy(&e) && attempt < OPEN_RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10 * attempt.min(20) as u64));
                }
                Err(e) => return Err(e.context(format!("ledger {}", path.display()))),
            }
        }
    }

    /// WAL journal (persistent in the file), the sync level, and the schema.
    fn setup(&self, durable: bool) -> anyhow::Result<()> {
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        self.conn
            .pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        self.migrate()
    }

    /// Opens an existing ledger for reading (`axctl cost`/`audit`). `Ok(None)`: no ledger yet.
    pub fn open_read(path: &Path) -> anyhow::Result<Option<Ledger>> {
        if !path.exists() {
            return Ok(None);
        }
        // Read-write without CREATE: a WAL reader needs the -shm file.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("ledger: cannot open {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if v > SCHEMA_VERSION {
            anyhow::bail!(
                "ledger {} has schema version {v}, newer than this axctl understands ({SCHEMA_VERSION}); upgrade ax",
                path.display()
            );
        }
        if v == 0 {
            return Ok(None);
        }
        Ok(Some(Ledger { conn }))
    }

    fn migrate(&self) -> anyhow::Result<()> {
        let v: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if v > SCHEMA_VERSION {
            anyhow::bail!(
                "schema version {v} is newer than this ax writes ({SCHEMA_VERSION}); upgrade ax or point [meter] ledger elsewhere"
            );
        }
        if v < SCHEMA_VERSION {
            // One transaction, IMMEDIATE so two netstacks starting at once do not both migrate.
            self.conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA_V1} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))?;
        }
        Ok(())
    }

    /// Appends a call row (its own transaction, committed before returning).
    pub fn insert_call(&self, r: &CallRow) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO calls (time_ms, agent, provider, model, input_tokens, output_tokens,
               cache_read_tokens, cache_write_tokens, cost_micro_usd, priced, status, outcome,
               first_byte_ms, total_ms, method, path)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                r.time_ms,
                r.agent,
                r.provider,
                r.model,
                i(r.input_tokens),
                i(r.output_tokens),
                i(r.cache_read_tokens),
                i(r.cache_write_tokens),
                r.cost_micro_usd,
                r.priced,
                r.status,
                r.outcome,
                r.first_byte_ms,
                r.total_ms,
                r.method,
                r.path,
            ],
        )?;
        Ok(())
    }

    /// Appends a connection row.
    pub fn insert_connection(&self, r: &ConnRow) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO connections (time_ms, agent, flow_id, host, ip, port, decision, reason,
               bytes_up, bytes_down) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.time_ms,
                r.agent,
                i(r.flow_id),
                r.host,
                r.ip,
                r.port,
                r.decision,
                r.reason,
                i(r.bytes_up),
                i(r.bytes_down),
            ],
        )?;
        Ok(())
    }

    /// Deletes the oldest audit rows of `agent` in `table` (`"requests"` or `"connections"`)
    /// so that at most `keep` remain; returns how many were deleted. Calls rows are never
    /// deleted (they are the spend).
    pub fn trim_audit(&self, table: &str, agent: &str, keep: u64) -> anyhow::Result<u64> {
        anyhow::ensure!(
            table == "requests" || table == "connections",
            "not an audit table: {table}"
        );
        let sql = format!(
            "DELETE FROM {table} WHERE agent = ?1 AND id <= (SELECT id FROM {table} WHERE agent = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)"
        );
        let n = self
            .conn
            .execute(&sql, rusqlite::params![agent, keep as i64])
            .with_context(|| format!("trimming audit table {table}"))?;
        Ok(n as u64)
    }

    /// Appends a request row.
    pub fn insert_request(&self, r: &RequestRow) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO requests (time_ms, agent, flow_id, host, method, path, status, bytes_up,
               bytes_down, blocked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.time_ms,
                r.agent,
                i(r.flow_id),
                r.host,
                r.method,
                r.path,
                r.status,
                i(r.bytes_up),
                i(r.bytes_down),
                r.blocked,
            ],
        )?;
        Ok(())
    }

    /// The agent's totals over all its calls: (micro-dollars, tokens of all kinds).
    pub fn agent_totals(&self, agent: &str) -> anyhow::Result<(i64, u64)> {
        let (usd, tok): (i64, i64) = self.conn.query_row(
            "SELECT COALESCE(SUM(cost_micro_usd), 0),
                    COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens + cache_write_tokens), 0)
             FROM calls WHERE agent = ?1",
            [agent],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((usd, tok.max(0) as u64))
    }

    /// Calls matching `f`, oldest first.
    pub fn calls(&self, f: &Filter) -> anyhow::Result<Vec<CallRow>> {
        let mut st = self.conn.prepare(
            "SELECT time_ms, agent, provider, model, input_tokens, output_tokens,
                    cache_read_tokens, cache_write_tokens, cost_micro_usd, priced, status, outcome,
                    first_byte_ms, total_ms, method, path
             FROM calls WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR time_ms >= ?2)
             ORDER BY time_ms, id",
        )?;
        let rows = st.query_map(params![f.agent, f.since_ms], |r| {
            Ok(CallRow {
                time_ms: r.get(0)?,
                agent: r.get(1)?,
                provider: r.get(2)?,
                model: r.get(3)?,
                input_tokens: r.get::<_, i64>(4)? as u64,
                output_tokens: r.get::<_, i64>(5)? as u64,
                cache_read_tokens: r.get::<_, i64>(6)? as u64,
                cache_write_tokens: r.get::<_, i64>(7)? as u64,
                cost_micro_usd: r.get(8)?,
                priced: r.get(9)?,
                status: r.get(10)?,
                outcome: r.get(11)?,
                first_byte_ms: r.get(12)?,
                total_ms: r.get(13)?,
                method: r.get(14)?,
                path: r.get(15)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The agent's connection records, oldest first.
    pub fn connections(&self, agent: &str) -> anyhow::Result<Vec<ConnRow>> {
        let mut st = self.conn.prepare(
            "SELECT time_ms, agent, flow_id, host, ip, port, decision, reason, bytes_up, bytes_down
             FROM connections WHERE agent = ?1 ORDER BY time_ms, id",
        )?;
        let rows = st.query_map([agent], |r| {
            Ok(ConnRow {
                time_ms: r.get(0)?,
                agent: r.get(1)?,
                flow_id: r.get::<_, i64>(2)? as u64,
                host: r.get(3)?,
                ip: r.get(4)?,
                port: r.get(5)?,
                decision: r.get(6)?,
                reason: r.get(7)?,
                bytes_up: r.get::<_, i64>(8)? as u64,
                bytes_down: r.get::<_, i64>(9)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The agent's request records, oldest first.
    pub fn requests(&self, agent: &str) -> anyhow::Result<Vec<RequestRow>> {
        let mut st = self.conn.prepare(
            "SELECT time_ms, agent, flow_id, host, method, path, status, bytes_up, bytes_down,
                    blocked
             FROM requests WHERE agent = ?1 ORDER BY time_ms, id",
        )?;
        let rows = st.query_map([agent], |r| {
            Ok(RequestRow {
                time_ms: r.get(0)?,
                agent: r.get(1)?,
                flow_id: r.get::<_, i64>(2)? as u64,
                host: r.get(3)?,
                method: r.get(4)?,
                path: r.get(5)?,
                status: r.get(6)?,
                bytes_up: r.get::<_, i64>(7)? as u64,
                bytes_down: r.get::<_, i64>(8)? as u64,
                blocked: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether any record (call, connection or request) names `agent`.
    pub fn knows_agent(&self, agent: &str) -> anyhow::Result<bool> {
        let found: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM calls WHERE agent = ?1
                 UNION ALL SELECT 1 FROM connections WHERE agent = ?1
                 UNION ALL SELECT 1 FROM requests WHERE agent = ?1 LIMIT 1",
                [agent],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }
}
