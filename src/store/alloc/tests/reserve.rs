//! An operator's reservations and revocations, and the reclaim of a gone host's lease.

use super::*;
use crate::store::status::Reclaimed;

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

#[tokio::test]
async fn a_reservation_is_a_key_without_an_etcd_lease() {
    let reg = MemRegistry::new();
    store_config(&reg, DUAL);
    let alloc = first_free(&reg);
    let v6 = (net6("2001:db8:100:9::/64"), "2001:db8::9".parse().unwrap());
    alloc
        .add_reservation(net("198.19.9.0/24"), ip(9), Some(v6))
        .await
        .unwrap();
    let k = key(&reg, "198.19.9.0/24", Some("2001:db8:100:9::/64"));
    let kv = reg.state().keys[&k].clone();
    assert_eq!(kv.lease, None);
    let attrs = LeaseAttrs::from_json(&k, &kv.value).unwrap();
    assert_eq!((attrs.public_ip, attrs.public_ipv6), (ip(9), Some(v6.1)));
    assert_eq!(attrs.backend_type, "");
}

#[tokio::test]
async fn reservations_that_would_conflict_are_refused() {
    let reg = MemRegistry::new();
    store_config(&reg, DUAL);
    let alloc = first_free(&reg);
    let add = |s: &str, n, v6: Option<&str>| {
        let v6 = v6.map(|s6| (net6(s6), Ipv6Addr::LOCALHOST));
        alloc.add_reservation(net(s), ip(n), v6)
    };
    let e = expect_err(add("198.20.0.0/24", 1, None).await);
    assert!(matches!(e, StoreError::NotInNetwork { .. }), "{e:?}");
    let e = expect_err(add("198.19.1.0/24", 1, Some("2001:db8:999::/64")).await);
    assert!(
        matches!(e, StoreError::NotInNetwork { len: 64, .. }),
        "{e:?}"
    );
    add("198.19.1.0/24", 1, None).await.unwrap();
    let e = expect_err(add("198.19.2.0/24", 1, None).await);
    assert_eq!(
        e.to_string(),
        "198.18.0.1 already has a reservation: 198.19.1.0/24"
    );
    other_host(&reg, 2, "198.19.2.0/24", Some("2001:db8:100:2::/64"));
    let e = expect_err(add("198.19.2.0/24", 3, None).await);
    assert_eq!(e.to_string(), "198.19.2.0/24 is leased to 198.18.0.2");
    let e = expect_err(add("198.19.3.0/24", 3, Some("2001:db8:100:2::/64")).await);
    assert_eq!(e.to_string(), "2001:db8:100:2::/64 is leased to 198.18.0.2");
    reg.state()
        .put(&key(&reg, "198.19.4.0/24", None), "not json", None);
    let e = expect_err(add("198.19.4.0/24", 4, None).await);
    assert!(matches!(e, StoreError::Lease(_)), "{e:?}");
    assert_eq!(lease_names(&reg).len(), 3, "nothing was written");
}

#[tokio::test]
async fn a_hosts_own_lease_becomes_its_reservation_with_its_attributes() {
    let (reg, cfg) = (MemRegistry::new(), cfg(DUAL));
    store_config(&reg, DUAL);
    let alloc = first_free(&reg);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    let v6 = (net6("2001:db8:100:7::/64"), "2001:db8::7".parse().unwrap());
    alloc
        .add_reservation(lease.subnet, ip(1), Some(v6))
        .await
        .unwrap();
    assert_eq!(lease_names(&reg), ["198.19.1.0-24&2001:db8:100:7::-64"]);
    let k = key(&reg, "198.19.1.0/24", Some("2001:db8:100:7::/64"));
    let kv = reg.state().keys[&k].clone();
    let attrs = LeaseAttrs::from_json(&k, &kv.value).unwrap();
    assert_eq!(kv.lease, None);
    assert_eq!(
        attrs.backend_data,
        host(1).backend_data,
        "the host's attributes stay"
    );
    assert_eq!(
        attrs.public_ipv6,
        Some(v6.1),
        "the IPv6 part is the one asked for"
    );
}

