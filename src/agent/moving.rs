//! This host's backends while the fleet moves from one to another (see
//! [`crate::live::moving`]): starting the new one when told (or saying why it cannot), the
//! lease advertising what runs, each pair's settling, and the old backend going once no peer
//! needs it (and coming back if one that does appears). Also the config revision the host
//! runs, for its status record.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use ipnet::Ipv4Net;

use super::host::HostFacts;
use super::Agent;
use crate::config::BackendConfig;
use crate::lease::LeaseAttrs;
use crate::live::{self, HostMove, Need, Settle, Situation};
use crate::netlink::{format_mac, Netlink};
use crate::status::{ConfigState, Newer};

/// The agent's part of a migration.
#[derive(Debug)]
pub(super) struct Moving {
    /// Why the new backend cannot run here; cleared by a new decision about the config.
    pub failed: Option<String>,
    /// A host told to move keeps the old backend while some peer needs it.
    pub keep_old: bool,
    pub settle: Settle,
    /// No snapshot made since start-up: what is in etcd then has had its moment.
    pub at_start: bool,
    /// When to look again: an advertisement settles, or the old backend may go.
    pub wake_at: Option<tokio::time::Instant>,
}

impl Moving {
    pub fn new(failed: Option<String>, keep_old: bool) -> Moving {
        Moving {
            failed,
            keep_old,
            settle: Settle::default(),
            at_start: true,
            wake_at: None,
        }
    }

