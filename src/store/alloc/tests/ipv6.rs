//! The IPv6 part of a lease: chosen on its own, kept while it fits, moved with its key in one
//! transaction, and de-duplicated after writing (the newer of two leases moves).

use super::*;

#[tokio::test]
async fn a_dual_stack_host_gets_both_subnets_under_one_key() {
    let (reg, cfg) = (MemRegistry::new(), cfg(DUAL));
    let lease = acquire(&reg, &cfg, &host6(1)).await;
    assert_eq!(lease.subnet, net("198.19.1.0/24"));
    assert_eq!(lease.subnet6, Some(net6("2001:db8:100:1::/64")));
    assert_eq!(lease_names(&reg), ["198.19.1.0-24&2001:db8:100:1::-64"]);
    // A host without a public IPv6 address gets no IPv6 subnet.
    let lease = acquire(&reg, &cfg, &host(2)).await;
    assert_eq!(lease.subnet6, None);
}

#[tokio::test]
async fn a_reused_lease_keeps_its_ipv6_subnet_while_it_fits() {
    let (reg, cfg) = (MemRegistry::new(), cfg(DUAL));
    let id = reg.state().grant(30);
    let k = key(&reg, "198.19.7.0/24", Some("2001:db8:100:9::/64"));
    put(&reg, &k, &host6(1), Some(id));
    let lease = acquire(&reg, &cfg, &host6(1)).await;
    assert_eq!(lease.subnet6, Some(net6("2001:db8:100:9::/64")));
    assert_eq!(lease_names(&reg), ["198.19.7.0-24&2001:db8:100:9::-64"]);
}

#[tokio::test]
async fn an_ipv6_subnet_that_no_longer_fits_moves_the_key_in_one_write() {
    let (reg, cfg) = (MemRegistry::new(), cfg(DUAL));
    let id = reg.state().grant(30);
    let k = key(&reg, "198.19.7.0/24", Some("2001:db8:200:9::/64"));
    let before = put(&reg, &k, &host6(1), Some(id));
    let alloc = first_free(&reg);
    let prev = Previous {
        subnet: None,
        subnet6: Some(net6("2001:db8:100:5::/64")),
    };
    let lease = alloc.acquire(&cfg, &host6(1), prev, TTL).await.unwrap();
    assert_eq!(lease.subnet, net("198.19.7.0/24"));
    assert_eq!(
        lease.subnet6, prev.subnet6,
        "the previous IPv6 subnet, being free"
    );
    assert_eq!(lease_names(&reg), ["198.19.7.0-24&2001:db8:100:5::-64"]);
    assert_eq!(
        lease.mod_revision,
        before + 1,
        "delete and put in one revision"
    );
}

#[tokio::test]
async fn a_host_without_public_ipv6_drops_the_ipv6_part_of_its_lease() {
    let (reg, cfg) = (MemRegistry::new(), cfg(DUAL));
    let id = reg.state().grant(30);
    let k = key(&reg, "198.19.7.0/24", Some("2001:db8:100:9::/64"));
    put(&reg, &k, &host6(1), Some(id));
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert_eq!((lease.subnet, lease.subnet6), (net("198.19.7.0/24"), None));
    assert_eq!(lease_names(&reg), ["198.19.7.0-24"]);
}

#[tokio::test]
async fn a_reservation_keeps_the_operators_ipv6_subnet() {
    let (reg, cfg) = (MemRegistry::new(), cfg(DUAL));
    let k = key(&reg, "198.19.7.0/24", Some("2001:db8:100:9::/64"));
    put(&reg, &k, &host(1), None);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert!(lease.is_reservation());
    assert_eq!(lease.subnet6, Some(net6("2001:db8:100:9::/64")));
}

#[tokio::test]
async fn the_newer_of_two_leases_with_one_ipv6_subnet_moves() {
    let (reg, cfg) = (MemRegistry::new(), cfg(DUAL));
    let taken = "2001:db8:100:1::/64";
    // Another host writes the same IPv6 subnet under its own IPv4 subnet just before this
    // host's write: the creation guards the key, which differs, so both writes succeed.
    let other = key(&reg, "198.19.200.0/24", Some(taken));
    reg.before_next_write(move |s, _| {
        s.put(&other, &host6(2).to_json(), None);
    });
    let lease = acquire(&reg, &cfg, &host6(1)).await;
    assert_eq!(lease.subnet, net("198.19.1.0/24"));
    assert_ne!(lease.subnet6, Some(net6(taken)));
    let mut names = lease_names(&reg);
    names.sort();
    let mine = format!(
        "198.19.1.0-24&{}",
        lease.subnet6.unwrap().to_string().replace('/', "-")
    );
    assert_eq!(
        names,
        [mine, "198.19.200.0-24&2001:db8:100:1::-64".to_string()]
    );
}

#[tokio::test]
async fn the_older_lease_and_a_reservation_keep_their_ipv6_subnet() {
    let (reg, cfg) = (MemRegistry::new(), cfg(DUAL));
    let mine = acquire(&reg, &cfg, &host6(1)).await;
    let s6 = mine.subnet6.unwrap().to_string();
    put(
        &reg,
        &key(&reg, "198.19.200.0/24", Some(&s6)),
        &host6(2),
        None,
    );
    let alloc = first_free(&reg);
    let value = host6(1).to_json();
    let kept = alloc.unique_ipv6(&cfg, mine.clone(), &value).await.unwrap();
    assert_eq!(
        kept, mine,
        "the other lease is newer: it is the one to move"
    );
    // A reservation never moves, even when it is the newer.
    let k = key(&reg, "198.19.201.0/24", Some(&s6));
    let rev = put(&reg, &k, &host6(3), None);
    let name = reg.layout().lease_name(&k).unwrap();
    let mut reserved = Lease::parse(name, host6(3).to_json().as_bytes()).unwrap();
    reserved.mod_revision = rev;
    let value = host6(3).to_json();
    let kept = alloc.unique_ipv6(&cfg, reserved.clone(), &value).await;
    assert_eq!(kept.unwrap(), reserved);
}
