//! `/healthz`, `/readyz` and `/metrics` for weftd on `--healthz-ip:--healthz-port`: axum's
//! router on hyper's HTTP/1 connections (both already in the binary through tonic), and the
//! metrics kept and encoded by prometheus-client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::{prometheus_text, text, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::probe::{Outcome, ProbeEvent, Prober};

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

/// What the agent, the datapath thread and (later) the peer probes record as they work.
/// Everything is an atomic, so the datapath thread, the tokio tasks and a scrape never wait
/// for each other.
#[derive(Debug)]
pub struct Metrics {
    pub leases_known: Gauge<u64, AtomicU64>,
    pub leases_skipped: Gauge<u64, AtomicU64>,
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
    /// The running prober, once weftd has started it: `/peers` reads it.
    pub peer_probes: PeerProbes,
    // Derived from the state above when a scrape encodes them.
    lease_expiry: Gauge<f64, AtomicU64>,
    ready: Gauge<u64, AtomicU64>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            leases_known: Gauge::default(),
            leases_skipped: Gauge::default(),
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
            peer_probes: PeerProbes::default(),
            lease_expiry: Gauge::default(),
            ready: Gauge::default(),
            registry: Registry::default(),
        };
        // The registry holds clones: each metric is an Arc inside, so both ends see one value.
        // prometheus-client adds `_total` to counters and the unit to the others' names.
        let mut r = Registry::default();
        for (name, help, gauge) in [
            (
                "weft_leases_known",
                "Valid leases seen in etcd, this host's included",
                &m.leases_known,
            ),
            ("weft_leases_skipped", SKIPPED_HELP, &m.leases_skipped),
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
        ] {
            r.register(name, help, gauge.clone());
        }
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
        Metrics { registry: r, ..m }
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

/// The prober `/peers` shows; set once when weftd starts probing.
#[derive(Default)]
pub struct PeerProbes(std::sync::OnceLock<Arc<Prober>>);

impl std::fmt::Debug for PeerProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "PeerProbes(running)"
        } else {
            "PeerProbes(none)"
        })
    }
}

impl PeerProbes {
    pub fn set(&self, prober: Arc<Prober>) {
        let _ = self.0.set(prober);
    }

    pub fn get(&self) -> Option<&Arc<Prober>> {
        self.0.get()
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

/// Binds the listener before anything else starts, so a bad address stops weftd at once with
/// a message that names it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// How long a connection may take to send a whole request head, and how long an idle
/// keep-alive connection stays open. hyper's own header-read timer does this rather than a
/// tower timeout layer: a tower timeout starts only once a request has been parsed, so it
/// never sees a client that connects and sends nothing, or half a head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// hyper's smallest read buffer. Our requests are a line and a few headers; the default
/// (~400 KiB) would let each of many clients that send an endless head hold that much for
/// the header read timeout. A longer head gets 431.
const MAX_BUF_SIZE: usize = 8192;

/// The endpoints. GET routes answer HEAD too (axum sends the headers without the body).
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/peers", get(peers_page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(metrics)
}

/// Serves the router until the task is dropped; each connection is a task of its own, so a
/// slow or hostile client holds only its own.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let app = router(metrics);
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            // Out of file descriptors and the like: wait for some to be freed, do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF_SIZE);
            // An error is the client's doing (it left, timed out, or sent something that is
            // not HTTP and got a 400): the connection is closed either way.
            let _ = http.serve_connection(TokioIo::new(conn), service).await;
        });
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn healthz() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, TEXT)], "ok\n")
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    let why = metrics.not_ready_reasons();
    if why.is_empty() {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT)],
            "ready\n".to_string(),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            format!("not ready: {}\n", why.join(", ")),
        )
    }
}

async fn metrics_page(
    State(metrics): State<Arc<Metrics>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        metrics.render(SystemTime::now(), format),
    )
}

