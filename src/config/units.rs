//! Human-readable units in config files: durations ("250ms", "5s", "1m30s") and
//! sizes ("16KiB", "1MiB", "4096").
//!
//! The size grammar (README, "Sizes"): a whole number of bytes (`4096`, or the string
//! `"4096"`), or a number followed by one of `KiB`, `MiB`, `GiB` (powers of 1024) or `KB`,
//! `MB`, `GB` (powers of 1000), spelled exactly so; one space may separate them. Anything else
//! (`16K`, `16kib`, `16kB`) is refused with this list, so nobody guesses which it meant.
//!
//! Durations go through `humantime`. Sizes are hand-parsed: the format is a number and an
//! optional binary/decimal suffix, and no small well-kept crate parses exactly that set
//! without also accepting forms we do not want to document.

use std::time::Duration;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration (expected e.g. \"250ms\", \"5s\", \"10m\")".into());
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration {s:?}: {e} (expected e.g. \"250ms\", \"5s\", \"10m\")")
    })
}

/// The accepted forms, for error messages.
pub const SIZE_FORMS: &str = "use a number of bytes, or a number with KiB, MiB or GiB (×1024) \
     or KB, MB or GB (×1000), e.g. \"16KiB\", \"1MB\", 4096";

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid size {s:?}: {SIZE_FORMS}");
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let mult: u64 = match unit {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16KiB"), Ok(16384));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("16KB"), Ok(16000));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
        for bad in [
            "16K", "16k", "16kib", "16kB", "1B", "16  KiB", "16 kib", "-1", "1.5MiB",
        ] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains("KiB, MiB or GiB"), "{e}");
        }
        assert!(parse_size("").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("18446744073709551615GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
