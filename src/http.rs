//! `/healthz`, `/readyz` and `/metrics` for weftd, served over plain HTTP/1.1 on
//! `--healthz-ip:--healthz-port`. Deliberately tiny: three GET endpoints do not need a web
//! framework, and every byte of the daemon's memory is one an operator pays on every host.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Counters and gauges the agent updates as it works. Everything is an atomic, so the
/// reconciler and the HTTP task never wait for each other.
#[derive(Debug, Default)]
pub struct Metrics {
    pub leases_known: AtomicU64,
    pub leases_skipped: AtomicU64,
    pub peers_programmed: AtomicU64,
    pub reconcile_runs: AtomicU64,
    pub reconcile_seconds_sum_us: AtomicU64,
    pub reconcile_last_us: AtomicU64,
    pub drift_repairs: AtomicU64,
    pub netlink_errors: AtomicU64,
    pub etcd_errors: AtomicU64,
    pub lease_acquisitions: AtomicU64,
    pub lease_renewals: AtomicU64,
    /// Unix time (seconds) at which the own lease expires; 0 = no lease, -1 = reservation.
    pub lease_expires_unix: AtomicI64,
    pub lease_held: AtomicBool,
    pub datapath_programmed: AtomicBool,
    pub subnet_env_written: AtomicBool,
}

impl Metrics {
    pub fn record_reconcile(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.reconcile_runs.fetch_add(1, Ordering::Relaxed);
        self.reconcile_seconds_sum_us
            .fetch_add(us, Ordering::Relaxed);
        self.reconcile_last_us.store(us, Ordering::Relaxed);
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

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, now: SystemTime) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "weft_leases_known",
            "gauge",
            "Valid leases seen in etcd, this host's included.",
            g(&self.leases_known).to_string(),
        );
        metric(
            "weft_leases_skipped",
            "gauge",
            "Leases in etcd that were refused (malformed, outside the network, overlapping, unusable address).",
            g(&self.leases_skipped).to_string(),
        );
        metric(
            "weft_peers_programmed",
            "gauge",
            "Remote hosts whose routes (and neighbour and FDB entries) are in the kernel.",
            g(&self.peers_programmed).to_string(),
        );
        metric(
            "weft_reconcile_runs_total",
            "counter",
            "Reconciliations of kernel state against the leases.",
            g(&self.reconcile_runs).to_string(),
        );
        metric(
            "weft_reconcile_duration_seconds_sum",
            "counter",
            "Total time spent reconciling.",
            format!("{:.6}", g(&self.reconcile_seconds_sum_us) as f64 / 1e6),
        );
        metric(
            "weft_reconcile_last_duration_seconds",
            "gauge",
            "Time the last reconciliation took.",
            format!("{:.6}", g(&self.reconcile_last_us) as f64 / 1e6),
        );
        metric(
            "weft_drift_repairs_total",
            "counter",
            "Kernel objects found missing or wrong and put back.",
            g(&self.drift_repairs).to_string(),
        );
        metric(
            "weft_netlink_errors_total",
            "counter",
            "Netlink requests the kernel refused.",
            g(&self.netlink_errors).to_string(),
        );
        metric(
            "weft_etcd_errors_total",
            "counter",
            "Failed etcd requests (connection losses included).",
            g(&self.etcd_errors).to_string(),
        );
        metric(
            "weft_lease_acquisitions_total",
            "counter",
            "Times this host acquired (or re-acquired) its subnet lease.",
            g(&self.lease_acquisitions).to_string(),
        );
        metric(
            "weft_lease_renewals_total",
            "counter",
            "Successful renewals of this host's lease.",
            g(&self.lease_renewals).to_string(),
        );
        let expires = self.lease_expires_unix.load(Ordering::Relaxed);
        let now_unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let left = match expires {
            0 => 0,
            -1 => i64::MAX,
            t => (t - now_unix).max(0),
        };
        metric(
            "weft_lease_expiry_seconds",
            "gauge",
            "Seconds until this host's lease expires (+Inf for a reservation, 0 without a lease).",
            if left == i64::MAX {
                "+Inf".to_string()
            } else {
                left.to_string()
            },
        );
        metric(
            "weft_ready",
            "gauge",
            "1 when the lease is held, the datapath programmed and subnet.env written.",
            u8::from(self.not_ready_reasons().is_empty()).to_string(),
        );
        out
    }
}

/// Binds the listener before anything else starts, so a bad address stops weftd at once with
/// a message that names it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/healthz`, `/readyz` and `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut len = 0;
            // Read until the end of the request head, bounded in size and time so a slow or
            // hostile client cannot hold memory or a task forever.
            let head = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = conn.read(&mut buf[len..]).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Some(())
            })
            .await;
            if !matches!(head, Ok(Some(()))) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let path = path.split('?').next().unwrap_or("");
            let (status, ctype, body) = respond(method, path, &metrics);
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

fn respond(method: &str, path: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            TEXT,
            "only GET is served\n".into(),
        );
    }
    match path {
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => {
            let why = metrics.not_ready_reasons();
            if why.is_empty() {
                ("200 OK", TEXT, "ready\n".into())
            } else {
                (
                    "503 Service Unavailable",
                    TEXT,
                    format!("not ready: {}\n", why.join(", ")),
                )
            }
        }
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(SystemTime::now()),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "not found; try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_missing() {
        let m = Metrics::default();
        let (status, _, body) = respond("GET", "/readyz", &m);
        assert!(status.starts_with("503"));
        assert!(body.contains("no subnet lease held"), "{body}");
        m.lease_held.store(true, Ordering::Relaxed);
        m.datapath_programmed.store(true, Ordering::Relaxed);
        m.subnet_env_written.store(true, Ordering::Relaxed);
        assert!(respond("GET", "/readyz", &m).0.starts_with("200"));
    }

    #[test]
    fn metrics_render_in_prometheus_text_format() {
        let m = Metrics::default();
        m.record_reconcile(Duration::from_millis(3));
        m.drift_repairs.fetch_add(2, Ordering::Relaxed);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        m.lease_expires_unix.store(1060, Ordering::Relaxed);
        let text = m.render(now);
        assert!(text.contains("\nweft_reconcile_runs_total 1\n"), "{text}");
        assert!(text.contains("\nweft_drift_repairs_total 2\n"), "{text}");
        assert!(text.contains("\nweft_lease_expiry_seconds 60\n"), "{text}");
        assert!(text.contains("# TYPE weft_reconcile_runs_total counter"));
        m.lease_expires_unix.store(-1, Ordering::Relaxed);
        assert!(m.render(now).contains("\nweft_lease_expiry_seconds +Inf\n"));
    }
}
