//! Budget periods: the calendar day, ISO week or month that holds a given
//! instant, in UTC or in the policy's IANA time zone ([`period_bounds`]).
//!
//! A period starts at the first instant of its first day (local midnight, or
//! the first existing instant after it where a time zone skips midnight) and
//! ends where the next period starts: start inclusive, end exclusive. Periods
//! are calendar periods, not fixed lengths: a local day lasts 23 or 25 hours
//! across a daylight-saving change, a month 28 to 31 days. Weeks are ISO
//! weeks, from Monday 00:00, so a week can span two years.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::api::BudgetPeriod;

/// Why a period cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum PeriodError {
    /// `budget.timeZone` is not a zone in the IANA database.
    #[error("unknown time zone {name:?}")]
    UnknownTimeZone {
        name: String,
        #[source]
        source: jiff::Error,
    },
    /// The period reaches outside the dates jiff supports (years -9999 to 9999).
    #[error("budget period out of range: {0}")]
    OutOfRange(#[source] jiff::Error),
}

/// The time zone a policy's periods follow: UTC unless one is named.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, PeriodError> {
    match name {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|source| PeriodError::UnknownTimeZone {
            name: name.to_owned(),
            source,
        }),
    }
}

/// The period of kind `period` holding `now`, in `time_zone` (UTC when
/// `None`): `(start, end)` with `start <= now < end`.
pub fn period_bounds(
    now: Timestamp,
    period: BudgetPeriod,
    time_zone: Option<&str>,
) -> Result<(Timestamp, Timestamp), PeriodError> {
    let tz = self::time_zone(time_zone)?;
    let today = now.to_zoned(tz.clone()).date();
    let (first, next) = match period {
        BudgetPeriod::Daily => (today, today.tomorrow()),
        BudgetPeriod::Weekly => {
            let monday = today
                .checked_sub(jiff::Span::new().days(today.weekday().to_monday_zero_offset()))
                .map_err(PeriodError::OutOfRange)?;
            (monday, monday.checked_add(jiff::Span::new().days(7)))
        }
        BudgetPeriod::Monthly => (today.first_of_month(), today.last_of_month().tomorrow()),
    };
    let next = next.map_err(PeriodError::OutOfRange)?;
    Ok((start_of(first, &tz)?, start_of(next, &tz)?))
}

