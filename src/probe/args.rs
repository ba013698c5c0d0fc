//! weftd's probe flags and their validation: one clap struct the binary flattens in, turned
//! into a checked [`ProbeConfig`].

use std::time::Duration;

use super::ProbeConfig;

/// How often and how patiently weftd probes its peers.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Time between two probes of the same peer (probes to all peers are spread over it).
    #[arg(
        long = "probe-interval",
        env = "WEFTD_PROBE_INTERVAL",
        default_value = "5s",
        value_parser = crate::duration::parse
    )]
    pub interval: Duration,

    /// How long to wait for a probe's answer before counting it lost; below --probe-interval.
    /// [default: 1s, or half of --probe-interval when that is shorter than 2s]
    #[arg(
        long = "probe-timeout",
        env = "WEFTD_PROBE_TIMEOUT",
        value_parser = crate::duration::parse
    )]
    pub timeout: Option<Duration>,

    /// Consecutive lost probes after which a peer is unreachable (one answer makes it
    /// reachable again).
    #[arg(
        long = "probe-down-after",
        env = "WEFTD_PROBE_DOWN_AFTER",
        default_value_t = 3
    )]
    pub down_after: u32,

    /// How many of a peer's latest probes its loss figure covers.
    #[arg(
        long = "probe-loss-window",
        env = "WEFTD_PROBE_LOSS_WINDOW",
        default_value_t = 20
    )]
    pub window: u32,

    /// The most probes sent a second, to all peers together. With more peers than this
    /// times --probe-interval, each peer is probed every peers / max-rate seconds instead,
    /// so probing costs a host the same with 5,000 peers as with 250. 50 keeps an idle host
    /// with 5,000 answering peers under 1 % of a core: 1.08 % at 100 a second, 0.75–0.92 % at 50
    /// (BENCHMARKS.md), most of a probe's cost being the kernel's tunnel encapsulation.
    #[arg(
        long = "probe-max-rate",
        env = "WEFTD_PROBE_MAX_RATE",
        default_value_t = 50
    )]
    pub max_rate: u32,
}

/// A probe setting that cannot work, with the value given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeConfigError {
    #[error("--probe-interval {0}: must be longer than zero")]
    ZeroInterval(String),
    #[error("--probe-timeout {timeout}: must be longer than zero and shorter than --probe-interval {interval}")]
    Timeout { timeout: String, interval: String },
    /// The timeout was set and the interval was not: say that the interval is the default, so
    /// the user knows which flag to add.
    #[error("--probe-timeout {timeout}: must be shorter than --probe-interval, whose default is {interval}; set a longer --probe-interval too")]
    TimeoutPastDefaultInterval { timeout: String, interval: String },
    #[error("--probe-down-after {0}: must be at least 1")]
    DownAfter(u32),
    #[error("--probe-loss-window {0}: must be at least 1")]
    Window(u32),
    #[error("--probe-max-rate {0}: must be at least 1 probe a second")]
    MaxRate(u32),
}

/// The timeout when none is given: 1 s, but never more than half the interval, so a user who
/// sets only a short `--probe-interval` gets a timeout that fits it rather than an error about
/// a flag they never set.
pub fn default_timeout(interval: Duration) -> Duration {
    Duration::from_secs(1).min(interval / 2)
}

/// The interval's default, as the flag declares it (for the error that names it).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

impl ProbeArgs {
    /// The checked settings, the timeout derived from the interval unless it was given.
    pub fn config(&self) -> Result<ProbeConfig, ProbeConfigError> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let timeout = self.timeout.unwrap_or(default_timeout(self.interval));
        let cfg = ProbeConfig {
            interval: self.interval,
            timeout,
            down_after: self.down_after,
            window: self.window,
            max_rate: self.max_rate,
        };
        match cfg.validated() {
            // clap does not say whether a value came from the default; an interval equal to
            // the default was either not set or set to it, and the hint fits both.
            Err(ProbeConfigError::Timeout { .. })
                if self.interval == DEFAULT_INTERVAL && !timeout.is_zero() =>
            {
                Err(ProbeConfigError::TimeoutPastDefaultInterval {
                    timeout: show(timeout),
                    interval: show(self.interval),
                })
            }
            other => other,
        }
    }
}

