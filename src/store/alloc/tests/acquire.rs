//! A host's lease in flannel's order: its own lease, else its previous subnet, else a random
//! one of the first 100 free.

use super::*;
use crate::store::StoreError;

#[tokio::test]
async fn a_new_lease_takes_a_free_subnet_on_a_fresh_etcd_lease() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert_eq!(lease.subnet, net("198.19.1.0/24"));
    assert_eq!(lease.subnet6, None);
    let id = lease.etcd_lease_id.expect("an etcd lease");
    assert_eq!(reg.state().live_leases(), [id]);
    let kv = reg.state().keys[&key(&reg, "198.19.1.0/24", None)].clone();
    assert_eq!(kv.lease, Some(id));
    assert_eq!(kv.mod_revision, lease.mod_revision);
    assert_eq!(kv.value, host(1).to_json().into_bytes());
    assert!(lease.expiration.is_some());
}

#[tokio::test]
async fn a_random_subnet_is_one_of_the_first_100_free() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    for (n, s) in [
        (2, "198.19.1.0/24"),
        (3, "198.19.2.0/24"),
        (4, "198.19.4.0/24"),
    ] {
        other_host(&reg, n, s, None);
    }
    let last_of_100 = Allocator {
        reg: &reg,
        pick: |n| {
            assert_eq!(n, 100, "the pool is the first 100 free subnets");
            n - 1
        },
    };
    let lease = last_of_100
        .acquire(&cfg, &host(1), Previous::default(), TTL)
        .await
        .unwrap();
    // Free: .3, then .5 onwards; the 100th of them is .103.
    assert_eq!(lease.subnet, net("198.19.103.0/24"));
}

#[tokio::test]
async fn the_lease_holding_this_public_ip_is_reused_on_a_new_etcd_lease() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let (old_id, _) = other_host(&reg, 1, "198.19.7.0/24", None);
    let attrs = crate::backend::hostgw::lease_attrs(host(1).public_ip);
    let lease = first_free(&reg)
        .acquire(&cfg, &attrs, prev("198.19.9.0/24"), TTL)
        .await
        .unwrap();
    assert_eq!(lease.subnet, net("198.19.7.0/24"));
    assert_eq!(lease.attrs, attrs, "the attributes are rewritten");
    let id = lease.etcd_lease_id.unwrap();
    assert_ne!(id, old_id);
    assert_eq!(
        reg.state().live_leases(),
        [id],
        "the old etcd lease is revoked"
    );
    assert_eq!(lease_names(&reg), ["198.19.7.0-24"]);
}

#[tokio::test]
async fn a_reservation_wins_over_an_ordinary_lease_of_the_same_host() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    other_host(&reg, 1, "198.19.7.0/24", None);
    put(&reg, &key(&reg, "198.19.3.0/24", None), &host(1), None);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert_eq!(lease.subnet, net("198.19.3.0/24"));
    assert!(lease.is_reservation());
    assert_eq!(lease.expiration, None);
    // The ordinary lease's etcd lease is revoked, and its key with it.
    assert_eq!(lease_names(&reg), ["198.19.3.0-24"]);
    assert!(reg.state().live_leases().is_empty());
}

#[tokio::test]
async fn a_lease_outside_the_range_is_not_reused() {
    let json = r#"{"Network": "198.19.0.0/16", "SubnetMin": "198.19.10.0", "Backend": {"Type": "host-gw"}}"#;
    let (reg, cfg) = (MemRegistry::new(), cfg(json));
    other_host(&reg, 1, "198.19.5.0/24", None);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert_eq!(lease.subnet, net("198.19.10.0/24"));
}

#[tokio::test]
async fn the_previous_subnet_is_taken_again_while_free() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    let (h1, h2, h3) = (host(1), host(2), host(3));
    let lease = alloc.acquire(&cfg, &h1, prev("198.19.42.0/24"), TTL);
    assert_eq!(lease.await.unwrap().subnet, net("198.19.42.0/24"));
    // Another host's previous subnet is taken: it gets the first free one.
    let lease = alloc.acquire(&cfg, &h2, prev("198.19.42.0/24"), TTL);
    assert_eq!(lease.await.unwrap().subnet, net("198.19.1.0/24"));
    // A previous subnet outside the range is not asked for.
    let lease = alloc.acquire(&cfg, &h3, prev("198.19.0.0/24"), TTL);
    assert_eq!(lease.await.unwrap().subnet, net("198.19.2.0/24"));
}

#[tokio::test]
async fn a_key_that_is_no_lease_still_holds_its_subnet() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    reg.state()
        .put(&key(&reg, "198.19.1.0/24", None), "not json", None);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert_eq!(lease.subnet, net("198.19.2.0/24"));
}

#[tokio::test]
async fn an_exhausted_pool_is_an_error_naming_the_range() {
    let json = r#"{"Network": "198.19.0.0/16", "SubnetMin": "198.19.1.0", "SubnetMax": "198.19.2.0", "Backend": {"Type": "host-gw"}}"#;
    let (reg, cfg) = (MemRegistry::new(), cfg(json));
    let (a, _) = other_host(&reg, 2, "198.19.1.0/24", None);
    let (b, _) = other_host(&reg, 3, "198.19.2.0/24", None);
    // Outside the range: not counted.
    other_host(&reg, 4, "198.19.9.0/24", None);
    let e = expect_err(
        first_free(&reg)
            .acquire(&cfg, &host(1), Previous::default(), TTL)
            .await,
    );
    assert!(
        matches!(
            &e,
            StoreError::NoFreeSubnet {
                taken: 2,
                total: 2,
                len: 24,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "no free subnet in 198.19.1.0..198.19.2.0 (/24): all 2 of 2 subnets are taken"
    );
    let live = reg.state().live_leases();
    assert_eq!(live.len(), 3, "no etcd lease was granted: {live:?}");
    assert!(live.contains(&a) && live.contains(&b));
}
