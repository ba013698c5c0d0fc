//! podman, a real runtime, using the weft plugin on one simulated host: two containers reach
//! each other across the bridge, the host reaches both, and `podman rm` leaves nothing
//! reserved; the same with a dual-stack subnet.env, over IPv4 and IPv6.

use serde_json::json;
use testkit::cmd::unique;
use testkit::plugin::Host;
use testkit::podman::Podman;

/// A podman for `host` whose network is weft alone, with two containers started on it.
fn two_containers(host: &Host) -> (Podman, String, String) {
    let mut weft = host.conf("1.0.0");
    let plugin = weft.as_object_mut().unwrap();
    plugin.remove("cniVersion");
    plugin.remove("name");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": host.network,
        "plugins": [weft],
    });
    let podman = Podman::new(&host.ns, &testkit::bins::plugin(), &conflist);
    let (a, b) = (unique("ctr"), unique("ctr"));
    podman.start(&a);
    podman.start(&b);
    (podman, a, b)
}

/// `podman rm` of both containers leaves nothing reserved or recorded.
fn remove_both(host: &Host, podman: &Podman, a: &str, b: &str) {
    podman.rm(a);
    podman.rm(b);
    assert!(
        host.reservations().is_empty(),
        "addresses left reserved after podman rm: {:?}",
        host.reservations()
    );
    assert_eq!(host.records(), 0);
}

#[test]
fn podman_containers_talk_through_weft() {
    let host = Host::new(Some("198.19.30.0/24"));
    let (podman, a, b) = two_containers(&host);
    let (addr_a, addr_b) = (podman.address(&a), podman.address(&b));
    assert!(addr_a.starts_with("198.19.30.") && addr_b.starts_with("198.19.30."));
    assert_ne!(addr_a, addr_b);
    assert_eq!(host.reservations().len(), 2);
    assert!(podman.ping(&a, &addr_b), "{a} cannot reach {b} at {addr_b}");
    assert!(podman.ping(&b, &addr_a), "{b} cannot reach {a} at {addr_a}");
    assert!(host.ns.ping(&addr_a), "the host cannot reach {a}");
    assert!(host.ns.ping(&addr_b), "the host cannot reach {b}");

    remove_both(&host, &podman, &a, &b);
}

#[test]
fn podman_containers_talk_over_both_families() {
    let host = Host::new_dual(Some("198.19.31.0/24"), Some("2001:db8:31::/64"));
    let (podman, a, b) = two_containers(&host);
    let (v4_a, v4_b) = (podman.address(&a), podman.address(&b));
    let (v6_a, v6_b) = (podman.address6(&a), podman.address6(&b));
    assert!(v6_a.starts_with("2001:db8:31::") && v6_b.starts_with("2001:db8:31::"));
    assert_ne!(v6_a, v6_b);
    assert_eq!(host.reservations().len(), 4);
    for (from, to) in [(&a, &v6_b), (&b, &v6_a), (&a, &v4_b), (&b, &v4_a)] {
        assert!(podman.ping(from, to), "{from} cannot reach {to}");
    }
    assert!(
        podman.ping(&a, "2001:db8:31::1"),
        "{a} cannot reach the gateway"
    );
    assert!(host.ns.ping(&v6_a), "the host cannot reach {a} over IPv6");

    remove_both(&host, &podman, &a, &b);
}
