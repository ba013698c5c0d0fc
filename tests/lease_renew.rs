//! Lease renewal against a real etcd with a TTL of a few seconds.

use std::time::{Duration, Instant};

use testkit::etcd::with_config;
use testkit::leases::{vxlan_host, SUBNETS_PREFIX};
use weft::store::StoreError;

const CFG: &str = r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}"#;

#[tokio::test]
async fn renewal_keeps_keys_alive_with_one_etcd_lease_per_host() {
    let (etcd, store, cfg) = with_config(CFG).await;
    let ttl = Duration::from_secs(3);
    let mut a = store
        .acquire_lease(&cfg, &vxlan_host(2, 1), None, ttl)
        .await
        .unwrap();
    let mut b = store
        .acquire_lease(&cfg, &vxlan_host(2, 2), None, ttl)
        .await
        .unwrap();
    let (ka, kb) = (
        format!("{SUBNETS_PREFIX}{}", a.key_name()),
        format!("{SUBNETS_PREFIX}{}", b.key_name()),
    );
    let (ida, idb) = (a.etcd_lease_id, b.etcd_lease_id);

    // Four TTLs, renewing every second.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        a = store.renew_lease(&a, ttl).await.unwrap();
        b = store.renew_lease(&b, ttl).await.unwrap();
        assert!(etcd.get(&ka).is_some() && etcd.get(&kb).is_some());
        assert_eq!(
            etcd.lease_count().await,
            2,
            "etcd leases grew with renewals"
        );
    }
    assert_eq!((a.etcd_lease_id, b.etcd_lease_id), (ida, idb));
    let left = a
        .expiration
        .unwrap()
        .duration_since(std::time::SystemTime::now());
    assert!(
        left.as_ref().is_ok_and(|d| *d > Duration::from_secs(1)),
        "{left:?}"
    );

    // Without renewals the keys go away on their own: once the TTL has run out, and within
    // a few seconds of that (etcd checks expiry every half second or so).
    let stopped = Instant::now();
    while etcd.get(&ka).is_some() || etcd.get(&kb).is_some() {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "the keys outlived their 3 s TTL by 7 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stopped.elapsed() >= ttl - Duration::from_millis(1500),
        "the keys went {:?} after the last renewal, before their TTL",
        stopped.elapsed()
    );
    assert_eq!(etcd.get(&ka), None);
    assert_eq!(etcd.get(&kb), None);
    assert_eq!(etcd.lease_count().await, 0);
    let err = store.renew_lease(&a, ttl).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseGone { .. }), "{err}");
}

#[tokio::test]
async fn renewal_reports_a_revoked_or_deleted_lease_as_gone() {
    let (etcd, store, cfg) = with_config(CFG).await;
    let hour = Duration::from_secs(3600);

    let a = store
        .acquire_lease(&cfg, &vxlan_host(2, 1), None, hour)
        .await
        .unwrap();
    assert!(store.revoke_lease(a.subnet).await.unwrap());
    let err = store.renew_lease(&a, hour).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseGone { .. }), "{err}");
    assert!(err.to_string().contains(&a.subnet.to_string()), "{err}");

    // Deleted by hand: the orphaned etcd lease is cleaned up too.
    let b = store
        .acquire_lease(&cfg, &vxlan_host(2, 2), None, hour)
        .await
        .unwrap();
    etcd.etcdctl_ok(&["del", &format!("{SUBNETS_PREFIX}{}", b.key_name())]);
    let err = store.renew_lease(&b, hour).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseGone { .. }), "{err}");
    assert_eq!(etcd.lease_count().await, 0);
}

#[tokio::test]
async fn attribute_update_and_reservation_keep_the_host_on_its_subnet() {
    let (etcd, store, cfg) = with_config(CFG).await;
    let hour = Duration::from_secs(3600);
    let a = store
        .acquire_lease(&cfg, &vxlan_host(2, 1), None, hour)
        .await
        .unwrap();
    let key = format!("{SUBNETS_PREFIX}{}", a.key_name());

    // A new VTEP MAC is re-advertised on the same etcd lease.
    let new_attrs =
        weft::backend::vxlan::lease_attrs(vxlan_host(2, 1).public_ip, 1, "0e:2a:00:00:09:09");
    let a2 = store.update_lease_attrs(&a, &new_attrs).await.unwrap();
    assert_eq!(a2.etcd_lease_id, a.etcd_lease_id);
    assert_eq!(etcd.key_lease(&key), a.etcd_lease_id);
    assert_eq!(etcd.get(&key).unwrap(), new_attrs.to_json());

    // An operator pins the subnet: the next renewal finds a reservation, not a lost lease.
    store
        .add_reservation(a.subnet, vxlan_host(2, 1).public_ip, None)
        .await
        .unwrap();
    let r = store.renew_lease(&a2, hour).await.unwrap();
    assert!(r.is_reservation());
    assert_eq!(r.subnet, a.subnet);
    assert_eq!(etcd.get(&key).unwrap(), new_attrs.to_json());
    assert_eq!(
        etcd.lease_count().await,
        0,
        "the old etcd lease is released"
    );
}

/// A revoke (what `weftctl leases revoke` does) takes the lease as it is when it runs: one the
/// host rewrote a moment before goes, with its etcd lease, and a lease already gone is
/// reported as gone. (That a revoke never deletes a value written between its own read and
/// its delete is the store's compare-and-delete; no public call lets a test land a write in
/// that window.)
#[tokio::test]
async fn a_revoke_takes_the_lease_as_it_is_now_and_reports_one_already_gone() {
    let (etcd, store, cfg) = with_config(CFG).await;
    let hour = Duration::from_secs(3600);
    let a = store
        .acquire_lease(&cfg, &vxlan_host(2, 1), None, hour)
        .await
        .unwrap();
    let key = format!("{SUBNETS_PREFIX}{}", a.key_name());

    // The host re-advertises (a new VTEP MAC) before the operator revokes.
    let attrs =
        weft::backend::vxlan::lease_attrs(vxlan_host(2, 1).public_ip, 1, "0e:2a:00:00:09:0a");
    store.update_lease_attrs(&a, &attrs).await.unwrap();
    assert_eq!(etcd.get(&key).unwrap(), attrs.to_json());
    assert!(store.revoke_lease(a.subnet).await.unwrap());
    assert_eq!(etcd.get(&key), None);
    assert_eq!(etcd.lease_count().await, 0, "the etcd lease went with it");
    assert!(!store.revoke_lease(a.subnet).await.unwrap());
}
