//! Durations in specs, written the way Kubernetes users write them: `30s`, `5m`, `1h30m`.

use std::time::Duration;

/// The pattern the schema enforces on duration fields.
pub const DURATION_PATTERN: &str = "^([0-9]{1,6}(s|m|h))+$";

/// Parses `30s`, `5m`, `1h30m` (units `h`, `m`, `s`, each a whole number).
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() || text.len() > 32 {
        return None;
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        if digits.is_empty() || digits.len() > 6 {
            return None;
        }
        let value: u64 = digits.parse().ok()?;
        total = total.checked_add(value.checked_mul(unit)?)?;
        digits.clear();
    }
    digits.is_empty().then_some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_style_durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "5", "m", "5d", "1.5h", "-1m", "5m3", "9999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
