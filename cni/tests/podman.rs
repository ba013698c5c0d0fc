//! podman, a real runtime, using the weft plugin on one simulated host: two containers reach
//! each other across the bridge, the host reaches both, and `podman rm` leaves nothing
//! reserved.

mod common;

use common::podman::Podman;
use common::Host;
use serde_json::json;

#[test]
fn podman_containers_talk_through_weft() {
    let host = Host::new(Some("198.19.30.0/24"));
    let mut weft = host.conf("1.0.0");
    let plugin = weft.as_object_mut().unwrap();
    plugin.remove("cniVersion");
    plugin.remove("name");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": host.network,
        "plugins": [weft],
    });
    let podman = Podman::new(&host.ns, &common::weft_binary(), &conflist);
    let (a, b) = (common::unique("ctr"), common::unique("ctr"));
    podman.start(&a);
    podman.start(&b);
    let (addr_a, addr_b) = (podman.address(&a), podman.address(&b));
    assert!(addr_a.starts_with("198.19.30.") && addr_b.starts_with("198.19.30."));
    assert_ne!(addr_a, addr_b);
    assert_eq!(host.reservations().len(), 2);
    assert!(podman.ping(&a, &addr_b), "{a} cannot reach {b} at {addr_b}");
    assert!(podman.ping(&b, &addr_a), "{b} cannot reach {a} at {addr_a}");
    assert!(host.ns.ping(&addr_a), "the host cannot reach {a}");
    assert!(host.ns.ping(&addr_b), "the host cannot reach {b}");

    podman.rm(&a);
    podman.rm(&b);
    assert!(
        host.reservations().is_empty(),
        "addresses left reserved after podman rm: {:?}",
        host.reservations()
    );
    assert_eq!(host.records(), 0);
}
