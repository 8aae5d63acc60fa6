//! The cost side of the runner's termination report: reading the report from
//! a pod's termination message ([`parse_report`]) and turning it, or its
//! absence, into the run's recorded cost ([`run_cost`]).
//!
//! Which figure a run is charged, first that applies:
//! 1. `Reported`: the report carries `total_cost_usd`, Claude Code's own
//!    figure (rounded up to the micro-dollar should it be more precise).
//! 2. `Computed`: no cost, but token usage of models that all have a price
//!    (the policy's overrides, then the built-in table).
//! 3. `Estimated`: anything else (no report, an unreadable one, no usage, a
//!    model without a price). The run is charged its full reservation
//!    (`maxCostPerRunUSD`), or what its priced models alone cost if that is
//!    more. Never a silent zero.
//!
//! The `CostRecorded` condition reason that goes with it: `Reported` when the
//! report gave a figure (cases 1 and 2), `ReportMissing` when there was no
//! report, `ReportMalformed` for every other estimate (an unreadable report,
//! or a readable one without a cost and without priced usage).

use crate::api::conditions::reasons;
use crate::api::{Cost, CostSource, ModelPrice};
use crate::report::{MAX_REPORT_BYTES, RunReport};

use super::money::{MoneyError, Usd};
use super::prices::{PriceTable, price_units};

/// Why a termination message is not a usable report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No message at all: the container was killed (OOM, deadline, eviction)
    /// before the runner wrote one.
    #[error("the runner left no termination report")]
    Missing,
    /// Longer than Kubernetes keeps, so certainly cut short.
    #[error("the termination report is {bytes} bytes, over the {MAX_REPORT_BYTES}-byte limit")]
    TooLarge { bytes: usize },
    /// Not the JSON object the contract describes.
    #[error("the termination report is not a valid report: {0}")]
    Malformed(#[source] serde_json::Error),
    /// `total_cost_usd` is not a plain non-negative decimal.
    #[error("the termination report's total_cost_usd is invalid: {0}")]
    InvalidCost(#[source] MoneyError),
}

impl ReportError {
    /// The `CostRecorded` condition reason for a run whose report this is.
    pub fn reason(&self) -> &'static str {
        match self {
            ReportError::Missing => reasons::REPORT_MISSING,
            ReportError::TooLarge { .. } | ReportError::Malformed(_) | ReportError::InvalidCost(_) => {
                reasons::REPORT_MALFORMED
            }
        }
    }
}

/// Reads the runner's report from a container's termination message. An
/// absent or blank message is [`ReportError::Missing`]; unknown fields are
/// ignored, so a newer runner can add some.
pub fn parse_report(message: Option<&str>) -> Result<RunReport, ReportError> {
    let message = message.unwrap_or_default();
    if message.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge { bytes: message.len() });
    }
    if message.trim().is_empty() {
        return Err(ReportError::Missing);
    }
    let report: RunReport = serde_json::from_str(message).map_err(ReportError::Malformed)?;
    if let Some(cost) = &report.total_cost_usd {
        Usd::parse_rounding_up(cost).map_err(ReportError::InvalidCost)?;
    }
    Ok(report)
}

/// Why a run was charged what it was: the `CostRecorded` condition's reason
/// (`Reported`, `ReportMissing`, `ReportMalformed`) and a message with the
/// figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostReason {
    pub reason: &'static str,
    pub message: String,
}

