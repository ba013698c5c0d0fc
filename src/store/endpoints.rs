//! Keeps the etcd client's requests on members that answer. The client spreads requests over
//! every endpoint at random and counts an endpoint whose connection failed as ready, so with
//! one member down a third of all requests fail at once, and with one member cut off they
//! hang until their deadline. A probe of every endpoint each second takes unreachable members
//! out of the client's set and puts them back when they answer again.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tracing::{info, warn};

/// How often every endpoint is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a probe may take before the endpoint counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// The running probe; it stops when the last store holding it is dropped.
pub(super) struct EndpointHealth {
    task: tokio::task::AbortHandle,
    removals: tokio::sync::watch::Receiver<u64>,
    returns: tokio::sync::watch::Receiver<u64>,
}

impl Drop for EndpointHealth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EndpointHealth {
    /// Starts probing `endpoints` (as given to the client) when there is more than one;
    /// `tls` tells how the client reads an endpoint without a scheme. The first round runs
    /// before this returns, so even a short-lived client (weftctl) starts on members that
    /// answer.
    pub(super) async fn start(
        client: &Client,
        endpoints: &[String],
        tls: bool,
    ) -> Option<Arc<Self>> {
        if endpoints.len() < 2 {
            return None;
        }
        let (removed, mut removals) = tokio::sync::watch::channel(0u64);
        let (returned, mut returns) = tokio::sync::watch::channel(0u64);
        let signals = Signals { removed, returned };
        let mut members: Vec<Member> = endpoints
            .iter()
            .map(|e| Member {
                url: client_url(e, tls),
                address: probe_address(e, tls),
                in_client: true,
                up: true,
            })
            .collect();
        probe_round(client, &mut members, &signals, true).await;
        let task = tokio::spawn(probe_loop(client.clone(), members, signals)).abort_handle();
        removals.borrow_and_update();
        returns.borrow_and_update();
        Some(Arc::new(EndpointHealth {
            task,
            removals,
            returns,
        }))
    }

    /// Changes each time a member is taken out of the client's set: a stream that may sit on
    /// that member (a watch) should be opened again.
    pub(super) fn removals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.removals.clone()
    }

    /// Changes each time an unreachable member answers again: whoever waits to retry can
    /// retry now.
    pub(super) fn returns(&self) -> tokio::sync::watch::Receiver<u64> {
        self.returns.clone()
    }
}

struct Signals {
    removed: tokio::sync::watch::Sender<u64>,
    returned: tokio::sync::watch::Sender<u64>,
}

struct Member {
    /// The endpoint as the client keys it.
    url: String,
    /// `host:port` to probe.
    address: String,
    in_client: bool,
    /// Whether the last probe reached it.
    up: bool,
}

async fn probe_loop(client: Client, mut members: Vec<Member>, signals: Signals) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and `start` has just probed.
    tick.tick().await;
    loop {
        tick.tick().await;
        probe_round(&client, &mut members, &signals, false).await;
    }
}

/// Probes every member once and changes the client's set to the ones that answer. The
/// first round (`initial`) reports an unreachable member at info, not as a warning: weftctl
/// prints warnings, and a command that works through the other members must not.
async fn probe_round(client: &Client, members: &mut [Member], signals: &Signals, initial: bool) {
    let up = probe_all(members.iter().map(|m| reachable(&m.address))).await;
    // With every member unreachable, the client keeps all of them: whichever comes back
    // first is used at once.
    let none_up = !up.iter().any(|u| *u);
    for (m, up) in members.iter_mut().zip(up) {
        let came_back = up && !m.up;
        m.up = up;
        if came_back || (up && !m.in_client) {
            // Put in afresh even if it never left: the client would otherwise answer the
            // next request sent to it with the connection error it saw while it was down.
            match client.add_endpoint(&m.url).await {
                Ok(()) => {
                    m.in_client = true;
                    info!(endpoint = %m.url, "etcd member reachable again; sending requests to it");
                    signals.returned.send_modify(|n| *n += 1);
                }
                Err(e) => warn!(endpoint = %m.url, error = %e, "cannot add an etcd endpoint"),
            }
        } else if !up && m.in_client && !none_up {
            match client.remove_endpoint(&m.url).await {
                Ok(()) => {
                    m.in_client = false;
                    if initial {
                        info!(endpoint = %m.url, "etcd member unreachable; sending requests to the others");
                    } else {
                        warn!(endpoint = %m.url, "etcd member unreachable; sending requests to the others");
                    }
                    signals.removed.send_modify(|n| *n += 1);
                }
                Err(e) => warn!(endpoint = %m.url, error = %e, "cannot remove an etcd endpoint"),
            }
        }
    }
}

/// Runs the probes concurrently and returns their results in order.
async fn probe_all<F: std::future::Future<Output = bool> + Send + 'static>(
    probes: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = probes.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or(false));
    }
    out
}

/// Whether a TCP connection to `address` opens within the probe timeout.
fn reachable(address: &str) -> impl std::future::Future<Output = bool> + Send + 'static {
    let address = address.to_string();
    async move {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await,
            Ok(Ok(_))
        )
    }
}

/// The endpoint as the client keys it: without a scheme, the client adds one.
fn client_url(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// `host:port` of an endpoint URL, with the scheme's port when the URL has none.
fn probe_address(endpoint: &str, tls: bool) -> String {
    let url = client_url(endpoint, tls);
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", &url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        authority.to_string()
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        format!("{authority}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_addresses() {
        assert_eq!(
            probe_address("http://198.18.0.1:2379", false),
            "198.18.0.1:2379"
        );
        assert_eq!(probe_address("198.18.0.1:2379", true), "198.18.0.1:2379");
        assert_eq!(
            probe_address("https://etcd.example/", false),
            "etcd.example:443"
        );
        assert_eq!(
            probe_address("http://etcd.example", false),
            "etcd.example:80"
        );
        assert_eq!(
            probe_address("http://[2001:db8::1]:2379", false),
            "[2001:db8::1]:2379"
        );
        assert_eq!(
            probe_address("https://[2001:db8::1]", false),
            "[2001:db8::1]:443"
        );
    }

    #[test]
    fn client_urls() {
        assert_eq!(client_url("a:1", false), "http://a:1");
        assert_eq!(client_url("a:1", true), "https://a:1");
        assert_eq!(client_url("https://a:1", false), "https://a:1");
    }
}
