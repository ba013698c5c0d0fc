//! Renewal: the one etcd lease kept alive, and what the agent is told when the lease is gone
//! or an operator made it a reservation.

use std::time::SystemTime;

use super::*;

fn gone_because(e: &StoreError) -> &str {
    match e {
        StoreError::LeaseGone { why, .. } => why,
        other => panic!("not LeaseGone: {other:?}"),
    }
}

/// Seconds from now to `lease`'s expiration.
fn expires_in(lease: &Lease) -> u64 {
    let exp = lease.expiration.expect("an expiring lease");
    exp.duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs()
}

#[tokio::test]
async fn renewal_keeps_the_one_etcd_lease_alive() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let lease = acquire(&reg, &cfg, &host(1)).await;
    reg.state().advance(Duration::from_secs(20));
    let alloc = first_free(&reg);
    // The etcd lease keeps the TTL it was granted with; a new one waits for an acquisition.
    let renewed = alloc.renew(&lease, Duration::from_secs(60)).await.unwrap();
    assert_eq!(renewed.etcd_lease_id, lease.etcd_lease_id);
    assert_eq!(renewed.mod_revision, lease.mod_revision);
    assert!((28..=30).contains(&expires_in(&renewed)));
    reg.state().advance(Duration::from_secs(20));
    assert_eq!(
        lease_names(&reg),
        ["198.19.1.0-24"],
        "alive 40 s after acquiring"
    );
    assert_eq!(reg.state().live_leases(), [lease.etcd_lease_id.unwrap()]);
}

#[tokio::test]
async fn an_expired_or_deleted_lease_is_gone() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    reg.state().advance(Duration::from_secs(31));
    assert!(lease_names(&reg).is_empty(), "expiry deletes the key");
    let e = expect_err(alloc.renew(&lease, TTL).await);
    assert_eq!(gone_because(&e), "its etcd lease expired or was revoked");

    let lease = acquire(&reg, &cfg, &host(1)).await;
    reg.state().delete(&reg.layout().lease_key(&lease));
    let e = expect_err(alloc.renew(&lease, TTL).await);
    assert_eq!(gone_because(&e), "the key was deleted");
    assert!(
        reg.state().live_leases().is_empty(),
        "its etcd lease is revoked"
    );
}

#[tokio::test]
async fn a_lease_turned_into_a_reservation_comes_back_as_one() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    let ip = lease.attrs.public_ip;
    alloc.add_reservation(lease.subnet, ip, None).await.unwrap();
    let renewed = alloc.renew(&lease, TTL).await.unwrap();
    assert!(renewed.is_reservation());
    assert_eq!(renewed.expiration, None);
    assert_eq!(
        (renewed.subnet, &renewed.attrs),
        (lease.subnet, &lease.attrs)
    );
    assert!(
        reg.state().live_leases().is_empty(),
        "the unused etcd lease is revoked"
    );
    // From now on it is renewed as a reservation.
    assert_eq!(alloc.renew(&renewed, TTL).await.unwrap(), renewed);
}

#[tokio::test]
async fn a_key_on_another_etcd_lease_is_gone() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    other_host(&reg, 2, "198.19.1.0/24", None);
    let e = expect_err(alloc.renew(&lease, TTL).await);
    assert_eq!(
        gone_because(&e),
        "the key now belongs to another etcd lease"
    );
}

#[tokio::test]
async fn a_reservation_is_renewed_while_its_key_has_no_etcd_lease() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    let k = key(&reg, "198.19.3.0/24", None);
    put(&reg, &k, &host(1), None);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert!(lease.is_reservation());
    other_host(&reg, 1, "198.19.3.0/24", None);
    let e = expect_err(alloc.renew(&lease, TTL).await);
    assert_eq!(
        gone_because(&e),
        "the reservation was replaced by an expiring lease"
    );
    reg.state().delete(&k);
    let e = expect_err(alloc.renew(&lease, TTL).await);
    assert_eq!(gone_because(&e), "the reservation was removed");
}

#[tokio::test]
async fn an_unreachable_etcd_is_no_lost_lease() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let lease = acquire(&reg, &cfg, &host(1)).await;
    reg.set_unreachable(true);
    let e = expect_err(first_free(&reg).renew(&lease, TTL).await);
    assert!(e.is_transient(), "{e:?}");
    reg.set_unreachable(false);
    assert!(first_free(&reg).renew(&lease, TTL).await.is_ok());
}

#[tokio::test]
async fn new_attributes_keep_the_etcd_lease_while_the_key_is_this_hosts() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    let attrs = crate::backend::vxlan::lease_attrs(lease.attrs.public_ip, 1, "0e:00:00:00:00:99");
    let updated = alloc.update_attrs(&lease, &attrs).await.unwrap();
    assert_eq!(updated.attrs, attrs);
    assert_eq!(updated.etcd_lease_id, lease.etcd_lease_id);
    let kv = reg.state().keys[&reg.layout().lease_key(&lease)].clone();
    assert_eq!(
        (kv.value, kv.lease),
        (attrs.to_json().into_bytes(), lease.etcd_lease_id)
    );
    other_host(&reg, 2, "198.19.1.0/24", None);
    let e = expect_err(alloc.update_attrs(&lease, &attrs).await);
    assert_eq!(gone_because(&e), "the key was deleted or taken over");
}
