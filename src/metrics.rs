//! What weftd counts and measures as it works, written by the agent, the datapath and the
//! probes, and encoded for `/metrics` (OpenMetrics or the Prometheus text format) by
//! prometheus-client. The readiness facts are here too: `weft_ready` and `/readyz` read them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{prometheus_text, text, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::backend::Handshake;
use crate::probe::{Outcome, ProbeEvent};
use crate::subnet::{Family as IpFamily, PerFamily};

/// One label pair per series: (`peer`, the peer's subnet).
type PeerLabel = Vec<(&'static str, String)>;

/// Upper bounds of the duration histograms, in seconds: a fast-path reconciliation of one
/// lease takes tens of microseconds, a full pass over thousands of leases seconds, and a
/// probe's round trip lies between a LAN's and a timeout's.
const DURATION_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

const SKIPPED_HELP: &str = "Leases in etcd that were refused (malformed, outside the network, \
                            overlapping, unusable address)";

/// A histogram over DURATION_BUCKETS kept in atomics, encoded by prometheus-client. Its own
/// `Histogram` sits behind a mutex that a scrape holds while it encodes, and a scrape runs on
/// a tokio worker the OS may preempt: the datapath thread would then wait on it in the middle
/// of a reconciliation. Here an observation is an atomic add and a compare-and-swap.
#[derive(Debug, Clone, Default)]
pub struct DurationHistogram(Arc<DurationCounts>);

#[derive(Debug, Default)]
struct DurationCounts {
    /// Observations per bucket (not cumulative), the last one above every bound.
    per_bucket: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// The sum of the observations, as f64 bits.
    sum: AtomicU64,
}

impl DurationHistogram {
    pub fn observe(&self, secs: f64) {
        let i = DURATION_BUCKETS.partition_point(|le| *le < secs);
        self.0.per_bucket[i].fetch_add(1, Ordering::Relaxed);
        // Only ever fails when the closure returns None, which it never does.
        let _ = self
            .0
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + secs).to_bits())
            });
    }
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.0.per_bucket.iter().map(|n| n.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, so `_count` always equals the `+Inf` bucket even
        // while an observation lands during the scrape (`_sum` may then lag it by one).
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(self.0.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What the agent, the datapath thread and the peer probes record as they work.
/// Everything is an atomic, so the datapath thread, the tokio tasks and a scrape never wait
/// for each other.
#[derive(Debug)]
pub struct Metrics {
    pub leases_known: Gauge<u64, AtomicU64>,
    pub leases_skipped: Gauge<u64, AtomicU64>,
    /// The IPv4 subnets the config's range holds: what leases and reservations come from.
    pub subnet_pool_size: Gauge<u64, AtomicU64>,
    pub peers_programmed: Gauge<u64, AtomicU64>,
    pub reconcile_runs: Counter,
    pub reconcile_duration: DurationHistogram,
    pub reconcile_last_duration: Gauge<f64, AtomicU64>,
    pub drift_repairs: Counter,
    pub netlink_errors: Counter,
    pub etcd_errors: Counter,
    pub lease_acquisitions: Counter,
    pub lease_renewals: Counter,
    /// Unix time (seconds) at which the own lease expires; 0 = no lease, -1 = reservation.
    pub lease_expires_unix: AtomicI64,
    pub lease_held: AtomicBool,
    pub datapath_programmed: AtomicBool,
    pub subnet_env_written: AtomicBool,
    /// The peer probes' round trips, failures and state counts.
    pub probe_rtt: DurationHistogram,
    pub probe_errors: Counter,
    pub peers_reachable: Gauge<u64, AtomicU64>,
    pub peers_unreachable: Gauge<u64, AtomicU64>,
    /// Network policy on this host.
    pub policy: PolicyMetrics,
    /// The revision of `<prefix>/config` this host runs entirely (see the status record).
    pub config_revision: Gauge<u64, AtomicU64>,
    /// Each tunnel device's peers' latest handshakes (WireGuard), as last read back; the
    /// datapath replaces a family's list on every read, a scrape turns them into ages.
    handshakes: Mutex<PerFamily<Vec<Handshake>>>,
    // Derived from the state above when a scrape encodes them.
    lease_expiry: Gauge<f64, AtomicU64>,
    ready: Gauge<u64, AtomicU64>,
    handshake_age: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    handshake_age_max: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            leases_known: Gauge::default(),
            leases_skipped: Gauge::default(),
            subnet_pool_size: Gauge::default(),
            peers_programmed: Gauge::default(),
            reconcile_runs: Counter::default(),
            reconcile_duration: DurationHistogram::default(),
            reconcile_last_duration: Gauge::default(),
            drift_repairs: Counter::default(),
            netlink_errors: Counter::default(),
            etcd_errors: Counter::default(),
            lease_acquisitions: Counter::default(),
            lease_renewals: Counter::default(),
            lease_expires_unix: AtomicI64::new(0),
            lease_held: AtomicBool::new(false),
            datapath_programmed: AtomicBool::new(false),
            subnet_env_written: AtomicBool::new(false),
            probe_rtt: DurationHistogram::default(),
            probe_errors: Counter::default(),
            peers_reachable: Gauge::default(),
            peers_unreachable: Gauge::default(),
            policy: PolicyMetrics::default(),
            config_revision: Gauge::default(),
            handshakes: Mutex::default(),
            lease_expiry: Gauge::default(),
            ready: Gauge::default(),
            handshake_age: Family::default(),
            handshake_age_max: Family::default(),
            registry: Registry::default(),
        };
        Metrics {
            registry: register(&m),
            ..m
        }
    }
}

