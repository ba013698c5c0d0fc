//! What an event in the fleet costs etcd, counted by etcd itself: one host joining, one host
//! dying, and the fleet cut in two halves, with 10 and with 50 light hosts (testkit's
//! [`Fleet`]: weftd's own lease, watch and status code, without namespaces). Counts are exact
//! and the same on any machine, so they are asserted here; times stay in `scripts/bench`.
//!
//! What must hold: an event costs in proportion to the fleet, never to its square (50 hosts
//! cost at most about five times what 10 cost); a partition, when every host rewrites its
//! record, is delivered to nobody; a host's record stays small however many peers it cannot
//! reach; a death costs a constant few requests (the few hosts after it in the ring mark it).

use std::time::{Duration, Instant};

use testkit::etcd::{with_config, Etcd};
use testkit::fleet::{Cost, Fleet};
use testkit::wait::wait_for;
use weft::store::EtcdStore;

const CONFIG: &str = r#"{"Network":"198.19.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

/// Status records live this long between keep-alives' thirds: none falls inside a window.
const LONG_TTL: Duration = Duration::from_secs(3600);

/// The host that dies has a short one, so that its record expires within the test.
const SHORT_TTL: Duration = Duration::from_secs(3);

/// The most a status record may weigh, whatever the fleet's size.
const RECORD_MAX: usize = 1024;

