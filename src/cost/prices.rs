//! Model prices and what token usage costs: the built-in price table for
//! current Claude models, a policy's overrides (`budget.prices`), lookup of a
//! reported model id in them, and [`usd_for_usage`].
//!
//! Prices are US dollars per million tokens. Anthropic prices cache writes
//! with a five-minute life at 1.25 times the input price, writes with a
//! one-hour life at twice the input price, and cache reads at a tenth of it.
//!
//! Lookup: a table entry named `claude-sonnet-4-5` matches that model id and
//! its dated or aliased forms (`claude-sonnet-4-5-20250929`,
//! `claude-sonnet-4-5@20250929`, `claude-sonnet-4-5-latest`), but not another
//! model that merely shares the prefix (`claude-sonnet-4-50`,
//! `claude-opus-4-6`): an unknown model has no price, so the caller charges
//! the run's reservation instead of guessing. A policy override whose name
//! ends in `*` matches every id with that prefix. Overrides always win over
//! the built-in table; within each, the longest matching name wins (a name
//! beats a `*` pattern of the same length).
//!
//! A cost is the exact sum of tokens times prices, rounded up to the
//! micro-dollar (see [`super::money`]).

use crate::api::ModelPrice;
use crate::report::ModelUsage;

use super::money::{MoneyError, Usd};

/// Tokens per price unit: prices are per million tokens.
const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// One model's prices, US dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelPrices {
    /// Input tokens (not read from or written to the cache).
    pub input: Usd,
    /// Output tokens.
    pub output: Usd,
    /// Cache writes with a five-minute life.
    pub cache_write_5m: Usd,
    /// Cache writes with a one-hour life.
    pub cache_write_1h: Usd,
    /// Cache reads.
    pub cache_read: Usd,
}

impl ModelPrices {
    /// Prices with Anthropic's cache multipliers applied to the input price
    /// (5m write 1.25x, 1h write 2x, read 0.1x), each rounded up to the
    /// micro-dollar per million tokens.
    pub fn with_standard_cache(input: Usd, output: Usd) -> Option<ModelPrices> {
        let scaled = |numerator: u128, denominator: u128| {
            Usd::from_micros(input.micros().checked_mul(numerator)?.div_ceil(denominator))
        };
        Some(ModelPrices {
            input,
            output,
            cache_write_5m: scaled(5, 4)?,
            cache_write_1h: scaled(2, 1)?,
            cache_read: scaled(1, 10)?,
        })
    }

    /// Prices from a policy's override, each parsed exactly.
    pub fn from_override(price: &ModelPrice) -> Result<ModelPrices, PriceError> {
        let parse = |field: &'static str, value: &str| {
            Usd::parse(value).map_err(|source| PriceError::InvalidPrice {
                model: price.model.clone(),
                field,
                source,
            })
        };
        Ok(ModelPrices {
            input: parse("inputUSD", &price.input_usd)?,
            output: parse("outputUSD", &price.output_usd)?,
            cache_write_5m: parse("cacheWrite5mUSD", &price.cache_write_5m_usd)?,
            cache_write_1h: parse("cacheWrite1hUSD", &price.cache_write_1h_usd)?,
            cache_read: parse("cacheReadUSD", &price.cache_read_usd)?,
        })
    }
}

/// Why a policy's price override cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("price override for model {model:?}: {field} is invalid")]
    InvalidPrice {
        model: String,
        field: &'static str,
        #[source]
        source: MoneyError,
    },
    #[error("price override model {0:?} is not a model name or a prefix ending in a single '*'")]
    InvalidModel(String),
}

/// Built-in prices: model, input and output USD per million tokens. Cache
/// prices follow the standard multipliers.
const BUILTIN: &[(&str, &str, &str)] = &[
    ("claude-opus-4-5", "5", "25"),
    ("claude-opus-4-1", "15", "75"),
    ("claude-opus-4", "15", "75"),
    ("claude-sonnet-4-5", "3", "15"),
    ("claude-sonnet-4", "3", "15"),
    ("claude-haiku-4-5", "1", "5"),
    ("claude-3-5-haiku", "0.80", "4"),
];

/// What a table entry matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// A model name: the id itself and its dated or aliased forms.
    Name(String),
    /// A policy's `prefix*`: every id starting with the prefix.
    Prefix(String),
}

impl Pattern {
    fn parse(model: &str) -> Result<Pattern, PriceError> {
        let invalid = || PriceError::InvalidModel(model.to_owned());
        match model.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(invalid()),
            Some(prefix) => Ok(Pattern::Prefix(prefix.to_owned())),
            None if model.is_empty() || model.contains('*') => Err(invalid()),
            None => Ok(Pattern::Name(model.to_owned())),
        }
    }

    /// How specific a match of `model` is (higher wins), or `None`.
    fn specificity(&self, model: &str) -> Option<(usize, bool)> {
        match self {
            Pattern::Name(name) => {
                let rest = model.strip_prefix(name.as_str())?;
                is_version_suffix(rest).then_some((name.len(), true))
            }
            Pattern::Prefix(prefix) => model.starts_with(prefix.as_str()).then_some((prefix.len(), false)),
        }
    }
}