/// The first instant of `date` in `tz`.
fn start_of(date: Date, tz: &TimeZone) -> Result<Timestamp, PeriodError> {
    date.to_zoned(tz.clone())
        .and_then(|midnight: Zoned| midnight.start_of_day())
        .map(|start| start.timestamp())
        .map_err(PeriodError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BudgetPeriod::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn bounds(now: &str, period: BudgetPeriod, zone: Option<&str>) -> (String, String) {
        let (start, end) = period_bounds(ts(now), period, zone).unwrap();
        assert!(start <= ts(now) && ts(now) < end, "{now} in [{start}, {end})");
        (start.to_string(), end.to_string())
    }

    #[test]
    fn utc_periods() {
        // now, period, start, end
        for (now, period, start, end) in [
            // Days run midnight to midnight, start inclusive, end exclusive.
            (
                "2025-06-15T12:34:56Z",
                Daily,
                "2025-06-15T00:00:00Z",
                "2025-06-16T00:00:00Z",
            ),
            (
                "2025-06-15T00:00:00Z",
                Daily,
                "2025-06-15T00:00:00Z",
                "2025-06-16T00:00:00Z",
            ),
            (
                "2025-06-15T23:59:59.999999999Z",
                Daily,
                "2025-06-15T00:00:00Z",
                "2025-06-16T00:00:00Z",
            ),
            (
                "2025-12-31T23:00:00Z",
                Daily,
                "2025-12-31T00:00:00Z",
                "2026-01-01T00:00:00Z",
            ),
            // Months end on their last day, whatever its number.
            (
                "2025-01-31T10:00:00Z",
                Monthly,
                "2025-01-01T00:00:00Z",
                "2025-02-01T00:00:00Z",
            ),
            (
                "2025-02-28T23:59:59Z",
                Monthly,
                "2025-02-01T00:00:00Z",
                "2025-03-01T00:00:00Z",
            ),
            (
                "2025-03-01T00:00:00Z",
                Monthly,
                "2025-03-01T00:00:00Z",
                "2025-04-01T00:00:00Z",
            ),
            (
                "2025-04-30T12:00:00Z",
                Monthly,
                "2025-04-01T00:00:00Z",
                "2025-05-01T00:00:00Z",
            ),
            (
                "2025-12-15T00:00:00Z",
                Monthly,
                "2025-12-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
            ),
            // Leap days: February 2028 has 29 days.
            (
                "2028-02-29T12:00:00Z",
                Daily,
                "2028-02-29T00:00:00Z",
                "2028-03-01T00:00:00Z",
            ),
            (
                "2028-02-29T23:59:59Z",
                Monthly,
                "2028-02-01T00:00:00Z",
                "2028-03-01T00:00:00Z",
            ),
            (
                "2028-02-28T12:00:00Z",
                Daily,
                "2028-02-28T00:00:00Z",
                "2028-02-29T00:00:00Z",
            ),
            (
                "2100-02-28T12:00:00Z",
                Monthly,
                "2100-02-01T00:00:00Z",
                "2100-03-01T00:00:00Z",
            ),
            // ISO weeks start on Monday.
            (
                "2025-06-16T00:00:00Z",
                Weekly,
                "2025-06-16T00:00:00Z",
                "2025-06-23T00:00:00Z",
            ),
            (
                "2025-06-18T09:00:00Z",
                Weekly,
                "2025-06-16T00:00:00Z",
                "2025-06-23T00:00:00Z",
            ),
            (
                "2025-06-22T23:59:59Z",
                Weekly,
                "2025-06-16T00:00:00Z",
                "2025-06-23T00:00:00Z",
            ),
            // ... and span year ends: ISO week 2026-W01 starts Monday 2025-12-29,
            (
                "2025-12-31T12:00:00Z",
                Weekly,
                "2025-12-29T00:00:00Z",
                "2026-01-05T00:00:00Z",
            ),
            (
                "2026-01-04T23:00:00Z",
                Weekly,
                "2025-12-29T00:00:00Z",
                "2026-01-05T00:00:00Z",
            ),
            // 2020-W53 ends Sunday 2021-01-03,
            (
                "2021-01-03T12:00:00Z",
                Weekly,
                "2020-12-28T00:00:00Z",
                "2021-01-04T00:00:00Z",
            ),
            // and 2027-W52 ends Sunday 2028-01-02.
            (
                "2028-01-01T00:00:00Z",
                Weekly,
                "2027-12-27T00:00:00Z",
                "2028-01-03T00:00:00Z",
            ),
            (
                "2028-02-29T00:00:00Z",
                Weekly,
                "2028-02-28T00:00:00Z",
                "2028-03-06T00:00:00Z",
            ),
        ] {
            assert_eq!(
                bounds(now, period, None),
                (start.into(), end.into()),
                "{now} {period:?}"
            );
            assert_eq!(
                bounds(now, period, Some("UTC")),
                (start.into(), end.into()),
                "{now} {period:?} UTC by name"
            );
        }
    }

    #[test]
    fn periods_in_a_time_zone_follow_its_clocks() {
        // now, period, zone, start, end (instants in UTC)
        for (now, period, zone, start, end) in [
            // Berlin in summer (UTC+2): the local day starts at 22:00 UTC the day before.
            (
                "2025-06-15T21:59:59Z",
                Daily,
                "Europe/Berlin",
                "2025-06-14T22:00:00Z",
                "2025-06-15T22:00:00Z",
            ),
            (
                "2025-06-15T22:00:00Z",
                Daily,
                "Europe/Berlin",
                "2025-06-15T22:00:00Z",
                "2025-06-16T22:00:00Z",
            ),
            // Spring forward, Sunday 2025-03-30, 02:00 -> 03:00: a 23-hour day.
            (
                "2025-03-30T12:00:00Z",
                Daily,
                "Europe/Berlin",
                "2025-03-29T23:00:00Z",
                "2025-03-30T22:00:00Z",
            ),
            // Fall back, Sunday 2025-10-26, 03:00 -> 02:00: a 25-hour day.
            (
                "2025-10-26T12:00:00Z",
                Daily,
                "Europe/Berlin",
                "2025-10-25T22:00:00Z",
                "2025-10-26T23:00:00Z",
            ),
            // The week holding the autumn change lasts 7 days and an hour.
            (
                "2025-10-22T12:00:00Z",
                Weekly,
                "Europe/Berlin",
                "2025-10-19T22:00:00Z",
                "2025-10-26T23:00:00Z",
            ),
            // March in Berlin starts in winter time and ends in summer time.
            (
                "2025-03-31T21:59:59Z",
                Monthly,
                "Europe/Berlin",
                "2025-02-28T23:00:00Z",
                "2025-03-31T22:00:00Z",
            ),
            (
                "2025-03-31T22:00:00Z",
                Monthly,
                "Europe/Berlin",
                "2025-03-31T22:00:00Z",
                "2025-04-30T22:00:00Z",
            ),
            // New year in Berlin comes an hour before it does in UTC.
            (
                "2025-12-31T23:30:00Z",
                Monthly,
                "Europe/Berlin",
                "2025-12-31T23:00:00Z",
                "2026-01-31T23:00:00Z",
            ),
            (
                "2025-12-31T23:30:00Z",
                Weekly,
                "Europe/Berlin",
                "2025-12-28T23:00:00Z",
                "2026-01-04T23:00:00Z",
            ),
            // New York: 2025-03-09 springs forward (23 h), 2025-11-02 falls back (25 h).
            (
                "2025-03-09T12:00:00Z",
                Daily,
                "America/New_York",
                "2025-03-09T05:00:00Z",
                "2025-03-10T04:00:00Z",
            ),
            (
                "2025-11-02T12:00:00Z",
                Daily,
                "America/New_York",
                "2025-11-02T04:00:00Z",
                "2025-11-03T05:00:00Z",
            ),
            // 03:30 UTC on the first of the month is still the previous month in New York.
            (
                "2025-07-01T03:30:00Z",
                Monthly,
                "America/New_York",
                "2025-06-01T04:00:00Z",
                "2025-07-01T04:00:00Z",
            ),
            (
                "2028-03-01T04:59:59Z",
                Monthly,
                "America/New_York",
                "2028-02-01T05:00:00Z",
                "2028-03-01T05:00:00Z",
            ),
            // Weeks start at New York's Monday midnight.
            (
                "2025-11-03T04:59:59Z",
                Weekly,
                "America/New_York",
                "2025-10-27T04:00:00Z",
                "2025-11-03T05:00:00Z",
            ),
            // Sao Paulo sprang forward at midnight on 2018-11-04: that day began at 01:00.
            (
                "2018-11-04T12:00:00Z",
                Daily,
                "America/Sao_Paulo",
                "2018-11-04T03:00:00Z",
                "2018-11-05T02:00:00Z",
            ),
            // Kolkata's offset has minutes (UTC+05:30).
            (
                "2025-06-15T18:30:00Z",
                Daily,
                "Asia/Kolkata",
                "2025-06-15T18:30:00Z",
                "2025-06-16T18:30:00Z",
            ),
        ] {
            assert_eq!(
                bounds(now, period, Some(zone)),
                (start.into(), end.into()),
                "{now} {period:?} {zone}"
            );
        }
    }

    #[test]
    fn dst_days_last_23_and_25_hours() {
        let hours = |now: &str, zone: &str| {
            let (start, end) = period_bounds(ts(now), Daily, Some(zone)).unwrap();
            (end.as_second() - start.as_second()) / 3600
        };
        assert_eq!(hours("2025-03-30T12:00:00Z", "Europe/Berlin"), 23);
        assert_eq!(hours("2025-10-26T12:00:00Z", "Europe/Berlin"), 25);
        assert_eq!(hours("2025-03-09T12:00:00Z", "America/New_York"), 23);
        assert_eq!(hours("2025-11-02T12:00:00Z", "America/New_York"), 25);
        assert_eq!(hours("2025-11-01T12:00:00Z", "America/New_York"), 24);
    }

    #[test]
    fn consecutive_periods_tile_time() {
        for zone in [
            None,
            Some("Europe/Berlin"),
            Some("America/New_York"),
            Some("Australia/Lord_Howe"),
        ] {
            for period in [Daily, Weekly, Monthly] {
                let (_, mut end) = period_bounds(ts("2024-12-20T00:00:00Z"), period, zone).unwrap();
                for _ in 0..60 {
                    let (next_start, next_end) = period_bounds(end, period, zone).unwrap();
                    assert_eq!(next_start, end, "{zone:?} {period:?}: periods meet");
                    assert!(next_end > next_start);
                    end = next_end;
                }
            }
        }
    }

    #[test]
    fn unknown_time_zones_are_errors() {
        for zone in ["Mars/Olympus_Mons", "", "Europe/Berlin ", "../etc/passwd", "CEST+2"] {
            let error = period_bounds(ts("2025-06-15T12:00:00Z"), Daily, Some(zone)).unwrap_err();
            assert!(
                matches!(&error, PeriodError::UnknownTimeZone { name, .. } if name == zone),
                "{zone:?}: {error:?}"
            );
        }
    }

    #[test]
    fn the_edges_of_time_are_errors_not_panics() {
        assert!(matches!(
            period_bounds(Timestamp::MAX, Monthly, None),
            Err(PeriodError::OutOfRange(_))
        ));
        assert!(matches!(
            period_bounds(Timestamp::MIN, Weekly, Some("America/New_York")),
            Err(PeriodError::OutOfRange(_))
        ));
    }
}
