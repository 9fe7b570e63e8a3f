//! The per-agent [`Meter`] (prices, running totals, spend cap, ledger) and the per-call
//! [`CallMeter`] the TLS proxy feeds with the response as it streams by.

use super::ledger::{CallRow, Ledger};
use super::prices::Price;
use super::prices::PriceTable;
use super::usage::{Parser, Usage};
use super::{now_ms, Provider};
use crate::config::{Config, UnknownModel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// How a metered call ended (the ledger's `outcome` column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response was relayed to the guest.
    Complete,
    /// The call ended early (guest went away, upstream reset, proxy error); the reason is logged
    /// and recorded. Usage seen so far is still recorded and counted.
    Aborted(String),
}

/// The agent's spend cap is reached: further LLM requests are answered with HTTP 429 and this
/// error's `Display` as the body (one sentence saying what to change).
#[derive(Debug, Clone, PartialEq)]
pub struct CapExceeded {
    /// The agent's name.
    pub agent: String,
    /// Which cap: `max_usd` or `max_tokens`.
    pub limit: &'static str,
    /// The cap (USD or tokens).
    pub cap: f64,
    /// What has been spent so far (USD or tokens).
    pub spent: f64,
    /// What calls in flight have reserved on top (USD or tokens; `docs/metering.md`).
    pub reserved: f64,
}

impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.limit == "max_usd" {
            write!(
                f,
                "ax: spend cap of ${:.2} for agent {} reached (${:.2} spent",
                self.cap, self.agent, self.spent
            )?;
            if self.reserved > 0.0 {
                write!(f, ", ${:.2} reserved by calls in flight", self.reserved)?;
            }
            write!(
                f,
                "); raise [limits] max_usd in the agent's config to continue"
            )
        } else {
            write!(
                f,
                "ax: token cap of {} tokens for agent {} reached ({} tokens used",
                self.cap as u64, self.agent, self.spent as u64
            )?;
            if self.reserved > 0.0 {
                write!(f, ", {} reserved by calls in flight", self.reserved as u64)?;
            }
            write!(
                f,
                "); raise [limits] max_tokens in the agent's config to continue"
            )
        }
    }
}

impl std::error::Error for CapExceeded {}

/// Running totals of one agent (all its calls in the ledger, plus this process's).
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    micro_usd: i64,
    tokens: u64,
    /// Reserved by calls in flight (released when each is recorded).
    reserved_micro_usd: i64,
    reserved_tokens: u64,
}

/// The worst-case amount one call in flight holds against the caps ([`Meter::reserve`]),
/// released when its [`CallMeter`] records the real usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Micro-dollars reserved.
    pub micro_usd: i64,
    /// Tokens reserved.
    pub tokens: u64,
}

/// Why a call was not let through: a cap is reached, or (`[meter] unknown_model =
/// "refuse"`) its model has no price.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Answer 429.
    Cap(CapExceeded),
    /// Answer 403 with this text.
    UnknownModel(String),
}

struct Shared {
    agent: String,
    prices: PriceTable,
    unknown: UnknownModel,
    max_usd: Option<f64>,
    max_tokens: Option<u64>,
    totals: Mutex<Totals>,
    ledger: Option<Mutex<Ledger>>,
}

/// Usage metering and the spend cap of one agent. Cheap to share (`&Meter` from the
/// [`Context`](crate::context::Context)); calls may run concurrently.
pub struct Meter {
    shared: Arc<Shared>,
}

