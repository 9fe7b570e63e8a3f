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

    /// The price of `model`: exact name, else longest prefix (case-insensitive; a leading
    /// `models/` as Gemini may report is ignored). `None`: unknown model.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        let m = model.trim().to_ascii_lowercase();
        let m = m.strip_prefix("models/").unwrap_or(&m);
        if m.is_empty() {
            return None;
        }
        if let Some(p) = self.models.get(m) {
            return Some(p);
        }
        self.models
            .iter()
            .filter(|(k, _)| m.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, p)| p)
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
        assert_eq!(t.lookup("claude-sonnet-4-5-20250929").unwrap().input, 1.0);
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
