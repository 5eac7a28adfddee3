//! Amounts are integer base units; every arithmetic step is checked so an overflow is a
//! validation error, never a wrap-around.

/// Base units in one TIME.
pub const COIN: u64 = 100_000_000;
/// Outputs below this are rejected: they cost more to spend than they are worth.
pub const DUST_LIMIT: u64 = 546;
/// The largest amount that can ever exist; any sum above it is invalid.
pub const MAX_MONEY: u64 = 21_000_000_000 * COIN;
/// Flat part of the minimum fee.
pub const MIN_FEE_BASE: u64 = 1_000;
/// Per-byte part of the minimum fee.
pub const MIN_FEE_PER_BYTE: u64 = 1;

/// Minimum fee for a transaction of `size` bytes.
pub fn min_fee(size: usize) -> u64 {
    MIN_FEE_BASE.saturating_add(MIN_FEE_PER_BYTE.saturating_mul(size as u64))
}

/// Sum that fails on overflow or when the total exceeds [`MAX_MONEY`].
pub fn checked_sum<I: IntoIterator<Item = u64>>(values: I) -> Option<u64> {
    let mut total: u64 = 0;
    for v in values {
        total = total.checked_add(v)?;
        if total > MAX_MONEY {
            return None;
        }
    }
    Some(total)
}

/// Parses a decimal TIME amount ("1.5") into base units, rejecting more than 8 decimals.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.len() > 8 {
        return None;
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut frac_units: u64 = 0;
    if !frac.is_empty() {
        frac_units = frac.parse().ok()?;
        frac_units = frac_units.checked_mul(10u64.pow(8 - frac.len() as u32))?;
    }
    let v = int.checked_mul(COIN)?.checked_add(frac_units)?;
    (v <= MAX_MONEY).then_some(v)
}

/// Converts base units to a JSON number in TIME, the way Bitcoin Core shows amounts.
pub fn to_time(units: u64) -> f64 {
    units as f64 / COIN as f64
}

/// Converts a JSON TIME amount into base units, rounding to the nearest unit.
pub fn from_time(value: f64) -> Option<u64> {
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let units = (value * COIN as f64).round();
    (units <= MAX_MONEY as f64).then_some(units as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        assert_eq!(parse_time("1"), Some(COIN));
        assert_eq!(parse_time("0.00000001"), Some(1));
        assert_eq!(parse_time("1.5"), Some(150_000_000));
        assert_eq!(parse_time("1.000000001"), None);
        assert_eq!(parse_time("-1"), None);
        assert_eq!(parse_time(""), None);
        assert_eq!(from_time(0.1), Some(10_000_000));
        assert_eq!(from_time(-0.1), None);
    }

    #[test]
    fn sums_overflow_to_none() {
        assert_eq!(checked_sum([u64::MAX, 1]), None);
        assert_eq!(checked_sum([MAX_MONEY, 1]), None);
        assert_eq!(checked_sum([1, 2, 3]), Some(6));
    }
}
