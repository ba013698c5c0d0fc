//! The lease watch against a real etcd: typed events, compaction, outages, bad leases.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::etcd::with_config;
use testkit::leases::{vxlan_host, SUBNETS_PREFIX};
use weft::config::NetworkConfig;
use weft::lease::{Lease, LeaseEvent};
use weft::store::{EtcdStore, LeaseWatcher};

const CFG: &str = r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const HOUR: Duration = Duration::from_secs(3600);

async fn next(w: &mut LeaseWatcher, within: Duration) -> Vec<LeaseEvent> {
    tokio::time::timeout(within, w.next())
        .await
        .expect("no lease event in time")
        .expect("watch failed")
}

/// Watches the leases as weftd and weftctl do: a listing, then a watch from its revision.
async fn watch(store: &EtcdStore, cfg: &NetworkConfig) -> LeaseWatcher {
    let list = store.list_leases(Some(cfg)).await.unwrap();
    store.watch_from_list(Some(cfg.clone()), list)
}

/// Asserts that nothing more arrived: a lease acquired now is a fence, and since the watch
/// delivers in order, the next batch must be exactly the fence's event. (A quiet moment
/// would pass whether the watcher had caught up or not.)
async fn quiet(w: &mut LeaseWatcher, store: &EtcdStore, cfg: &NetworkConfig) {
    let fence = store
        .acquire_lease(cfg, &vxlan_host(3, 250), None, HOUR)
        .await
        .unwrap();
    let got = next(w, Duration::from_secs(10)).await;
    assert_eq!(
        summary(&got),
        vec![ev("added", &fence)],
        "events before the fence: {got:?}"
    );
}

fn summary(events: &[LeaseEvent]) -> Vec<(String, String, Ipv4Addr)> {
    let mut v: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind().to_string(),
                e.lease().subnet.to_string(),
                e.lease().attrs.public_ip,
            )
        })
        .collect();
    v.sort();
    v
}

fn ev(kind: &str, l: &Lease) -> (String, String, Ipv4Addr) {
    (kind.to_string(), l.subnet.to_string(), l.attrs.public_ip)
}

#[tokio::test]
async fn add_remove_and_expiry_arrive_as_typed_events() {
    let (_etcd, store, cfg) = with_config(CFG).await;
    let list = store.list_leases(Some(&cfg)).await.unwrap();
    let listed = list.revision;
    let mut w = store.watch_from_list(Some(cfg.clone()), list);

    let a = store
        .acquire_lease(&cfg, &vxlan_host(3, 1), None, HOUR)
        .await
        .unwrap();
    let got = next(&mut w, Duration::from_secs(10)).await;
    assert_eq!(
        got,
        vec![LeaseEvent::Added(Arc::new(got[0].lease().clone()))]
    );
    assert_eq!(got[0].lease().attrs, vxlan_host(3, 1));
    assert_eq!(got[0].lease().subnet, a.subnet);
    assert!(got[0].lease().expiration.is_some());

    let b = store
        .acquire_lease(&cfg, &vxlan_host(3, 2), None, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(
        summary(&next(&mut w, Duration::from_secs(10)).await),
        vec![ev("added", &b)]
    );

    store.revoke_lease(a.subnet).await.unwrap();
    let got = next(&mut w, Duration::from_secs(10)).await;
    assert_eq!(summary(&got), vec![ev("removed", &a)]);
    assert_eq!(
        got[0].lease().attrs,
        vxlan_host(3, 1),
        "removal carries the attributes"
    );

    // Nobody renews b: etcd expires it.
    let got = next(&mut w, Duration::from_secs(15)).await;
    assert_eq!(summary(&got), vec![ev("expired", &b)]);
    assert_eq!(got[0].lease().attrs, vxlan_host(3, 2));
    assert!(w.revision() > listed);
}

#[tokio::test]
async fn renewed_lease_that_is_revoked_later_counts_as_removed() {
    let (_etcd, store, cfg) = with_config(CFG).await;
    // Long enough that the revocation lands seconds before any expiry the watcher could
    // believe in, even when a loaded machine delays its TTL refresh.
    let ttl = Duration::from_secs(8);
    let mut w = watch(&store, &cfg).await;
    let mut a = store
        .acquire_lease(&cfg, &vxlan_host(3, 1), None, ttl)
        .await
        .unwrap();
    assert_eq!(
        summary(&next(&mut w, Duration::from_secs(10)).await),
        vec![ev("added", &a)]
    );
    // Keep renewing (the pace is what is tested: six renewals a second apart) while the
    // watcher waits: nothing may arrive until the renewals are done.
    let renewer = async {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            a = store.renew_lease(&a, ttl).await.unwrap();
        }
    };
    let early = tokio::select! {
        _ = renewer => None,
        got = w.next() => Some(got),
    };
    assert!(early.is_none(), "renewals are not events: {early:?}");
    // The revocation is the next event: nothing was queued behind the renewals either.
    store.revoke_lease(a.subnet).await.unwrap();
    assert_eq!(
        summary(&next(&mut w, Duration::from_secs(10)).await),
        vec![ev("removed", &a)]
    );
}

