//! The price table: USD per million tokens by model, per kind of token. Shipped as
//! `netstack/prices.toml` (compiled in); `[meter] prices` names a file in the same format
//! whose entries override or extend it. Format:
//!
//! ```toml
//! [models."claude-sonnet-4-5"]
//! input = 3.0          # uncached input, USD per 1e6 tokens
//! output = 15.0        # output (incl. reasoning / thinking)
//! cache_read = 0.30    # input read from the prompt cache
//! cache_write = 3.75   # input written to the prompt cache
//! ```
//!
//! Model lookup: the exact (lower-cased) name, else the longest table name that is a prefix of
//! it (so `claude-sonnet-4-5-20250929` is priced as `claude-sonnet-4-5`). Costs are integer
//! micro-dollars: a price of $X per million tokens is X micro-dollars per token, so a call costs
//! `round(Σ tokens_k × price_k)` µ$ (f64 arithmetic, rounded once per call).

use super::usage::Usage;
use anyhow::Context as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The shipped table.
pub const SHIPPED: &str = include_str!("../../prices.toml");

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input.
    pub input: f64,
    /// Output, incl. reasoning / thinking.
    pub output: f64,
    /// Input read from the prompt cache.
    pub cache_read: f64,
    /// Input written to the prompt cache (Anthropic: 5-minute writes).
    pub cache_write: f64,
    /// Input written to the 1-hour prompt cache (Anthropic
    /// `usage.cache_creation.ephemeral_1h_input_tokens`); absent: `cache_write`.
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
    /// Different prices for the whole call once its prompt (input + cache read + cache write)
    /// is longer than `threshold` tokens (Claude Sonnet 1M context, Gemini 2.5 Pro > 200k).
    #[serde(default)]
    pub long_context: Option<LongContext>,
    /// The vendor whose API serves it (`anthropic`, `openai`, `gemini`; the ledger's
    /// `provider`), for the unknown-model price; absent: guessed from the name.
    #[serde(default)]
    pub provider: Option<Vendor>,
}

/// The vendor of a priced model (`provider = "anthropic" | "openai" | "gemini"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    /// Anthropic.
    Anthropic,
    /// OpenAI.
    Openai,
    /// Google Gemini.
    Gemini,
}

impl Vendor {
    /// The ledger's `provider` name.
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Anthropic => "anthropic",
            Vendor::Openai => "openai",
            Vendor::Gemini => "gemini",
        }
    }
}

/// Long-prompt prices, `[models."M".long_context]`; USD per million tokens like [`Price`].
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContext {
    /// Prompt tokens above which these prices apply to the call.
    pub threshold: u64,
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
}

impl Price {
    /// The cost of `u` in micro-dollars (1e-6 USD), rounded to the nearest: a price of $X per
    /// million tokens is X µ$ per token.
    pub fn cost_micro_usd(&self, u: &Usage) -> i64 {
        let prompt = u.input + u.cache_read + u.cache_write;
        let (input, output, cache_read, cache_write, cache_write_1h) = match self.long_context {
            Some(l) if prompt > l.threshold => (
                l.input,
                l.output,
                l.cache_read,
                l.cache_write,
                l.cache_write_1h.unwrap_or(l.cache_write),
            ),
            _ => (
                self.input,
                self.output,
                self.cache_read,
                self.cache_write,
                self.cache_write_1h.unwrap_or(self.cache_write),
            ),
        };
        let w1h = u.cache_write_1h.min(u.cache_write);
        let c = u.input as f64 * input
            + u.output as f64 * output
            + u.cache_read as f64 * cache_read
            + (u.cache_write - w1h) as f64 * cache_write
            + w1h as f64 * cache_write_1h;
        c.round() as i64
    }

