//! The budget side of admission, after authorization: whether a policy's
//! money, concurrency and per-user rate limits allow one more run
//! ([`check`]), and the figures on a policy's status ([`summary`]).
//!
//! The rules, checked in this order, the first failing one denying:
//! 1. `BudgetExhausted`: spent + reserved + this run's `maxCostPerRunUSD`
//!    would exceed `limitUSD`. Reaching the limit exactly is allowed.
//! 2. `ConcurrencyLimit`: `maxConcurrentRuns` runs are already active.
//! 3. `RateLimited`: the actor already started `maxRunsPerUserPerHour` runs in
//!    the last hour.
//!
//! Spent is the sum of the period's recorded run costs; reserved is the sum
//! of the reservations of runs whose cost is not recorded yet. A run's
//! reservation leaves "reserved" only when its cost is recorded, so money
//! is never counted twice nor dropped in between. Any sum that overflows
//! denies.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::reasons;
use crate::api::{Budget, BudgetStatus, Phase};

use super::money::{MoneyError, Usd};

/// A policy's limits, parsed from its `budget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetLimits {
    /// `limitUSD`: most all runs may spend in one period.
    pub limit: Usd,
    /// `maxCostPerRunUSD`: what each active run reserves.
    pub max_cost_per_run: Usd,
    /// `maxConcurrentRuns`.
    pub max_concurrent_runs: u32,
    /// `maxRunsPerUserPerHour`.
    pub max_runs_per_user_per_hour: u32,
}

/// Why a policy's `budget` cannot be used. The caller denies (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("budget.{field} is invalid: {source}")]
    Money {
        field: &'static str,
        #[source]
        source: MoneyError,
    },
    #[error("budget.{field} must be at least 1, not {value}")]
    Count { field: &'static str, value: i32 },
}

impl BudgetLimits {
    /// Parses a policy's budget. The CRD schema already enforces these
    /// rules; this repeats them so that nothing unchecked reaches a decision.
    pub fn from_spec(budget: &Budget) -> Result<BudgetLimits, BudgetError> {
        let money = |field, value: &str| Usd::parse(value).map_err(|source| BudgetError::Money { field, source });
        let count = |field, value: i32| match u32::try_from(value) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(BudgetError::Count { field, value }),
        };
        Ok(BudgetLimits {
            limit: money("limitUSD", &budget.limit_usd)?,
            max_cost_per_run: money("maxCostPerRunUSD", &budget.max_cost_per_run_usd)?,
            max_concurrent_runs: count("maxConcurrentRuns", budget.max_concurrent_runs)?,
            max_runs_per_user_per_hour: count("maxRunsPerUserPerHour", budget.max_runs_per_user_per_hour)?,
        })
    }

    /// The admission input for one more run, given the period's summary and
    /// how many runs the actor started in the last hour.
    pub fn input(&self, summary: &BudgetSummary, actor_runs_last_hour: u32) -> BudgetInput {
        BudgetInput {
            limit: self.limit,
            max_cost_per_run: self.max_cost_per_run,
            spent: summary.spent,
            reserved: summary.reserved,
            active_runs: summary.active_runs,
            max_concurrent_runs: self.max_concurrent_runs,
            actor_runs_last_hour,
            max_runs_per_user_per_hour: self.max_runs_per_user_per_hour,
        }
    }
}

/// Everything the budget check looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetInput {
    /// The period's limit (`limitUSD`).
    pub limit: Usd,
    /// What the new run would reserve (`maxCostPerRunUSD`).
    pub max_cost_per_run: Usd,
    /// Recorded costs of the period's runs.
    pub spent: Usd,
    /// Reservations of runs whose cost is not recorded yet.
    pub reserved: Usd,
    /// Runs admitted and not finished.
    pub active_runs: u32,
    /// `maxConcurrentRuns`.
    pub max_concurrent_runs: u32,
    /// Runs the actor started in the last hour.
    pub actor_runs_last_hour: u32,
    /// `maxRunsPerUserPerHour`.
    pub max_runs_per_user_per_hour: u32,
}

/// A refusal: a reason a machine can match (`status.admission.reason`) and a
/// message with the figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: &'static str,
    pub message: String,
}

