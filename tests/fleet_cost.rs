//! What an event in the fleet costs etcd, counted by etcd itself: one host joining, one host
//! dying, and the fleet cut in two halves, with 10 and with 50 light hosts (testkit's
//! [`testkit::fleet::Fleet`]: weftd's own lease, watch and status code, without namespaces). Counts are exact
//! and the same on any machine, so they are asserted here; times stay in `scripts/bench`.
//!
//! What must hold: an event costs in proportion to the fleet, never to its square (50 hosts
//! cost at most about five times what 10 cost); a partition, when every host rewrites its
//! record, is delivered to nobody; a host's record stays small however many peers it cannot
//! reach; a death costs a constant few requests (the few hosts after it in the ring mark it).

use testkit::fleet::{measure, Cost};

/// The most a status record may weigh, whatever the fleet's size.
const RECORD_MAX: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cost_per_event_grows_with_the_fleet_not_its_square() {
    let small = measure(10, true).await;
    let large = measure(50, true).await;
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
