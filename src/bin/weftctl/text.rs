//! Small pieces of text weftctl's tables share.

use std::time::Duration;

/// `23h59m`, `4m10s`, `9s`: two units at most, no spaces, so columns stay columns.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// `1 pair`, `2 pairs`, `0 pairs`: a count with its noun in the right number (every noun
/// weftctl counts takes a plain `s`).
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    match n.into() {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_count_is_singular_for_one_only() {
        assert_eq!(count(0u32, "pair"), "0 pairs");
        assert_eq!(count(1u32, "pair"), "1 pair");
        assert_eq!(count(2u32, "pair"), "2 pairs");
        assert_eq!(count(1u64, "problem"), "1 problem");
    }
}
