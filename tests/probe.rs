//! The peer prober against a real kernel: a prober host and a peer host in network namespaces,
//! the peer reached over a flannel-style VXLAN (IPv4, probing its tunnel address) or straight
//! over a veth (IPv6); the peer's echo requests dropped with nftables and let through again.
//! Namespaces (and the nftables rules inside them) go when the guards drop, also on failure.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use testkit::cmd::with_stdin;
use testkit::lab::make_flannel_device;
use testkit::netns::{veth_pair, Netns};
use weft::probe::{PeerState, PeerStatus, ProbeConfig, Prober, Target, UnreachableHosts};

const CFG: ProbeConfig = ProbeConfig {
    interval: Duration::from_millis(200),
    timeout: Duration::from_millis(100),
    down_after: 3,
    window: 10,
    max_rate: 100,
};

/// Scheduling slack on a shared 2-core machine, added to every upper bound below.
const SLACK: Duration = Duration::from_millis(400);

/// Runs `f` on a current-thread runtime on a thread inside `ns` (namespace membership is per
/// thread, so the prober's sockets are opened there).
fn block_on_in<F, Fut>(ns: &Netns, f: F) -> Fut::Output
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future,
    Fut::Output: Send + 'static,
{
    weft::netlink::run_in_netns(&ns.path(), move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f())
    })
    .expect("entering the prober's namespace")
}

/// Loads an nftables script into namespace `ns`; a missing nft fails the test by name.
fn nft(ns: &str, script: &str) {
    match Command::new("nft").arg("--version").output() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("nft is not installed (apt-get install nftables)")
        }
        Err(e) => panic!("cannot run nft: {e}"),
    }
    let out = with_stdin(
        Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
        script.as_bytes(),
    );
    assert!(
        out.status.success(),
        "nft -f in {ns} failed on {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn drop_echo_to(ns: &str, rule: &str) {
    nft(
        ns,
        &format!(
            "table inet weftprobe {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  {rule} drop\n }}\n}}\n"
        ),
    );
}

fn allow_echo(ns: &str) {
    nft(ns, "delete table inet weftprobe");
}

fn status(p: &Prober, id: &str) -> PeerStatus {
    p.snapshot()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no peer {id} in the snapshot"))
}

/// Polls until `peer` is in `state`; returns how long it took.
async fn wait_state(p: &Prober, id: &str, state: PeerState, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if status(p, id).state == state {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "peer {id} not {state:?} within {limit:?}: {:?}",
            status(p, id)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the next change of the unreachable set; returns it and how long it took.
async fn next_unreachable(
    rx: &mut tokio::sync::watch::Receiver<UnreachableHosts>,
    limit: Duration,
) -> (BTreeSet<Ipv4Net>, Duration) {
    let t0 = Instant::now();
    tokio::time::timeout(limit, rx.changed())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the unreachable set did not change within {limit:?} (still {:?})",
                rx.borrow()
            )
        })
        .expect("prober gone");
    (hosts(&rx.borrow_and_update()), t0.elapsed())
}

/// The hosts a summary names; with a few peers, it names every one it counts.
fn hosts(u: &UnreachableHosts) -> BTreeSet<Ipv4Net> {
    let named: BTreeSet<Ipv4Net> = u.oldest.iter().map(|(h, _)| *h).collect();
    assert_eq!(u.count, named.len(), "{u:?}");
    named
}

fn set(targets: &[&Target]) -> BTreeSet<Ipv4Net> {
    targets.iter().map(|t| t.host).collect()
}