impl Meter {
    /// Loads the price table (shipped, plus `[meter] prices` overrides) and opens the ledger
    /// (`[meter] ledger`; creates it, `docs/ledger.md`), then loads the agent's spent totals
    /// from it so a restarted agent keeps its spend.
    ///
    /// Errors: invalid price override file, ledger not openable or of a newer schema.
    pub fn open(config: &Config) -> anyhow::Result<Meter> {
        let prices = PriceTable::load(config.meter.prices.as_deref())?;
        let (ledger, totals) = match &config.meter.ledger {
            Some(path) => {
                let ledger = Ledger::open(path, true)?;
                let (micro_usd, tokens) = ledger.agent_totals(&config.agent)?;
                (
                    Some(Mutex::new(ledger)),
                    Totals {
                        micro_usd,
                        tokens,
                        ..Totals::default()
                    },
                )
            }
            None => {
                log::info!("meter: no [meter] ledger configured; LLM calls are only logged");
                (None, Totals::default())
            }
        };
        Ok(Meter {
            shared: Arc::new(Shared {
                agent: config.agent.clone(),
                prices,
                unknown: config.meter.unknown_model,
                max_usd: config.limits.max_usd,
                max_tokens: config.limits.max_tokens,
                totals: Mutex::new(totals),
                ledger,
            }),
        })
    }

    /// Which LLM API a request is (`path` without or with query string), `None` when it is not
    /// a metered LLM call. See [`Provider::detect`].
    pub fn provider_for(&self, host: &str, path: &str) -> Option<Provider> {
        Provider::detect(host, path)
    }

    /// `Err` once the agent's spend (`[limits] max_usd`) or token (`max_tokens`) cap is reached,
    /// counting what calls in flight reserved ([`Meter::reserve`]) as spent.
    pub fn check_cap(&self) -> Result<(), CapExceeded> {
        let t = *self
            .shared
            .totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.shared.cap_check(&t)
    }

    /// Admits one LLM call and reserves its worst case against the caps, so that N calls in
    /// parallel overshoot a cap by at most one call (`docs/metering.md`, "Reservations"): the
    /// call is refused when spent + reserved already reach a cap; else it reserves
    /// `request_bytes` input tokens at the model's highest input-side price plus
    /// `max_output` output tokens at its highest output price (one token is at least one
    /// byte in the providers' tokenizers). `model`: the request's model (`None`: the
    /// vendor's highest prices). Hand the reservation to [`CallMeter::hold`].
    pub fn reserve(
        &self,
        provider: Provider,
        model: Option<&str>,
        max_output: u64,
        request_bytes: u64,
    ) -> Result<Reservation, Refused> {
        let s = &self.shared;
        let price = match model.and_then(|m| s.prices.lookup(m)) {
            Some(p) => Some(*p),
            None => {
                if let (UnknownModel::Refuse, Some(m)) = (s.unknown, model) {
                    return Err(Refused::UnknownModel(format!(
                        "ax-netstack refused this call: model {m:?} has no price in the table, and [meter] unknown_model = \"refuse\"; add it to the [meter] prices file or choose a priced model"
                    )));
                }
                s.prices.highest(provider.vendor())
            }
        };
        let r = match price {
            Some(p) => Reservation {
                micro_usd: worst_case(&p, request_bytes, max_output),
                tokens: request_bytes.saturating_add(max_output),
            },
            None => Reservation {
                micro_usd: 0,
                tokens: request_bytes.saturating_add(max_output),
            },
        };
        let mut t = s.totals.lock().unwrap_or_else(PoisonError::into_inner);
        s.cap_check(&t).map_err(Refused::Cap)?;
        t.reserved_micro_usd += r.micro_usd;
        t.reserved_tokens += r.tokens;
        Ok(r)
    }

    /// Starts metering one call: `req` gives the method, path (the model for Gemini) and the
    /// request's start time for latencies.
    pub fn begin(&self, provider: Provider, req: &http::request::Parts) -> CallMeter {
        CallMeter {
            shared: self.shared.clone(),
            provider,
            method: req.method.to_string(),
            path: req.uri.path().to_string(),
            request_model: super::usage::model_from_path(provider, req.uri.path()),
            started_ms: now_ms(),
            started: Instant::now(),
            first_byte_ms: None,
            status: None,
            parser: None,
            reservation: Reservation::default(),
            done: false,
        }
    }

    /// The agent's spend so far: (micro-dollars, tokens).
    pub fn totals(&self) -> (i64, u64) {
        let t = *self
            .shared
            .totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (t.micro_usd, t.tokens)
    }
}