/// Whether `rest` turns a model name into one of its ids: nothing, a date
/// (`-20250929`, `@20250929`, possibly followed by more, as in
/// `-20250929-v1:0`), or `-latest`.
fn is_version_suffix(rest: &str) -> bool {
    if rest.is_empty() || rest == "-latest" {
        return true;
    }
    let Some(date) = rest.strip_prefix('-').or_else(|| rest.strip_prefix('@')) else {
        return false;
    };
    let digits = date.bytes().take_while(u8::is_ascii_digit).count();
    digits == 8 && (date.len() == 8 || date.as_bytes()[8] == b'-')
}

/// Prices by model: a policy's overrides over the built-in table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTable {
    overrides: Vec<(Pattern, ModelPrices)>,
    builtin: Vec<(Pattern, ModelPrices)>,
}

impl PriceTable {
    /// The built-in table alone.
    pub fn builtin() -> PriceTable {
        let builtin = BUILTIN
            .iter()
            .map(|&(model, input, output)| {
                let prices = ModelPrices::with_standard_cache(
                    Usd::parse(input).expect("built-in prices are valid"),
                    Usd::parse(output).expect("built-in prices are valid"),
                )
                .expect("built-in prices are small");
                (Pattern::Name(model.to_owned()), prices)
            })
            .collect();
        PriceTable {
            overrides: vec![],
            builtin,
        }
    }

    /// The built-in table with a policy's overrides on top. Any invalid
    /// override is an error: a price the policy meant to set is never
    /// silently replaced by the built-in one.
    pub fn with_overrides(overrides: &[ModelPrice]) -> Result<PriceTable, PriceError> {
        let mut table = PriceTable::builtin();
        table.overrides = overrides
            .iter()
            .map(|price| Ok((Pattern::parse(&price.model)?, ModelPrices::from_override(price)?)))
            .collect::<Result<_, PriceError>>()?;
        Ok(table)
    }

    /// The prices of a reported model id, or `None` when no entry matches.
    pub fn lookup(&self, model: &str) -> Option<&ModelPrices> {
        best_match(&self.overrides, model).or_else(|| best_match(&self.builtin, model))
    }
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable::builtin()
    }
}

/// The most specific entry matching `model`; the first one on a tie.
fn best_match<'a>(entries: &'a [(Pattern, ModelPrices)], model: &str) -> Option<&'a ModelPrices> {
    let mut best: Option<((usize, bool), &ModelPrices)> = None;
    for (pattern, prices) in entries {
        if let Some(rank) = pattern.specificity(model)
            && best.is_none_or(|(best_rank, _)| rank > best_rank)
        {
            best = Some((rank, prices));
        }
    }
    best.map(|(_, prices)| prices)
}

/// What `usage` costs with `model`'s prices from `table`, rounded up to the
/// micro-dollar. `None` when the model has no price (or, absurdly, the figure
/// overflows): the caller then charges an estimate, never zero.
pub fn usd_for_usage(model: &str, usage: &ModelUsage, table: &PriceTable) -> Option<Usd> {
    let prices = table.lookup(model)?;
    let micros = price_units(usage, prices)?.div_ceil(TOKENS_PER_PRICE_UNIT);
    Usd::from_micros(micros)
}