/// Every peer's probe state as JSON, sorted by id; 503 while weftd does not probe (yet).
async fn peers_page(State(metrics): State<Arc<Metrics>>) -> axum::response::Response {
    let Some(prober) = metrics.peer_probes.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            "peer probes are not running\n",
        )
            .into_response();
    };
    let mut peers = prober.snapshot();
    peers.sort_by(|a, b| a.id.cmp(&b.id));
    let body = serde_json::to_string_pretty(&peers).unwrap_or_else(|_| "[]".into()) + "\n";
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, TEXT)],
        "not found; try /healthz, /readyz, /metrics or /peers\n",
    )
}

async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, TEXT)],
        "only GET and HEAD are served\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use tower_service::Service;

    /// Status, Content-Type and body of one request through the router, no socket involved.
    async fn call(
        m: &Arc<Metrics>,
        method: Method,
        uri: &str,
        accept: Option<&str>,
    ) -> (u16, String, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let req = req.body(Body::empty()).expect("a well-formed request");
        let res = router(m.clone())
            .call(req)
            .await
            .expect("the router is infallible");
        let ctype = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ASCII").to_string())
            .unwrap_or_default();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("a body in memory");
        (
            status,
            ctype,
            String::from_utf8(body.to_vec()).expect("UTF-8"),
        )
    }

    fn make_ready(m: &Metrics) {
        m.lease_held.store(true, Ordering::Relaxed);
        m.datapath_programmed.store(true, Ordering::Relaxed);
        m.subnet_env_written.store(true, Ordering::Relaxed);
    }

    #[tokio::test]
    async fn readiness_names_what_is_missing() {
        let m = Arc::new(Metrics::default());
        let (status, ctype, body) = call(&m, Method::GET, "/readyz", None).await;
        assert_eq!(status, 503);
        assert_eq!(ctype, TEXT);
        assert!(body.contains("no subnet lease held"), "{body}");
        assert!(body.contains("subnet.env not written yet"), "{body}");
        make_ready(&m);
        assert_eq!(call(&m, Method::GET, "/readyz", None).await.0, 200);
    }

    #[tokio::test]
    async fn status_codes_methods_and_head() {
        let m = Arc::new(Metrics::default());
        assert_eq!(
            call(&m, Method::GET, "/healthz", None).await,
            (200, TEXT.into(), "ok\n".into())
        );
        assert_eq!(
            call(&m, Method::GET, "/healthz?verbose=1", None).await.0,
            200
        );
        let (status, ctype, body) = call(&m, Method::HEAD, "/metrics", None).await;
        assert_eq!(
            (status, ctype.as_str(), body.as_str()),
            (200, prometheus_text::CONTENT_TYPE, "")
        );
        assert_eq!(call(&m, Method::HEAD, "/readyz", None).await.0, 503);
        assert_eq!(call(&m, Method::GET, "/nothing", None).await.0, 404);
        assert_eq!(call(&m, Method::POST, "/healthz", None).await.0, 405);
        assert_eq!(call(&m, Method::DELETE, "/metrics", None).await.0, 405);
    }

    #[tokio::test]
    async fn metrics_speak_openmetrics_when_asked() {
        let m = Arc::new(Metrics::default());
        let prometheus_asks =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (status, ctype, body) = call(&m, Method::GET, "/metrics", Some(prometheus_asks)).await;
        assert_eq!(status, 200);
        assert_eq!(
            ctype,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(
            body.contains("# TYPE weft_reconcile_duration_seconds histogram\n"),
            "{body}"
        );
        assert!(
            body.contains("# UNIT weft_reconcile_duration_seconds seconds\n"),
            "{body}"
        );
        let (_, ctype, body) = call(&m, Method::GET, "/metrics", Some("text/plain")).await;
        assert_eq!(ctype, prometheus_text::CONTENT_TYPE);
        assert!(!body.contains("# EOF"), "{body}");
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
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = m.render(now, format);
            for line in [
                "weft_reconcile_runs_total 2",
                "weft_drift_repairs_total 2",
                "weft_leases_known 7",
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
            ] {
                assert!(
                    text.lines().any(|l| l == line),
                    "{format:?}: no {line:?} in\n{text}"
                );
            }
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
}
