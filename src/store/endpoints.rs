//! Keeps the etcd client's requests on members that answer. The client spreads requests over
//! every endpoint at random and counts an endpoint whose connection failed as ready, so with
//! one member down a third of all requests fail at once, and with one member cut off they
//! hang until their deadline. Every endpoint is asked for its status twice a second over a
//! connection of its own (with the client's TLS and credentials, so no member logs a refused
//! handshake); members that do not answer leave the client's set and come back when they do.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tracing::{info, warn};

/// How often every endpoint is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a probe (connecting if need be, then asking for the member's status) may take
/// before the endpoint counts as unreachable.
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
    /// Starts probing `endpoints` (as given to the client, which was made with `opts`) when
    /// there is more than one; `tls` tells how the client reads an endpoint without a scheme.
    /// The first round runs before this returns, so even a short-lived client (weftctl)
    /// starts on members that answer.
    pub(super) async fn start(
        client: &Client,
        endpoints: &[String],
        tls: bool,
        opts: &ConnectOptions,
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
                probe: None,
                in_client: true,
                up: true,
            })
            .collect();
        let opts = opts.clone().with_connect_timeout(PROBE_TIMEOUT);
        probe_round(client, &opts, &mut members, &signals, true).await;
        let task = tokio::spawn(probe_loop(client.clone(), opts, members, signals)).abort_handle();
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
    /// The probe's own connection to this member alone, once made.
    probe: Option<Client>,
    in_client: bool,
    /// Whether the last probe got an answer.
    up: bool,
}

async fn probe_loop(
    client: Client,
    opts: ConnectOptions,
    mut members: Vec<Member>,
    signals: Signals,
) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and `start` has just probed.
    tick.tick().await;
    loop {
        tick.tick().await;
        probe_round(&client, &opts, &mut members, &signals, false).await;
    }
}

/// Probes every member once and changes the client's set to the ones that answer. The
/// first round (`initial`) reports an unreachable member at info, not as a warning: weftctl
/// prints warnings, and a command that works through the other members must not.
async fn probe_round(
    client: &Client,
    opts: &ConnectOptions,
    members: &mut [Member],
    signals: &Signals,
    initial: bool,
) {
    let probes: Vec<_> = members
        .iter()
        .map(|m| tokio::spawn(probe(m.url.clone(), m.probe.clone(), opts.clone())))
        .collect();
    let mut up = Vec::with_capacity(probes.len());
    for (m, p) in members.iter_mut().zip(probes) {
        let (answered, conn) = p.await.unwrap_or((false, None));
        m.probe = conn;
        up.push(answered);
    }
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

/// Whether the member at `url` reports its status within the probe timeout, connecting
/// first when there is no connection yet; returns the connection to keep.
async fn probe(url: String, conn: Option<Client>, opts: ConnectOptions) -> (bool, Option<Client>) {
    let mut c = match conn {
        Some(c) => c,
        None => match tokio::time::timeout(PROBE_TIMEOUT, Client::connect([url], Some(opts))).await
        {
            Ok(Ok(c)) => c,
            _ => return (false, None),
        },
    };
    let answered = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, c.status()).await,
        Ok(Ok(_))
    );
    (answered, Some(c))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_urls() {
        assert_eq!(client_url("a:1", false), "http://a:1");
        assert_eq!(client_url("a:1", true), "https://a:1");
        assert_eq!(client_url("https://a:1", false), "https://a:1");
    }
}