    fn check(&self, origin: &str, name: &str) -> anyhow::Result<()> {
        let mut all = vec![
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
            ("cache_write_1h", self.cache_write_1h.unwrap_or(0.0)),
        ];
        if let Some(l) = &self.long_context {
            all.extend([
                ("long_context.input", l.input),
                ("long_context.output", l.output),
                ("long_context.cache_read", l.cache_read),
                ("long_context.cache_write", l.cache_write),
                (
                    "long_context.cache_write_1h",
                    l.cache_write_1h.unwrap_or(0.0),
                ),
            ]);
        }
        for (kind, v) in all {
            if !(v.is_finite() && v >= 0.0) {
                anyhow::bail!(
                    "price table {origin}: models.{name:?}.{kind} = {v} must be a non-negative number of USD per million tokens"
                );
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    models: BTreeMap<String, Price>,
}

/// Model name → price.
#[derive(Debug, Clone)]
pub struct PriceTable {
    models: BTreeMap<String, Price>,
}

impl PriceTable {
    /// Parses a table in the format above; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<PriceTable> {
        let f: File = toml::from_str(text).with_context(|| format!("price table {origin}"))?;
        let mut models = BTreeMap::new();
        for (name, p) in f.models {
            p.check(origin, &name)?;
            models.insert(name.to_ascii_lowercase(), p);
        }
        Ok(PriceTable { models })
    }

    /// The shipped table, overridden/extended by the file at `overrides` if given.
    /// Errors: unreadable or invalid override file (the shipped one is checked by tests).
    pub fn load(overrides: Option<&Path>) -> anyhow::Result<PriceTable> {
        let mut t = PriceTable::parse(SHIPPED, "netstack/prices.toml (shipped)")?;
        if let Some(p) = overrides {
            let text = std::fs::read_to_string(p).with_context(|| {
                format!(
                    "cannot read [meter] prices file {}; fix the path or remove the setting",
                    p.display()
                )
            })?;
            let o = PriceTable::parse(&text, &p.display().to_string())?;
            t.models.extend(o.models);
        }
        Ok(t)
    }

    /// The price of `model`: the exact name (case-insensitive; a leading `models/` as Gemini
    /// may report is ignored), else the name without a date or version suffix
    /// (`-2025-09-29`, `-20250929`, `@20250929`, `-001`), looked up exactly. No other prefix
    /// matching: `o1-pro` is not `o1`, `gpt-5-pro` is not `gpt-5`. `None`: unknown model.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        let m = model.trim().to_ascii_lowercase();
        let m = m.strip_prefix("models/").unwrap_or(&m);
        if m.is_empty() {
            return None;
        }
        if let Some(p) = self.models.get(m) {
            return Some(p);
        }
        self.models.get(strip_date_suffix(m)?)
    }

    /// The price of a model `vendor` serves that the table does not know: each kind at the
    /// highest price of any of the vendor's models (incl. long-context prices), so a capped
    /// agent is never under-charged. `None`: the table has no model of `vendor`.
    pub fn highest(&self, vendor: &str) -> Option<Price> {
        let mut out: Option<Price> = None;
        for (name, p) in &self.models {
            if p.provider
                .map(Vendor::name)
                .unwrap_or_else(|| guess_vendor(name))
                != vendor
            {
                continue;
            }
            let mut all = vec![(
                p.input,
                p.output,
                p.cache_read,
                p.cache_write,
                p.cache_write_1h.unwrap_or(p.cache_write),
            )];
            if let Some(l) = &p.long_context {
                all.push((
                    l.input,
                    l.output,
                    l.cache_read,
                    l.cache_write,
                    l.cache_write_1h.unwrap_or(l.cache_write),
                ));
            }
            for (i, o, r, w, w1) in all {
                let h = out.get_or_insert(Price {
                    input: 0.0,
                    output: 0.0,
                    cache_read: 0.0,
                    cache_write: 0.0,
                    cache_write_1h: Some(0.0),
                    long_context: None,
                    provider: p.provider,
                });
                h.input = h.input.max(i);
                h.output = h.output.max(o);
                h.cache_read = h.cache_read.max(r);
                h.cache_write = h.cache_write.max(w);
                h.cache_write_1h = Some(h.cache_write_1h.unwrap_or(0.0).max(w1));
            }
        }
        out
    }

    /// Number of models in the table.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// The vendor of a model by its name (table entries without `provider`).
fn guess_vendor(name: &str) -> &'static str {
    if name.starts_with("claude") {
        "anthropic"
    } else if name.starts_with("gemini") || name.starts_with("gemma") {
        "gemini"
    } else {
        "openai"
    }
}

/// `name` without a trailing date or version suffix (`-YYYY-MM-DD`, `-YYYYMMDD`,
/// `@YYYYMMDD`, `-NNN`), if it has one.
fn strip_date_suffix(name: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let b = name.as_bytes();
    // -YYYY-MM-DD
    if b.len() > 11 && b[b.len() - 11] == b'-' {
        let tail = &name[name.len() - 10..];
        let parts: Vec<&str> = tail.split('-').collect();
        if parts.len() == 3
            && parts[0].len() == 4
            && parts[1].len() == 2
            && parts[2].len() == 2
            && parts.iter().all(|p| digits(p))
        {
            return Some(&name[..name.len() - 11]);
        }
    }
    let (head, tail) = name.rsplit_once(['-', '@'])?;
    ((tail.len() == 8 || tail.len() == 3) && digits(tail) && !head.is_empty()).then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_parses_and_prefix_matches() {
        let t = PriceTable::load(None).unwrap();
        assert!(t.len() > 20);
        let s = t.lookup("claude-sonnet-4-5").unwrap();
        assert_eq!(t.lookup("claude-sonnet-4-5-20250929"), Some(s));
        assert_eq!(t.lookup("Claude-Sonnet-4-5-20250929"), Some(s));
        // Longest prefix: gpt-5-mini is not priced as gpt-5.
        assert_ne!(t.lookup("gpt-5-mini-2025-08-07"), t.lookup("gpt-5"));
        assert_eq!(t.lookup("gpt-5-mini-2025-08-07"), t.lookup("gpt-5-mini"));
        assert_eq!(
            t.lookup("models/gemini-2.5-flash"),
            t.lookup("gemini-2.5-flash")
        );
        assert!(t.lookup("llama-3-70b").is_none());
        assert!(t.lookup("").is_none());
    }

    /// The default model of every agent CLI the image pins (image/agents.lock.toml: Claude
    /// Code 2.1.330, Codex 0.169.0, Gemini CLI 0.61.0; found in their packages, see
    /// docs/metering.md "Prices") is priced, and by its own entry.
    #[test]
    fn default_models_of_the_pinned_agent_clis_are_priced() {
        let t = PriceTable::load(None).unwrap();
        for (model, input, output) in [
            ("claude-opus-5-5", 4.0, 20.0),
            ("gpt-6.1-sol", 2.0, 10.0),
            ("gemini-2.5-pro", 1.25, 10.0),
            ("gemini-3-pro-preview", 2.0, 12.0),
        ] {
            let p = t
                .lookup(model)
                .unwrap_or_else(|| panic!("{model} has no price"));
            assert_eq!((p.input, p.output), (input, output), "{model}");
        }
    }

    #[test]
    fn only_date_suffixes_are_stripped() {
        let t = PriceTable::load(None).unwrap();
        let (o1, o1_pro) = (t.lookup("o1").unwrap(), t.lookup("o1-pro").unwrap());
        assert_ne!(o1, o1_pro);
        assert_eq!(t.lookup("o1-2024-12-17").map(|p| p.input), Some(o1.input));
        assert_eq!(
            t.lookup("o1-pro-2025-03-19").map(|p| p.input),
            Some(o1_pro.input)
        );
        assert_eq!(
            t.lookup("claude-opus-5-5-20260101"),
            t.lookup("claude-opus-5-5")
        );
        // A made-up variant is not priced as its prefix.
        assert!(t.lookup("o1-ultra").is_none());
        assert!(t.lookup("gpt-5-superpro").is_none());
        assert_eq!(
            strip_date_suffix("gemini-1.5-pro-002"),
            Some("gemini-1.5-pro")
        );
        assert_eq!(
            strip_date_suffix("claude-3-5-haiku@20241022"),
            Some("claude-3-5-haiku")
        );
        assert_eq!(strip_date_suffix("gpt-4o"), None);
    }

    #[test]
    fn highest_is_per_vendor_and_covers_every_kind() {
        let t = PriceTable::load(None).unwrap();
        let h = t.highest("anthropic").unwrap();
        let opus = t.lookup("claude-opus-4-1").unwrap();
        assert!(h.input >= opus.input && h.output >= opus.output);
        assert!(h.cache_write_1h.unwrap() >= opus.cache_write_1h.unwrap());
        let o = t.highest("openai").unwrap();
        assert!(o.output >= t.lookup("o1-pro").unwrap().output);
        assert!(t.highest("nobody").is_none());
    }

    #[test]
    fn cost_is_micro_dollars() {
        let p = Price {
            input: 3.0,
            output: 15.0,
            cache_read: 0.3,
            cache_write: 3.75,
            cache_write_1h: Some(6.0),
            long_context: Some(LongContext {
                threshold: 200_000,
                input: 6.0,
                output: 22.5,
                cache_read: 0.6,
                cache_write: 7.5,
                cache_write_1h: Some(12.0),
            }),
            provider: None,
        };
        let mut u = Usage {
            input: 1000,
            output: 500,
            cache_read: 10_000,
            cache_write: 2000,
            cache_write_1h: 0,
            model: None,
        };
        // 3000 + 7500 + 3000 + 7500 µ$
        assert_eq!(p.cost_micro_usd(&u), 21_000);
        // 500 of the 2000 written to the 1-hour cache: 1500×3.75 + 500×6
        u.cache_write_1h = 500;
        assert_eq!(p.cost_micro_usd(&u), 21_000 - 7500 + 5625 + 3000);
        // A 200_001-token prompt: every token at the long-context prices.
        let long = Usage {
            input: 1,
            output: 100,
            cache_read: 200_000,
            cache_write: 0,
            cache_write_1h: 0,
            model: None,
        };
        assert_eq!(p.cost_micro_usd(&long), 6 + 2250 + 120_000);
        let short = Usage {
            cache_read: 199_999,
            ..long.clone()
        };
        assert_eq!(p.cost_micro_usd(&short), 3 + 1500 + 60_000); // 59999.7 + 1503 rounds up
    }

    #[test]
    fn overrides_extend_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "[models.\"claude-sonnet-4-5\"]\ninput = 1\noutput = 2\ncache_read = 0\ncache_write = 0\n\
             [models.\"my-local-model\"]\ninput = 0.5\noutput = 0.5\ncache_read = 0\ncache_write = 0\n",
        )
        .unwrap();
        let t = PriceTable::load(Some(&f)).unwrap();
        assert_eq!(t.lookup("claude-sonnet-4-5").unwrap().input, 1.0);
        assert_eq!(t.lookup("my-local-model").unwrap().output, 0.5);
        std::fs::write(
            &f,
            "[models.x]\ninput = -1\noutput = 0\ncache_read = 0\ncache_write = 0\n",
        )
        .unwrap();
        let e = format!("{:#}", PriceTable::load(Some(&f)).unwrap_err());
        assert!(e.contains("non-negative"), "{e}");
    }
}
