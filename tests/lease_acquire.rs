//! Lease acquisition against a real etcd: concurrency, reuse after a restart, reservations,
//! exhaustion and flannel's value format.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use testkit::etcd::{with_config, Etcd};
use testkit::leases::{vxlan_host, SUBNETS_PREFIX};
use weft::lease::LeaseAttrs;
use weft::store::StoreError;
use weft::subnet_env::SubnetEnv;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_hosts_get_distinct_subnets_in_range() {
    // 63 usable /26 subnets for 50 hosts: plenty of lost races to retry.
    let (etcd, _store, cfg) = with_config(
        r#"{"Network": "198.19.0.0/20", "SubnetLen": 26, "Backend": {"Type": "vxlan"}}"#,
    )
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=50u8 {
        let opts = etcd.options();
        let cfg = cfg.clone();
        tasks.spawn(async move {
            let store = weft::store::EtcdStore::connect(&opts).await.unwrap();
            let lease = store
                .acquire_lease(&cfg, &vxlan_host(1, i), None, HOUR)
                .await
                .unwrap_or_else(|e| panic!("host {i}: {e}"));
            (i, lease)
        });
    }
    let mut subnets = HashSet::new();
    let first: Ipv4Net = "198.19.0.0/26".parse().unwrap();
    while let Some(r) = tasks.join_next().await {
        let (i, lease) = r.unwrap();
        assert_eq!(lease.attrs.public_ip, Ipv4Addr::new(198, 18, 1, i));
        assert_ne!(
            lease.subnet, first,
            "the network's first subnet was handed out"
        );
        assert!(
            cfg.subnet_in_range(lease.subnet),
            "{} outside SubnetMin..SubnetMax",
            lease.subnet
        );
        assert!(
            subnets.insert(lease.subnet),
            "{} handed out twice",
            lease.subnet
        );
    }
    assert_eq!(subnets.len(), 50);
    let list = etcd.store().await.list_leases(Some(&cfg)).await.unwrap();
    assert_eq!(list.leases.len(), 50);
    assert_eq!(etcd.lease_count().await, 50, "one etcd lease per host");
}

#[tokio::test]
async fn restarted_host_gets_its_subnet_back_by_public_ip() {
    let (etcd, store, cfg) =
        with_config(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}"#).await;
    let a = store
        .acquire_lease(&cfg, &vxlan_host(1, 1), None, HOUR)
        .await
        .unwrap();
    let b = store
        .acquire_lease(&cfg, &vxlan_host(1, 2), None, HOUR)
        .await
        .unwrap();
    assert_ne!(a.subnet, b.subnet);

    // Host 1 restarts with a new VTEP MAC and no subnet.env.
    let new_attrs =
        weft::backend::vxlan::lease_attrs(vxlan_host(1, 1).public_ip, 1, "0e:2a:00:00:0f:01");
    let again = store
        .acquire_lease(&cfg, &new_attrs, None, HOUR)
        .await
        .unwrap();
    assert_eq!(again.subnet, a.subnet);
    assert_eq!(again.attrs, new_attrs);
    let stored = etcd
        .get(&format!("{SUBNETS_PREFIX}{}", a.key_name()))
        .unwrap();
    assert!(stored.contains("0e:2a:00:00:0f:01"), "{stored}");
    assert_eq!(
        etcd.lease_count().await,
        2,
        "the old etcd lease is revoked, not left behind"
    );
}

