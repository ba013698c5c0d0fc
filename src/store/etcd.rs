//! [`EtcdStore`], what weftd and weftctl hold: the network's config and leases in etcd. Each
//! operation reads or writes through the etcd registry; the decisions about leases are the
//! allocator's.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{info, warn};

use super::alloc::{Allocator, Previous};
use super::decode::LeaseList;
use super::registry::{EtcdRegistry, Registry};
use super::{read, EtcdOptions, LeaseWatcher, StoreError};
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs};

#[derive(Clone)]
pub struct EtcdStore {
    reg: EtcdRegistry,
}

impl EtcdStore {
    /// Connects and checks that etcd answers, within a few seconds.
    pub async fn connect(opts: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        Ok(EtcdStore {
            reg: EtcdRegistry::connect(opts).await?,
        })
    }

    pub(super) fn registry(&self) -> &EtcdRegistry {
        &self.reg
    }

    fn alloc(&self) -> Allocator<'_, EtcdRegistry> {
        Allocator::new(&self.reg)
    }

    /// The endpoints, as given, for messages.
    pub fn endpoints(&self) -> &str {
        self.reg.endpoints()
    }

    /// The key prefix without a trailing slash.
    pub fn prefix(&self) -> &str {
        self.reg.layout().prefix()
    }

    pub fn config_key(&self) -> String {
        self.reg.layout().config_key()
    }

    /// The full etcd key of a lease.
    pub fn lease_key(&self, lease: &Lease) -> String {
        self.reg.layout().lease_key(lease)
    }

    // ---- config ----

    /// The network config; `Ok(None)` when the key does not exist.
    pub async fn get_config(&self) -> Result<Option<NetworkConfig>, StoreError> {
        read::config(&self.reg).await
    }

    /// The config document exactly as stored, valid or not; `Ok(None)` when missing.
    pub async fn get_config_text(&self) -> Result<Option<String>, StoreError> {
        let kv = self.reg.get(&self.config_key()).await?;
        Ok(kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Waits until a valid config is stored. Each distinct reason for waiting (missing,
    /// invalid, etcd unreachable) is logged once; an invalid config gets a line per problem.
    pub async fn wait_for_config(&self) -> Result<NetworkConfig, StoreError> {
        self.wait_for_config_counting(|| {}).await
    }

    /// [`wait_for_config`](Self::wait_for_config), calling `on_error` for each failed read.
    /// Refused credentials or permissions end the wait with the error: they never fix
    /// themselves.
    pub async fn wait_for_config_counting(
        &self,
        on_error: impl Fn(),
    ) -> Result<NetworkConfig, StoreError> {
        let mut last_reason: Vec<String> = Vec::new();
        loop {
            let reason = match self.get_config().await {
                Ok(Some(cfg)) => {
                    if !last_reason.is_empty() {
                        info!(key = %self.config_key(), "network config found");
                    }
                    return Ok(cfg);
                }
                Err(e) if e.is_refusal() => return Err(e),
                Ok(None) => vec![format!(
                    "no network config at {} yet; waiting for it (weftctl config set FILE)",
                    self.config_key()
                )],
                Err(StoreError::Config { key, problems }) => {
                    on_error();
                    problems
                        .problems()
                        .iter()
                        .map(|p| format!("cannot use the network config at {key}: {p}"))
                        .collect()
                }
                Err(e) => {
                    on_error();
                    vec![format!("cannot use the network config: {e}")]
                }
            };
            if reason != last_reason {
                for line in &reason {
                    warn!("{line}");
                }
                last_reason = reason;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Validates and stores a config document.
    pub async fn put_config(&self, cfg_json: &str) -> Result<(), StoreError> {
        let key = self.config_key();
        NetworkConfig::parse(cfg_json).map_err(|problems| StoreError::Config {
            key: key.clone(),
            problems,
        })?;
        self.reg.put(&key, cfg_json).await
    }

    // ---- reading leases ----

    /// All leases with their expirations, at the current revision (or `revision` if > 0).
    pub(super) async fn list_at(
        &self,
        cfg: Option<&NetworkConfig>,
        revision: i64,
    ) -> Result<LeaseList, StoreError> {
        read::list(&self.reg, cfg, revision, true).await
    }

    /// All leases, sorted by subnet. With a config, leases outside its network are skipped.
    pub async fn list_leases(&self, cfg: Option<&NetworkConfig>) -> Result<LeaseList, StoreError> {
        self.list_at(cfg, 0).await
    }

    /// Like [`list_leases`](Self::list_leases) but in one round trip: no TTL look-ups, so
    /// leases on an etcd lease carry no `expiration`. weftd starts from this listing: the
    /// datapath never reads a peer's expiry, and with thousands of leases one look-up per
    /// lease would dominate a cold start.
    pub async fn list_leases_untimed(
        &self,
        cfg: Option<&NetworkConfig>,
    ) -> Result<LeaseList, StoreError> {
        read::list(&self.reg, cfg, 0, false).await
    }

    /// Fills in the expirations of an untimed listing: one TTL look-up per etcd lease.
    pub async fn time_leases(&self, list: &mut LeaseList) -> Result<(), StoreError> {
        read::fill_expirations(&self.reg, &mut list.leases).await?;
        list.timed = true;
        Ok(())
    }

    /// The lease of one subnet, if any (a key that does not parse is an error naming it).
    pub async fn get_lease(&self, subnet: Ipv4Net) -> Result<Option<Lease>, StoreError> {
        read::lease(&self.reg, subnet).await
    }

    /// Starts a watch right after a listing, whose leases the caller already knows; the
    /// watcher keeps them (see [`LeaseWatcher::leases`]).
    pub fn watch_from_list(&self, cfg: Option<NetworkConfig>, list: LeaseList) -> LeaseWatcher {
        LeaseWatcher::from_list(self.reg.clone(), cfg, list)
    }

    // ---- this host's lease ----

    /// Acquires this host's lease in flannel's order: the lease already holding
    /// `attrs.public_ip` if it still fits, else `prev`'s subnets if free, else random free
    /// ones; an IPv6 subnet another host took at the same moment is left to the older lease.
    /// A lost race re-reads the leases and retries.
    pub async fn acquire_lease(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        prev: impl Into<Previous>,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.alloc().acquire(cfg, attrs, prev.into(), ttl).await
    }

    /// Renews a lease by keeping its one etcd lease alive. `LeaseGone` when the key or the
    /// etcd lease has vanished: the caller re-acquires. A lease an operator turned into a
    /// reservation comes back as that reservation.
    pub async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        self.alloc().renew(lease, ttl).await
    }

    /// Rewrites a lease's value, keeping its etcd lease (e.g. after the VTEP MAC changed).
    pub async fn update_lease_attrs(
        &self,
        lease: &Lease,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, StoreError> {
        self.alloc().update_attrs(lease, attrs).await
    }

    // ---- operator actions ----

    /// Revokes a subnet's lease if it has not changed since it was read. `Ok(false)` when
    /// there is no lease; reservations are refused (they are removed with
    /// `remove_reservation`).
    pub async fn revoke_lease(&self, subnet: Ipv4Net) -> Result<bool, StoreError> {
        self.alloc().revoke(subnet).await
    }

    /// Reserves `subnet` for `public_ip`: a key without an etcd lease, so it never expires.
    /// A lease already held by the same PublicIP becomes the reservation. `v6` adds an IPv6
    /// subnet and public IPv6 address to it (a dual-stack key).
    pub async fn add_reservation(
        &self,
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        v6: Option<(Ipv6Net, Ipv6Addr)>,
    ) -> Result<(), StoreError> {
        self.alloc().add_reservation(subnet, public_ip, v6).await
    }

    /// Deletes a reservation. `Ok(false)` when the subnet has no key; a lease that is not a
    /// reservation is refused and left alone.
    pub async fn remove_reservation(&self, subnet: Ipv4Net) -> Result<bool, StoreError> {
        self.alloc().remove_reservation(subnet).await
    }
}
