//! The spend ledger on a policy's status ([`SpendLedger`]): what the
//! policy's runs were charged, per budget period. Pure: the controller reads
//! the policy, calls [`charge`], and writes the result back with the
//! policy's `resourceVersion` as a precondition, then marks the run.
//!
//! Exactly once per run: a charge lists the run's uid in `unmarked` in the
//! same write that adds its cost, so a crash between that write and the
//! run's mark finds the uid there and charges nothing twice. Uids leave the
//! list once the run's mark shows ([`prune`]). Closed periods keep their
//! totals in `history`, newest first, [`KEPT_PERIODS`] of them.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::money::Usd;
use crate::api::{PeriodSpend, SpendLedger};

/// Closed periods whose totals the ledger keeps.
pub const KEPT_PERIODS: usize = 12;
/// Most uids of charged, not yet marked runs the ledger keeps (oldest dropped).
pub const MAX_UNMARKED: usize = 500;

/// A ledger that cannot be used: never read as zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpendError {
    #[error("the policy's spend ledger holds an unreadable amount {0:?}")]
    Unreadable(String),
    #[error("the policy's spend ledger would overflow")]
    Overflow,
}

/// The outcome of [`charge`].
#[derive(Debug, Clone, PartialEq)]
pub enum Charge {
    /// The run is in the ledger already: nothing to write.
    Already,
    /// The ledger with the run's cost added, to be written.
    Charged(SpendLedger),
}

fn amount(s: &str) -> Result<Usd, SpendError> {
    Usd::parse(s).map_err(|_| SpendError::Unreadable(s.to_owned()))
}

fn add(total: &str, cost: Usd) -> Result<String, SpendError> {
    Ok(amount(total)?
        .checked_add(cost)
        .ok_or(SpendError::Overflow)?
        .to_string())
}

/// An empty ledger for the period `[start, end)`.
pub fn empty(start: Timestamp, end: Timestamp) -> SpendLedger {
    SpendLedger {
        period_start: Time(start),
        period_end: Time(end),
        charged_usd: Usd::ZERO.to_string(),
        runs_charged: 0,
        unmarked: vec![],
        history: vec![],
    }
}

/// The ledger moved on to the period `[start, end)`: the period it held goes
/// into `history` (newest first, at most [`KEPT_PERIODS`]). A ledger already
/// on that period is returned as it is; `unmarked` always carries over.
pub fn roll(ledger: Option<SpendLedger>, start: Timestamp, end: Timestamp) -> SpendLedger {
    let Some(mut ledger) = ledger else {
        return empty(start, end);
    };
    if ledger.period_start.0 == start && ledger.period_end.0 == end {
        return ledger;
    }
    let closed = PeriodSpend {
        period_start: ledger.period_start.clone(),
        period_end: ledger.period_end.clone(),
        charged_usd: ledger.charged_usd.clone(),
        runs_charged: ledger.runs_charged,
    };
    ledger
        .history
        .retain(|p| !(p.period_start == closed.period_start && p.period_end == closed.period_end));
    ledger.history.insert(0, closed);
    ledger.history.truncate(KEPT_PERIODS);
    SpendLedger {
        period_start: Time(start),
        period_end: Time(end),
        charged_usd: Usd::ZERO.to_string(),
        runs_charged: 0,
        unmarked: ledger.unmarked,
        history: ledger.history,
    }
}

/// Adds the cost of the run `uid`, which finished at `done`, to the ledger
/// rolled to the current period `[start, end)`. The cost counts in the
/// period the run finished in: the current one, or a kept earlier one; a
/// run older than every kept period counts in the current one (spend is
/// never dropped).
pub fn charge(
    ledger: Option<SpendLedger>,
    start: Timestamp,
    end: Timestamp,
    uid: &str,
    cost: Usd,
    done: Timestamp,
) -> Result<Charge, SpendError> {
    if ledger.as_ref().is_some_and(|l| l.unmarked.iter().any(|u| u == uid)) {
        return Ok(Charge::Already);
    }
    let mut ledger = roll(ledger, start, end);
    let earlier = (done < start)
        .then(|| {
            ledger
                .history
                .iter_mut()
                .find(|p| p.period_start.0 <= done && done < p.period_end.0)
        })
        .flatten();
    match earlier {
        Some(period) => {
            period.charged_usd = add(&period.charged_usd, cost)?;
            period.runs_charged += 1;
        }
        None => {
            ledger.charged_usd = add(&ledger.charged_usd, cost)?;
            ledger.runs_charged += 1;
        }
    }
    ledger.unmarked.push(uid.to_owned());
    if ledger.unmarked.len() > MAX_UNMARKED {
        let over = ledger.unmarked.len() - MAX_UNMARKED;
        ledger.unmarked.drain(..over);
    }
    Ok(Charge::Charged(ledger))
}

/// What the ledger says the period `[start, end)` was charged: its current
/// period's total, a kept period's, or nothing (a period it never reached).
pub fn charged_in(ledger: Option<&SpendLedger>, start: Timestamp, end: Timestamp) -> Result<Usd, SpendError> {
    let Some(ledger) = ledger else {
        return Ok(Usd::ZERO);
    };
    if ledger.period_start.0 == start && ledger.period_end.0 == end {
        return amount(&ledger.charged_usd);
    }
    match ledger
        .history
        .iter()
        .find(|p| p.period_start.0 == start && p.period_end.0 == end)
    {
        Some(p) => amount(&p.charged_usd),
        None => Ok(Usd::ZERO),
    }
}

/// Whether the ledger lists the run `uid` as charged.
pub fn lists(ledger: Option<&SpendLedger>, uid: &str) -> bool {
    ledger.is_some_and(|l| l.unmarked.iter().any(|u| u == uid))
}