#[tokio::test]
async fn restarted_host_gets_its_subnet_back_from_subnet_env() {
    let (etcd, store, cfg) =
        with_config(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}"#).await;
    let a = store
        .acquire_lease(&cfg, &vxlan_host(1, 1), None, HOUR)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env_path = dir.path().join("subnet.env");
    SubnetEnv::for_lease(cfg.network, Some(a.subnet), None, None, 1450, true)
        .write(&env_path)
        .unwrap();

    // The key is gone (revoked while the host was down); subnet.env remembers.
    assert!(store.revoke_lease(a.subnet).await.unwrap());
    assert_eq!(etcd.get(&format!("{SUBNETS_PREFIX}{}", a.key_name())), None);
    let prev = SubnetEnv::read(&env_path).unwrap().subnet_network();
    assert_eq!(prev, Some(a.subnet));
    let back = store
        .acquire_lease(&cfg, &vxlan_host(1, 1), prev, HOUR)
        .await
        .unwrap();
    assert_eq!(back.subnet, a.subnet);

    // If someone else took it meanwhile, the host gets another subnet.
    assert!(store.revoke_lease(a.subnet).await.unwrap());
    let thief = store
        .acquire_lease(&cfg, &vxlan_host(1, 2), Some(a.subnet), HOUR)
        .await
        .unwrap();
    assert_eq!(thief.subnet, a.subnet);
    let other = store
        .acquire_lease(&cfg, &vxlan_host(1, 1), prev, HOUR)
        .await
        .unwrap();
    assert_ne!(other.subnet, a.subnet);
}