/// The cost to record for a finished run, from its report (or why there is
/// none), the reservation it was admitted with, and the policy's price
/// overrides. See the module doc for the rules.
pub fn run_cost(
    report: Result<&RunReport, &ReportError>,
    reservation: Usd,
    overrides: &[ModelPrice],
) -> (Cost, CostReason) {
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            let cost = cost_of(None, reservation, CostSource::Estimated);
            let message = format!("{error}; charged the full reservation of ${reservation}");
            return (cost, note(error.reason(), message));
        }
    };

    if let Some(reported) = &report.total_cost_usd {
        return match Usd::parse_rounding_up(reported) {
            Ok(usd) => (
                cost_of(Some(report), usd, CostSource::Reported),
                note(reasons::REPORTED, format!("the runner reported a cost of ${usd}")),
            ),
            Err(error) => estimated(
                report,
                reservation,
                None,
                format!("the runner's total_cost_usd is invalid ({error})"),
            ),
        };
    }

    if report.usage.is_empty() {
        return estimated(
            report,
            reservation,
            None,
            "the runner reported neither a cost nor token usage".into(),
        );
    }

    let table = match PriceTable::with_overrides(overrides) {
        Ok(table) => table,
        Err(error) => {
            return estimated(
                report,
                reservation,
                None,
                format!("the runner reported no cost and the policy's prices are unusable ({error})"),
            );
        }
    };

    // Sum exact amounts over the models and round once, up.
    let mut units: Option<u128> = Some(0);
    let mut unpriced = vec![];
    for (model, usage) in &report.usage {
        match table.lookup(model) {
            Some(prices) => units = units.and_then(|sum| sum.checked_add(price_units(usage, prices)?)),
            None => unpriced.push(model.as_str()),
        }
    }
    let priced = units.and_then(|units| Usd::from_micros(units.div_ceil(1_000_000)));

    match (priced, unpriced.is_empty()) {
        (Some(usd), true) => (
            cost_of(Some(report), usd, CostSource::Computed),
            note(
                reasons::REPORTED,
                format!("the runner reported usage but no cost; ${usd} computed from the price table"),
            ),
        ),
        (priced, _) => {
            let why = if unpriced.is_empty() {
                "the runner reported no cost and its usage is too large to price".to_owned()
            } else {
                format!(
                    "the runner reported no cost and there is no price for {}",
                    unpriced.join(", ")
                )
            };
            estimated(report, reservation, priced, why)
        }
    }
}

/// An estimated cost for a run with a report: the reservation, or what its
/// priced models cost if that is more.
fn estimated(report: &RunReport, reservation: Usd, priced: Option<Usd>, why: String) -> (Cost, CostReason) {
    let usd = priced.map_or(reservation, |priced| priced.max(reservation));
    let charged = if usd == reservation {
        format!("charged the full reservation of ${reservation}")
    } else {
        format!("charged ${usd}, what its priced models cost, over the ${reservation} reservation")
    };
    (
        cost_of(Some(report), usd, CostSource::Estimated),
        note(reasons::REPORT_MALFORMED, format!("{why}; {charged}")),
    )
}

fn note(reason: &'static str, message: String) -> CostReason {
    CostReason { reason, message }
}