/// The registry of every metric: clones, each an Arc inside, so both ends see one value.
/// prometheus-client adds `_total` to counters and the unit to the others' names.
fn register(m: &Metrics) -> Registry {
    let mut r = Registry::default();
    register_gauges(&mut r, m);
    register_counters(&mut r, m);
    register_seconds(&mut r, m);
    register_histograms(&mut r, m);
    register_policy(&mut r, &m.policy);
    r
}

/// Network policy's state on this host, as the policy thread last found it.
#[derive(Debug, Clone, Default)]
pub struct PolicyMetrics {
    pub policies: Gauge<u64, AtomicU64>,
    pub local_workloads: Gauge<u64, AtomicU64>,
    pub remote_workloads: Gauge<u64, AtomicU64>,
    /// Unix time of the last pass that left the tables as wanted.
    pub last_apply: Gauge<f64, AtomicU64>,
    pub apply_errors: Counter,
    /// Packets refused at workloads each policy selects, since its table was last written.
    pub dropped: Family<Vec<(String, String)>, Gauge<u64, AtomicU64>>,
}

fn register_policy(r: &mut Registry, p: &PolicyMetrics) {
    for (name, help, gauge) in [
        (
            "weft_policy_policies",
            "Network policies known",
            &p.policies,
        ),
        (
            "weft_policy_local_workloads",
            "Containers on this host the plugin attached",
            &p.local_workloads,
        ),
        (
            "weft_policy_remote_workloads",
            "Containers on other hosts known from etcd",
            &p.remote_workloads,
        ),
    ] {
        r.register(name, help, gauge.clone());
    }
    r.register(
        "weft_policy_last_apply_timestamp_seconds",
        "Unix time of the last pass that left the policy tables as wanted",
        p.last_apply.clone(),
    );
    r.register(
        "weft_policy_apply_errors",
        "Passes that could not bring the policy tables up to date",
        p.apply_errors.clone(),
    );
    r.register(
        "weft_policy_dropped_packets",
        "Packets refused at containers a policy selects (nftables counters, since the table was \
         last written)",
        p.dropped.clone(),
    );
}

/// The gauges.
fn register_gauges(r: &mut Registry, m: &Metrics) {
    for (name, help, gauge) in [
        (
            "weft_leases_known",
            "Valid leases seen in etcd, this host's included",
            &m.leases_known,
        ),
        ("weft_leases_skipped", SKIPPED_HELP, &m.leases_skipped),
        (
            "weft_subnet_pool_size",
            "Subnets the network config's range (SubnetMin to SubnetMax) holds, in IPv4",
            &m.subnet_pool_size,
        ),
        (
            "weft_peers_programmed",
            "Remote hosts whose routes (and neighbour and FDB entries) are in the kernel",
            &m.peers_programmed,
        ),
        (
            "weft_ready",
            "1 when the lease is held, the datapath programmed and subnet.env written",
            &m.ready,
        ),
        (
            "weft_peers_reachable",
            "Peers whose last probe was answered",
            &m.peers_reachable,
        ),
        (
            "weft_peers_unreachable",
            "Peers whose last probe was not answered",
            &m.peers_unreachable,
        ),
        (
            "weft_config_revision",
            "Revision of the network config (etcd's) this host runs entirely",
            &m.config_revision,
        ),
    ] {
        r.register(name, help, gauge.clone());
    }
}

