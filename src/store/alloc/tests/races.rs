//! Hosts racing for subnets on one registry: creation is guarded by every key of the subnet, so a lost race
//! re-reads and retries on the same etcd lease; the IPv6 subnet is de-duplicated after.

use super::*;

#[tokio::test]
async fn two_allocators_acquiring_at_once_get_distinct_subnets() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    // Both read the leases before either writes, and both want the same subnet.
    reg.hold_lists(2);
    let (a, b) = (Allocator::new(&reg), Allocator::new(&reg));
    let (p, h1, h2) = (prev("198.19.42.0/24"), host(1), host(2));
    let (la, lb) = tokio::join!(a.acquire(&cfg, &h1, p, TTL), b.acquire(&cfg, &h2, p, TTL));
    let (la, lb) = (la.unwrap(), lb.unwrap());
    assert_ne!(la.subnet, lb.subnet);
    assert!([la.subnet, lb.subnet].contains(&net("198.19.42.0/24")));
    assert_eq!(lease_names(&reg).len(), 2);
    assert_eq!(reg.state().refused, 1, "one creation lost the race");
    // The loser retried on the etcd lease it had been granted: none is left over.
    assert_eq!(reg.state().live_leases().len(), 2);
}

#[tokio::test]
async fn a_lost_creation_race_rereads_and_takes_another_subnet() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    // Another host creates exactly the key this host is about to create.
    let theirs = host(2).to_json();
    reg.before_next_write(move |s, key| {
        s.put(key, &theirs, None);
    });
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert_eq!(lease.subnet, net("198.19.2.0/24"));
    let state = reg.state();
    let theirs = &state.keys[&key(&reg, "198.19.1.0/24", None)];
    assert_eq!(
        theirs.value,
        host(2).to_json().into_bytes(),
        "theirs is untouched"
    );
    assert_eq!(state.live_leases(), [lease.etcd_lease_id.unwrap()]);
}

#[tokio::test]
async fn a_lease_changed_while_reusing_it_is_read_again() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let (id, _) = other_host(&reg, 1, "198.19.7.0/24", None);
    // The old agent renews its attributes just before the rewrite.
    reg.before_next_write(move |s, key| {
        s.put(key, &host(1).to_json(), Some(id));
    });
    let lease = acquire(&reg, &cfg, &host6(1)).await;
    assert_eq!(lease.subnet, net("198.19.7.0/24"));
    assert_eq!(lease.attrs, host6(1));
    assert_eq!(reg.state().live_leases(), [lease.etcd_lease_id.unwrap()]);
}

#[tokio::test]
async fn endless_contention_gives_up_and_revokes_its_etcd_lease() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    reg.before_write(|s, key| {
        s.put(key, &host(2).to_json(), None);
    });
    let e = expect_err(
        first_free(&reg)
            .acquire(&cfg, &host(1), Previous::default(), TTL)
            .await,
    );
    assert!(
        matches!(e, StoreError::Contention { attempts: 20 }),
        "{e:?}"
    );
    assert_eq!(lease_names(&reg).len(), 20);
    assert!(
        reg.state().live_leases().is_empty(),
        "the granted etcd lease is revoked"
    );
}

#[tokio::test]
async fn two_hosts_picking_one_ipv6_subnet_leave_it_to_the_older() {
    let (reg, cfg) = (MemRegistry::new(), cfg(DUAL));
    reg.hold_lists(2);
    let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = written.clone();
    reg.before_write(move |_, key| log.lock().unwrap().push(key.to_string()));
    let (a, b) = (Allocator::new(&reg), Allocator::new(&reg));
    let s6 = net6("2001:db8:100:42::/64");
    let prev = |s: &str| Previous {
        subnet: Some(net(s)),
        subnet6: Some(s6),
    };
    let (h1, h2) = (host6(1), host6(2));
    let (la, lb) = tokio::join!(
        a.acquire(&cfg, &h1, prev("198.19.1.0/24"), TTL),
        b.acquire(&cfg, &h2, prev("198.19.2.0/24"), TTL)
    );
    let (la, lb) = (la.unwrap(), lb.unwrap());
    let written = written.lock().unwrap().clone();
    let with_s6 = written
        .iter()
        .filter(|k| k.ends_with("&2001:db8:100:42::-64"));
    assert_eq!(with_s6.count(), 2, "both hosts wrote it first: {written:?}");
    assert_ne!(la.subnet6, lb.subnet6);
    // The one that kept it wrote first and never again; the other moved after.
    let (older, newer) = if la.mod_revision < lb.mod_revision {
        (la, lb)
    } else {
        (lb, la)
    };
    assert_eq!(older.subnet6, Some(s6));
    assert_ne!(newer.subnet6, Some(s6));
    assert_eq!(lease_names(&reg).len(), 2, "the mover's old key is gone");
    assert_eq!(
        reg.state().refused,
        0,
        "both creations succeed: their keys differ"
    );
}

#[tokio::test]
async fn a_key_of_the_same_subnet_with_another_ipv6_part_also_wins_the_race() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    // Another host creates a dual-stack key of the subnet this host is about to create: the
    // keys differ, the subnet is the same.
    let theirs = host(2).to_json();
    reg.before_next_write(move |s, key| {
        s.put(&format!("{key}&2001:db8:100:ff::-64"), &theirs, None);
    });
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert_eq!(lease.subnet, net("198.19.2.0/24"));
}