/// The exact cost of `usage`, in millionths of a micro-dollar (tokens times
/// micro-dollars per million tokens), before rounding. Sums of these over
/// several models are rounded once.
pub(crate) fn price_units(usage: &ModelUsage, prices: &ModelPrices) -> Option<u128> {
    // `cache_creation_input_tokens` counts all cache writes, the one-hour ones
    // included. Should a report claim more one-hour writes than writes in
    // all, every one-hour write is still charged at the one-hour price.
    let writes_1h = usage.cache_creation_1h_input_tokens;
    let writes_5m = usage.cache_creation_input_tokens.saturating_sub(writes_1h);
    [
        (usage.input_tokens, prices.input),
        (usage.output_tokens, prices.output),
        (writes_5m, prices.cache_write_5m),
        (writes_1h, prices.cache_write_1h),
        (usage.cache_read_input_tokens, prices.cache_read),
    ]
    .into_iter()
    .try_fold(0u128, |sum, (tokens, price)| {
        sum.checked_add(u128::from(tokens).checked_mul(price.micros())?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn usage(input: u64, output: u64, writes: u64, writes_1h: u64, reads: u64) -> ModelUsage {
        ModelUsage {
            input_tokens: input,
            output_tokens: output,
            cache_creation_input_tokens: writes,
            cache_creation_1h_input_tokens: writes_1h,
            cache_read_input_tokens: reads,
        }
    }

    fn price(model: &str, input: &str, output: &str, w5m: &str, w1h: &str, read: &str) -> ModelPrice {
        ModelPrice {
            model: model.into(),
            input_usd: input.into(),
            output_usd: output.into(),
            cache_write_5m_usd: w5m.into(),
            cache_write_1h_usd: w1h.into(),
            cache_read_usd: read.into(),
        }
    }

    #[test]
    fn the_builtin_table_per_million_tokens() {
        let table = PriceTable::builtin();
        // model, input, output, 5m write, 1h write, read
        for (model, input, output, w5m, w1h, read) in [
            ("claude-opus-4-5", "5", "25", "6.25", "10", "0.50"),
            ("claude-opus-4-1", "15", "75", "18.75", "30", "1.50"),
            ("claude-opus-4", "15", "75", "18.75", "30", "1.50"),
            ("claude-sonnet-4-5", "3", "15", "3.75", "6", "0.30"),
            ("claude-sonnet-4", "3", "15", "3.75", "6", "0.30"),
            ("claude-haiku-4-5", "1", "5", "1.25", "2", "0.10"),
            ("claude-3-5-haiku", "0.80", "4", "1", "1.60", "0.08"),
        ] {
            let expected = ModelPrices {
                input: usd(input),
                output: usd(output),
                cache_write_5m: usd(w5m),
                cache_write_1h: usd(w1h),
                cache_read: usd(read),
            };
            assert_eq!(table.lookup(model), Some(&expected), "{model}");
        }
    }

    #[test]
    fn dated_ids_find_their_model_and_strangers_find_nothing() {
        let table = PriceTable::builtin();
        let input_of = |model: &str| table.lookup(model).map(|p| p.input.to_string());
        for (model, input) in [
            ("claude-sonnet-4-5-20250929", Some("3.00")),
            ("claude-sonnet-4-5@20250929", Some("3.00")),
            ("claude-sonnet-4-20250514", Some("3.00")),
            ("claude-opus-4-5-20251101", Some("5.00")),
            ("claude-opus-4-1-20250805", Some("15.00")),
            ("claude-opus-4-20250514", Some("15.00")),
            ("claude-haiku-4-5-20251001", Some("1.00")),
            ("claude-3-5-haiku-20241022", Some("0.80")),
            ("claude-3-5-haiku-latest", Some("0.80")),
            ("claude-sonnet-4-5-20250929-v1:0", Some("3.00")),
            // Longest name wins: claude-opus-4-5 is not priced as claude-opus-4.
            ("claude-opus-4-5", Some("5.00")),
            // Not a known model, even with a known name as its prefix.
            ("claude-opus-4-6", None),
            ("claude-sonnet-4-50", None),
            ("claude-sonnet-4-5-2025", None),
            ("claude-sonnet-4-5-202509290", None),
            ("claude-sonnet-4-5[1m]", None),
            ("claude-3-opus-20240229", None),
            ("gpt-4o", None),
            ("", None),
        ] {
            assert_eq!(input_of(model).as_deref(), input, "{model}");
        }
    }

    #[test]
    fn a_thousand_input_and_two_hundred_output_tokens_on_sonnet_cost_six_tenths_of_a_cent() {
        let table = PriceTable::builtin();
        let cost = usd_for_usage("claude-sonnet-4-5-20250929", &usage(1_000, 200, 0, 0, 0), &table);
        assert_eq!(cost, Some(usd("0.006")));
        assert_eq!(cost.unwrap().to_string(), "0.006");
    }

    #[test]
    fn usage_priced_by_hand() {
        let table = PriceTable::builtin();
        // model, (input, output, all cache writes, of which 1h, cache reads), USD
        for (model, u, expected) in [
            // 1M input at $5 + 1M output at $25.
            ("claude-opus-4-5", usage(1_000_000, 1_000_000, 0, 0, 0), "30"),
            // 10k in $0.15 + 2k out $0.15 + 40k 5m writes $0.75 + 100k reads $0.15.
            (
                "claude-opus-4-1-20250805",
                usage(10_000, 2_000, 40_000, 0, 100_000),
                "1.20",
            ),
            // 1h writes: 20k writes of which 5k 1h: 15k x $3.75 + 5k x $6 = 0.05625 + 0.03.
            ("claude-sonnet-4-5", usage(0, 0, 20_000, 5_000, 0), "0.08625"),
            // Haiku 4.5: 123 in $0.000123 + 45 out $0.000225 + 1000 1h writes $0.002
            // + 7 reads $0.0000007 = $0.0023487 -> rounded up to $0.002349.
            ("claude-haiku-4-5-20251001", usage(123, 45, 1_000, 1_000, 7), "0.002349"),
            // Haiku 3.5: 2500 in $0.002 + 500 out $0.002 + 800 5m writes $0.0008
            // + 10000 reads $0.0008 = $0.0056.
            ("claude-3-5-haiku-20241022", usage(2_500, 500, 800, 0, 10_000), "0.0056"),
            // Opus 4: one output token is $0.000075.
            ("claude-opus-4-20250514", usage(0, 1, 0, 0, 0), "0.000075"),
            // Sonnet 4: one input token is $0.000003; one cache read $0.0000003 -> $0.000001.
            ("claude-sonnet-4", usage(0, 0, 0, 0, 1), "0.000001"),
            ("claude-sonnet-4", usage(0, 0, 0, 0, 0), "0"),
        ] {
            assert_eq!(usd_for_usage(model, &u, &table), Some(usd(expected)), "{model} {u:?}");
        }
    }

    #[test]
    fn more_one_hour_writes_than_writes_are_all_charged_at_the_one_hour_price() {
        let table = PriceTable::builtin();
        // 1000 1h writes at $6/M even though the report says only 500 writes in all.
        let cost = usd_for_usage("claude-sonnet-4-5", &usage(0, 0, 500, 1_000, 0), &table);
        assert_eq!(cost, Some(usd("0.006")));
    }

    #[test]
    fn unknown_models_have_no_price() {
        let table = PriceTable::builtin();
        assert_eq!(usd_for_usage("claude-next", &usage(1, 1, 0, 0, 0), &table), None);
    }

    #[test]
    fn huge_usage_does_not_overflow_silently() {
        let table = PriceTable::builtin();
        let max = usage(u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        // 2^64 tokens of every kind come to about $2.6e15, over the 15-digit limit:
        // no figure, rather than a wrapped one.
        assert_eq!(usd_for_usage("claude-opus-4-1", &max, &table), None);
    }

    #[test]
    fn policy_overrides_win_over_the_builtin_table() {
        let table = PriceTable::with_overrides(&[
            price("claude-sonnet-4-5", "2", "10", "2.5", "4", "0.2"),
            price("claude-*", "100", "100", "100", "100", "100"),
            price("my-proxy-model", "0.000001", "0.000002", "0", "0", "0"),
        ])
        .unwrap();
        let input_of = |model: &str| table.lookup(model).map(|p| p.input.to_string());
        for (model, input) in [
            // The named override, for the name and its dated ids.
            ("claude-sonnet-4-5", Some("2.00")),
            ("claude-sonnet-4-5-20250929", Some("2.00")),
            // The wildcard beats the built-in table, and prices unknown models.
            ("claude-haiku-4-5", Some("100.00")),
            ("claude-sonnet-4-50", Some("100.00")),
            ("claude-next", Some("100.00")),
            ("my-proxy-model", Some("0.000001")),
            ("my-proxy-model-2", None),
            ("gpt-4o", None),
        ] {
            assert_eq!(input_of(model).as_deref(), input, "{model}");
        }
        let cost = usd_for_usage("claude-sonnet-4-5-20250929", &usage(1_000, 200, 0, 0, 0), &table);
        assert_eq!(cost, Some(usd("0.004")));
    }

    #[test]
    fn the_longest_override_wins_and_a_name_beats_an_equal_wildcard() {
        let table = PriceTable::with_overrides(&[
            price("*", "1", "1", "1", "1", "1"),
            price("claude-opus-*", "2", "2", "2", "2", "2"),
            price("claude-opus-4-5*", "3", "3", "3", "3", "3"),
            price("claude-opus-4-5", "4", "4", "4", "4", "4"),
        ])
        .unwrap();
        let input_of = |model: &str| table.lookup(model).map(|p| p.input.to_string());
        for (model, input) in [
            ("anything", "1.00"),
            ("claude-opus-4-1", "2.00"),
            ("claude-opus-4-5x", "3.00"),
            ("claude-opus-4-5", "4.00"),
            ("claude-opus-4-5-20251101", "4.00"),
        ] {
            assert_eq!(input_of(model).as_deref(), Some(input), "{model}");
        }
    }

    #[test]
    fn invalid_overrides_are_errors() {
        let bad_price = PriceTable::with_overrides(&[price("m", "1", "-1", "0", "0", "0")]).unwrap_err();
        assert!(
            matches!(&bad_price, PriceError::InvalidPrice { field: "outputUSD", .. }),
            "{bad_price:?}"
        );
        for model in ["", "a*b", "a**", "*a"] {
            assert_eq!(
                PriceTable::with_overrides(&[price(model, "1", "1", "1", "1", "1")]),
                Err(PriceError::InvalidModel(model.into())),
                "{model:?}"
            );
        }
    }
}
