//! Version strings, compared numerically: `1.10` is newer than `1.9`, `2` equals `2.0.0`, a
//! leading `v` is ignored, and a pre-release (`1.0.0-rc.1`) is older than its release (the
//! semver rules). Build metadata (`+sha`) does not count. The original compared strings,
//! so `1.10` sorted before `1.9`.

use std::cmp::Ordering;

/// Longest version string accepted.
pub const MAX_LEN: usize = 64;

/// A version string is 1–64 of `[0-9A-Za-z._+-]` (also safe as a cookie value).
pub fn is_valid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

fn split(v: &str) -> (&str, Option<&str>) {
    let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
    let v = v.split('+').next().unwrap_or(v);
    match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    }
}

/// One dot-separated part: numbers compare as numbers and sort before words.
fn cmp_part(a: &str, b: &str) -> Ordering {
    let num = |s: &str| -> Option<u128> {
        if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
            // Leading zeros do not matter; absurdly long numbers compare by length first.
            let t = s.trim_start_matches('0');
            if t.len() > 38 {
                return Some(u128::MAX);
            }
            Some(t.parse().unwrap_or(0))
        } else {
            None
        }
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Compares two version strings (see the module doc).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ca, pa) = split(a);
    let (cb, pb) = split(b);
    let mut ia = ca.split('.');
    let mut ib = cb.split('.');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => break,
            // A missing part counts as 0: 1.0 == 1.0.0.
            (x, y) => match cmp_part(x.unwrap_or("0"), y.unwrap_or("0")) {
                Ordering::Equal => {}
                o => return o,
            },
        }
    }
    match (pa, pb) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let mut ix = x.split('.');
            let mut iy = y.split('.');
            loop {
                match (ix.next(), iy.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(p), Some(q)) => match cmp_part(p, q) {
                        Ordering::Equal => {}
                        o => return o,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn numeric_not_lexical() {
        assert_eq!(compare("1.10", "1.9"), Greater);
        assert_eq!(compare("1.9", "1.10"), Less);
        assert_eq!(compare("2", "10"), Less);
        assert_eq!(compare("1.0", "1.0.0"), Equal);
        assert_eq!(compare("v1.2", "1.2"), Equal);
        assert_eq!(compare("3.9.2", "3.10.0"), Less);
        assert_eq!(compare("1.01", "1.1"), Equal);
        assert_eq!(compare("0.0", "0"), Equal);
    }

    #[test]
    fn pre_releases_and_build_metadata() {
        assert_eq!(compare("1.0.0-rc.1", "1.0.0"), Less);
        assert_eq!(compare("1.0.0-rc.2", "1.0.0-rc.10"), Less);
        assert_eq!(compare("1.0.0-alpha", "1.0.0-alpha.1"), Less);
        assert_eq!(compare("1.0.0-alpha.beta", "1.0.0-beta"), Less);
        assert_eq!(compare("1.0.0-1", "1.0.0-alpha"), Less);
        assert_eq!(compare("1.0.0+b1", "1.0.0+b2"), Equal);
        assert_eq!(compare("1.1-rc", "1.0"), Greater);
    }

    #[test]
    fn words_sort_after_numbers_and_never_panic() {
        assert_eq!(compare("1.x", "1.9"), Greater);
        assert_eq!(compare("", ""), Equal);
        assert_eq!(compare("-", "+"), Less);
        assert_eq!(
            compare("1.99999999999999999999999999999999999999999", "1.2"),
            Greater
        );
        assert!(is_valid("1.0.0-rc.1+build.5"));
        assert!(!is_valid(""));
        assert!(!is_valid("1 0"));
        assert!(!is_valid("1;0"));
        assert!(!is_valid(&"1".repeat(65)));
    }
}
