//! Money, prices, budget periods and run costs: exact decimal arithmetic, no
//! floats, no I/O.
//!
//! - [`money`]: [`Usd`], an exact non-negative amount to the micro-dollar;
//!   computed amounts are rounded up, never down.
//! - [`prices`]: the built-in price table, a policy's overrides, and
//!   [`usd_for_usage`].
//! - [`report`]: reading the runner's termination report and deciding what a
//!   finished run is charged ([`run_cost`]): reported, computed or estimated.
//! - [`metered`]: a run's cost from the gateway's meter ([`metered_cost`]),
//!   and the runner report's cross-check against it.
//! - [`period`]: the day, ISO week or month holding an instant, in UTC or the
//!   policy's time zone ([`period_bounds`]).
//! - [`budget`]: whether the budget admits one more run ([`check_budget`]) and
//!   the policy's budget status figures ([`budget_summary`]).
//! - [`spend`]: the durable spend ledger on a policy's status: each run
//!   charged exactly once ([`spend::charge`]), periods rolled over.

pub mod budget;
pub mod metered;
pub mod money;
pub mod period;
pub mod prices;
pub mod report;
pub mod spend;

pub use budget::{
    BudgetError, BudgetInput, BudgetLimits, BudgetSummary, Denial, RunCharge, check as check_budget,
    summary as budget_summary,
};
pub use metered::{metered_cost, report_below_meter};
pub use money::{MoneyError, Usd};
pub use period::{PeriodError, period_bounds};
pub use prices::{ModelPrices, PriceError, PriceTable, usd_for_usage};
pub use report::{CostReason, ReportError, parse_report, run_cost};