/// What one event cost etcd, per fleet size.
#[derive(Debug, Clone, Copy)]
struct Costs {
    join: Cost,
    death: Cost,
    partition: Cost,
    /// Hosts in the fleet when it was cut.
    hosts: usize,
    largest_record: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cost_per_event_grows_with_the_fleet_not_its_square() {
    let small = costs(10).await;
    let large = costs(50).await;
    println!("| event | figure | 10 hosts | 50 hosts | ratio |");
    println!("|---|---|---|---|---|");
    for (event, a, b) in [
        ("join", small.join, large.join),
        ("death", small.death, large.death),
        ("half/half partition", small.partition, large.partition),
    ] {
        for (figure, x, y) in figures(a, b) {
            let ratio = if x == 0 {
                "-".into()
            } else {
                format!("{:.2}", y as f64 / x as f64)
            };
            println!("| {event} | {figure} | {x} | {y} | {ratio} |");
        }
    }
    println!(
        "| – | largest status record, bytes | {} | {} | |",
        small.largest_record, large.largest_record
    );

    for (event, a, b) in [
        ("join", small.join, large.join),
        ("death", small.death, large.death),
    ] {
        for (figure, x, y) in figures(a, b) {
            // Five times the hosts: at most about five times the cost (a constant part is
            // allowed for): linear. Quadratic growth would be twenty-five times.
            assert!(
                y <= x * 6 + 100,
                "{event}: {figure} grew from {x} at 10 hosts to {y} at 50: faster than the fleet"
            );
        }
    }
    // What a join or a death asks of etcd is the joiner's own requests and a few markers'
    // reads: the same at any size (no request per host, e.g. a TTL look-up by every watcher).
    for (event, a, b) in [
        ("join", small.join, large.join),
        ("death", small.death, large.death),
    ] {
        assert!(
            b.requests <= a.requests + 2,
            "{event}: {} requests at 10 hosts, {} at 50: a request per host",
            a.requests,
            b.requests
        );
    }
    for c in [small, large] {
        assert!(
            c.partition.bytes_in <= c.hosts as u64 * (RECORD_MAX as u64 + 200),
            "a partition wrote {} bytes for {} hosts",
            c.partition.bytes_in,
            c.hosts
        );
        assert_eq!(
            c.partition.delivered, 0,
            "a partition's record updates were delivered to watchers: {c:?}"
        );
        assert!(
            c.largest_record <= RECORD_MAX,
            "a status record of {} bytes",
            c.largest_record
        );
        assert!(
            c.death.requests <= weft::status::MARKERS as u64 + 1,
            "a death cost {} requests: more than the few markers after it",
            c.death.requests
        );
    }
    for c in [small, large] {
        assert_eq!(
            c.partition.requests, c.hosts as u64,
            "one write per host: {c:?}"
        );
    }
}

fn figures(a: Cost, b: Cost) -> [(&'static str, u64, u64); 4] {
    [
        ("requests to etcd", a.requests, b.requests),
        ("watch messages delivered", a.delivered, b.delivered),
        ("bytes to etcd", a.bytes_in, b.bytes_in),
        ("bytes from etcd", a.bytes_out, b.bytes_out),
    ]
}

/// A fleet of `n` light hosts, then: one more joins; one more (with a short record TTL)
/// joins and dies; the fleet is cut in two halves.
async fn costs(n: u16) -> Costs {
    let (etcd, store, cfg) = with_config(CONFIG).await;
    let mut fleet = Fleet::start(&etcd, &cfg, n, LONG_TTL).await;
    settle(&etcd, &store, n as usize).await;

    // Nothing in a window asks etcd anything but the hosts: the test waits on what the hosts
    // saw, or for a fixed time, and checks etcd's keys after the window closed.
    let (before, seen) = (Cost::of(&etcd), fleet.seen());
    fleet.join(&etcd, n, LONG_TTL).await;
    let everyone_saw_it = wait_for(Duration::from_secs(10), || {
        (fleet.seen() == seen + u64::from(n)).then_some(())
    });
    assert!(
        everyone_saw_it.is_some(),
        "the join did not reach all {n} hosts"
    );
    tokio::time::sleep(QUIET).await;
    let join = Cost::of(&etcd).since(before);
    settle(&etcd, &store, n as usize + 1).await;

    fleet.join(&etcd, n + 1, SHORT_TTL).await;
    settle(&etcd, &store, n as usize + 2).await;
    let victim = fleet.kill(fleet.hosts.len() - 1);
    // A keep-alive the victim had in flight lands before the window.
    tokio::time::sleep(QUIET).await;
    let before = Cost::of(&etcd);
    // The record expires (etcd checks every half second), the first marker marks at once,
    // the others look a second apart.
    let markers = Duration::from_secs(weft::status::MARKERS as u64);
    tokio::time::sleep(SHORT_TTL + markers + QUIET * 4).await;
    let death = Cost::of(&etcd).since(before);
    let gone = store.gone_key(&victim.key_name());
    assert!(
        etcd.get(&gone).is_some(),
        "nobody marked the dead host {} gone",
        victim.subnet
    );

    let before = Cost::of(&etcd);
    let hosts = cut_in_two(&fleet);
    tokio::time::sleep(weft::status::MIN_GAP + QUIET * 4).await;
    let partition = Cost::of(&etcd).since(before);
    let largest_record = records_told(&store, hosts, hosts / 2).await;
    Costs {
        join,
        death,
        partition,
        hosts,
        largest_record,
    }
}

/// Long enough for what a host does after an event to be over.
const QUIET: Duration = Duration::from_millis(500);

/// Every host finds the other half unreachable; returns how many hosts there are.
fn cut_in_two(fleet: &Fleet) -> usize {
    let names: Vec<String> = fleet.hosts.iter().map(|h| h.lease.key_name()).collect();
    let half = names.len() / 2;
    for i in 0..names.len() {
        let other = if i < half {
            &names[half..]
        } else {
            &names[..half]
        };
        fleet.cannot_reach(i, other);
    }
    names.len()
}

/// Checks that all `hosts` records count the other half as unreachable; returns the size of
/// the largest.
async fn records_told(store: &EtcdStore, hosts: usize, half: usize) -> usize {
    let keys = store.list_weft().await.expect("listing weft's keys");
    let told = |v: &[u8]| {
        let r = weft::status::StatusRecord::parse("", v).expect("a status record");
        let n = r.unreachable_total() as usize;
        n == half || n == hosts - half
    };
    let cut = keys.status.iter().filter(|(_, v)| told(v)).count();
    assert_eq!(cut, hosts, "records telling of the partition");
    keys.status.iter().map(|(_, v)| v.len()).max().unwrap_or(0)
}

/// Waits until `n` status records are in etcd and etcd has served nothing for a moment: the
/// hosts' start-up requests are behind us.
async fn settle(etcd: &Etcd, store: &EtcdStore, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = store
            .list_weft()
            .await
            .expect("listing weft's keys")
            .status
            .len();
        let before = Cost::of(etcd);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The listing above and the two metric reads are this check's own.
        let quiet = Cost::of(etcd).since(before).requests == 0;
        if records == n && quiet {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{records} of {n} status records after 30 s"
        );
    }
}
