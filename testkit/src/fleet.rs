//! A fleet of light hosts against one real etcd: each does to etcd what weftd does (acquires
//! a lease, watches the leases, keeps its status record through weftd's own status task, and
//! keeps the ring of leases that task asks who marks a gone host) and nothing else — no
//! namespace, no kernel — so hundreds run in one process. What an event costs etcd is read
//! from etcd's own counters before and after it ([`Cost`]): messages and bytes are counted
//! by the server, so they are the same on any machine.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use weft::config::NetworkConfig;
use weft::lease::{Lease, LeaseEvent};
use weft::status::{Facts, StatusFeed};
use weft::store::EtcdStore;

use crate::etcd::{with_config, Etcd};
use crate::wait::wait_for;

/// The subnet lease's TTL: nothing renews it within a test.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// One light host.
pub struct LightHost {
    pub lease: Lease,
    /// None for a host that keeps no status record (as flannel's hosts).
    feed: Option<StatusFeed>,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for LightHost {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Light hosts on one etcd and the lease events they have seen in all.
pub struct Fleet {
    pub hosts: Vec<LightHost>,
    cfg: NetworkConfig,
    /// Whether the hosts keep status records (weft) or not (flannel's etcd mode).
    weft: bool,
    /// Lease events delivered to the hosts' watches, summed.
    pub seen: Arc<AtomicU64>,
}

impl Fleet {
    /// `n` hosts, started one after another; weft's keep status records on etcd leases of
    /// `status_ttl` (long, so that no keep-alive falls inside a measurement), flannel's none.
    pub async fn start(
        etcd: &Etcd,
        cfg: &NetworkConfig,
        n: u16,
        status_ttl: Duration,
        weft: bool,
    ) -> Fleet {
        let mut fleet = Fleet {
            hosts: Vec::new(),
            cfg: cfg.clone(),
            weft,
            seen: Arc::default(),
        };
        for i in 0..n {
            fleet.join(etcd, i, status_ttl).await;
        }
        fleet
    }

    /// Host `i` (public address 198.18.i/256.i%256) joins as weftd does: acquires a lease,
    /// lists and watches the leases, writes its status record.
    pub async fn join(&mut self, etcd: &Etcd, i: u16, status_ttl: Duration) {
        let store = etcd.store().await;
        let public_ip = Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8);
        let mac = format!("0e:2b:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        let attrs = weft::backend::vxlan::lease_attrs(public_ip, 1, &mac);
        let lease = (store
            .acquire_lease(&self.cfg, &attrs, None, LEASE_TTL)
            .await)
            .unwrap_or_else(|e| panic!("light host {i} acquiring a lease: {e}"));
        let list = (store.list_leases_untimed(Some(&self.cfg)).await)
            .unwrap_or_else(|e| panic!("light host {i} listing the leases: {e}"));
        let facts = Facts {
            lease_key: lease.key_name(),
            public_ip: Some(public_ip.into()),
            backend: "vxlan".into(),
            ready: true,
            ..Facts::default()
        };
        let feed = self
            .weft
            .then(|| StatusFeed::start(store.clone(), status_ttl, facts));
        let ring = feed.as_ref().map(|f| f.ring()).unwrap_or_default();
        for l in &list.leases {
            ring.insert(l.subnet);
        }
        let mut watcher = store.watch_from_list(Some(self.cfg.clone()), list);
        let seen = self.seen.clone();
        let watch = tokio::spawn(async move {
            while let Ok(events) = watcher.next().await {
                seen.fetch_add(events.len() as u64, Ordering::Relaxed);
                for ev in events {
                    match ev {
                        LeaseEvent::Added(l) => ring.insert(l.subnet),
                        LeaseEvent::Removed(l) | LeaseEvent::Expired(l) => ring.remove(&l.subnet),
                    }
                }
            }
        });
        self.hosts.push(LightHost { lease, feed, watch });
    }

    /// Host `i` dies: its status task and lease watch stop at once, as when its machine goes
    /// away; its status record expires with its etcd lease, its subnet lease stays.
    pub fn kill(&mut self, i: usize) -> Lease {
        let host = self.hosts.remove(i);
        host.lease.clone()
    }

    /// Host `i` finds `peers` (lease key names) unreachable since now, as its prober would
    /// tell it: the count, and the names (the status task keeps only the longest few).
    pub fn cannot_reach(&self, i: usize, peers: &[String]) {
        let now = SystemTime::now();
        let Some(feed) = &self.hosts[i].feed else {
            return;
        };
        feed.update(|f| {
            f.unreachable_count = peers.len() as u64;
            f.unreachable = peers.iter().map(|p| (p.clone(), now)).collect();
        });
    }

    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

/// What etcd served, from its own counters: client requests (every gRPC message it received
/// but the keep-alives of etcd leases, which are periodic, not caused by an event), watch
/// messages it sent, and the bytes of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub requests: u64,
    pub delivered: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Cost {
    pub fn of(etcd: &Etcd) -> Cost {
        let requests = etcd.metric_sum("grpc_server_msg_received_total", &[])
            - etcd.metric_sum(
                "grpc_server_msg_received_total",
                &[("grpc_method", "LeaseKeepAlive")],
            );
        Cost {
            requests: requests as u64,
            delivered: etcd.metric_sum("grpc_server_msg_sent_total", &[("grpc_method", "Watch")])
                as u64,
            bytes_in: etcd.metric_sum("etcd_network_client_grpc_received_bytes_total", &[]) as u64,
            bytes_out: etcd.metric_sum("etcd_network_client_grpc_sent_bytes_total", &[]) as u64,
        }
    }

    /// What happened between `before` and this.
    pub fn since(self, before: Cost) -> Cost {
        Cost {
            requests: self.requests - before.requests,
            delivered: self.delivered - before.delivered,
            bytes_in: self.bytes_in - before.bytes_in,
            bytes_out: self.bytes_out - before.bytes_out,
        }
    }
}

/// What a join, a death and a half/half partition cost etcd in a fleet of `n` (see
/// [`measure`]); `hosts` is the fleet's size when it was cut, `largest_record` the largest
/// status record then (0 without records).
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    pub join: Cost,
    pub death: Cost,
    pub partition: Cost,
    pub hosts: usize,
    pub largest_record: usize,
}

const CONFIG: &str = r#"{"Network":"198.19.0.0/16","SubnetLen":28,"Backend":{"Type":"vxlan"}}"#;

/// Status records live this long between keep-alives' thirds: none falls inside a window.
const LONG_TTL: Duration = Duration::from_secs(3600);

/// The host that dies has a short one, so that its record expires within the window.
const SHORT_TTL: Duration = Duration::from_secs(3);

/// Long enough for what a host does after an event to be over.
const QUIET: Duration = Duration::from_millis(500);

/// A fleet of `n` light hosts on a fresh etcd, then: one more joins; one more (with a short
/// record TTL) joins and dies; the fleet is cut in two halves. Nothing in a window asks etcd
/// anything but the hosts: the waits are on what the hosts saw, or fixed, and etcd's keys are
/// checked after a window closed. A flannel fleet's death is its lease ending (at the end of
/// its 24 h TTL, revoked here to see it), and a partition costs it nothing: it has no status.
pub async fn measure(n: u16, weft: bool) -> Costs {
    let (etcd, store, cfg) = with_config(CONFIG).await;
    let mut fleet = Fleet::start(&etcd, &cfg, n, LONG_TTL, weft).await;
    settle(&etcd, &store, weft.then_some(n as usize)).await;

    let (before, seen) = (Cost::of(&etcd), fleet.seen());
    fleet.join(&etcd, n, LONG_TTL).await;
    let everyone_saw_it = wait_for(Duration::from_secs(60), || {
        (fleet.seen() == seen + u64::from(n)).then_some(())
    });
    assert!(
        everyone_saw_it.is_some(),
        "the join did not reach all {n} hosts"
    );
    tokio::time::sleep(QUIET).await;
    let join = Cost::of(&etcd).since(before);
    settle(&etcd, &store, weft.then_some(n as usize + 1)).await;

    let death = die(&etcd, &store, &mut fleet, n).await;

    let before = Cost::of(&etcd);
    let hosts = cut_in_two(&fleet);
    if weft {
        tokio::time::sleep(weft::status::MIN_GAP + QUIET * 4).await;
    }
    let partition = Cost::of(&etcd).since(before);
    let largest_record = if weft {
        records_told(&store, hosts, hosts / 2).await
    } else {
        0
    };
    Costs {
        join,
        death,
        partition,
        hosts,
        largest_record,
    }
}

/// One more host joins and dies; what etcd did about it.
async fn die(etcd: &Etcd, store: &EtcdStore, fleet: &mut Fleet, n: u16) -> Cost {
    fleet.join(etcd, n + 1, SHORT_TTL).await;
    settle(etcd, store, fleet.weft.then_some(n as usize + 2)).await;
    let victim = fleet.kill(fleet.hosts.len() - 1);
    // A keep-alive the victim had in flight lands before the window.
    tokio::time::sleep(QUIET).await;
    let before = Cost::of(etcd);
    if !fleet.weft {
        // One request that the expiry itself would not cost.
        let id = victim.etcd_lease_id.expect("a leased subnet");
        etcd.etcdctl_ok(&["lease", "revoke", &format!("{id:x}")]);
        tokio::time::sleep(QUIET * 2).await;
        return Cost::of(etcd).since(before);
    }
    // The record expires (etcd checks every half second), the first marker marks at once,
    // the others look a second apart.
    let markers = Duration::from_secs(weft::status::MARKERS as u64);
    tokio::time::sleep(SHORT_TTL + markers + QUIET * 4).await;
    let death = Cost::of(etcd).since(before);
    let gone = store.gone_key(&victim.key_name());
    assert!(
        etcd.get(&gone).is_some(),
        "nobody marked the dead host {} gone",
        victim.subnet
    );
    death
}

/// Every host finds the other half unreachable; returns how many hosts there are.
fn cut_in_two(fleet: &Fleet) -> usize {
    let names: Vec<String> = fleet.hosts.iter().map(|h| h.lease.key_name()).collect();
    let half = names.len() / 2;
    for i in 0..names.len() {
        let other = if i < half {
            &names[half..]
        } else {
            &names[..half]
        };
        fleet.cannot_reach(i, other);
    }
    names.len()
}

/// Checks that all `hosts` records count the other half as unreachable; returns the size of
/// the largest.
async fn records_told(store: &EtcdStore, hosts: usize, half: usize) -> usize {
    let keys = store.list_weft().await.expect("listing weft's keys");
    let told = |v: &[u8]| {
        let r = weft::status::StatusRecord::parse("", v).expect("a status record");
        let n = r.unreachable_total() as usize;
        n == half || n == hosts - half
    };
    let cut = keys.status.iter().filter(|(_, v)| told(v)).count();
    assert_eq!(cut, hosts, "records telling of the partition");
    keys.status.iter().map(|(_, v)| v.len()).max().unwrap_or(0)
}

/// Waits until `records` status records (if any are expected) are in etcd and etcd has
/// served nothing for a moment: the hosts' start-up requests are behind us.
async fn settle(etcd: &Etcd, store: &EtcdStore, records: Option<usize>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = store
            .list_weft()
            .await
            .expect("listing weft's keys")
            .status
            .len();
        let before = Cost::of(etcd);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The listing above and the two metric reads are this check's own.
        let quiet = Cost::of(etcd).since(before).requests == 0;
        if records.is_none_or(|n| n == have) && quiet {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{have} of {records:?} status records after 120 s"
        );
    }
}
