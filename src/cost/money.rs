//! `Usd`: an exact, non-negative amount of US dollars kept to the micro-dollar,
//! how it is parsed from spec and report strings, how it is written on status,
//! and checked arithmetic on it.
//!
//! Rules:
//! - An amount is never negative and never has more than six decimal places
//!   (a micro-dollar). Both are invariants of the type: every constructor
//!   enforces them.
//! - Spec strings (`"5"`, `"5.00"`, `"0.000125"`) are parsed exactly: a sign,
//!   an exponent, leading zeros (`"05"`), a bare point (`"5."`, `".5"`) or more
//!   than six decimals is an error, never a silent rounding.
//! - Computed amounts (token usage times prices, a reported cost with more
//!   precision than a micro-dollar) are rounded UP to the next micro-dollar:
//!   the operator never undercharges a run.
//! - On status an amount is written with trailing zeros trimmed, but with at
//!   least two decimals: `5` is `"5.00"`, `0.006` is `"0.006"`, `0.000001` is
//!   `"0.000001"`. That matches `api::MONEY_STATUS_PATTERN`.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

/// Decimal places kept: amounts are exact to the micro-dollar.
pub const MAX_DECIMALS: u32 = 6;

/// Most digits before the decimal point (under a quadrillion dollars). Keeps
/// every sum the operator makes far from `Decimal`'s limits.
pub const MAX_INTEGER_DIGITS: usize = 15;

/// Most decimals accepted from a report before rounding up (`Decimal`'s own
/// limit).
const MAX_REPORTED_DECIMALS: usize = 28;

const MICROS_PER_USD: u128 = 1_000_000;

/// Why a string is not an amount. Carries the offending input, cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount is empty")]
    Empty,
    #[error("amount {0:?} is negative")]
    Negative(String),
    #[error("amount {0:?} uses an exponent; write a plain decimal")]
    Exponent(String),
    #[error("amount {0:?} has more than {MAX_DECIMALS} decimal places")]
    TooPrecise(String),
    #[error("amount {0:?} is too large")]
    TooLarge(String),
    #[error("amount {0:?} is not a decimal number such as \"5\" or \"5.00\"")]
    Malformed(String),
}

/// An exact, non-negative amount of US dollars, to the micro-dollar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(Decimal);

impl Usd {
    /// No money.
    pub const ZERO: Usd = Usd(Decimal::ZERO);

    /// The largest amount: 999999999999999.999999, fifteen nines and six.
    pub const MAX: Usd = Usd(Decimal::from_parts(3_735_027_711, 902_409_669, 54, false, MAX_DECIMALS));

    /// Parses a spec amount exactly: digits, optionally a point and one to six
    /// decimals. See the module doc for what is rejected.
    pub fn parse(s: &str) -> Result<Usd, MoneyError> {
        let (int, frac) = split(s)?;
        if frac.len() > MAX_DECIMALS as usize {
            return Err(MoneyError::TooPrecise(excerpt(s)));
        }
        Ok(Usd(to_decimal(s, int, frac)?))
    }

    /// Parses an amount reported by the runner: the same grammar as
    /// [`Usd::parse`], but any decimals beyond the sixth round the amount up
    /// to the next micro-dollar.
    pub fn parse_rounding_up(s: &str) -> Result<Usd, MoneyError> {
        let (int, frac) = split(s)?;
        if frac.len() > MAX_REPORTED_DECIMALS {
            return Err(MoneyError::TooPrecise(excerpt(s)));
        }
        Usd::from_decimal_rounding_up(to_decimal(s, int, frac)?).ok_or_else(|| MoneyError::TooLarge(excerpt(s)))
    }

    /// A computed amount, rounded up to the micro-dollar. `None` when it is
    /// negative or too large.
    pub fn from_decimal_rounding_up(d: Decimal) -> Option<Usd> {
        if d.is_sign_negative() && !d.is_zero() {
            return None;
        }
        let rounded = d.round_dp_with_strategy(MAX_DECIMALS, RoundingStrategy::ToPositiveInfinity);
        Usd::from_micros(to_micros(rounded)?)
    }

    /// The amount of so many micro-dollars. `None` when too large.
    pub fn from_micros(micros: u128) -> Option<Usd> {
        let limit = 10u128.pow(MAX_INTEGER_DIGITS as u32) * MICROS_PER_USD;
        if micros >= limit {
            return None;
        }
        let mantissa = i128::try_from(micros).ok()?;
        Decimal::try_from_i128_with_scale(mantissa, MAX_DECIMALS).ok().map(Usd)
    }

    /// The amount in micro-dollars.
    pub fn micros(self) -> u128 {
        to_micros(self.0).expect("a Usd always holds whole micro-dollars")
    }

    /// The exact decimal value.
    pub fn as_decimal(self) -> Decimal {
        self.0
    }

