//! Kubernetes quantities (`250m`, `1`, `0.5`, `512Mi`, `1Gi`) as the
//! integers the quota counts: CPU in millicores, memory in bytes. Pure, so
//! the deploy check, the quota and the metrics agree on one reading.
//!
//! Accepted: digits with an optional fraction and at most one suffix
//! (`m`, `k`, `M`, `G`, `T`, `Ki`, `Mi`, `Gi`, `Ti`); no sign, no exponent.
//! Like Kubernetes, a value that is not a whole unit is rounded up
//! (`0.1m` CPU is 1 millicore, `0.5` bytes is 1 byte).

/// Most fraction digits read: more only makes the number a rounding away.
const MAX_FRACTION_DIGITS: usize = 9;

/// The suffix as a fraction of the base unit.
fn scale(suffix: &str) -> Option<(u128, u128)> {
    let k: u128 = 1000;
    let ki: u128 = 1024;
    Some(match suffix {
        "m" => (1, 1000),
        "" => (1, 1),
        "k" => (k, 1),
        "M" => (k.pow(2), 1),
        "G" => (k.pow(3), 1),
        "T" => (k.pow(4), 1),
        "Ki" => (ki, 1),
        "Mi" => (ki.pow(2), 1),
        "Gi" => (ki.pow(3), 1),
        "Ti" => (ki.pow(4), 1),
        _ => return None,
    })
}

/// `q` in units of `1/per` of the base unit, rounded up; `None` when `q`
/// is not a quantity or does not fit a `u64`.
fn parse(q: &str, per: u128) -> Option<u64> {
    let num_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(num_end);
    let (mul, div) = scale(suffix)?;
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(frac) || num.ends_with('.') {
        return None;
    }
    let frac = &frac[..frac.len().min(MAX_FRACTION_DIGITS)];
    // The number as an integer over 10^len(frac), so nothing is lost.
    let int: u128 = format!("{whole}{frac}").parse().ok()?;
    let ten = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let top = int.checked_mul(mul)?.checked_mul(per)?;
    let bottom = ten.checked_mul(div)?;
    u64::try_from(top.div_ceil(bottom)).ok()
}

/// CPU in millicores: `250m` → 250, `1` → 1000, `0.5` → 500.
pub fn cpu_millis(q: &str) -> Option<u64> {
    parse(q, 1000)
}

/// Memory in bytes: `512Mi` → 536870912, `1G` → 10^9.
pub fn memory_bytes(q: &str) -> Option<u64> {
    parse(q, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_counted_in_millicores() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("1"), Some(1000));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("100"), Some(100_000));
        assert_eq!(cpu_millis("2k"), Some(2_000_000));
    }

    #[test]
    fn memory_is_counted_in_bytes_with_binary_and_decimal_suffixes() {
        assert_eq!(memory_bytes("512Mi"), Some(512 * 1024 * 1024));
        assert_eq!(memory_bytes("1Gi"), Some(1 << 30));
        assert_eq!(memory_bytes("200Gi"), Some(200 << 30));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("128"), Some(128));
        assert_eq!(memory_bytes("1.5Ki"), Some(1536));
    }

    #[test]
    fn parts_of_a_unit_are_rounded_up() {
        assert_eq!(cpu_millis("0.1m"), Some(1));
        assert_eq!(cpu_millis("0.0001"), Some(1));
        assert_eq!(memory_bytes("500m"), Some(1));
        assert_eq!(memory_bytes("0"), Some(0));
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for bad in [
            "", "m", "1.2.3", "12x", "-1", ".5", "5.", "1e3", "1 Gi", "1gi", "1Mii", "+1",
        ] {
            assert_eq!(cpu_millis(bad), None, "{bad:?}");
            assert_eq!(memory_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn quantities_beyond_u64_are_refused() {
        assert_eq!(memory_bytes("99999999999999999999Ti"), None);
        assert_eq!(cpu_millis("18446744073709552"), None);
        assert_eq!(memory_bytes("18446744073709551615"), Some(u64::MAX));
    }
}