#[tokio::test]
async fn compaction_past_the_watcher_resyncs_with_exactly_the_difference() {
    let (etcd, store, cfg) = with_config(CFG).await;
    let a = store
        .acquire_lease(&cfg, &vxlan_host(3, 1), None, HOUR)
        .await
        .unwrap();
    let b = store
        .acquire_lease(&cfg, &vxlan_host(3, 2), None, HOUR)
        .await
        .unwrap();
    let c = store
        .acquire_lease(&cfg, &vxlan_host(3, 3), None, HOUR)
        .await
        .unwrap();
    let list = store.list_leases(Some(&cfg)).await.unwrap();
    let listed = list.revision;
    let mut w = store.watch_from_list(Some(cfg.clone()), list);

    // Changes the watcher has not seen, then their history is compacted away.
    store.revoke_lease(a.subnet).await.unwrap();
    let b2_attrs =
        weft::backend::vxlan::lease_attrs(vxlan_host(3, 2).public_ip, 1, "0e:2a:00:00:0b:0b");
    let b2 = store.update_lease_attrs(&b, &b2_attrs).await.unwrap();
    // d takes a subnet none of the others ever had: one that a left behind would be the
    // same key, and its replacement is then one "added" with no "removed".
    let fresh = (1..=254u8)
        .map(|i| {
            format!("198.19.{i}.0/24")
                .parse::<ipnet::Ipv4Net>()
                .unwrap()
        })
        .find(|s| ![a.subnet, b.subnet, c.subnet].contains(s))
        .unwrap();
    let d = store
        .acquire_lease(&cfg, &vxlan_host(3, 4), Some(fresh), HOUR)
        .await
        .unwrap();
    let compacted = etcd.compact(None);
    assert!(compacted > listed);

    let got = next(&mut w, Duration::from_secs(10)).await;
    let mut want = vec![ev("removed", &a), ev("added", &b2), ev("added", &d)];
    want.sort();
    assert_eq!(summary(&got), want, "c did not change and must not appear");
    let b_event = got.iter().find(|e| e.lease().subnet == b.subnet).unwrap();
    assert_eq!(b_event.lease().attrs, b2_attrs);
    assert!(w.revision() >= compacted);

    // The watch carries on from the new revision, without looping.
    store.revoke_lease(d.subnet).await.unwrap();
    assert_eq!(
        summary(&next(&mut w, Duration::from_secs(10)).await),
        vec![ev("removed", &d)]
    );
    quiet(&mut w, &store, &cfg).await;
    let _ = c;
}