#[tokio::test]
async fn no_free_subnet_names_the_range_and_count() {
    // A /26 gives /28 subnets: the first is never handed out, three remain.
    let (_etcd, store, cfg) =
        with_config(r#"{"Network": "198.19.0.0/26", "Backend": {"Type": "host-gw"}}"#).await;
    for i in 1..=3 {
        store
            .acquire_lease(
                &cfg,
                &weft::backend::hostgw::lease_attrs(vxlan_host(1, i).public_ip),
                None,
                HOUR,
            )
            .await
            .unwrap();
    }
    let err = store
        .acquire_lease(
            &cfg,
            &weft::backend::hostgw::lease_attrs(vxlan_host(1, 4).public_ip),
            None,
            HOUR,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoFreeSubnet { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("198.19.0.16..198.19.0.48") && msg.contains("3 of 3"),
        "{msg}"
    );
}

#[tokio::test]
async fn reservation_is_honoured_and_never_given_to_another_host() {
    let (etcd, store, cfg) =
        with_config(r#"{"Network": "198.19.0.0/26", "Backend": {"Type": "vxlan"}}"#).await;
    let reserved: Ipv4Net = "198.19.0.32/28".parse().unwrap();
    store
        .add_reservation(reserved, vxlan_host(1, 9).public_ip, None)
        .await
        .unwrap();
    let key = format!("{SUBNETS_PREFIX}198.19.0.32-28");
    assert_eq!(
        etcd.key_lease(&key),
        Some(0),
        "a reservation has no etcd lease"
    );

    // Two other hosts fill the rest; one asking for the reserved subnet by subnet.env is
    // refused it, and a third finds no room.
    let a = store
        .acquire_lease(&cfg, &vxlan_host(1, 1), Some(reserved), HOUR)
        .await
        .unwrap();
    let b = store
        .acquire_lease(&cfg, &vxlan_host(1, 2), None, HOUR)
        .await
        .unwrap();
    assert!(a.subnet != reserved && b.subnet != reserved);
    let err = store
        .acquire_lease(&cfg, &vxlan_host(1, 3), Some(reserved), HOUR)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoFreeSubnet { .. }), "{err}");

    // The host it names gets it, and it stays a reservation with the host's attributes.
    let mine = store
        .acquire_lease(&cfg, &vxlan_host(1, 9), None, HOUR)
        .await
        .unwrap();
    assert_eq!(mine.subnet, reserved);
    assert!(mine.is_reservation() && mine.expiration.is_none());
    assert_eq!(etcd.key_lease(&key), Some(0));
    assert_eq!(etcd.get(&key).unwrap(), vxlan_host(1, 9).to_json());
    let renewed = store.renew_lease(&mine, HOUR).await.unwrap();
    assert!(renewed.is_reservation());
    assert_eq!(
        etcd.lease_count().await,
        2,
        "only hosts 1 and 2 hold etcd leases"
    );

    // A reservation cannot be revoked as a lease, nor a lease removed as a reservation.
    let e = store.revoke_lease(reserved).await.unwrap_err().to_string();
    assert!(e.contains("reservation"), "{e}");
    let e = store.remove_reservation(a.subnet).await.unwrap_err();
    assert!(matches!(e, StoreError::NotAReservation { .. }), "{e}");
    assert!(store.remove_reservation(reserved).await.unwrap());
    assert_eq!(etcd.get(&key), None);
    assert_eq!(etcd.lease_count().await, 2, "nothing else changed");
}

#[tokio::test]
async fn flannel_lease_is_read_and_weft_writes_flannel_format() {
    let (etcd, store, cfg) =
        with_config(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}"#).await;
    // flannel's value byte for byte (FLANNEL-COMPAT.md), with test addresses.
    let flannel = r#"{"PublicIP":"198.18.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    etcd.put(&format!("{SUBNETS_PREFIX}198.19.52.0-24"), flannel);
    let list = store.list_leases(Some(&cfg)).await.unwrap();
    assert!(list.skipped.is_empty(), "{:?}", list.skipped);
    let l = &list.leases[0];
    assert_eq!(l.subnet, "198.19.52.0/24".parse::<Ipv4Net>().unwrap());
    assert_eq!(l.attrs.public_ip, Ipv4Addr::new(198, 18, 64, 3));
    assert_eq!(l.attrs.public_ipv6, None);
    assert_eq!(l.attrs.backend_type, "vxlan");
    let vx = l.attrs.backend_data.as_ref().unwrap();
    assert_eq!(
        (&vx["VNI"], &vx["VtepMAC"]),
        (&1.into(), &"c6:d2:32:6f:8f:44".into())
    );
    assert!(l.is_reservation(), "written without an etcd lease");

    let mine = store
        .acquire_lease(
            &cfg,
            &weft::backend::vxlan::lease_attrs(
                Ipv4Addr::new(198, 18, 64, 4),
                1,
                "c6:d2:32:6f:8f:45",
            ),
            None,
            HOUR,
        )
        .await
        .unwrap();
    let raw = etcd
        .get(&format!("{SUBNETS_PREFIX}{}", mine.key_name()))
        .unwrap();
    assert_eq!(
        raw,
        r#"{"PublicIP":"198.18.64.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#
    );
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert!(v["PublicIP"].is_string() && v["PublicIPv6"].is_null());
    assert!(v["BackendData"]["VNI"].is_u64() && v["BackendData"]["VtepMAC"].is_string());
}

#[tokio::test]
async fn bad_config_values_are_refused_naming_the_field() {
    let etcd = Etcd::new();
    let store = etcd.store().await;
    let e = store
        .put_config(
            r#"{"Network": "198.19.0.0/16", "SubnetLen": 31, "Backend": {"Type": "vxlan"}}"#,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("SubnetLen 31: must be at most 30"), "{e}");
    assert_eq!(
        etcd.get("/coreos.com/network/config"),
        None,
        "nothing written"
    );
    let e = store
        .put_config(r#"{"Network": "198.19.0.0/16"}"#)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("udp") && e.contains("vxlan"), "{e}");

    // Written behind weft's back: reading it reports the field.
    etcd.put(
        "/coreos.com/network/config",
        r#"{"Network": "198.19.0.0/16", "SubnetMin": "198.19.0.7", "Backend": {"Type": "vxlan"}}"#,
    );
    let e = store.get_config().await.unwrap_err().to_string();
    assert!(e.contains("SubnetMin 198.19.0.7"), "{e}");
}

#[tokio::test]
async fn missing_config_is_waited_for() {
    let etcd = Etcd::new();
    let store = etcd.store().await;
    assert!(store.get_config().await.unwrap().is_none());
    // Nothing else reads this etcd now: the reads etcd serves are the waiter's. Two of them
    // mean it found no config, waited, looked again and found none again.
    let reads = etcd.metric("etcd_mvcc_range_total");
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait_for_config().await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while etcd.metric("etcd_mvcc_range_total") < reads + 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiter read etcd {} times in 10 s",
            etcd.metric("etcd_mvcc_range_total") - reads
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!waiter.is_finished(), "returned before a config existed");
    etcd.put(
        "/coreos.com/network/config",
        r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "host-gw"}}"#,
    );
    let cfg = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("config not noticed within 10s")
        .unwrap()
        .unwrap();
    assert_eq!(cfg.backend.type_name(), "host-gw");
}

