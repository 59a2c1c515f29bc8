//! CNI spec versions this plugin speaks.

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// `(major, minor, patch)`; `None` for anything not `N.N.N`.
pub fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let out = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(out)
}

pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

/// True when `v` is at least `min` (both well-formed).
pub fn at_least(v: &str, min: &str) -> bool {
    matches!((parse(v), parse(min)), (Some(a), Some(b)) if a >= b)
}

/// Result shapes: before 1.0.0 every `ips` entry carries `"version": "4"`.
pub fn ips_carry_version(v: &str) -> bool {
    !at_least(v, "1.0.0")
}

/// The VERSION command's answer.
pub fn version_info() -> serde_json::Value {
    serde_json::json!({ "cniVersion": LATEST, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_and_shapes() {
        assert!(at_least("1.1.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(!at_least("bogus", "0.4.0"));
        assert!(ips_carry_version("0.4.0"));
        assert!(!ips_carry_version("1.0.0"));
        assert_eq!(parse("1.2"), None);
        assert_eq!(parse("1.2.3.4"), None);
        assert!(!is_supported("0.2.0"));
    }
}