#[tokio::test]
async fn an_etcd_restart_loses_and_repeats_nothing() {
    let (mut etcd, store, cfg) = with_config(CFG).await;
    let mut w = watch(&store, &cfg).await;
    let a = store
        .acquire_lease(&cfg, &vxlan_host(3, 1), None, HOUR)
        .await
        .unwrap();
    let first = next(&mut w, Duration::from_secs(10)).await;
    assert_eq!(summary(&first), vec![ev("added", &a)]);

    let waiting = tokio::spawn(async move {
        let got = next(&mut w, Duration::from_secs(30)).await;
        (w, got)
    });
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.start();
    let mut b = None;
    for _ in 0..50 {
        match store
            .acquire_lease(&cfg, &vxlan_host(3, 2), None, HOUR)
            .await
        {
            Ok(l) => {
                b = Some(l);
                break;
            }
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let b = b.expect("etcd did not come back");
    let (mut w, got) = waiting.await.unwrap();
    assert_eq!(summary(&got), vec![ev("added", &b)]);
    store.revoke_lease(b.subnet).await.unwrap();
    assert_eq!(
        summary(&next(&mut w, Duration::from_secs(10)).await),
        vec![ev("removed", &b)]
    );
    quiet(&mut w, &store, &cfg).await;
}

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn malformed_and_foreign_leases_are_skipped_once_with_a_warning() {
    let logs = Logs::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    let (etcd, store, cfg) = with_config(CFG).await;
    let good = store
        .acquire_lease(&cfg, &vxlan_host(3, 1), None, HOUR)
        .await
        .unwrap();
    // Subnets for the bad values that the random acquisition above did not hand out.
    let free: Vec<String> = ["198.19.9.0", "198.19.10.0", "198.19.11.0"]
        .into_iter()
        .filter(|s| good.subnet.network().to_string() != *s)
        .map(|s| format!("{SUBNETS_PREFIX}{s}-24"))
        .collect();
    let broken = free[0].clone();
    let outside = format!("{SUBNETS_PREFIX}198.18.200.0-24");
    etcd.put(&broken, "{not json");
    etcd.put(&outside, &vxlan_host(3, 7).to_json());

    let list = store.list_leases(Some(&cfg)).await.unwrap();
    assert_eq!(list.leases.len(), 1);
    let mut skipped: Vec<_> = list.skipped.iter().map(|s| s.key.as_str()).collect();
    skipped.sort();
    assert_eq!(skipped, vec![outside.as_str(), broken.as_str()]);
    assert!(list
        .skipped
        .iter()
        .any(|s| s.key == outside && s.reason.contains("198.19.0.0/16")));

    // The watch starts from that listing, as weftd's does: it knows the good lease, and
    // the bad keys only as skipped ones, never as leases.
    let mut w = store.watch_from_list(Some(cfg.clone()), list);
    let known: Vec<_> = w.leases().iter().map(|l| ev("known", l)).collect();
    assert_eq!(known, vec![ev("known", &good)]);
    let mut skipped: Vec<String> = w.skipped_keys().borrow().keys().cloned().collect();
    skipped.sort();
    assert_eq!(skipped, vec![outside.clone(), broken.clone()]);
    // More bad values do not stop the watch.
    etcd.put(&free[1], r#"{"PublicIP": 5}"#);
    etcd.put(
        &format!("{SUBNETS_PREFIX}not-a-subnet"),
        &vxlan_host(3, 8).to_json(),
    );
    let second = store
        .acquire_lease(&cfg, &vxlan_host(3, 2), None, HOUR)
        .await
        .unwrap();
    assert_eq!(
        summary(&next(&mut w, Duration::from_secs(10)).await),
        vec![ev("added", &second)]
    );
    quiet(&mut w, &store, &cfg).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for key in [
        broken.as_str(),
        outside.as_str(),
        &free[1],
        &format!("{SUBNETS_PREFIX}not-a-subnet"),
    ] {
        let n = text
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(key))
            .count();
        assert_eq!(n, 1, "{key} warned {n} times:\n{text}");
    }
}