impl Shared {
    fn cap_check(&self, t: &Totals) -> Result<(), CapExceeded> {
        if let Some(cap) = self.max_usd {
            // Compared in micro-dollars so that $5.00 spent of a $5.00 cap counts as reached.
            if t.micro_usd + t.reserved_micro_usd >= (cap * 1e6).round() as i64 {
                let e = CapExceeded {
                    agent: self.agent.clone(),
                    limit: "max_usd",
                    cap,
                    spent: t.micro_usd as f64 / 1e6,
                    reserved: t.reserved_micro_usd as f64 / 1e6,
                };
                log::warn!("meter: {e}");
                return Err(e);
            }
        }
        if let Some(cap) = self.max_tokens {
            if t.tokens + t.reserved_tokens >= cap {
                let e = CapExceeded {
                    agent: self.agent.clone(),
                    limit: "max_tokens",
                    cap: cap as f64,
                    spent: t.tokens as f64,
                    reserved: t.reserved_tokens as f64,
                };
                log::warn!("meter: {e}");
                return Err(e);
            }
        }
        Ok(())
    }

    /// The price a call of `vendor` with `model` is charged: the table's, else by
    /// `[meter] unknown_model` (`None`: zero, unpriced).
    fn price_of(&self, vendor: &str, model: &str) -> (Option<Price>, bool) {
        match self.prices.lookup(model) {
            Some(p) => (Some(*p), true),
            None => match self.unknown {
                UnknownModel::Zero => (None, false),
                UnknownModel::Highest | UnknownModel::Refuse => {
                    (self.prices.highest(vendor), false)
                }
            },
        }
    }
}

/// Micro-dollars of `input_bytes` input tokens at the highest input-side price (uncached,
/// cache writes, long context) plus `output` tokens at the highest output price.
fn worst_case(p: &Price, input_bytes: u64, output: u64) -> i64 {
    let mut inp = p
        .input
        .max(p.cache_write)
        .max(p.cache_write_1h.unwrap_or(0.0));
    let mut out = p.output;
    if let Some(l) = &p.long_context {
        inp = inp
            .max(l.input)
            .max(l.cache_write)
            .max(l.cache_write_1h.unwrap_or(0.0));
        out = out.max(l.output);
    }
    (input_bytes as f64 * inp + output as f64 * out).ceil() as i64
}

/// Metering of one LLM call, fed by the proxy as the response passes through.
pub struct CallMeter {
    shared: Arc<Shared>,
    provider: Provider,
    method: String,
    path: String,
    request_model: Option<String>,
    started_ms: i64,
    started: Instant,
    first_byte_ms: Option<i64>,
    status: Option<u16>,
    parser: Option<Parser>,
    /// What this call holds against the caps until it is recorded.
    reservation: Reservation,
    /// The row was written (by `finish`, or by `drop`).
    done: bool,
}

impl CallMeter {
    /// This call holds `r` (from [`Meter::reserve`]) until it is recorded.
    pub fn hold(&mut self, r: Reservation) {
        self.reservation = r;
    }

    /// The response status and headers arrived (time to first byte is measured here); the
    /// `content-type` decides between the SSE and the JSON parser.
    pub fn response_head(&mut self, status: http::StatusCode, headers: &http::HeaderMap) {
        self.first_byte_ms = Some(self.started.elapsed().as_millis() as i64);
        self.status = Some(status.as_u16());
        let sse = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
        self.parser = Some(Parser::new(self.provider, sse));
    }

    /// The next decoded (uncompressed) response body bytes, in order, split anywhere.
    /// Parsed on the side: never blocks and never holds the bytes back; a non-streaming body is
    /// kept only up to [`usage::MAX_JSON_BODY`](super::usage::MAX_JSON_BODY).
    pub fn body_chunk(&mut self, chunk: &[u8]) {
        if self.parser.is_none() {
            // No head seen (proxy bug): treat as JSON so the bytes are not lost to metering.
            self.parser = Some(Parser::new(self.provider, false));
        }
        if let Some(p) = &mut self.parser {
            p.feed(chunk);
        }
    }