    /// Whether this is no money at all.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// `self + other`, `None` on overflow.
    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        Usd::from_micros(self.micros().checked_add(other.micros())?)
    }

    /// `self - other`, `None` when the result would be negative.
    pub fn checked_sub(self, other: Usd) -> Option<Usd> {
        Usd::from_micros(self.micros().checked_sub(other.micros())?)
    }

    /// `self - other`, or zero when the result would be negative.
    pub fn saturating_sub(self, other: Usd) -> Usd {
        self.checked_sub(other).unwrap_or(Usd::ZERO)
    }

    /// `self * n`, `None` on overflow.
    pub fn checked_mul(self, n: u64) -> Option<Usd> {
        Usd::from_micros(self.micros().checked_mul(u128::from(n))?)
    }

    /// The sum of some amounts, `None` on overflow.
    pub fn checked_sum(amounts: impl IntoIterator<Item = Usd>) -> Option<Usd> {
        amounts.into_iter().try_fold(Usd::ZERO, Usd::checked_add)
    }
}

impl fmt::Display for Usd {
    /// The status form: trailing zeros trimmed, at least two decimals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let normalized = self.0.normalize();
        let decimals = normalized.scale().max(2) as usize;
        write!(f, "{normalized:.decimals$}")
    }
}

impl FromStr for Usd {
    type Err = MoneyError;

    /// Same as [`Usd::parse`]: exact, at most six decimals.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Usd::parse(s)
    }
}

impl serde::Serialize for Usd {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Usd {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Usd::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Splits `s` into its integer digits and its (possibly empty) decimals,
/// checking the grammar shared by both parsers.
fn split(s: &str) -> Result<(&str, &str), MoneyError> {
    if s.is_empty() {
        return Err(MoneyError::Empty);
    }
    if s.starts_with('-') {
        return Err(MoneyError::Negative(excerpt(s)));
    }
    if looks_like_exponent(s) {
        return Err(MoneyError::Exponent(excerpt(s)));
    }
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => {
            if frac.is_empty() {
                return Err(MoneyError::Malformed(excerpt(s)));
            }
            (int, frac)
        }
        None => (s, ""),
    };
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (int.len() > 1 && int.starts_with('0')) {
        return Err(MoneyError::Malformed(excerpt(s)));
    }
    if int.len() > MAX_INTEGER_DIGITS {
        return Err(MoneyError::TooLarge(excerpt(s)));
    }
    Ok((int, frac))
}

/// Whether `s` is a number in scientific notation (`1e3`, `1.5E-2`).
fn looks_like_exponent(s: &str) -> bool {
    let Some((mantissa, exponent)) = s.split_once(['e', 'E']) else {
        return false;
    };
    let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    !mantissa.is_empty()
        && mantissa.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !exponent.is_empty()
        && exponent.bytes().all(|b| b.is_ascii_digit())
}

/// The decimal `int.frac`, both already checked to be digits of bounded length.
fn to_decimal(s: &str, int: &str, frac: &str) -> Result<Decimal, MoneyError> {
    let mut mantissa: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(b - b'0')))
            .ok_or_else(|| MoneyError::TooLarge(excerpt(s)))?;
    }
    Decimal::try_from_i128_with_scale(mantissa, frac.len() as u32).map_err(|_| MoneyError::TooLarge(excerpt(s)))
}

/// Whole micro-dollars in a non-negative decimal of at most six decimals.
fn to_micros(d: Decimal) -> Option<u128> {
    let scale = d.scale();
    if scale > MAX_DECIMALS || d.is_sign_negative() && !d.is_zero() {
        return None;
    }
    let mantissa = u128::try_from(d.mantissa()).ok()?;
    mantissa.checked_mul(10u128.pow(MAX_DECIMALS - scale))
}

