//! weftd's `/healthz`, `/readyz` and `/metrics` as a client sees them, from a real weftd in a
//! lab host against a real etcd: status codes, content types, HEAD, 404, 405, an exposition
//! that parses, a reconcile histogram that counts, and clients that stall or send garbage.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use testkit::lab::{Host, Lab, HEALTHZ_PORT, VXLAN_CONFIG};
use testkit::leases::CONFIG_KEY;
use testkit::wait::wait_for;

/// What Prometheus sends when it scrapes.
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// A TCP connection to weftd's endpoints, opened inside the host's namespace to its underlay
/// address; the socket stays in that namespace whichever thread uses it later.
fn connect(h: &Host) -> TcpStream {
    let addr: SocketAddr = format!("{}:{HEALTHZ_PORT}", h.ip)
        .parse()
        .expect("a socket address");
    weft::netlink::run_in_netns(&h.ns.path(), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    })
    .expect("entering the host namespace")
    .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// One answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers.get("content-type").map_or("", |s| s.as_str())
    }
}

/// Sends `method path` (HTTP/1.1, `Connection: close`, and `extra` header lines) and reads the
/// answer to the end, within 2 s.
fn request(h: &Host, method: &str, path: &str, extra: &[&str]) -> Answer {
    let mut s = connect(h);
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("setting a read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: weftd\r\nConnection: close\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("sending the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no end of head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// One sample line: series name, its labels, and the value.
struct Sample {
    name: String,
    labels: String,
    value: f64,
}

/// Checks `text` against the exposition format (OpenMetrics if `openmetrics`) and returns the
/// samples: every sample belongs to a family declared by `# TYPE` before it, every value is a
/// number, OpenMetrics ends in `# EOF`, and each histogram has ascending `le` buckets with
/// growing counts, ending in `+Inf` equal to `_count`, and a `_sum`.
fn parse_exposition(text: &str, openmetrics: bool) -> Vec<Sample> {
    let mut families: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut lines: Vec<&str> = text.lines().collect();
    if openmetrics {
        assert_eq!(lines.pop(), Some("# EOF"), "no # EOF at the end:\n{text}");
        assert!(
            text.ends_with("# EOF\n"),
            "# EOF is not the last line:\n{text}"
        );
    }
    for line in lines {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let (name, kind) = decl.split_once(' ').expect("# TYPE name kind");
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("labels end in }")),
            None => (series, ""),
        };
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("{line:?}: the value is not a number"));
        let family = families.keys().find(|f| {
            name == f.as_str()
                || name
                    .strip_prefix(f.as_str())
                    .is_some_and(|s| ["_total", "_bucket", "_sum", "_count"].contains(&s))
        });
        assert!(
            family.is_some(),
            "{line:?} has no # TYPE before it:\n{text}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels: labels.to_string(),
            value,
        });
    }
    for (family, _) in families.iter().filter(|(_, kind)| *kind == "histogram") {
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .map(|s| {
                let le = s
                    .labels
                    .strip_prefix("le=\"")
                    .and_then(|l| l.strip_suffix('"'))
                    .expect("a bucket has le=\"...\"");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a number")
                };
                (le, s.value)
            })
            .collect();
        assert!(buckets.len() > 2, "{family} has no buckets:\n{text}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family}: buckets not ascending:\n{text}"
        );
        let count = value_of(&samples, &format!("{family}_count"));
        assert_eq!(
            buckets.last(),
            Some(&(f64::INFINITY, count)),
            "{family}:\n{text}"
        );
        value_of(&samples, &format!("{family}_sum"));
    }
    samples
}

fn value_of(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && s.labels.is_empty())
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("no {name}"))
}

fn scrape(h: &Host) -> Vec<Sample> {
    let a = request(
        h,
        "GET",
        "/metrics",
        &[&format!("Accept: {PROMETHEUS_ACCEPT}")],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.content_type(), OPENMETRICS);
    parse_exposition(&a.body, true)
}

