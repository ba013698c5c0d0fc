//! This host's own lease: renewed before it runs out (one etcd lease kept alive), acquired
//! again when it is lost (the same subnet while it is free), and rewritten in place when
//! what it advertises changes (a device's MAC, the public IP).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::{retry, Agent};
use crate::store::{Previous, StoreError};

impl Agent {
    /// When to renew: the margin before expiry, or half the TTL when the margin is longer
    /// than that (short TTLs in labs); sooner while renewals fail.
    pub(super) fn renew_at(&self) -> tokio::time::Instant {
        if let Some(at) = self.renew_retry_at {
            return at;
        }
        let now = tokio::time::Instant::now();
        let Some(exp) = self.own.expiration else {
            // A reservation never runs out; a lease whose expiry is unknown is renewed
            // early rather than risked (a renewal answers with the expiry).
            return match self.own.etcd_lease_id {
                Some(_) => now + (self.opts.lease_ttl / 2).min(Duration::from_secs(3600)),
                None => now + Duration::from_secs(3600),
            };
        };
        let lead = self.opts.renew_margin.min(self.opts.lease_ttl / 2);
        match exp
            .checked_sub(lead)
            .map(|t| t.duration_since(SystemTime::now()))
        {
            Some(Ok(d)) => now + d,
            _ => now,
        }
    }

    /// The metrics of the lease held: held, and when it runs out.
    pub(super) fn note_own_lease(&self) {
        let m = &self.metrics;
        m.lease_held.store(true, Ordering::Relaxed);
        let unix = match self.own.expiration {
            None => -1,
            Some(t) => t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        m.lease_expires_unix.store(unix, Ordering::Relaxed);
    }

    /// Takes this host's lease as the watch reported it. The watch carries no expirations
    /// (a TTL look-up per event would cost every host one request per join), so the known
    /// expiry stays while the etcd lease is the same one; a lease under another etcd lease
    /// has its expiry looked up, since renewal is scheduled from it.
    pub(super) async fn take_update(&mut self, mut l: crate::lease::Lease) {
        if l.expiration.is_none() && l.etcd_lease_id.is_some() {
            if l.etcd_lease_id == self.own.etcd_lease_id {
                l.expiration = self.own.expiration;
            } else {
                match self.store.get_lease(l.subnet).await {
                    Ok(Some(timed)) if timed.etcd_lease_id == l.etcd_lease_id => {
                        l.expiration = timed.expiration;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read this host's lease expiry; renewing now");
                        l.expiration = Some(SystemTime::now());
                    }
                }
            }
        }
        self.own = l;
        self.note_own_lease();
    }

    /// Takes `lease` as this host's own.
    fn hold(&mut self, lease: crate::lease::Lease) {
        self.own = lease;
        self.peers.set_own(&self.own);
        self.note_own_lease();
        let own = self.policy_own_lease();
        if let Some(tx) = &self.policy_lease {
            tx.send_if_modified(|l| std::mem::replace(l, own) != *l);
        }
    }

    /// Gets a lease again (the same subnet when it is still free) and re-advertises it; the
    /// containers keep running meanwhile.
    pub(super) async fn reacquire(&mut self) -> anyhow::Result<()> {
        self.metrics.lease_held.store(false, Ordering::Relaxed);
        let attrs = self.host.attrs();
        let prev = Previous {
            subnet: Some(self.own.subnet),
            subnet6: self.own.subnet6,
        };
        let (store, cfg, ttl) = (&self.store, &self.host.cfg, self.opts.lease_ttl);
        let lease = retry("re-acquiring the subnet lease", &self.metrics, || {
            store.acquire_lease(cfg, &attrs, prev, ttl)
        })
        .await?;
        self.metrics.lease_acquisitions.inc();
        let moved = lease.subnet != self.own.subnet || lease.subnet6 != self.own.subnet6;
        if moved {
            tracing::warn!(old = %self.own.key_name(), new = %lease.key_name(), "re-acquired a different subnet; containers must be restarted to use it");
        } else {
            tracing::info!(subnet = %lease.subnet, ipv6_subnet = ?lease.subnet6, "lease re-acquired");
        }
        self.peers.remove(&self.own.subnet);
        self.hold(lease);
        if moved {
            self.write_subnet_env()?;
        }
        self.publish();
        self.datapath.kick("own lease changed");
        Ok(())
    }

    pub(super) async fn renew(&mut self) -> anyhow::Result<()> {
        match self.store.renew_lease(&self.own, self.opts.lease_ttl).await {
            Ok(l) => {
                self.hold(l);
                self.metrics.lease_renewals.inc();
                if self.renew_retry_at.take().is_some() {
                    tracing::info!(subnet = %self.own.subnet, "lease renewed again after failures");
                } else {
                    tracing::debug!(subnet = %self.own.subnet, "lease renewed");
                }
            }
            Err(StoreError::LeaseGone { .. }) => {
                self.renew_retry_at = None;
                tracing::warn!(subnet = %self.own.subnet, "lease expired or was revoked; acquiring it again");
                self.reacquire().await?;
            }
            Err(e) => {
                self.metrics.etcd_errors.inc();
                self.status.error(&e);
                tracing::warn!(error = %e, "lease renewal failed; retrying in 5s");
                // The retry is a timer of the main loop, so lease events and datapath reports
                // keep flowing meanwhile.
                self.renew_retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
        }
        Ok(())
    }

    /// A device was recreated without the old MAC, or changed by hand: the lease advertises
    /// the `changed` devices' MACs as the devices have them now.
    pub(super) async fn readvertise_macs(&mut self, changed: Vec<(String, crate::netlink::Mac)>) {
        if !self.advertise("a device's MAC changed").await {
            for (name, _) in changed {
                self.host.device_mac.remove(&name);
            }
        }
    }

    /// Rewrites this host's lease in place when what it should advertise (`host.attrs()`:
    /// the backends it speaks, their data) differs from what it does; `false` when that
    /// failed (logged; the next change or report tries again).
    pub(super) async fn advertise(&mut self, why: &str) -> bool {
        let attrs = self.host.attrs();
        if attrs == self.own.attrs {
            return true;
        }
        match self.store.update_lease_attrs(&self.own, &attrs).await {
            Ok(l) => {
                tracing::info!(subnet = %l.subnet, backend = %attrs.backend_type, also = ?attrs.weft_backends.as_ref().map(|v| v.to_string()), "lease rewritten: {why}");
                self.own = l;
                self.peers.set_own(&self.own);
                self.publish();
                true
            }
            Err(e) => {
                self.metrics.etcd_errors.inc();
                tracing::warn!(error = %e, "cannot rewrite the lease ({why}); will retry");
                false
            }
        }
    }

    /// Writes the new public IP into this host's lease, keeping its subnet and etcd lease, so
    /// peers send to the new address.
    pub(super) async fn advertise_public_ip(&mut self) -> anyhow::Result<()> {
        let attrs = self.host.attrs();
        let mut delay = Duration::from_millis(250);
        loop {
            match self.store.update_lease_attrs(&self.own, &attrs).await {
                Ok(l) => {
                    tracing::info!(subnet = %l.subnet, public_ip = %self.host.ext.public_ip, "lease now advertises the new public IP");
                    self.own = l;
                    self.peers.set_own(&self.own);
                    self.publish();
                    return Ok(());
                }
                Err(StoreError::LeaseGone { .. }) => return self.reacquire().await,
                Err(e) if e.is_refusal() => return Err(e.into()),
                Err(e) => {
                    self.metrics.etcd_errors.inc();
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot advertise the new public IP");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