/// Whether the budget admits one more run. See the module doc for the rules.
pub fn check(input: &BudgetInput) -> Result<(), Denial> {
    let committed = input.spent.checked_add(input.reserved);
    let needed = committed.and_then(|c| c.checked_add(input.max_cost_per_run));
    if needed.is_none_or(|needed| needed > input.limit) {
        return Err(Denial {
            reason: reasons::BUDGET_EXHAUSTED,
            message: format!(
                "the period's budget of ${} cannot hold another ${} run: ${} spent and ${} reserved for active runs",
                input.limit, input.max_cost_per_run, input.spent, input.reserved
            ),
        });
    }
    if input.active_runs >= input.max_concurrent_runs {
        return Err(Denial {
            reason: reasons::CONCURRENCY_LIMIT,
            message: format!(
                "{} runs are active, and the policy allows {} at once",
                input.active_runs, input.max_concurrent_runs
            ),
        });
    }
    if input.actor_runs_last_hour >= input.max_runs_per_user_per_hour {
        return Err(Denial {
            reason: reasons::RATE_LIMITED,
            message: format!(
                "the actor started {} runs in the last hour, and the policy allows {} per hour",
                input.actor_runs_last_hour, input.max_runs_per_user_per_hour
            ),
        });
    }
    Ok(())
}

/// What one run of the period holds of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunCharge {
    /// The run's phase.
    pub phase: Phase,
    /// Its recorded cost (`status.cost.usd`), once there is one.
    pub cost: Option<Usd>,
    /// Its reservation (`status.reservedUSD`), set at admission.
    pub reserved: Option<Usd>,
}

/// The period's figures for the policy's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetSummary {
    /// Recorded costs.
    pub spent: Usd,
    /// Reservations of runs whose cost is not recorded yet.
    pub reserved: Usd,
    /// The limit less spent and reserved, or zero when they exceed it.
    pub remaining: Usd,
    /// Runs admitted and not finished.
    pub active_runs: u32,
}

/// Sums the period's runs against its limit:
/// - a run with a recorded cost counts that cost as spent, whatever its phase;
/// - a run without one counts its reservation as reserved if it is active
///   (`maxCostPerRun` when an active run shows none: fail closed) or if it
///   ended holding one (its cost is about to be recorded);
/// - other runs (pending, awaiting approval, denied) hold nothing.
///
/// Sums saturate at the largest amount, which leaves nothing remaining.
pub fn summary(runs: &[RunCharge], limit: Usd, max_cost_per_run: Usd) -> BudgetSummary {
    let add = |sum: Usd, amount: Usd| sum.checked_add(amount).unwrap_or(Usd::MAX);
    let mut spent = Usd::ZERO;
    let mut reserved = Usd::ZERO;
    let mut active_runs = 0u32;
    for run in runs {
        if run.phase.is_active() {
            active_runs = active_runs.saturating_add(1);
        }
        match (run.cost, run.reserved) {
            (Some(cost), _) => spent = add(spent, cost),
            (None, reservation) if run.phase.is_active() => {
                reserved = add(reserved, reservation.unwrap_or(max_cost_per_run));
            }
            (None, Some(reservation)) if run.phase.is_terminal() => reserved = add(reserved, reservation),
            (None, _) => {}
        }
    }
    let remaining = spent
        .checked_add(reserved)
        .map_or(Usd::ZERO, |committed| limit.saturating_sub(committed));
    BudgetSummary {
        spent,
        reserved,
        remaining,
        active_runs,
    }
}