/// The counters (`_total` added to their names).
fn register_counters(r: &mut Registry, m: &Metrics) {
    for (name, help, counter) in [
        (
            "weft_reconcile_runs",
            "Reconciliations of kernel state against the leases",
            &m.reconcile_runs,
        ),
        (
            "weft_drift_repairs",
            "Kernel objects found missing or wrong and put back",
            &m.drift_repairs,
        ),
        (
            "weft_netlink_errors",
            "Netlink requests the kernel refused",
            &m.netlink_errors,
        ),
        (
            "weft_etcd_errors",
            "Failed etcd requests (connection losses included)",
            &m.etcd_errors,
        ),
        (
            "weft_lease_acquisitions",
            "Times this host acquired (or re-acquired) its subnet lease",
            &m.lease_acquisitions,
        ),
        (
            "weft_lease_renewals",
            "Successful renewals of this host's lease",
            &m.lease_renewals,
        ),
        (
            "weft_probe_errors",
            "Probes of peers that failed or timed out",
            &m.probe_errors,
        ),
    ] {
        r.register(name, help, counter.clone());
    }
}

/// The gauges in seconds.
fn register_seconds(r: &mut Registry, m: &Metrics) {
    for (name, help, gauge) in [
        (
            "weft_reconcile_last_duration",
            "Time the last reconciliation took",
            &m.reconcile_last_duration,
        ),
        (
            "weft_lease_expiry",
            "Time until this host's lease expires (infinite for a reservation, 0 without a lease)",
            &m.lease_expiry,
        ),
    ] {
        r.register_with_unit(name, help, Unit::Seconds, gauge.clone());
    }
    for (name, help, family) in [
        (
            "weft_wireguard_handshake_age",
            "Time since the last WireGuard handshake with each peer (+Inf: none yet), labelled \
             by the peer's subnet; WireGuard backend only, one series per peer",
            &m.handshake_age,
        ),
        (
            "weft_wireguard_handshake_age_max",
            "The oldest of this host's WireGuard handshake ages (+Inf: a peer without one); \
             WireGuard backend only, one series",
            &m.handshake_age_max,
        ),
    ] {
        r.register_with_unit(name, help, Unit::Seconds, family.clone());
    }
}

/// The histograms, in seconds.
fn register_histograms(r: &mut Registry, m: &Metrics) {
    for (name, help, histogram) in [
        (
            "weft_reconcile_duration",
            "Time each reconciliation took",
            &m.reconcile_duration,
        ),
        (
            "weft_probe_rtt",
            "Round-trip time of each successful probe of a peer",
            &m.probe_rtt,
        ),
    ] {
        r.register_with_unit(name, help, Unit::Seconds, histogram.clone());
    }
}

/// The two text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for scrapers that do not ask for OpenMetrics.
    Prometheus,
}

impl Format {
    /// OpenMetrics when the client's `Accept` names it, else the older format every scraper
    /// reads (curl, and what weftd served before).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let names_openmetrics = accept.is_some_and(|a| {
            a.split(',').any(|range| {
                let mut params = range.split(';').map(str::trim);
                let media = params.next().unwrap_or("");
                let refused = params.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q == 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if names_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_text::CONTENT_TYPE,
        }
    }
}

impl Metrics {
    /// What the prober reports, into the probe metrics (no per-peer series: a thousand hosts
    /// would make a million cluster-wide; `/peers` names them).
    pub fn record_probe(&self, ev: ProbeEvent) {
        match ev {
            ProbeEvent::Finished { outcome, failed } => {
                if let Outcome::Answer(rtt) = outcome {
                    self.probe_rtt.observe(rtt.as_secs_f64());
                }
                if failed {
                    self.probe_errors.inc();
                }
            }
            ProbeEvent::Counts {
                reachable,
                unreachable,
            } => {
                self.peers_reachable.set(reachable);
                self.peers_unreachable.set(unreachable);
            }
        }
    }

