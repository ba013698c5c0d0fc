//! The routes weftd serves on `--healthz-ip:--healthz-port`: `/healthz`, `/readyz`,
//! `/metrics` and `/peers`, axum's router on hyper's HTTP/1 connections (both already in the
//! binary through tonic). What they show is kept elsewhere: [`crate::metrics`] and the prober.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::metrics::{Format, Metrics};
use crate::probe::Prober;

/// What the routes show: the metrics (readiness included) and the prober, once weftd
/// started it.
#[derive(Default)]
pub struct Shown {
    pub metrics: Arc<Metrics>,
    pub prober: std::sync::OnceLock<Arc<Prober>>,
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
pub fn router(shown: Arc<Shown>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/peers", get(peers_page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shown)
}

/// Serves the router until the task is dropped; each connection is a task of its own, so a
/// slow or hostile client holds only its own.
pub async fn serve(listener: TcpListener, shown: Arc<Shown>) {
    let app = router(shown);
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

async fn readyz(State(shown): State<Arc<Shown>>) -> impl IntoResponse {
    let why = shown.metrics.not_ready_reasons();
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

async fn metrics_page(State(shown): State<Arc<Shown>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        shown.metrics.render(SystemTime::now(), format),
    )
}

/// Every peer's probe state as JSON, sorted by id; 503 while weftd does not probe (yet).
async fn peers_page(State(shown): State<Arc<Shown>>) -> axum::response::Response {
    let Some(prober) = shown.prober.get() else {
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
    use prometheus_client::encoding::prometheus_text;
    use tower_service::Service;

    /// Status, Content-Type and body of one request through the router, no socket involved.
    async fn call(
        m: &Arc<Shown>,
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
        use std::sync::atomic::Ordering;
        m.lease_held.store(true, Ordering::Relaxed);
        m.datapath_programmed.store(true, Ordering::Relaxed);
        m.subnet_env_written.store(true, Ordering::Relaxed);
    }

    #[tokio::test]
    async fn readiness_names_what_is_missing() {
        let m = Arc::new(Shown::default());
        let (status, ctype, body) = call(&m, Method::GET, "/readyz", None).await;
        assert_eq!(status, 503);
        assert_eq!(ctype, TEXT);
        assert!(body.contains("no subnet lease held"), "{body}");
        assert!(body.contains("subnet.env not written yet"), "{body}");
        make_ready(&m.metrics);
        assert_eq!(call(&m, Method::GET, "/readyz", None).await.0, 200);
    }

    #[tokio::test]
    async fn status_codes_methods_and_head() {
        let m = Arc::new(Shown::default());
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
        let m = Arc::new(Shown::default());
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
}
