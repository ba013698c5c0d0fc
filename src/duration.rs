//! The one way weft's flags read a duration: whole seconds (`90`) or humantime's units
//! (`90s`, `30m`, `24h`, `1h30m`), and never zero, which no interval, TTL or window means.

use std::time::Duration;

/// Parses a flag's duration; the error names the value and what is wrong with it.
pub fn parse(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?,
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_units_are_read_and_zero_is_refused() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["0", "0s", "", "soon", "-5"] {
            assert!(parse(bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(parse("0s").unwrap_err(), "\"0s\": must be more than zero");
    }
}