    /// The handshakes `family`'s tunnel device holds, as just read back (empty when the
    /// family has no tunnel device).
    pub fn set_handshakes(&self, family: IpFamily, now: Vec<Handshake>) {
        let mut h = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        h[family] = now;
    }

    /// The handshake gauges for `now`: per-peer ages, and the oldest. Series of peers no
    /// longer held go; a host without WireGuard peers has none.
    fn encode_handshakes(&self, now: SystemTime) {
        let all: Vec<Handshake> = {
            let h = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
            h.v4.iter().chain(h.v6.iter()).cloned().collect()
        };
        self.handshake_age.clear();
        self.handshake_age_max.clear();
        let mut oldest: Option<f64> = None;
        for hs in all {
            let age = match hs.last {
                // A clock stepped back shows the handshake as just now, not in the future.
                Some(t) => now.duration_since(t).unwrap_or_default().as_secs_f64(),
                None => f64::INFINITY,
            };
            oldest = Some(oldest.map_or(age, |o: f64| o.max(age)));
            (self.handshake_age)
                .get_or_create(&vec![("peer", hs.peer)])
                .set(age);
        }
        if let Some(o) = oldest {
            self.handshake_age_max.get_or_create(&Vec::new()).set(o);
        }
    }

    pub fn record_reconcile(&self, took: Duration) {
        let secs = took.as_secs_f64();
        self.reconcile_runs.inc();
        self.reconcile_duration.observe(secs);
        self.reconcile_last_duration.set(secs);
    }