/// Forgets the uids of runs whose mark shows (`marked`); true when any went.
pub fn prune(ledger: &mut SpendLedger, marked: impl Fn(&str) -> bool) -> bool {
    let before = ledger.unmarked.len();
    ledger.unmarked.retain(|u| !marked(u));
    ledger.unmarked.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }
    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }
    const NOV: (&str, &str) = ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
    const DEC: (&str, &str) = ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z");

    fn charged(c: Charge) -> SpendLedger {
        match c {
            Charge::Charged(l) => l,
            Charge::Already => panic!("expected a charge"),
        }
    }

    #[test]
    fn a_run_is_charged_once_whatever_is_retried() {
        let (s, e) = (t(DEC.0), t(DEC.1));
        let done = t("2026-12-02T10:00:00Z");
        let l = charged(charge(None, s, e, "uid-a", usd("0.25"), done).unwrap());
        assert_eq!((l.charged_usd.as_str(), l.runs_charged), ("0.25", 1));
        assert_eq!(l.unmarked, ["uid-a"]);
        // The same run again (a crash before its mark): nothing.
        assert_eq!(
            charge(Some(l.clone()), s, e, "uid-a", usd("0.25"), done).unwrap(),
            Charge::Already
        );
        let l = charged(charge(Some(l), s, e, "uid-b", usd("1.5"), done).unwrap());
        assert_eq!((l.charged_usd.as_str(), l.runs_charged), ("1.75", 2));
        assert_eq!(charged_in(Some(&l), s, e).unwrap(), usd("1.75"));
        // Once the mark shows the uid goes; the total stays.
        let mut pruned = l.clone();
        assert!(prune(&mut pruned, |u| u == "uid-a"));
        assert_eq!(pruned.unmarked, ["uid-b"]);
        assert_eq!(charged_in(Some(&pruned), s, e).unwrap(), usd("1.75"));
        assert!(!prune(&mut pruned, |u| u == "uid-a"));
    }

    #[test]
    fn a_new_period_starts_at_zero_and_keeps_the_old_total() {
        let nov = charged(charge(None, t(NOV.0), t(NOV.1), "a", usd("3"), t("2026-11-20T00:00:00Z")).unwrap());
        // December's first charge rolls the ledger over.
        let dec = charged(charge(Some(nov), t(DEC.0), t(DEC.1), "b", usd("1"), t("2026-12-03T00:00:00Z")).unwrap());
        assert_eq!(charged_in(Some(&dec), t(DEC.0), t(DEC.1)).unwrap(), usd("1"));
        assert_eq!(charged_in(Some(&dec), t(NOV.0), t(NOV.1)).unwrap(), usd("3"));
        assert_eq!(dec.history.len(), 1);
        assert_eq!(dec.history[0].runs_charged, 1);
        // A November run charged in December counts in November.
        let late = charged(
            charge(
                Some(dec.clone()),
                t(DEC.0),
                t(DEC.1),
                "c",
                usd("0.5"),
                t("2026-11-30T23:00:00Z"),
            )
            .unwrap(),
        );
        assert_eq!(charged_in(Some(&late), t(NOV.0), t(NOV.1)).unwrap(), usd("3.5"));
        assert_eq!(charged_in(Some(&late), t(DEC.0), t(DEC.1)).unwrap(), usd("1"));
        // A run older than every kept period counts now: never dropped.
        let old = charged(charge(Some(dec), t(DEC.0), t(DEC.1), "d", usd("2"), t("2025-01-01T00:00:00Z")).unwrap());
        assert_eq!(charged_in(Some(&old), t(DEC.0), t(DEC.1)).unwrap(), usd("3"));
        // A period the ledger never reached has nothing; rolling twice changes nothing.
        assert_eq!(
            charged_in(Some(&old), t("2027-01-01T00:00:00Z"), t("2027-02-01T00:00:00Z")).unwrap(),
            Usd::ZERO
        );
        assert_eq!(roll(Some(old.clone()), t(DEC.0), t(DEC.1)), old);
    }

    #[test]
    fn history_and_unmarked_are_bounded() {
        let mut l = empty(t("2025-01-01T00:00:00Z"), t("2025-01-02T00:00:00Z"));
        let mut day = t("2025-01-02T00:00:00Z");
        for _ in 0..30 {
            let next = day + jiff::SignedDuration::from_hours(24);
            l = roll(Some(l), day, next);
            day = next;
        }
        assert_eq!(l.history.len(), KEPT_PERIODS);
        assert!(l.history[0].period_end.0 > l.history[1].period_end.0, "newest first");
        let (s, e) = (l.period_start.0, l.period_end.0);
        for i in 0..(MAX_UNMARKED + 5) {
            l = charged(charge(Some(l), s, e, &format!("u{i}"), usd("0.01"), s).unwrap());
        }
        assert_eq!(l.unmarked.len(), MAX_UNMARKED);
        assert_eq!(l.unmarked[0], "u5", "the oldest go first");
        assert_eq!(l.runs_charged as usize, MAX_UNMARKED + 5);
    }

    #[test]
    fn an_unreadable_ledger_is_an_error_never_zero() {
        let mut l = empty(t(DEC.0), t(DEC.1));
        l.charged_usd = "lots".into();
        assert!(charged_in(Some(&l), t(DEC.0), t(DEC.1)).is_err());
        assert!(charge(Some(l), t(DEC.0), t(DEC.1), "x", usd("1"), t(DEC.0)).is_err());
        let mut l = empty(t(DEC.0), t(DEC.1));
        l.charged_usd = Usd::MAX.to_string();
        assert_eq!(
            charge(Some(l), t(DEC.0), t(DEC.1), "x", usd("1"), t(DEC.0)),
            Err(SpendError::Overflow)
        );
    }
}
