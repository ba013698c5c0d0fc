//! Plain HTTP/1.0 GETs for what the tests read over HTTP: weftd's `/readyz`, `/metrics` and
//! `/peers`, and etcd's `/metrics`, from inside the namespace the server listens in.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A GET of `path` at `addr` from inside the network namespace at `netns` (this one when
/// None): (status, body); status 0 when nothing answers.
pub fn get(netns: Option<&Path>, addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_string();
    let ask = move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return (0, String::new());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    };
    match netns {
        Some(ns) => weft::netlink::run_in_netns(ns, ask)
            .unwrap_or_else(|e| panic!("entering {} for a GET: {e}", ns.display())),
        None => ask(),
    }
}

/// The value of the unlabelled series `name` in a Prometheus text exposition.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of every series of `name` whose labels include each of `labels` (all series with
/// none given), in a Prometheus text exposition; 0 when there is none.
pub fn metric_sum(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            if !(series.is_empty() || series.starts_with('{')) {
                return None; // another metric whose name starts with this one
            }
            let all = (labels.iter()).all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