    /// Ready means: this host holds a lease, its datapath is programmed and subnet.env exists.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if !self.lease_held.load(Ordering::Relaxed) {
            why.push("no subnet lease held");
        }
        if !self.datapath_programmed.load(Ordering::Relaxed) {
            why.push("datapath not programmed yet");
        }
        if !self.subnet_env_written.load(Ordering::Relaxed) {
            why.push("subnet.env not written yet");
        }
        why
    }

    /// Every metric in `format`, the derived gauges computed for `now`.
    pub fn render(&self, now: SystemTime, format: Format) -> String {
        // Two scrapes at once both write what they computed from the same state: harmless.
        let expires = self.lease_expires_unix.load(Ordering::Relaxed);
        let now_unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.lease_expiry.set(match expires {
            0 => 0.0,
            -1 => f64::INFINITY,
            t => (t - now_unix).max(0) as f64,
        });
        self.ready
            .set(u64::from(self.not_ready_reasons().is_empty()));
        self.encode_handshakes(now);
        let mut out = String::new();
        // Writing into a String cannot fail; an Err would be a bug in the encoder, and half a
        // page is still the best answer then.
        let _ = match format {
            Format::OpenMetrics => text::encode(&mut out, &self.registry),
            Format::Prometheus => prometheus_text::encode(&mut out, &self.registry),
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails unless `m` rendered at `now` in either text format has each of `lines` whole.
    fn assert_rendered(m: &Metrics, now: SystemTime, lines: &[&str]) {
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = m.render(now, format);
            for line in lines {
                assert!(
                    text.lines().any(|l| l == *line),
                    "{format:?}: no {line:?} in\n{text}"
                );
            }
        }
    }

    fn make_ready(m: &Metrics) {
        m.lease_held.store(true, Ordering::Relaxed);
        m.datapath_programmed.store(true, Ordering::Relaxed);
        m.subnet_env_written.store(true, Ordering::Relaxed);
    }

    #[test]
    fn duration_histogram_buckets_bounds_and_counts_every_thread() {
        let m = Arc::new(Metrics::default());
        m.probe_rtt.observe(0.001); // on a bound: counted in it
        m.probe_rtt.observe(60.0); // above every bound: only in +Inf
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| m.probe_rtt.observe(0.25)))
            })
            .collect();
        threads
            .into_iter()
            .for_each(|t| t.join().expect("no panic"));
        let text = m.render(SystemTime::UNIX_EPOCH, Format::OpenMetrics);
        for line in [
            "weft_probe_rtt_seconds_bucket{le=\"0.0005\"} 0",
            "weft_probe_rtt_seconds_bucket{le=\"0.001\"} 1",
            "weft_probe_rtt_seconds_bucket{le=\"0.25\"} 4001",
            "weft_probe_rtt_seconds_bucket{le=\"10.0\"} 4001",
            "weft_probe_rtt_seconds_bucket{le=\"+Inf\"} 4002",
            "weft_probe_rtt_seconds_count 4002",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix("weft_probe_rtt_seconds_sum "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(sum.is_some_and(|s| (s - 1060.001).abs() < 1e-6), "{text}");
    }

    #[test]
    fn negotiation_reads_the_accept_header() {
        use Format::*;
        assert_eq!(Format::negotiate(None), Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Prometheus);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text; version=1.0.0")),
            OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("text/plain, application/openmetrics-text;q=0")),
            Prometheus
        );
    }

    #[test]
    fn metrics_render_in_both_text_formats() {
        let m = Metrics::default();
        m.record_reconcile(Duration::from_millis(3));
        m.record_reconcile(Duration::from_micros(70));
        m.drift_repairs.inc_by(2);
        m.leases_known.set(7);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        m.lease_expires_unix.store(1060, Ordering::Relaxed);
        let lines = [
            "weft_reconcile_runs_total 2",
            "weft_drift_repairs_total 2",
            "weft_leases_known 7",
            "weft_subnet_pool_size 0",
            "weft_lease_expiry_seconds 60.0",
            "weft_ready 0",
            "weft_reconcile_duration_seconds_count 2",
            "weft_reconcile_duration_seconds_bucket{le=\"0.0001\"} 1",
            "weft_reconcile_duration_seconds_bucket{le=\"0.0025\"} 1",
            "weft_reconcile_duration_seconds_bucket{le=\"0.005\"} 2",
            "weft_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "weft_reconcile_last_duration_seconds 0.00007",
            "weft_probe_rtt_seconds_count 0",
            "weft_probe_errors_total 0",
            "weft_peers_reachable 0",
            "weft_peers_unreachable 0",
        ];
        assert_rendered(&m, now, &lines);
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = m.render(now, format);
            let sum = text
                .lines()
                .find_map(|l| l.strip_prefix("weft_reconcile_duration_seconds_sum "))
                .and_then(|v| v.parse::<f64>().ok());
            assert!(sum.is_some_and(|s| (s - 0.00307).abs() < 1e-9), "{text}");
        }
        m.lease_expires_unix.store(-1, Ordering::Relaxed);
        make_ready(&m);
        let text = m.render(now, Format::OpenMetrics);
        let expiry = text
            .lines()
            .find_map(|l| l.strip_prefix("weft_lease_expiry_seconds "))
            .and_then(|v| v.parse::<f64>().ok());
        assert_eq!(expiry, Some(f64::INFINITY), "{text}");
        assert!(text.lines().any(|l| l == "weft_ready 1"), "{text}");
    }

    #[test]
    fn handshake_ages_per_peer_and_the_oldest_only_while_peers_are_held() {
        let m = Metrics::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let text = m.render(now, Format::OpenMetrics);
        assert!(
            !text.contains("weft_wireguard_handshake_age_seconds{"),
            "{text}"
        );
        assert!(
            !text.contains("weft_wireguard_handshake_age_max_seconds "),
            "{text}"
        );
        let hs = |peer: &str, ago: Option<u64>| Handshake {
            peer: peer.into(),
            last: ago.map(|s| now - Duration::from_secs(s)),
        };
        m.set_handshakes(
            IpFamily::V4,
            vec![hs("198.19.2.0/24", Some(42)), hs("198.19.3.0/24", Some(7))],
        );
        let lines = [
            "weft_wireguard_handshake_age_seconds{peer=\"198.19.2.0/24\"} 42.0",
            "weft_wireguard_handshake_age_seconds{peer=\"198.19.3.0/24\"} 7.0",
            "weft_wireguard_handshake_age_max_seconds 42.0",
        ];
        assert_rendered(&m, now, &lines);
        // A peer without a handshake is infinitely old; a peer gone loses its series.
        m.set_handshakes(IpFamily::V6, vec![hs("2001:db8:2::/64", None)]);
        m.set_handshakes(IpFamily::V4, vec![hs("198.19.2.0/24", Some(42))]);
        let text = m.render(now, Format::OpenMetrics);
        assert!(
            text.lines()
                .any(|l| l == "weft_wireguard_handshake_age_seconds{peer=\"2001:db8:2::/64\"} inf"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "weft_wireguard_handshake_age_max_seconds inf"),
            "{text}"
        );
        assert!(!text.contains("198.19.3.0/24"), "{text}");
    }
}