/// The whole life of a peer, seen from the prober: reachable with an RTT, unreachable after
/// `down_after` lost probes once its echo requests are dropped (the watch firing once),
/// reachable again after the first answer; an address nobody holds unreachable; a replaced
/// peer set keeping the state of the peers still in it.
async fn peer_life(peer_ns: String, peer: Target, ghost: Target, rule: String, other: Target) {
    let prober = Prober::start(CFG).expect("prober starts");
    let mut rx = prober.unreachable();
    assert!(hosts(&rx.borrow_and_update()).is_empty());
    prober.set_peers(vec![peer.clone(), ghost.clone()]);

    // Nobody holds the ghost's address: down after down_after probes (one every interval).
    let bound = CFG.interval * CFG.down_after + CFG.timeout + SLACK;
    let (down, _) = next_unreachable(&mut rx, bound).await;
    assert_eq!(down, set(&[&ghost]));
    let g = status(&prober, &ghost.id);
    assert_eq!(g.state, PeerState::Unreachable);
    assert!(
        g.lost >= u64::from(CFG.down_after) && g.last_rtt.is_none(),
        "{g:?}"
    );

    wait_state(&prober, &peer.id, PeerState::Reachable, bound).await;
    let s = status(&prober, &peer.id);
    let rtt = s.last_rtt.expect("an RTT once reachable");
    assert!(rtt > Duration::ZERO && rtt < CFG.timeout, "{s:?}");
    assert_eq!(s.addr, peer.addr);

    // Nothing is spawned per probe: the prober's task and surge-ping's receiver per family,
    // however many probes have been sent and timed out by now.
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert!(tasks <= 3, "{tasks} tasks alive after {} probes", g.sent);

    // Drop the peer's echo requests: the next down_after probes are lost. The last answer can
    // come just before the drop, so the earliest the peer can be down is (down_after − 1)
    // intervals plus a timeout after it, the latest down_after intervals plus a timeout.
    drop_echo_to(&peer_ns, &rule);
    let (down, took) = next_unreachable(&mut rx, bound).await;
    assert_eq!(down, set(&[&peer, &ghost]));
    let earliest = CFG.interval * (CFG.down_after - 1) + CFG.timeout;
    assert!(
        took + Duration::from_millis(20) >= earliest,
        "down after {took:?}, before {earliest:?}"
    );
    let s = status(&prober, &peer.id);
    assert_eq!(s.state, PeerState::Unreachable);
    assert!(s.loss > 0.0 && s.lost >= u64::from(CFG.down_after), "{s:?}");
    eprintln!("peer {} unreachable {took:?} after the drop", peer.addr);

    // While it stays down the watch stays quiet: it fired once. Quiet over five more lost
    // probes, each of which could have fired it again.
    let lost = s.lost;
    let more = CFG.interval * 5 + CFG.timeout + SLACK;
    let t0 = Instant::now();
    while status(&prober, &peer.id).lost < lost + 5 {
        assert!(
            t0.elapsed() < more,
            "not five more probes lost within {more:?}: {:?}",
            status(&prober, &peer.id)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !rx.has_changed().expect("prober gone"),
        "the watch fired again without a change: {:?}",
        rx.borrow()
    );

    // Let echo through again: reachable after the first answer, within an interval.
    allow_echo(&peer_ns);
    let since = std::time::SystemTime::now();
    let (up, took) = next_unreachable(&mut rx, CFG.interval + CFG.timeout + SLACK).await;
    assert_eq!(up, set(&[&ghost]));
    let s = status(&prober, &peer.id);
    assert_eq!(s.state, PeerState::Reachable);
    assert!(s.since >= since, "{s:?}");
    eprintln!(
        "peer {} reachable {took:?} after the drop was removed",
        peer.addr
    );

    // Replace the set: the peer keeps its record, the removed ghost leaves the unreachable
    // set, a new peer starts Unknown and is probed at once.
    let before = status(&prober, &peer.id);
    prober.set_peers(vec![other.clone(), peer.clone()]);
    let (now_down, _) = next_unreachable(&mut rx, Duration::from_millis(100)).await;
    assert!(now_down.is_empty());
    let kept = status(&prober, &peer.id);
    assert_eq!(kept.state, PeerState::Reachable);
    assert_eq!(kept.since, before.since);
    assert!(
        kept.sent >= before.sent && kept.lost == before.lost,
        "{before:?} → {kept:?}"
    );
    let n = status(&prober, &other.id);
    assert!(n.state == PeerState::Unknown || n.state == PeerState::Reachable);
    let first = wait_state(
        &prober,
        &other.id,
        PeerState::Reachable,
        CFG.timeout + SLACK,
    )
    .await;
    eprintln!(
        "new peer {} reachable {first:?} after it was added",
        other.addr
    );
    assert_eq!(prober.snapshot().len(), 2);

    // A peer that keeps its id but moves to another address is a new path: a fresh record.
    let moved_at = std::time::SystemTime::now();
    let moved = Target {
        addr: other.addr,
        ..peer.clone()
    };
    prober.set_peers(vec![moved]);
    let s = status(&prober, &peer.id);
    assert_eq!(s.addr, other.addr);
    assert!(s.since >= moved_at && s.lost == 0, "{s:?}");
    wait_state(&prober, &peer.id, PeerState::Reachable, CFG.timeout + SLACK).await;
    assert_eq!(prober.snapshot().len(), 1);
}

/// A target of host `i` (its lease 198.19.i.0/24, public address 198.18.0.i).
fn target(id: &str, addr: &str, i: u8) -> Target {
    Target {
        id: id.into(),
        addr: addr.parse::<IpAddr>().expect("address"),
        host: Ipv4Net::new([198, 19, i, 0].into(), 24).expect("subnet"),
        public_ip: [198, 18, 0, i].into(),
    }
}

/// Two hosts with flannel's VXLAN device as LAB.md builds it by hand; the prober probes the
/// peer's tunnel address (198.19.2.0), as it would probe a flannel host.
#[test]
fn probe_ipv4_peer_over_vxlan_down_and_up() {
    let h1 = Netns::new("probe1");
    let h2 = Netns::new("probe2");
    veth_pair(&h1, "eth0", "198.18.0.1/24", &h2, "eth0", "198.18.0.2/24");
    let macs = [
        make_flannel_device(&h1, "198.18.0.1", "198.19.1.0/24".parse().unwrap()),
        make_flannel_device(&h2, "198.18.0.2", "198.19.2.0/24".parse().unwrap()),
    ];
    // Each host routes the other's subnet through its tunnel address; h1 also has a route to
    // a third "host" (198.19.3.0) whose underlay address nobody holds.
    let routes = [
        (&h1, 2, macs[1].as_str(), "198.18.0.2"),
        (&h2, 1, macs[0].as_str(), "198.18.0.1"),
        (&h1, 3, "02:00:c6:13:03:00", "198.18.0.3"),
    ];
    for (ns, peer, mac, underlay) in routes {
        let gw = format!("198.19.{peer}.0");
        ns.ip(&[
            "neigh",
            "add",
            &gw,
            "lladdr",
            mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        ns.bridge(&["fdb", "add", mac, "dev", "flannel.1", "dst", underlay]);
        ns.ip(&[
            "route",
            "add",
            &format!("198.19.{peer}.0/24"),
            "via",
            &gw,
            "dev",
            "flannel.1",
            "onlink",
        ]);
    }
    assert!(
        h1.ping("198.19.2.0"),
        "the hand-made VXLAN does not pass ping"
    );
    let peer_ns = h2.name().to_string();
    block_on_in(&h1, move || {
        peer_life(
            peer_ns,
            target("198.19.2.0-24", "198.19.2.0", 2),
            target("198.19.3.0-24", "198.19.3.0", 3),
            "ip daddr 198.19.2.0 icmp type echo-request".into(),
            target("underlay-198.18.0.2", "198.18.0.2", 4),
        )
    });
}

/// The same over IPv6 (ICMPv6 echo), the peer straight on the link.
#[test]
fn probe_ipv6_peer_down_and_up() {
    let h1 = Netns::new("probe6a");
    let h2 = Netns::new("probe6b");
    veth_pair(&h1, "v1", "", &h2, "v2", "");
    for (ns, dev, addrs) in [
        (&h1, "v1", ["2001:db8:0:1::1/64", "2001:db8:0:2::1/64"]),
        (&h2, "v2", ["2001:db8:0:1::2/64", "2001:db8:0:2::2/64"]),
    ] {
        for a in addrs {
            ns.ip(&["addr", "add", a, "dev", dev, "nodad"]);
        }
    }
    assert!(
        h1.ping("2001:db8:0:1::2"),
        "IPv6 between the namespaces does not work"
    );
    let peer_ns = h2.name().to_string();
    block_on_in(&h1, move || {
        peer_life(
            peer_ns,
            target("peer6", "2001:db8:0:1::2", 2),
            target("ghost6", "2001:db8:0:1::9", 3),
            "ip6 daddr 2001:db8:0:1::2 icmpv6 type echo-request".into(),
            target("peer6-second", "2001:db8:0:2::2", 4),
        )
    });
}