impl ProbeConfig {
    /// Checks the settings: a timeout at or past the interval would let a peer's probes
    /// overlap, and zero losses could never mean "down".
    pub fn validated(self) -> Result<ProbeConfig, ProbeConfigError> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.interval.is_zero() {
            return Err(ProbeConfigError::ZeroInterval(show(self.interval)));
        }
        if self.timeout.is_zero() || self.timeout >= self.interval {
            return Err(ProbeConfigError::Timeout {
                timeout: show(self.timeout),
                interval: show(self.interval),
            });
        }
        if self.down_after < 1 {
            return Err(ProbeConfigError::DownAfter(self.down_after));
        }
        if self.window < 1 {
            return Err(ProbeConfigError::Window(self.window));
        }
        if self.max_rate < 1 {
            return Err(ProbeConfigError::MaxRate(self.max_rate));
        }
        Ok(self)
    }

    /// Time between two probes of the same peer with `peers` peers: the interval, stretched
    /// so that no more than `max_rate` probes leave a second.
    pub fn interval_for(&self, peers: usize) -> Duration {
        let paced = Duration::from_secs_f64(peers as f64 / f64::from(self.max_rate));
        self.interval.max(paced)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        probe: ProbeArgs,
    }

    fn parse(args: &[&str]) -> Result<ProbeArgs, clap::Error> {
        let mut full = vec!["weftd"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| c.probe)
    }

    #[test]
    fn probe_args_defaults() {
        let c = parse(&[]).unwrap().config().unwrap();
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.down_after, 3);
        assert_eq!(c.window, 20);
        assert_eq!(c.max_rate, 50);
    }

    #[test]
    fn the_interval_stretches_past_max_rate_peers() {
        let c = parse(&[]).unwrap().config().unwrap();
        assert_eq!(c.interval_for(10), Duration::from_secs(5));
        assert_eq!(c.interval_for(250), Duration::from_secs(5));
        assert_eq!(c.interval_for(500), Duration::from_secs(10));
        assert_eq!(c.interval_for(5000), Duration::from_secs(100));
        let a = parse(&["--probe-max-rate", "0"]).unwrap();
        assert_eq!(a.config().unwrap_err(), ProbeConfigError::MaxRate(0));
    }

    #[test]
    fn probe_args_durations_in_humantime_or_seconds() {
        let a = parse(&["--probe-interval", "2", "--probe-timeout", "250ms"]).unwrap();
        assert_eq!(a.interval, Duration::from_secs(2));
        assert_eq!(a.timeout, Some(Duration::from_millis(250)));
        let e = parse(&["--probe-interval", "soon"]).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn probe_args_timeout_default_fits_a_short_interval() {
        // The case: --probe-interval 1s alone was refused for the 1s default timeout.
        // From 2 s up the default stays 1 s.
        for (interval, timeout) in [("1s", 500), ("300ms", 150), ("2s", 1000), ("1m", 1000)] {
            let c = parse(&["--probe-interval", interval]).unwrap().config();
            assert_eq!(
                c.unwrap().timeout,
                Duration::from_millis(timeout),
                "{interval}"
            );
        }
        // A timeout the user gives is kept as given.
        let a = parse(&["--probe-interval", "1s", "--probe-timeout", "900ms"]).unwrap();
        assert_eq!(a.config().unwrap().timeout, Duration::from_millis(900));
    }

    #[test]
    fn probe_args_timeout_past_the_default_interval_says_so() {
        let e = parse(&["--probe-timeout", "6s"])
            .unwrap()
            .config()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--probe-timeout 6s: must be shorter than --probe-interval, whose default is 5s; \
             set a longer --probe-interval too"
        );
        let a = parse(&["--probe-timeout", "6s", "--probe-interval", "10s"]).unwrap();
        assert_eq!(a.config().unwrap().timeout, Duration::from_secs(6));
    }

    #[test]
    fn probe_args_validation_names_the_value() {
        let a = parse(&["--probe-interval", "1s", "--probe-timeout", "1s"]).unwrap();
        let e = a.config().unwrap_err();
        assert_eq!(
            e,
            ProbeConfigError::Timeout {
                timeout: "1s".into(),
                interval: "1s".into()
            }
        );
        assert!(e.to_string().contains("--probe-timeout 1s"), "{e}");
        let a = parse(&["--probe-down-after", "0"]).unwrap();
        assert_eq!(a.config().unwrap_err(), ProbeConfigError::DownAfter(0));
        let a = parse(&["--probe-loss-window", "0"]).unwrap();
        assert_eq!(a.config().unwrap_err(), ProbeConfigError::Window(0));
        let e = parse(&["--probe-interval", "0s"]).unwrap_err().to_string();
        assert!(e.contains("\"0s\": must be more than zero"), "{e}");
    }
}