impl BudgetSummary {
    /// The policy's `status.budget` for the period `[start, end)`.
    pub fn to_status(&self, start: Timestamp, end: Timestamp) -> BudgetStatus {
        BudgetStatus {
            period_start: Time(start),
            period_end: Time(end),
            spent_usd: self.spent.to_string(),
            reserved_usd: self.reserved.to_string(),
            remaining_usd: self.remaining.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    /// A policy of $1.00 a period, $0.40 a run, 3 runs at once, 10 per user an hour.
    fn dollar_policy(spent: &str, reserved: &str, active_runs: u32, actor_runs_last_hour: u32) -> BudgetInput {
        BudgetInput {
            limit: usd("1.00"),
            max_cost_per_run: usd("0.40"),
            spent: usd(spent),
            reserved: usd(reserved),
            active_runs,
            max_concurrent_runs: 3,
            actor_runs_last_hour,
            max_runs_per_user_per_hour: 10,
        }
    }

    #[test]
    fn budget_decisions_at_the_boundaries() {
        // spent, reserved, active, actor's runs last hour, decision
        for (spent, reserved, active, actor, decision) in [
            ("0", "0", 0, 0, None),
            // One active run: 0.40 + 0.40 <= 1.00.
            ("0", "0.40", 1, 0, None),
            // Two active runs: 0.80 + 0.40 > 1.00, the third is denied.
            ("0", "0.80", 2, 0, Some(reasons::BUDGET_EXHAUSTED)),
            // One of them finished at $0.05: 0.05 + 0.40 + 0.40 = 0.85, admitted.
            ("0.05", "0.40", 1, 0, None),
            // Exactly at the limit is allowed; a micro-dollar over is not.
            ("0.20", "0.40", 1, 0, None),
            ("0.200001", "0.40", 1, 0, Some(reasons::BUDGET_EXHAUSTED)),
            ("0.60", "0", 0, 0, None),
            ("0.600001", "0", 0, 0, Some(reasons::BUDGET_EXHAUSTED)),
            // Overspent (a run cost more than it reserved): denied, not wrapped.
            ("1.50", "0", 0, 0, Some(reasons::BUDGET_EXHAUSTED)),
            // Concurrency: 3 allowed at once.
            ("0", "0", 2, 0, None),
            ("0", "0", 3, 0, Some(reasons::CONCURRENCY_LIMIT)),
            ("0", "0", 4, 0, Some(reasons::CONCURRENCY_LIMIT)),
            // Rate: 10 per user an hour.
            ("0", "0", 0, 9, None),
            ("0", "0", 0, 10, Some(reasons::RATE_LIMITED)),
            // Money is checked first, then concurrency, then rate.
            ("0.90", "0", 3, 10, Some(reasons::BUDGET_EXHAUSTED)),
            ("0", "0", 3, 10, Some(reasons::CONCURRENCY_LIMIT)),
        ] {
            let input = dollar_policy(spent, reserved, active, actor);
            assert_eq!(check(&input).err().map(|d| d.reason), decision, "{input:?}");
        }
    }

    #[test]
    fn denials_explain_the_figures() {
        let denial = check(&dollar_policy("0.05", "0.80", 2, 0)).unwrap_err();
        assert_eq!(
            denial.message,
            "the period's budget of $1.00 cannot hold another $0.40 run: $0.05 spent and $0.80 reserved for active runs"
        );
        let denial = check(&dollar_policy("0", "0", 3, 0)).unwrap_err();
        assert_eq!(denial.message, "3 runs are active, and the policy allows 3 at once");
        let denial = check(&dollar_policy("0", "0", 0, 12)).unwrap_err();
        assert_eq!(
            denial.message,
            "the actor started 12 runs in the last hour, and the policy allows 10 per hour"
        );
    }

    #[test]
    fn overflowing_sums_deny() {
        let mut input = dollar_policy("0", "0", 0, 0);
        input.spent = Usd::MAX;
        input.limit = Usd::MAX;
        assert_eq!(check(&input).unwrap_err().reason, reasons::BUDGET_EXHAUSTED);
    }

    fn run(phase: Phase, cost: Option<&str>, reserved: Option<&str>) -> RunCharge {
        RunCharge {
            phase,
            cost: cost.map(usd),
            reserved: reserved.map(usd),
        }
    }

    #[test]
    fn what_each_run_holds_of_the_budget() {
        use Phase::*;
        // run, spent, reserved, active
        for (charge, spent, reserved, active) in [
            (run(Pending, None, None), "0", "0", 0),
            (run(AwaitingApproval, None, None), "0", "0", 0),
            (run(Denied, None, None), "0", "0", 0),
            (run(Admitted, None, Some("0.40")), "0", "0.40", 1),
            (run(Running, None, Some("0.40")), "0", "0.40", 1),
            // An active run without a recorded reservation holds maxCostPerRun.
            (run(Running, None, None), "0", "0.40", 1),
            // A reservation made under an older, higher maxCostPerRun still holds.
            (run(Running, None, Some("0.75")), "0", "0.75", 1),
            (run(Succeeded, Some("0.05"), Some("0.40")), "0.05", "0", 0),
            (run(Failed, Some("0.40"), Some("0.40")), "0.40", "0", 0),
            (run(TimedOut, Some("0.55"), Some("0.40")), "0.55", "0", 0),
            // Ended, cost not recorded yet: still reserved, never dropped.
            (run(Failed, None, Some("0.40")), "0", "0.40", 0),
            (run(Cancelled, None, None), "0", "0", 0),
            // Cost recorded, phase not updated yet: spent, not also reserved.
            (run(Running, Some("0.10"), Some("0.40")), "0.10", "0", 1),
        ] {
            let s = summary(&[charge], usd("1.00"), usd("0.40"));
            assert_eq!(
                (s.spent, s.reserved, s.active_runs),
                (usd(spent), usd(reserved), active),
                "{charge:?}"
            );
        }
    }

    #[test]
    fn a_period_summed_and_written_on_status() {
        use Phase::*;
        let runs = [
            run(Succeeded, Some("0.05"), Some("0.40")),
            run(Failed, Some("0.123456"), Some("0.40")),
            run(Running, None, Some("0.40")),
            run(Denied, None, None),
            run(Pending, None, None),
        ];
        let s = summary(&runs, usd("1.00"), usd("0.40"));
        assert_eq!(
            s,
            BudgetSummary {
                spent: usd("0.173456"),
                reserved: usd("0.40"),
                remaining: usd("0.426544"),
                active_runs: 1,
            }
        );
        let start: Timestamp = "2025-06-01T00:00:00Z".parse().unwrap();
        let end: Timestamp = "2025-07-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            s.to_status(start, end),
            BudgetStatus {
                period_start: Time(start),
                period_end: Time(end),
                spent_usd: "0.173456".into(),
                reserved_usd: "0.40".into(),
                remaining_usd: "0.426544".into(),
            }
        );

        // Overspent: nothing remains, never a negative figure.
        let over = summary(&[run(Succeeded, Some("1.20"), None)], usd("1.00"), usd("0.40"));
        assert_eq!(over.remaining.to_string(), "0.00");
        assert_eq!(summary(&[], usd("1"), usd("0.40")).remaining.to_string(), "1.00");
    }

    #[test]
    fn the_dollar_policy_story_end_to_end() {
        use Phase::*;
        let limits = BudgetLimits {
            limit: usd("1.00"),
            max_cost_per_run: usd("0.40"),
            max_concurrent_runs: 3,
            max_runs_per_user_per_hour: 10,
        };
        let decide = |runs: &[RunCharge]| {
            let s = summary(runs, limits.limit, limits.max_cost_per_run);
            check(&limits.input(&s, 0)).err().map(|d| d.reason)
        };
        let two_active = [run(Running, None, Some("0.40")), run(Admitted, None, Some("0.40"))];
        assert_eq!(decide(&two_active), Some(reasons::BUDGET_EXHAUSTED));
        let one_finished = [
            run(Succeeded, Some("0.05"), Some("0.40")),
            run(Admitted, None, Some("0.40")),
        ];
        assert_eq!(decide(&one_finished), None);
    }

    #[test]
    fn limits_parse_from_the_policy() {
        let budget: Budget = serde_json::from_value(serde_json::json!({
            "maxCostPerRunUSD": "0.40", "limitUSD": "1", "maxConcurrentRuns": 2, "maxRunsPerUserPerHour": 5
        }))
        .unwrap();
        assert_eq!(
            BudgetLimits::from_spec(&budget),
            Ok(BudgetLimits {
                limit: usd("1"),
                max_cost_per_run: usd("0.40"),
                max_concurrent_runs: 2,
                max_runs_per_user_per_hour: 5,
            })
        );
        let mut bad = budget.clone();
        bad.limit_usd = "-1".into();
        assert!(matches!(
            BudgetLimits::from_spec(&bad),
            Err(BudgetError::Money { field: "limitUSD", .. })
        ));
        let mut bad = budget;
        bad.max_concurrent_runs = 0;
        assert_eq!(
            BudgetLimits::from_spec(&bad),
            Err(BudgetError::Count {
                field: "maxConcurrentRuns",
                value: 0
            })
        );
    }
}