#[tokio::test]
async fn removing_a_reservation_leaves_leases_alone() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    put(&reg, &key(&reg, "198.19.5.0/24", None), &host(5), None);
    assert!(alloc
        .remove_reservation(net("198.19.5.0/24"))
        .await
        .unwrap());
    assert!(!alloc
        .remove_reservation(net("198.19.5.0/24"))
        .await
        .unwrap());
    let lease = acquire(&reg, &cfg, &host(1)).await;
    let e = expect_err(alloc.remove_reservation(lease.subnet).await);
    let want = "198.19.1.0/24 is not a reservation (it is leased to 198.18.0.1); revoke it instead";
    assert_eq!(e.to_string(), want);
    assert_eq!(lease_names(&reg), ["198.19.1.0-24"]);
}

#[tokio::test]
async fn revoking_deletes_the_key_as_seen_and_an_unused_etcd_lease() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    assert!(alloc.revoke(lease.subnet).await.unwrap());
    assert!(lease_names(&reg).is_empty());
    assert!(reg.state().live_leases().is_empty());
    assert!(!alloc.revoke(lease.subnet).await.unwrap(), "gone");

    // Rewritten by its host between the revocation's read and its delete: nothing is
    // deleted.
    let lease = acquire(&reg, &cfg, &host(1)).await;
    let rewritten = host(9).to_json();
    let id = lease.etcd_lease_id;
    reg.before_next_write(move |s, key| {
        s.put(key, &rewritten, id);
    });
    let e = expect_err(alloc.revoke(lease.subnet).await);
    assert!(matches!(e, StoreError::LeaseChanged { .. }), "{e:?}");
    assert_eq!(lease_names(&reg), ["198.19.1.0-24"]);

    put(&reg, &key(&reg, "198.19.5.0/24", None), &host(5), None);
    let e = expect_err(alloc.revoke(net("198.19.5.0/24")).await);
    assert!(matches!(e, StoreError::IsReservation { .. }), "{e:?}");
}

#[tokio::test]
async fn an_etcd_lease_other_keys_hang_on_outlives_a_revocation() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    let id = lease.etcd_lease_id.unwrap();
    let gone = reg.layout().gone_key(&lease.key_name());
    reg.state().put(&gone, "{}", Some(id));
    assert!(alloc.revoke(lease.subnet).await.unwrap());
    assert_eq!(reg.state().live_leases(), [id]);
}

#[tokio::test]
async fn a_gone_hosts_lease_is_reclaimed_only_while_its_status_is_absent() {
    let (reg, cfg) = (MemRegistry::new(), cfg(V4));
    let alloc = first_free(&reg);
    let lease = acquire(&reg, &cfg, &host(1)).await;
    let name = lease.key_name();
    let (status, gone) = (reg.layout().status_key(&name), reg.layout().gone_key(&name));
    reg.state().put(&gone, "{}", lease.etcd_lease_id);
    reg.state().put(&status, "{}", None);
    assert_eq!(alloc.reclaim(&lease).await.unwrap(), Reclaimed::Changed);
    assert_eq!(
        lease_names(&reg).len(),
        1,
        "the host came back: nothing deleted"
    );
    reg.state().delete(&status);
    assert_eq!(alloc.reclaim(&lease).await.unwrap(), Reclaimed::Removed);
    assert!(lease_names(&reg).is_empty());
    assert!(
        !reg.state().keys.contains_key(&gone),
        "the mark goes with it"
    );
    assert!(reg.state().live_leases().is_empty());
    let mut reserved = lease.clone();
    reserved.etcd_lease_id = None;
    let e = expect_err(alloc.reclaim(&reserved).await);
    assert!(matches!(e, StoreError::IsReservation { .. }), "{e:?}");
}