/// The start of an offending input, enough to recognise it in a message.
fn excerpt(s: &str) -> String {
    const MAX: usize = 32;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    #[test]
    fn spec_amounts_parse_exactly() {
        for (input, micros) in [
            ("0", 0),
            ("5", 5_000_000),
            ("5.0", 5_000_000),
            ("5.00", 5_000_000),
            ("0.006", 6_000),
            ("0.000001", 1),
            ("1234567.99", 1_234_567_990_000),
            ("999999999999999.999999", 999_999_999_999_999_999_999),
        ] {
            assert_eq!(Usd::parse(input).map(Usd::micros), Ok(micros), "{input}");
            assert_eq!(input.parse::<Usd>().map(Usd::micros), Ok(micros), "{input}");
        }
    }

    #[test]
    fn spec_amounts_that_are_rejected() {
        use MoneyError::*;
        type Case = (&'static str, fn(String) -> MoneyError);
        let cases: &[Case] = &[
            ("-5", Negative),
            ("-0.01", Negative),
            ("1e3", Exponent),
            ("5E-2", Exponent),
            ("1.5e+7", Exponent),
            ("1e", Malformed),
            ("5.0000001", TooPrecise),
            ("0.1234567", TooPrecise),
            ("1000000000000000", TooLarge),
            ("05", Malformed),
            ("00", Malformed),
            ("5.", Malformed),
            (".5", Malformed),
            ("+5", Malformed),
            (" 5", Malformed),
            ("5 ", Malformed),
            ("5,00", Malformed),
            ("five", Malformed),
            ("5.0.0", Malformed),
            ("NaN", Malformed),
            ("٥", Malformed),
        ];
        for (input, error) in cases {
            assert_eq!(Usd::parse(input), Err(error(input.to_string())), "{input}");
        }
        assert_eq!(Usd::parse(""), Err(Empty));
    }

    #[test]
    fn errors_quote_only_the_start_of_a_long_input() {
        let long = "x".repeat(5000);
        let message = Usd::parse(&long).unwrap_err().to_string();
        assert!(message.len() < 120, "{message}");
    }

    #[test]
    fn status_strings_trim_zeros_but_keep_two_decimals() {
        let status_pattern = regex::Regex::new(crate::api::MONEY_STATUS_PATTERN).unwrap();
        for (input, shown) in [
            ("0", "0.00"),
            ("5", "5.00"),
            ("5.1", "5.10"),
            ("5.10", "5.10"),
            ("5.100000", "5.10"),
            ("0.006", "0.006"),
            ("0.000001", "0.000001"),
            ("12.345600", "12.3456"),
            ("100", "100.00"),
        ] {
            assert_eq!(usd(input).to_string(), shown, "{input}");
            assert!(status_pattern.is_match(shown), "{shown} matches the status pattern");
            assert_eq!(usd(shown), usd(input), "{shown} parses back to the same amount");
        }
    }

    #[test]
    fn reported_amounts_round_up_to_the_micro_dollar() {
        for (input, shown) in [
            ("0.0060000", "0.006"),
            ("0.0060001", "0.006001"),
            ("0.000000000000000001", "0.000001"),
            ("0.12345678901234568", "0.123457"),
            ("1.9999999", "2.00"),
            ("0", "0.00"),
            ("0.0000000", "0.00"),
        ] {
            assert_eq!(Usd::parse_rounding_up(input).unwrap().to_string(), shown, "{input}");
        }
        assert!(matches!(Usd::parse_rounding_up("-0.1"), Err(MoneyError::Negative(_))));
        assert!(matches!(Usd::parse_rounding_up("1e-5"), Err(MoneyError::Exponent(_))));
        assert!(matches!(
            Usd::parse_rounding_up(&format!("0.{}", "1".repeat(29))),
            Err(MoneyError::TooPrecise(_))
        ));
    }

    #[test]
    fn computed_decimals_round_up_and_refuse_negatives() {
        let d = |s: &str| Decimal::from_str_exact(s).unwrap();
        assert_eq!(Usd::from_decimal_rounding_up(d("0.0000001")), Some(usd("0.000001")));
        assert_eq!(Usd::from_decimal_rounding_up(d("2.5000000")), Some(usd("2.5")));
        assert_eq!(Usd::from_decimal_rounding_up(d("-0.0000001")), None);
        assert_eq!(Usd::from_decimal_rounding_up(d("-0")), Some(Usd::ZERO));
        assert_eq!(Usd::from_decimal_rounding_up(Decimal::MAX), None);
    }

    #[test]
    fn checked_arithmetic() {
        assert_eq!(usd("0.40").checked_add(usd("0.05")), Some(usd("0.45")));
        assert_eq!(usd("1.00").checked_sub(usd("0.40")), Some(usd("0.60")));
        assert_eq!(usd("0.40").checked_sub(usd("0.400001")), None, "never negative");
        assert_eq!(usd("0.40").saturating_sub(usd("1")), Usd::ZERO);
        assert_eq!(usd("0.40").checked_mul(3), Some(usd("1.20")));
        assert_eq!(usd("0.000001").checked_mul(0), Some(Usd::ZERO));
        let max = usd("999999999999999.999999");
        assert_eq!(max, Usd::MAX);
        assert_eq!(Usd::from_micros(Usd::MAX.micros() + 1), None);
        assert_eq!(max.checked_add(usd("0.000001")), None);
        assert_eq!(max.checked_mul(2), None);
        assert_eq!(Usd::checked_sum([usd("0.1"), usd("0.2"), usd("0.3")]), Some(usd("0.6")));
        assert_eq!(Usd::checked_sum([]), Some(Usd::ZERO));
        // 0.1 + 0.2 is exactly 0.3 here, unlike in floating point.
        assert_eq!(usd("0.1").checked_add(usd("0.2")).unwrap().to_string(), "0.30");
    }

    #[test]
    fn amounts_compare_by_value() {
        assert_eq!(usd("5"), usd("5.000000"));
        assert!(usd("0.999999") < usd("1"));
    }

    #[test]
    fn serde_uses_the_status_string() {
        assert_eq!(serde_json::to_string(&usd("5")).unwrap(), "\"5.00\"");
        assert_eq!(serde_json::from_str::<Usd>("\"0.006\"").unwrap(), usd("0.006"));
        assert!(serde_json::from_str::<Usd>("\"-1\"").is_err());
        assert!(serde_json::from_str::<Usd>("1.5").is_err(), "a float is not money");
    }
}