#[test]
fn endpoints_answer_with_their_status_codes_and_content_types() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    // Without a network config weftd waits, serving already: alive, not ready.
    lab.etcd.etcdctl_ok(&["del", CONFIG_KEY]);
    lab.hosts[0].start(&[]);
    let h = &lab.hosts[0];
    let alive = wait_for(Duration::from_secs(10), || {
        let (status, _) = h.http_get("/healthz");
        (status == 200).then_some(())
    });
    assert!(alive.is_some(), "no /healthz:\n{}", h.logs());
    let a = request(h, "GET", "/readyz", &[]);
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.content_type(), TEXT);
    assert!(a.body.contains("no subnet lease held"), "{a:?}");
    assert!(a.body.contains("datapath not programmed yet"), "{a:?}");
    assert_eq!(request(h, "HEAD", "/readyz", &[]).status, 503);

    lab.etcd.put(CONFIG_KEY, VXLAN_CONFIG);
    lab.hosts[0].wait_ready();
    let h = &lab.hosts[0];

    let a = request(h, "GET", "/healthz", &[]);
    assert_eq!(
        (a.status, a.content_type(), a.body.as_str()),
        (200, TEXT, "ok\n")
    );
    let a = request(h, "GET", "/readyz", &[]);
    assert_eq!(
        (a.status, a.content_type(), a.body.as_str()),
        (200, TEXT, "ready\n")
    );

    // HEAD: the GET's status and headers, no body.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let a = request(h, "HEAD", path, &[]);
        assert_eq!(a.status, 200, "HEAD {path}: {a:?}");
        assert_eq!(a.body, "", "HEAD {path} sent a body");
        assert!(a.content_type().starts_with("text/plain"), "{a:?}");
    }
    for (method, path, status) in [
        ("GET", "/", 404),
        ("GET", "/healthz/x", 404),
        ("POST", "/nothing", 404),
        ("POST", "/healthz", 405),
        ("PUT", "/readyz", 405),
        ("DELETE", "/metrics", 405),
    ] {
        let a = request(h, method, path, &[]);
        assert_eq!(a.status, status, "{method} {path}: {a:?}");
        assert_eq!(a.content_type(), TEXT, "{method} {path}");
    }
    let a = request(h, "POST", "/healthz", &[]);
    assert_eq!(a.headers.get("allow").map(|s| s.as_str()), Some("GET,HEAD"));

    // A client that does not ask for OpenMetrics gets the Prometheus text format.
    let a = request(h, "GET", "/metrics", &[]);
    assert_eq!((a.status, a.content_type()), (200, PROMETHEUS_TEXT));
    let samples = parse_exposition(&a.body, false);
    assert_eq!(value_of(&samples, "weft_ready"), 1.0);
    // The lab's own reader, which the other tests use, finds the same series.
    assert_eq!(h.metric("weft_ready"), Some(1.0));
    assert!(h.metric("weft_drift_repairs_total").is_some());
    assert_eq!(h.metric("weft_lease_acquisitions_total"), Some(1.0));

    // OpenMetrics, as Prometheus asks for it; the reconcile histogram counts what weftd does.
    let samples = scrape(h);
    for name in [
        "weft_leases_known",
        "weft_peers_programmed",
        "weft_reconcile_runs_total",
        "weft_drift_repairs_total",
        "weft_etcd_errors_total",
        "weft_lease_expiry_seconds",
        "weft_reconcile_last_duration_seconds",
        "weft_probe_rtt_seconds_count",
        "weft_probe_errors_total",
        "weft_peers_reachable",
        "weft_peers_unreachable",
    ] {
        value_of(&samples, name);
    }
    assert_eq!(value_of(&samples, "weft_ready"), 1.0);
    let before = value_of(&samples, "weft_reconcile_duration_seconds_count");
    assert!(before >= 1.0, "ready, yet no reconciliation counted");
    assert_eq!(before, value_of(&samples, "weft_reconcile_runs_total"));
    assert!(value_of(&samples, "weft_reconcile_duration_seconds_sum") > 0.0);

    // A second host's lease makes the first reconcile again.
    lab.hosts[1].start(&[]);
    lab.hosts[1].wait_ready();
    let h = &lab.hosts[0];
    let grown = wait_for(Duration::from_secs(10), || {
        let s = scrape(h);
        (value_of(&s, "weft_peers_programmed") == 1.0
            && value_of(&s, "weft_reconcile_duration_seconds_count") > before)
            .then_some(s)
    });
    let samples = grown.unwrap_or_else(|| panic!("no reconcile counted:\n{}", h.logs()));
    assert_eq!(
        value_of(&samples, "weft_reconcile_duration_seconds_count"),
        value_of(&samples, "weft_reconcile_runs_total")
    );
}

#[test]
fn slow_and_garbage_clients_do_not_stall_the_endpoints() {
    let mut lab = Lab::new(1, VXLAN_CONFIG);
    lab.hosts[0].start(&[]);
    lab.hosts[0].wait_ready();
    let h = &lab.hosts[0];

    let silent = connect(h);
    let mut half = connect(h);
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: wef")
        .expect("sending half a head");
    let mut garbage = connect(h);
    garbage
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
        .expect("sending garbage");
    // Many idle connections at once, as a crude slowloris would hold.
    let idle: Vec<TcpStream> = (0..50).map(|_| connect(h)).collect();

    for _ in 0..5 {
        let started = Instant::now();
        let a = request(h, "GET", "/healthz", &[]);
        let took = started.elapsed();
        assert_eq!(a.status, 200, "{a:?}");
        assert!(
            took < Duration::from_secs(1),
            "/healthz took {took:?} beside stalled clients"
        );
    }

    // Garbage gets a 400 and the connection closed at once.
    garbage
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("setting a read timeout");
    let mut answer = Vec::new();
    garbage
        .read_to_end(&mut answer)
        .expect("weftd closes a garbage connection");
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // A head that never ends is cut at weftd's 8 KiB buffer, not read on into memory.
    let mut endless = connect(h);
    endless
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("setting a read timeout");
    endless
        .write_all(b"GET /healthz HTTP/1.1\r\nX-Filler: ")
        .expect("sending a head");
    let filler = vec![b'a'; 64 * 1024];
    // weftd may close before all of it is sent; the answer is what counts.
    let _ = endless.write_all(&filler);
    // weftd answers 431 and closes; closing with unread bytes resets the connection, and the
    // reset may overtake the answer. Either way it ends now, not after a timeout.
    let mut answer = Vec::new();
    match endless.read_to_end(&mut answer) {
        Ok(_) => assert!(
            answer.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }

    // The silent, the half and the idle connections are closed by the header read timeout
    // (5 s): read returns 0 (end of stream), or an error if weftd reset it.
    let started = Instant::now();
    for (what, mut conn) in [("silent", silent), ("half", half)]
        .into_iter()
        .chain(idle.into_iter().map(|c| ("idle", c)))
    {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("setting a read timeout");
        let mut rest = Vec::new();
        match conn.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ),
                "{what} connection: {e}"
            ),
        }
        // A half head may get hyper's 408 before the close; a silent one gets nothing.
        if !rest.is_empty() {
            assert!(
                rest.starts_with(b"HTTP/1.1 408") || rest.starts_with(b"HTTP/1.1 400"),
                "{what}: {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "stalled connections closed only after {took:?}"
    );
    assert_eq!(request(h, "GET", "/healthz", &[]).status, 200);
}