    /// Ends the call: prices the usage, adds it to the agent's totals and writes the ledger row
    /// (committed durably before this returns — WAL + `synchronous=FULL`). Failures to write
    /// are logged, never panicked on.
    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let total_ms = self.started.elapsed().as_millis() as i64;
        let (usage, mut note) = match self.parser.take() {
            Some(p) => p.finish(),
            None => (Usage::default(), Some("no response".to_string())),
        };
        // An error response (4xx/5xx) carries no usage by design: not worth a note.
        if self.status.is_some_and(|s| !(200..300).contains(&s)) && usage.total() == 0 {
            note = None;
        }
        let model = usage
            .model
            .clone()
            .or_else(|| self.request_model.clone())
            .unwrap_or_default();
        let (price, priced) = self.shared.price_of(self.provider.vendor(), &model);
        let cost = price.map(|p| p.cost_micro_usd(&usage)).unwrap_or(0);
        if !priced && usage.total() > 0 {
            log::warn!(
                "meter: no price for model {model:?} ({} call); charged {} (cost ${:.6}, priced = false) by [meter] unknown_model — add it to [meter] prices",
                self.provider.vendor(),
                if price.is_some() { "at the vendor's highest prices" } else { "0" },
                cost as f64 / 1e6
            );
        }
        if let Some(n) = &note {
            log::warn!(
                "meter: {} {}: usage not fully metered: {n}",
                self.method,
                self.path
            );
        }
        {
            let mut t = self
                .shared
                .totals
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            t.micro_usd += cost;
            t.tokens += usage.total();
            t.reserved_micro_usd -= self.reservation.micro_usd;
            t.reserved_tokens -= self.reservation.tokens;
            self.reservation = Reservation::default();
        }
        let outcome_text = match &outcome {
            Outcome::Complete => match &note {
                None => "complete".to_string(),
                Some(n) => format!("complete (unmetered: {n})"),
            },
            Outcome::Aborted(r) => format!("aborted: {r}"),
        };
        let row = CallRow {
            time_ms: self.started_ms,
            agent: self.shared.agent.clone(),
            provider: self.provider.vendor().to_string(),
            model,
            input_tokens: usage.input,
            output_tokens: usage.output,
            cache_read_tokens: usage.cache_read,
            cache_write_tokens: usage.cache_write,
            cost_micro_usd: cost,
            priced,
            status: self.status.unwrap_or(0),
            outcome: outcome_text,
            first_byte_ms: self.first_byte_ms,
            total_ms,
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
        };
        log::info!(
            "meter: {} {} model={} in={} out={} cache_read={} cache_write={} cost=${:.6} status={} {} ttfb={:?}ms total={}ms",
            row.agent,
            row.provider,
            row.model,
            row.input_tokens,
            row.output_tokens,
            row.cache_read_tokens,
            row.cache_write_tokens,
            row.cost_micro_usd as f64 / 1e6,
            row.status,
            row.outcome,
            row.first_byte_ms,
            row.total_ms
        );
        if let Some(ledger) = &self.shared.ledger {
            let write = || {
                ledger
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert_call(&row)
            };
            // The commit waits for an fsync: on a multi-threaded tokio runtime, let the other
            // tasks of this worker move elsewhere meanwhile.
            let res = match tokio::runtime::Handle::try_current() {
                Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(write)
                }
                _ => write(),
            };
            if let Err(e) = res {
                log::error!("meter: ledger write failed, call recorded in this log only: {e:#}");
            }
        }
    }
}

impl Drop for CallMeter {
    /// A call dropped without [`CallMeter::finish`] (a cancelled proxy task) is still recorded,
    /// as aborted, so that no spend goes uncounted.
    fn drop(&mut self) {
        if !self.done {
            self.record(Outcome::Aborted("dropped before the response ended".into()));
        }
    }
}
