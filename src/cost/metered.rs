//! A run's cost as the gateway metered it (see [`crate::grant::Meter`]), and
//! the cross-check of the runner's own report against it. The meter is the
//! figure that counts: the runner's report can only raise a flag, never
//! lower what the run is charged.

use crate::api::{Cost, CostSource};
use crate::grant::Meter;
use crate::report::RunReport;

use super::Usd;

/// What the meter says the run cost. While the run runs (`final_ = false`):
/// the settled requests so far. When it has ended (`final_ = true`): settled
/// plus every reservation still open (a request that never settled is
/// charged its worst case).
pub fn metered_cost(meter: &Meter, final_: bool) -> Cost {
    let micros = if final_ {
        meter.worst_case_micros()
    } else {
        meter.spent_micros
    };
    // Beyond 10^15 dollars the figure is nonsense; charge the most we can write.
    let usd = Usd::from_micros(u128::from(micros)).unwrap_or(Usd::MAX);
    let total = |field: fn(&crate::report::ModelUsage) -> u64| {
        let sum = meter.usage.values().map(field).fold(0u64, u64::saturating_add);
        i64::try_from(sum).unwrap_or(i64::MAX)
    };
    Cost {
        usd: usd.to_string(),
        input_tokens: total(|u| u.input_tokens),
        output_tokens: total(|u| u.output_tokens),
        cache_creation_input_tokens: total(|u| u.cache_creation_input_tokens),
        cache_read_input_tokens: total(|u| u.cache_read_input_tokens),
        turns: i32::try_from(meter.requests).unwrap_or(i32::MAX),
        models: meter.usage.keys().cloned().collect(),
        source: CostSource::Metered,
    }
}

/// When the runner reported a total cost below the metered one, a message
/// saying so (no secret in it: two figures). `None` when the report agrees,
/// is higher, or says nothing.
pub fn report_below_meter(report: &RunReport, metered: Usd) -> Option<String> {
    let reported = Usd::parse_rounding_up(report.total_cost_usd.as_deref()?).ok()?;
    (reported < metered).then(|| {
        format!("the runner reported ${reported}, below the ${metered} the gateway metered; charged ${metered}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::InFlight;
    use crate::report::ModelUsage;

    fn meter() -> Meter {
        let mut m = Meter {
            spent_micros: 1_250_000,
            requests: 3,
            ..Meter::default()
        };
        m.usage.insert(
            "claude-sonnet-4-5".into(),
            ModelUsage {
                input_tokens: 100,
                output_tokens: 20,
                cache_creation_input_tokens: 5,
                cache_read_input_tokens: 7,
                ..ModelUsage::default()
            },
        );
        m.usage.insert(
            "claude-haiku-4-5".into(),
            ModelUsage {
                input_tokens: 1,
                output_tokens: 2,
                ..ModelUsage::default()
            },
        );
        m.in_flight.insert(
            "r9".into(),
            InFlight {
                reserved_micros: 500_000,
                since: "2026-01-01T00:00:00Z".into(),
            },
        );
        m
    }

    #[test]
    fn running_shows_what_settled_and_final_charges_open_reservations() {
        let running = metered_cost(&meter(), false);
        assert_eq!(running.usd, "1.25");
        assert_eq!(running.source, CostSource::Metered);
        assert_eq!((running.input_tokens, running.output_tokens), (101, 22));
        assert_eq!(
            (running.cache_creation_input_tokens, running.cache_read_input_tokens),
            (5, 7)
        );
        assert_eq!(running.turns, 3);
        assert_eq!(running.models, ["claude-haiku-4-5", "claude-sonnet-4-5"]);
        let done = metered_cost(&meter(), true);
        assert_eq!(done.usd, "1.75");

        // A gateway replica's tranche never given back (it died) is charged
        // in full when the run ends, and shown nowhere while it runs.
        let mut m = meter();
        m.tranches.insert(
            "gw-a.0011aa".into(),
            crate::grant::Tranche {
                reserved_micros: 2_000_000,
                seq: 4,
                since: "2026-01-01T00:00:00Z".into(),
            },
        );
        assert_eq!(metered_cost(&m, false).usd, "1.25");
        assert_eq!(metered_cost(&m, true).usd, "3.75");
    }

    #[test]
    fn an_empty_meter_is_zero() {
        let c = metered_cost(&Meter::default(), true);
        assert_eq!((c.usd.as_str(), c.turns, c.models.len()), ("0.00", 0, 0));
        assert_eq!(Usd::parse(&c.usd).unwrap(), Usd::ZERO);
    }

    #[test]
    fn a_report_below_the_meter_is_flagged_never_believed() {
        let metered = Usd::parse("1.75").unwrap();
        let report = |usd: Option<&str>| RunReport {
            outcome: "success".into(),
            total_cost_usd: usd.map(String::from),
            ..RunReport::default()
        };
        let low = report_below_meter(&report(Some("0.10")), metered).unwrap();
        assert!(low.contains("$0.10") && low.contains("$1.75"), "{low}");
        assert_eq!(report_below_meter(&report(Some("1.75")), metered), None);
        assert_eq!(report_below_meter(&report(Some("9")), metered), None);
        assert_eq!(report_below_meter(&report(None), metered), None);
        assert_eq!(report_below_meter(&report(Some("nonsense")), metered), None);
    }
}