    fn wake(&mut self, at: Instant) {
        let at = tokio::time::Instant::from_std(at);
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// Makes backend `b` ready on this host: usable with the external interface, its secrets
/// loaded, its devices made or adopted (a device that must be made gets the MAC `own`, this
/// host's lease, advertises for it). Says why not.
pub(super) async fn start_backend(
    host: &mut HostFacts,
    b: &BackendConfig,
    own: Option<&LeaseAttrs>,
) -> Result<(), String> {
    let backend = b.backend();
    let families = host.families();
    for f in &families {
        backend.usable(&host.ext, *f)?;
    }
    if !host.secrets.contains_key(backend.type_name()) {
        let secrets = backend.load_secrets()?;
        host.secrets.insert(backend.type_name(), secrets);
    }
    for f in families {
        let Some(spec) = host.device_spec(b, f) else {
            continue;
        };
        let data = own
            .and_then(|o| o.speaks(backend.type_name()))
            .and_then(|s| s.data(f));
        let (s, mac) = (spec.clone(), backend.advertised_mac(data));
        let dev = tokio::task::spawn_blocking(move || {
            let mut nl =
                Netlink::new().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
            s.kind.ensure(&mut nl, &s, mac).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("device task failed: {e}"))?
        .map_err(|e| format!("cannot set up the device {}: {e}", spec.name))?;
        tracing::info!(device = %spec.name, backend = backend.type_name(), mac = ?dev.mac.map(|m| format_mac(&m)), mtu = dev.mtu, created = dev.created, "device ready");
        if let Some(m) = dev.mac {
            host.device_mac.insert(spec.name.clone(), m);
        }
    }
    Ok(())
}

impl Agent {
    /// Whether the migration under way tells this host (lease `subnet`) to move.
    pub(super) fn selected(&self, subnet: Ipv4Net) -> bool {
        let m = self.following.record.migration.as_ref();
        m.is_some_and(|m| m.hosts.contains(subnet))
    }

    /// Works out the backends this host runs now, starts any it does not run yet, and hands
    /// the result on: the lease first (peers learn what this host speaks), then the datapath
    /// (devices, peers, routes; devices of a backend no longer run are removed), then
    /// subnet.env when the MTU or `env` (the networks) changed.
    pub(super) async fn refresh_backends(&mut self, env: bool) -> anyhow::Result<()> {
        let from = self.following.record.from_backend();
        let mut run = live::running(&self.situation(from.as_ref()));
        let types =
            |r: &live::Running| r.backends.iter().map(|b| b.type_name()).collect::<Vec<_>>();
        let have = types(&self.host.run);
        for b in run
            .backends
            .clone()
            .iter()
            .filter(|b| !have.contains(&b.type_name()))
        {
            let own = Some(self.own.attrs.clone());
            if let Err(why) = start_backend(&mut self.host, b, own.as_ref()).await {
                tracing::warn!(
                    backend = b.type_name(),
                    "cannot run the backend here: {why}; staying on the one it runs"
                );
                self.moving.failed = Some(why);
                run = live::running(&self.situation(from.as_ref()));
                break;
            }
        }
        if run.state != self.host.run.state || types(&run) != have {
            tracing::info!(state = run.state.name(), backends = ?types(&run), "backends this host runs");
        }
        self.host.run = run;
        let families = self.host.families();
        self.host.devices = self.host.device_specs(&families);
        self.advertise("what this host speaks changed").await;
        self.publish();
        self.datapath.kick("the config or the backends changed");
        let mtu = self.host.overlay_mtu();
        if env || mtu != self.host.mtu {
            if mtu != self.host.mtu {
                tracing::warn!(old = self.host.mtu, new = mtu, "the MTU for containers changed; running containers keep theirs until they are restarted");
            }
            self.host.mtu = mtu;
            self.write_subnet_env()?;
        }
        Ok(())
    }

    /// What decides this host's backends now.
    fn situation<'a>(&'a self, from: Option<&'a BackendConfig>) -> Situation<'a> {
        Situation {
            target: &self.host.cfg.backend,
            from,
            selected: self.selected(self.own.subnet),
            failed: self.moving.failed.as_deref(),
            keep_old: self.moving.keep_old,
            own: Some(&self.own.attrs),
        }
    }

    /// The devices of the two backends of a migration that this host does not run.
    pub(super) fn retired(&self) -> Vec<String> {
        let Some(from) = self.following.record.from_backend() else {
            return Vec::new();
        };
        let target = &self.host.cfg.backend;
        let running = |b: &BackendConfig| {
            (self.host.run.backends.iter()).any(|r| r.type_name() == b.type_name())
        };
        let others: Vec<&BackendConfig> = [target, &from]
            .into_iter()
            .filter(|b| !running(b))
            .collect();
        self.host.device_names_of(&others)
    }

    /// The leases whose advertisement of the preferred backend has settled, while this host
    /// runs two backends (one needs no choosing); notes when the next one settles.
    pub(super) fn settled(&mut self) -> Option<Arc<BTreeSet<Ipv4Net>>> {
        let at_start = std::mem::take(&mut self.moving.at_start);
        if self.host.run.backends.len() < 2 {
            return None;
        }
        let now = Instant::now();
        let target = self.host.cfg.backend.type_name();
        self.moving
            .settle
            .note(target, &self.peers.snapshot(), now, at_start);
        let own = self.own.subnet;
        if let Some(t) = self.moving.settle.next_settling(now, own) {
            self.moving.wake(t);
        }
        Some(Arc::new(self.moving.settle.settled(now, own)))
    }

    /// After the leases changed or time passed: the old backend goes once no peer needs it
    /// for a while, and comes back when a peer that speaks only it appears.
    pub(super) async fn reconsider_old(&mut self) -> anyhow::Result<()> {
        let Some(from) = self.following.record.from_backend() else {
            return Ok(());
        };
        let (target, own) = (self.host.cfg.backend.type_name(), self.own.subnet);
        if from.type_name() == target || !self.selected(own) || self.moving.failed.is_some() {
            return Ok(());
        }
        let leases = self.peers.snapshot();
        let keep = match self.host.run.state {
            HostMove::Moving => match self
                .moving
                .settle
                .old_needed(from.type_name(), own, &leases)
            {
                Need::Always => true,
                Need::Until(t) if t > Instant::now() => {
                    self.moving.wake(t);
                    true
                }
                _ => false,
            },
            HostMove::Moved => live::moving::needs_old(from.type_name(), target, own, &leases),
            _ => return Ok(()),
        };
        if keep == self.moving.keep_old {
            return Ok(());
        }
        match keep {
            true => tracing::info!(
                backend = from.type_name(),
                "a peer speaks only the old backend: running it again"
            ),
            false => tracing::info!(
                backend = from.type_name(),
                "no peer needs the old backend any more: removing it"
            ),
        }
        self.moving.keep_old = keep;
        self.refresh_backends(false).await
    }

    /// The config revision this host runs entirely, and a newer one it does not, with why.
    pub(super) fn config_state(&self) -> ConfigState {
        let f = &self.following;
        let from_rev = f
            .record
            .migration
            .as_ref()
            .map_or(f.running_rev(), |m| m.from_rev);
        let to = self.host.cfg.backend.type_name();
        let (rev, state, why) = match &self.host.run.state {
            HostMove::Waiting => (
                from_rev,
                "waiting",
                format!("not yet told to move to {to} (weftctl migrate)"),
            ),
            HostMove::Failed(why) => (from_rev, "failed", format!("cannot run {to}: {why}")),
            HostMove::Moving if self.moving.settle.pending(self.own.subnet, Instant::now()) > 0 => {
                let n = self.moving.settle.pending(self.own.subnet, Instant::now());
                (
                    from_rev,
                    "moving",
                    format!("{n} hosts not yet settled on {to}"),
                )
            }
            _ => match &f.not_run {
                Some(why) => (f.running_rev(), "refused", why.join("; ")),
                None => {
                    return ConfigState {
                        rev: f.current_rev.max(f.running_rev()),
                        newer: None,
                    }
                }
            },
        };
        let newest = f.current_rev.max(f.running_rev());
        ConfigState {
            rev,
            newer: (newest != rev).then(|| Newer {
                rev: newest,
                state: state.into(),
                why,
            }),
        }
    }
}