/// The status `Cost`: `usd` from `source`, counts summed over the report's
/// models (zero without a report).
fn cost_of(report: Option<&RunReport>, usd: Usd, source: CostSource) -> Cost {
    let total = |field: fn(&crate::report::ModelUsage) -> u64| {
        let sum = report.map_or(0, |r| r.usage.values().map(field).fold(0u64, u64::saturating_add));
        i64::try_from(sum).unwrap_or(i64::MAX)
    };
    Cost {
        usd: usd.to_string(),
        input_tokens: total(|u| u.input_tokens),
        output_tokens: total(|u| u.output_tokens),
        cache_creation_input_tokens: total(|u| u.cache_creation_input_tokens),
        cache_read_input_tokens: total(|u| u.cache_read_input_tokens),
        turns: report.map_or(0, |r| i32::try_from(r.num_turns).unwrap_or(i32::MAX)),
        models: report.map_or_else(Vec::new, |r| r.usage.keys().cloned().collect()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::report::ModelUsage;

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

    fn report(cost: Option<&str>, usage: &[(&str, ModelUsage)]) -> RunReport {
        RunReport {
            outcome: "success".into(),
            total_cost_usd: cost.map(Into::into),
            usage: usage.iter().map(|(m, u)| (m.to_string(), u.clone())).collect(),
            num_turns: 7,
            ..RunReport::default()
        }
    }

    fn full_report_json() -> serde_json::Value {
        json!({
            "outcome": "success",
            "total_cost_usd": "0.0123456",
            "usage": {
                "claude-sonnet-4-5-20250929": {
                    "input_tokens": 1000, "output_tokens": 200,
                    "cache_creation_input_tokens": 300, "cache_creation_1h_input_tokens": 100,
                    "cache_read_input_tokens": 4000
                },
                "claude-haiku-4-5-20251001": {"input_tokens": 50, "output_tokens": 5}
            },
            "num_turns": 4,
            "duration_ms": 81234,
            "session_id": "5c2f",
            "url": "https://github.com/acme/api/pull/7",
            "result": "Opened a pull request.",
            "a_field_from_a_newer_runner": true
        })
    }

    #[test]
    fn good_reports_parse() {
        let message = full_report_json().to_string();
        let parsed = parse_report(Some(&message)).unwrap();
        assert_eq!(parsed.outcome, "success");
        assert_eq!(parsed.total_cost_usd.as_deref(), Some("0.0123456"));
        assert_eq!(parsed.num_turns, 4);
        assert_eq!(
            parsed.usage["claude-sonnet-4-5-20250929"],
            usage(1000, 200, 300, 100, 4000)
        );
        assert_eq!(parsed.usage["claude-haiku-4-5-20251001"], usage(50, 5, 0, 0, 0));

        let minimal = parse_report(Some(r#"{"outcome":"error_clone"}"#)).unwrap();
        assert_eq!(
            minimal,
            RunReport {
                outcome: "error_clone".into(),
                ..RunReport::default()
            }
        );
    }

    #[test]
    fn a_report_of_exactly_the_limit_is_read() {
        let mut value = full_report_json();
        value["result"] = json!("");
        let base = value.to_string().len();
        value["result"] = json!("x".repeat(MAX_REPORT_BYTES - base));
        let message = value.to_string();
        assert_eq!(message.len(), MAX_REPORT_BYTES);
        assert!(parse_report(Some(&message)).is_ok());
    }

    #[test]
    fn unusable_messages_are_told_apart() {
        let too_long = format!(r#"{{"outcome":"success","result":"{}"}}"#, "x".repeat(MAX_REPORT_BYTES));
        let cut_short = &full_report_json().to_string()[..60];
        // message, expected error, condition reason
        type Case<'a> = (Option<&'a str>, fn(&ReportError) -> bool, &'a str);
        let cases: &[Case] = &[
            (None, |e| matches!(e, ReportError::Missing), reasons::REPORT_MISSING),
            (Some(""), |e| matches!(e, ReportError::Missing), reasons::REPORT_MISSING),
            (
                Some(" \n"),
                |e| matches!(e, ReportError::Missing),
                reasons::REPORT_MISSING,
            ),
            (
                Some(&too_long),
                |e| matches!(e, ReportError::TooLarge { bytes: 4129 }),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some(cut_short),
                |e| matches!(e, ReportError::Malformed(_)),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some("Killed"),
                |e| matches!(e, ReportError::Malformed(_)),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some("[]"),
                |e| matches!(e, ReportError::Malformed(_)),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some("{}"),
                |e| matches!(e, ReportError::Malformed(_)),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some(r#"{"outcome":"success","num_turns":-1}"#),
                |e| matches!(e, ReportError::Malformed(_)),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some(r#"{"outcome":"success","total_cost_usd":0.5}"#),
                |e| matches!(e, ReportError::Malformed(_)),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some(r#"{"outcome":"success","usage":{"m":{"input_tokens":"10"}}}"#),
                |e| matches!(e, ReportError::Malformed(_)),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some(r#"{"outcome":"success","total_cost_usd":"-0.5"}"#),
                |e| matches!(e, ReportError::InvalidCost(MoneyError::Negative(_))),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some(r#"{"outcome":"success","total_cost_usd":"1.5e-3"}"#),
                |e| matches!(e, ReportError::InvalidCost(MoneyError::Exponent(_))),
                reasons::REPORT_MALFORMED,
            ),
            (
                Some(r#"{"outcome":"success","total_cost_usd":"NaN"}"#),
                |e| matches!(e, ReportError::InvalidCost(MoneyError::Malformed(_))),
                reasons::REPORT_MALFORMED,
            ),
        ];
        for (message, is_expected, reason) in cases {
            let error = parse_report(*message).unwrap_err();
            assert!(is_expected(&error), "{message:?}: {error:?}");
            assert_eq!(error.reason(), *reason, "{message:?}");
        }
    }

    #[test]
    fn a_reported_cost_is_recorded_as_reported() {
        let r = report(
            Some("0.0123456"),
            &[
                ("claude-sonnet-4-5-20250929", usage(1000, 200, 300, 100, 4000)),
                ("claude-haiku-4-5", usage(50, 5, 0, 0, 0)),
            ],
        );
        let (cost, why) = run_cost(Ok(&r), usd("2"), &[]);
        assert_eq!(
            cost,
            Cost {
                usd: "0.012346".into(),
                input_tokens: 1050,
                output_tokens: 205,
                cache_creation_input_tokens: 300,
                cache_read_input_tokens: 4000,
                turns: 7,
                models: vec!["claude-haiku-4-5".into(), "claude-sonnet-4-5-20250929".into()],
                source: CostSource::Reported,
            }
        );
        assert_eq!(why.reason, reasons::REPORTED);
        assert_eq!(why.message, "the runner reported a cost of $0.012346");
    }

    #[test]
    fn which_figure_a_run_is_charged() {
        let s = || ("claude-sonnet-4-5-20250929", usage(1000, 200, 0, 0, 0)); // $0.006
        let h = || ("claude-haiku-4-5", usage(1000, 200, 0, 0, 0)); // $0.002
        let u = || ("claude-next", usage(1000, 200, 0, 0, 0));
        let p = || ("claude-opus-4-1", usage(0, 100_000, 0, 0, 0)); // $7.50
        let override_sonnet = ModelPrice {
            model: "claude-sonnet-*".into(),
            input_usd: "1".into(),
            output_usd: "1".into(),
            cache_write_5m_usd: "1".into(),
            cache_write_1h_usd: "1".into(),
            cache_read_usd: "1".into(),
        };
        let mut bad_override = override_sonnet.clone();
        bad_override.output_usd = "1.0000001".into();
        // What a run with this report is charged against a $2 reservation:
        // (usd, source, condition reason).
        let charge = |reported: Option<&str>, usage: &[(&str, ModelUsage)], overrides: &[ModelPrice]| {
            let r = report(reported, usage);
            let (cost, why) = run_cost(Ok(&r), usd("2"), overrides);
            assert_eq!(cost.turns, 7);
            assert_eq!(cost.models.len(), usage.len());
            (cost.usd, cost.source, why.reason)
        };
        use CostSource::*;
        use reasons::{REPORT_MALFORMED, REPORTED};

        // Claude Code's own figure, whatever the usage says; zero if it says zero.
        assert_eq!(charge(Some("0.30"), &[s()], &[]), ("0.30".into(), Reported, REPORTED));
        assert_eq!(charge(Some("0"), &[], &[]), ("0.00".into(), Reported, REPORTED));
        assert_eq!(charge(Some("5.50"), &[], &[]), ("5.50".into(), Reported, REPORTED));
        // No figure: usage times prices, the policy's prices first.
        assert_eq!(charge(None, &[s()], &[]), ("0.006".into(), Computed, REPORTED));
        assert_eq!(charge(None, &[s(), h()], &[]), ("0.008".into(), Computed, REPORTED));
        let cheap = [override_sonnet];
        assert_eq!(charge(None, &[s()], &cheap), ("0.0012".into(), Computed, REPORTED));
        let idle = ("claude-sonnet-4-5", usage(0, 0, 0, 0, 0));
        assert_eq!(charge(None, &[idle], &[]), ("0.00".into(), Computed, REPORTED));
        // Nothing to go on: the reservation.
        assert_eq!(charge(None, &[], &[]), ("2.00".into(), Estimated, REPORT_MALFORMED));
        assert_eq!(charge(None, &[u()], &[]), ("2.00".into(), Estimated, REPORT_MALFORMED));
        assert_eq!(
            charge(None, &[s(), u()], &[]),
            ("2.00".into(), Estimated, REPORT_MALFORMED)
        );
        assert_eq!(
            charge(None, &[s()], &[bad_override]),
            ("2.00".into(), Estimated, REPORT_MALFORMED)
        );
        assert_eq!(
            charge(Some("oops"), &[s()], &[]),
            ("2.00".into(), Estimated, REPORT_MALFORMED)
        );
        // ... or what the priced models cost, when that is more.
        assert_eq!(
            charge(None, &[p(), u()], &[]),
            ("7.50".into(), Estimated, REPORT_MALFORMED)
        );
    }

    #[test]
    fn without_a_report_the_run_is_charged_its_reservation() {
        let errors = [
            parse_report(None).unwrap_err(),
            parse_report(Some("Killed")).unwrap_err(),
            parse_report(Some(&"x".repeat(5000))).unwrap_err(),
        ];
        for error in &errors {
            let (cost, why) = run_cost(Err(error), usd("0.40"), &[]);
            assert_eq!(
                cost,
                Cost {
                    usd: "0.40".into(),
                    input_tokens: 0,
                    output_tokens: 0,
                    cache_creation_input_tokens: 0,
                    cache_read_input_tokens: 0,
                    turns: 0,
                    models: vec![],
                    source: CostSource::Estimated,
                },
                "{error}"
            );
            assert_eq!(why.reason, error.reason());
            assert!(
                why.message.ends_with("charged the full reservation of $0.40"),
                "{}",
                why.message
            );
        }
        let (_, why) = run_cost(Err(&ReportError::Missing), usd("0.40"), &[]);
        assert_eq!(
            why.message,
            "the runner left no termination report; charged the full reservation of $0.40"
        );
    }

    fn arb_usage() -> impl Strategy<Value = ModelUsage> {
        let count = prop_oneof![0u64..10_000_000, any::<u64>()];
        (count.clone(), count.clone(), count.clone(), count.clone(), count)
            .prop_map(|(i, o, w, w1, r)| usage(i, o, w, w1, r))
    }

    fn arb_report() -> impl Strategy<Value = RunReport> {
        let model = prop::sample::select(vec![
            "claude-sonnet-4-5-20250929",
            "claude-opus-4-5",
            "claude-3-5-haiku-latest",
            "claude-unknown",
            "gpt-4o",
        ]);
        let cost = prop::option::of(prop_oneof!["(0|[1-9][0-9]{0,3})(\\.[0-9]{1,10})?", "-?[0-9.eE+-]{0,8}",]);
        (
            cost,
            prop::collection::btree_map(model, arb_usage(), 0..4),
            any::<u32>(),
        )
            .prop_map(
                |(cost, usage, turns): (Option<String>, BTreeMap<&str, ModelUsage>, u32)| RunReport {
                    outcome: "success".into(),
                    total_cost_usd: cost,
                    usage: usage.into_iter().map(|(m, u)| (m.to_owned(), u)).collect(),
                    num_turns: turns,
                    ..RunReport::default()
                },
            )
    }

    proptest! {
        #[test]
        fn costs_are_never_negative_and_estimates_never_below_the_reservation(
            report in arb_report(),
            reservation_micros in 0u128..100_000_000,
            missing in any::<bool>(),
        ) {
            let reservation = Usd::from_micros(reservation_micros).unwrap();
            let error = ReportError::Missing;
            let input = if missing { Err(&error) } else { Ok(&report) };
            let (cost, why) = run_cost(input, reservation, &[]);
            let charged = Usd::parse(&cost.usd).expect("the recorded cost is a valid amount");
            prop_assert!(charged >= Usd::ZERO);
            prop_assert!(cost.input_tokens >= 0 && cost.output_tokens >= 0);
            prop_assert!(cost.cache_creation_input_tokens >= 0 && cost.cache_read_input_tokens >= 0);
            prop_assert!(cost.turns >= 0);
            prop_assert!(!why.message.is_empty());
            match cost.source {
                CostSource::Estimated => prop_assert!(charged >= reservation, "{} < {}", charged, reservation),
                CostSource::Reported => prop_assert_eq!(why.reason, reasons::REPORTED),
                CostSource::Computed => prop_assert!(report.total_cost_usd.is_none() && !report.usage.is_empty()),
                CostSource::Metered => prop_assert!(false, "the report never yields a metered cost"),
            }
        }

        #[test]
        fn parsing_never_panics(message in prop::option::of(".{0,5000}")) {
            let _ = parse_report(message.as_deref());
        }
    }
}
