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
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

impl Price {
    /// The cost of `u` in micro-dollars (1e-6 USD), rounded to the nearest.
    pub fn cost_micro_usd(&self, u: &Usage) -> i64 {
        let c = u.input as f64 * self.input
            + u.output as f64 * self.output
            + u.cache_read as f64 * self.cache_read
            + u.cache_write as f64 * self.cache_write;
        c.round() as i64
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
            for (kind, v) in [
                ("input", p.input),
                ("output", p.output),
                ("cache_read", p.cache_read),
                ("cache_write", p.cache_write),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    anyhow::bail!(
                        "price table {origin}: models.{name:?}.{kind} = {v} must be a non-negative number of USD per million tokens"
                    );
                }
            }
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
        };
        let u = Usage {
            input: 1000,
            output: 500,
            cache_read: 10_000,
            cache_write: 2000,
            model: None,
        };
        // 3000 + 7500 + 3000 + 7500 µ$
        assert_eq!(p.cost_micro_usd(&u), 21_000);
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