#[tokio::test]
async fn unreachable_etcd_fails_fast_naming_the_endpoint() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = weft::store::EtcdStore::connect(&weft::store::EtcdOptions::new(
        &[&url],
        "/coreos.com/network",
    ))
    .await
    .err()
    .expect("connected to nothing");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains(&url), "{err}");
}

/// A dual-stack host: the same attributes with an IPv6 public address.
fn dual_host(i: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ipv6: Some(format!("2001:db8::{i:x}").parse().unwrap()),
        backend_v6_data: vxlan_host(1, i).backend_data,
        ..vxlan_host(1, i)
    }
}

#[tokio::test]
async fn ipv6_subnets_are_distinct_in_range_and_an_exhausted_ipv6_pool_leaves_nothing_behind() {
    // Three usable /126 IPv6 subnets (the first is never handed out), plenty of IPv4 ones.
    let (etcd, store, cfg) = with_config(
        r#"{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:100::/124", "IPv6SubnetLen": 126, "Backend": {"Type": "vxlan"}}"#,
    )
    .await;
    let mut seen = HashSet::new();
    for i in 1..=3 {
        let l = store
            .acquire_lease(&cfg, &dual_host(i), None, HOUR)
            .await
            .unwrap();
        let s6 = l.subnet6.expect("a dual-stack host gets an IPv6 subnet");
        assert!(cfg.subnet6_in_range(s6), "{s6}");
        assert_ne!(s6, "2001:db8:100::/126".parse().unwrap());
        assert!(seen.insert(s6), "{s6} handed out twice");
        let key = format!("{SUBNETS_PREFIX}{}", l.key_name());
        assert!(key.contains('&'), "{key}");
        assert!(etcd.get(&key).is_some(), "{key}");
    }
    let before = etcd.etcdctl_ok(&["lease", "list"]);
    let err = store
        .acquire_lease(&cfg, &dual_host(4), None, HOUR)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoFreeSubnet { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("2001:db8:100::4..2001:db8:100::c") && msg.contains("3 of 3"),
        "{msg}"
    );
    // No IPv4-only key for the refused host, and no etcd lease left granted for it.
    let listed = store.list_leases(Some(&cfg)).await.unwrap();
    assert_eq!(listed.leases.len(), 3);
    assert_eq!(etcd.etcdctl_ok(&["lease", "list"]), before);

    // An IPv4-only host still gets a lease: the IPv6 pool is not its concern.
    let v4 = store
        .acquire_lease(&cfg, &vxlan_host(1, 5), None, HOUR)
        .await
        .unwrap();
    assert_eq!(v4.subnet6, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_dual_stack_hosts_get_distinct_ipv6_subnets() {
    // Thirty hosts each picking at random among the first 100 free IPv6 subnets: without a
    // check, two of them would almost surely pick the same one under different keys.
    let (etcd, _store, cfg) = with_config(
        r#"{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:100::/56", "Backend": {"Type": "vxlan"}}"#,
    )
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=30u8 {
        let opts = etcd.options();
        let cfg = cfg.clone();
        tasks.spawn(async move {
            let store = weft::store::EtcdStore::connect(&opts).await.unwrap();
            store
                .acquire_lease(&cfg, &dual_host(i), None, HOUR)
                .await
                .unwrap_or_else(|e| panic!("host {i}: {e}"))
        });
    }
    let mut got = Vec::new();
    while let Some(r) = tasks.join_next().await {
        got.push(r.unwrap());
    }
    let store = etcd.store().await;
    let listed = store.list_leases(Some(&cfg)).await.unwrap().leases;
    assert_eq!(
        listed.len(),
        30,
        "one key per host, the moved ones' old keys gone"
    );
    let v6: HashSet<_> = listed.iter().map(|l| l.subnet6.unwrap()).collect();
    assert_eq!(v6.len(), 30, "IPv6 subnets handed out twice: {listed:?}");
    // What each host was told is what etcd holds.
    for l in got {
        assert!(listed
            .iter()
            .any(|x| x.subnet == l.subnet && x.subnet6 == l.subnet6));
    }
}
