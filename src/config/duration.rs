//! Human-readable durations in config files: `"90s"`, `"5m"`, `"24h"`, `"7d"`, `"250ms"`, `"1h30m"`.
//!
//! A duration is one or more `<digits><unit>` groups, units in decreasing order and each at most
//! once (`"1h30m"`, not `"30m1h"` or `"5m5m"`). Units: `d` (24 h), `h`, `m`, `s`, `ms`. No sign, no
//! fractions, no spaces, no bare numbers: a config value that is ambiguous is a mistake.

use std::time::Duration;

/// The units, largest first, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration such as `"90s"`, `"24h"` or `"1h30m"`.
///
/// # Errors
/// A lowercase message saying what is wrong (the caller adds the key and the input), e.g.
/// `unknown unit "x"`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    if input.is_empty() {
        return Err("empty duration".to_owned());
    }
    if input.starts_with('-') {
        return Err("negative durations are not allowed".to_owned());
    }
    let mut rest = input;
    let mut total_ms: u64 = 0;
    // Index into UNITS of the last unit seen: the next one must come strictly after it.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            let c = rest.chars().next().unwrap_or_default();
            return Err(format!("expected a number, found {c:?}"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return match after.chars().next() {
                None => Err(format!(
                    "missing unit after {number} (use one of d, h, m, s, ms, e.g. \"{number}s\")"
                )),
                Some('.') => {
                    Err("fractions are not supported (write \"1h30m\", not \"1.5h\")".to_owned())
                }
                Some(c) => Err(format!("unexpected character {c:?}")),
            };
        }
        let index = UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or_else(|| format!("unknown unit {unit:?} (use d, h, m, s or ms)"))?;
        if last_unit.is_some_and(|last| index <= last) {
            return Err(format!(
                "unit {unit:?} out of order or repeated (largest unit first, each once, e.g. \"1h30m\")"
            ));
        }
        last_unit = Some(index);
        let too_large = || "duration is too large".to_owned();
        let value: u64 = number.parse().map_err(|_| too_large())?;
        let ms = value.checked_mul(UNITS[index].1).ok_or_else(too_large)?;
        total_ms = total_ms.checked_add(ms).ok_or_else(too_large)?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse_duration`] reads it: `"1h30m"`, `"250ms"`, `"0s"`.
///
/// Sub-millisecond parts are dropped (config durations never have them).
pub fn format_duration(duration: Duration) -> String {
    let mut ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (name, unit_ms) in UNITS {
        let count = ms / unit_ms;
        if count > 0 {
            out.push_str(&format!("{count}{name}"));
            ms %= unit_ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1;
    const S: u64 = 1_000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    const D: u64 = 24 * H;

    #[test]
    fn parses_single_and_combined_units() {
        for (input, ms) in [
            ("90s", 90 * S),
            ("5m", 5 * M),
            ("24h", 24 * H),
            ("7d", 7 * D),
            ("250ms", 250 * MS),
            ("0s", 0),
            ("1h30m", H + 30 * M),
            ("1d12h", D + 12 * H),
            ("2m30s500ms", 2 * M + 30 * S + 500 * MS),
            ("1d1h1m1s1ms", D + H + M + S + MS),
            ("0090s", 90 * S),
        ] {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_millis(ms)),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn rejects_malformed_durations_with_a_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("-5m", "negative"),
            ("90", "missing unit"),
            ("1x", "unknown unit \"x\""),
            ("5min", "unknown unit \"min\""),
            ("5M", "unknown unit \"M\""),
            ("1.5h", "fractions"),
            ("h", "expected a number"),
            ("5 m", "unexpected character ' '"),
            (" 5m", "expected a number"),
            ("+5m", "expected a number"),
            ("30m1h", "out of order"),
            ("5m5m", "out of order or repeated"),
            ("99999999999999999999s", "too large"),
            ("999999999999999999d", "too large"),
        ] {
            let err = parse_duration(input).expect_err(input);
            assert!(
                err.contains(reason),
                "input {input:?}: {err:?} lacks {reason:?}"
            );
        }
    }

    #[test]
    fn formats_what_it_parses() {
        for text in [
            "0s",
            "250ms",
            "90s",
            "1m30s",
            "5m",
            "1h30m",
            "24h",
            "7d",
            "1d1h1m1s1ms",
        ] {
            let parsed = parse_duration(text).expect(text);
            let formatted = format_duration(parsed);
            assert_eq!(
                parse_duration(&formatted),
                Ok(parsed),
                "{text} -> {formatted}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
    }
}
