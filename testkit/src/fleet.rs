//! A fleet of light hosts against one real etcd: each does to etcd what weftd does (acquires
//! a lease, watches the leases, keeps its status record through weftd's own status task, and
//! keeps the ring of leases that task asks who marks a gone host) and nothing else — no
//! namespace, no kernel — so hundreds run in one process. What an event costs etcd is read
//! from etcd's own counters before and after it ([`Cost`]): messages and bytes are counted
//! by the server, so they are the same on any machine.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use weft::config::NetworkConfig;
use weft::lease::{Lease, LeaseEvent};
use weft::status::{Facts, StatusFeed};

use crate::etcd::Etcd;

/// The subnet lease's TTL: nothing renews it within a test.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// One light host.
pub struct LightHost {
    pub lease: Lease,
    feed: StatusFeed,
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
    /// Lease events delivered to the hosts' watches, summed.
    pub seen: Arc<AtomicU64>,
}

impl Fleet {
    /// `n` hosts, started one after another, their status records on etcd leases of
    /// `status_ttl` (long, so that no keep-alive falls inside a measurement).
    pub async fn start(etcd: &Etcd, cfg: &NetworkConfig, n: u16, status_ttl: Duration) -> Fleet {
        let mut fleet = Fleet {
            hosts: Vec::new(),
            cfg: cfg.clone(),
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
        let feed = StatusFeed::start(store.clone(), status_ttl, facts);
        let ring = feed.ring();
        for l in &list.leases {
            ring.insert(l.subnet);
        }
        let mut watcher = store.watch_from_list(Some(self.cfg.clone()), &list);
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
        self.hosts[i].feed.update(|f| {
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
