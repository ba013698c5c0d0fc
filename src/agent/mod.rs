//! weftd's life: start-up in a fixed order ([`startup`]), then one loop that follows the
//! leases in etcd ([`peers`]), keeps this host's own ([`own`]), follows its facts
//! ([`host`]), and hands every change to the datapath thread. Nothing here tears the
//! datapath down: stopping weftd leaves the kernel as it is.

mod config;
mod host;
mod moving;
mod own;
mod peers;
mod policy;
mod startup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};

use crate::datapath::{Datapath, Report, Snapshot};
use crate::http;
use crate::iface::{ExtIface, IfaceSelect};
use crate::lease::{Lease, LeaseEvent};
use crate::metrics::Metrics;
use crate::netlink::format_mac;
use crate::probe::{ProbeConfig, Prober};
use crate::status::StatusFeed;
use crate::store::{EtcdOptions, EtcdStore, LeaseList, LeaseWatcher, StoreError};
use crate::subnet_env::SubnetEnv;
use config::Following;
use host::HostFacts;
use moving::Moving;
use peers::Peers;

/// weftd's settings, from its flags.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub etcd: EtcdOptions,
    pub select: IfaceSelect,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    pub status_ttl: Duration,
    pub renew_margin: Duration,
    pub ip_masq: bool,
    pub healthz: Option<SocketAddr>,
    pub resync: Duration,
    /// How often a tunnel device's peers are read back (WireGuard tells nobody of changes).
    pub tunnel_poll: Duration,
    pub vxlan_device: Option<String>,
    /// How the peers are probed through the overlay.
    pub probe: ProbeConfig,
}

/// Retries an etcd operation with capped exponential backoff until it succeeds, logging each
/// failure once with what was being done.
async fn retry<T, F, Fut>(what: &str, metrics: &Metrics, mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(250);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            // Refused credentials or permissions: weftd stops with the reason, and systemd's
            // restarts keep saying it in the journal until an operator mends it.
            Err(e) if e.is_refusal() => {
                metrics.etcd_errors.inc();
                return Err(e);
            }
            Err(e) => {
                metrics.etcd_errors.inc();
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Runs weftd until SIGTERM or SIGINT.
pub async fn run(opts: AgentConfig) -> anyhow::Result<()> {
    let shown = Arc::new(http::Shown::default());
    if let Some(addr) = opts.healthz {
        let listener = http::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --healthz-ip/--healthz-port {addr}"))?;
        tracing::info!(%addr, "serving /healthz, /readyz, /metrics and /peers");
        tokio::spawn(http::serve(listener, shown.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        r = start_and_run(opts, shown) => r,
        _ = term.recv() => {
            tracing::info!("SIGTERM: exiting; the datapath stays as it is");
            Ok(())
        }
        _ = int.recv() => {
            tracing::info!("SIGINT: exiting; the datapath stays as it is");
            Ok(())
        }
    }
}

/// Start-up, then the main loop.
async fn start_and_run(opts: AgentConfig, shown: Arc<http::Shown>) -> anyhow::Result<()> {
    let (mut agent, known, reports) = startup::start(opts, shown).await?;
    agent.start_policy().await?;
    agent.note_own_lease();
    let watcher = agent.adopt_listing(known);
    agent.run(watcher, reports).await
}

struct Agent {
    opts: AgentConfig,
    metrics: Arc<Metrics>,
    store: EtcdStore,
    host: HostFacts,
    own: Lease,
    peers: Peers,
    datapath: Datapath,
    /// Probes every peer through the overlay; None when its sockets could not be opened.
    prober: Option<Arc<Prober>>,
    status: StatusFeed,
    /// Set while renewals fail: when to try again.
    renew_retry_at: Option<tokio::time::Instant>,
    /// The store was connected anew: the lease watch must move to the new connection.
    rewatch: bool,
    /// systemd has been told READY=1.
    notified: bool,
    /// Network policy follows this host's lease through it.
    policy_lease: Option<tokio::sync::watch::Sender<policy::OwnLease>>,
    /// Network policy's facts, for the status record.
    policy_facts: tokio::sync::watch::Receiver<Option<crate::status::PolicyFacts>>,
    /// The config the network runs, as last read.
    following: Following,
    /// This host's part in a migration between backends.
    moving: Moving,
}

impl Agent {
    /// The listing made before the acquisition is the starting state: the watch begins at its
    /// revision, so the acquisition itself (and anything else since) arrives as events.
    /// Listing 5,000 leases again would cost a cold start a second. The watcher keeps the
    /// listed leases and the peers share them: each lease is held once.
    fn adopt_listing(&mut self, list: LeaseList) -> LeaseWatcher {
        let watcher = (self.store).watch_from_list(Some(self.host.cfg.clone()), list);
        self.peers.unreadable = watcher.skipped_keys().borrow().len();
        for l in watcher.leases() {
            self.peers.adopt(l);
        }
        self.peers.set_own(&self.own);
        self.publish();
        watcher
    }

    /// The main loop: lease events, renewals and datapath reports, until an error ends it.
    async fn run(
        mut self,
        watcher: LeaseWatcher,
        mut reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
    ) -> anyhow::Result<()> {
        // subnet.env is written once the datapath has reported its first full pass (whether
        // or not that pass programmed everything), so a plugin that finds it can use the
        // subnet at once; readiness waits for a pass that did.
        if let Some(r) = reports.recv().await {
            self.on_report(r).await?;
        }
        self.write_subnet_env()?;
        self.notify_ready_if_ready();

        // The watch starts from the list's revision and knows its leases, so a compaction
        // before the first event still yields exactly the difference.
        self.rewatch = false;
        let listed = watcher.revision();
        let mut unreadable = watcher.skipped_keys();
        let mut lease_events = spawn_watch(watcher);
        let (mut config_events, mut config_task) =
            config::watch(self.store.clone(), self.following.record_rev.max(listed));
        // A peer becoming unreachable or reachable again wakes the loop, which puts it into
        // the status record; without probes this never fires.
        let mut unreachable = match &self.prober {
            Some(p) => p.unreachable(),
            None => tokio::sync::watch::channel(Default::default()).1,
        };
        loop {
            self.feed_status();
            let renew_at = self.renew_at();
            tokio::select! {
                Ok(()) = unreachable.changed() => {}
                Ok(()) = self.policy_facts.changed() => {}
                batch = lease_events.recv() => match batch {
                    Some(Ok(events)) => self.on_events(events).await?,
                    Some(Err(e)) => {
                        self.metrics.etcd_errors.inc();
                        self.status.error(&e);
                        tracing::warn!(error = %e, "lease watch interrupted; resuming");
                    }
                    None => bail!("the lease watch task ended"),
                },
                Ok(()) = unreadable.changed() => {
                    self.peers.unreadable = unreadable.borrow_and_update().len();
                    self.publish();
                }
                _ = tokio::time::sleep_until(renew_at) => self.renew().await?,
                Some(()) = config_events.recv() => self.on_config_event().await?,
                _ = wake(self.moving.wake_at) => {
                    self.moving.wake_at = None;
                    self.publish();
                    self.reconsider_old().await?;
                }
                Some(r) = reports.recv() => {
                    self.on_report(r).await?;
                    self.notify_ready_if_ready();
                }
            }
            if std::mem::take(&mut self.rewatch) {
                // The old watch task ends when it next tries to hand a batch over.
                let watcher = self.watch_again().await?;
                unreadable = watcher.skipped_keys();
                lease_events = spawn_watch(watcher);
                config_task.abort();
                (config_events, config_task) =
                    config::watch(self.store.clone(), self.following.record_rev);
            }
        }
    }

    /// Hands this host's facts to the status record; it is written only when they changed.
    fn feed_status(&self) {
        let m = &self.metrics;
        let rev = self.config_state().rev;
        m.config_revision.set(u64::try_from(rev).unwrap_or(0));
        self.status.update(|f| {
            f.lease_key = self.own.key_name();
            f.public_ip = Some(self.host.ext.public_ip.into());
            f.backend = self.host.backend_names();
            f.config = Some(self.config_state());
            f.ready = m.not_ready_reasons().is_empty();
            f.drift_repairs = m.drift_repairs.get();
            (f.unreachable_count, f.unreachable) = self.unreachable_peers();
            f.policy = self.policy_facts.borrow().clone();
        });
    }

    /// The hosts the probes find unreachable: how many, and the longest unreachable few by
    /// lease key name with since when (a dual-stack peer counts when either family is cut).
    /// Costs the few it names, whatever the fleet's size.
    fn unreachable_peers(&self) -> (u64, Vec<(String, SystemTime)>) {
        let Some(prober) = &self.prober else {
            return (0, Vec::new());
        };
        let hosts = prober.unreachable().borrow().clone();
        let named = (hosts.oldest.iter())
            .filter_map(|(subnet, since)| {
                let lease = self.peers.get(subnet)?;
                Some((lease.key_name(), *since))
            })
            .collect();
        (hosts.count as u64, named)
    }

    fn publish(&mut self) {
        let settled = self.settled();
        self.datapath.update(Arc::new(Snapshot {
            cfg: self.host.cfg.clone(),
            ext: self.host.ext.clone(),
            backends: self.host.run.backends.clone(),
            devices: self.host.devices.clone(),
            retire: self.retired(),
            settled,
            own: self.own.clone(),
            leases: self.peers.snapshot(),
            unreadable: self.peers.unreadable,
            firewall: self.host.firewall_spec(&self.own, self.opts.ip_masq),
        }));
    }

    /// Network policy's thread and feed; its first pass runs before subnet.env is written,
    /// so a plugin that finds subnet.env finds the policy program too.
    async fn start_policy(&mut self) -> anyhow::Result<()> {
        let (lease_tx, lease) = tokio::sync::watch::channel(self.policy_own_lease());
        let (facts, facts_rx) = tokio::sync::watch::channel(None);
        self.policy_lease = Some(lease_tx);
        self.policy_facts = facts_rx;
        let settings = policy::PolicySettings {
            subnet_file: self.opts.subnet_file.clone(),
            lease,
            ttl: self.opts.status_ttl,
            resync: self.opts.resync,
            facts,
        };
        let wait = Duration::from_secs(10);
        policy::start(self.store.clone(), settings, self.metrics.clone(), wait).await
    }

    /// This host's lease as network policy sees it.
    fn policy_own_lease(&self) -> policy::OwnLease {
        let mut subnets = vec![ipnet::IpNet::V4(self.own.subnet)];
        subnets.extend(self.own.subnet6.map(ipnet::IpNet::V6));
        policy::OwnLease {
            subnets,
            host: self.own.key_name(),
        }
    }

    fn write_subnet_env(&self) -> anyhow::Result<()> {
        let (cfg, mtu) = (&self.host.cfg, self.host.mtu);
        let subnet6 = self.host.own_subnet6(&self.own);
        let env = SubnetEnv::for_lease(
            cfg.network,
            Some(self.own.subnet),
            cfg.ipv6_network.filter(|_| subnet6.is_some()),
            subnet6,
            mtu,
            self.opts.ip_masq,
        );
        let path = &self.opts.subnet_file;
        env.write(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        self.metrics
            .subnet_env_written
            .store(true, Ordering::Relaxed);
        tracing::info!(path = %path.display(), subnet = %self.own.subnet, ipv6_subnet = ?subnet6, mtu, "subnet.env written");
        Ok(())
    }

    fn notify_ready_if_ready(&mut self) {
        if !self.notified && self.metrics.not_ready_reasons().is_empty() {
            self.notified = true;
            tracing::info!(subnet = %self.own.subnet, "ready");
            sd_notify_ready();
        }
    }

    async fn on_events(&mut self, events: Vec<LeaseEvent>) -> anyhow::Result<()> {
        let news = self.peers.apply(events, &self.own, self.host.ext.public_ip);
        if let Some(l) = news.updated {
            self.take_update(l).await;
        }
        if news.lost {
            self.reacquire().await?;
        } else {
            self.publish();
        }
        self.reconsider_old().await
    }

    /// A datapath report: the external interface changed, or a device's MAC did.
    async fn on_report(&mut self, r: Report) -> anyhow::Result<()> {
        if let Some(ext) = r.ext {
            self.on_external_change(ext).await?;
        }
        let known = &self.host.device_mac;
        let changed: Vec<(String, crate::netlink::Mac)> = (r.device_mac.into_iter())
            .filter(|(name, mac)| known.get(name) != Some(mac))
            .collect();
        for (name, mac) in &changed {
            tracing::warn!(device = %name, mac = %format_mac(mac), "device MAC changed; re-advertising it");
            self.host.device_mac.insert(name.clone(), *mac);
        }
        if !changed.is_empty() {
            self.readvertise_macs(changed).await;
        } else if self.host.attrs() != self.own.attrs {
            // An earlier rewrite failed (etcd away): try again after each full pass.
            self.advertise("the lease does not say what this host runs")
                .await;
        }
        Ok(())
    }

    /// The external interface is another one now, or the same with another index, address or
    /// MTU. The new snapshot goes to the datapath first (it rebuilds or adjusts the device and
    /// takes no etcd round trip to do so), then subnet.env follows the MTU and the lease the
    /// public IP.
    async fn on_external_change(&mut self, ext: ExtIface) -> anyhow::Result<()> {
        if ext == self.host.ext {
            return Ok(());
        }
        let old = std::mem::replace(&mut self.host.ext, ext);
        let new = &self.host.ext;
        tracing::warn!(
            iface = %new.name, index = new.index, public_ip = %new.public_ip, address = %new.iface_addr, mtu = new.mtu,
            old_iface = %old.name, old_index = old.index, old_public_ip = %old.public_ip, old_address = %old.iface_addr, old_mtu = old.mtu,
            "external interface changed; following it"
        );
        let families = self.host.families();
        for b in &self.host.run.backends {
            for f in &families {
                if let Err(why) = b.backend().usable(new, *f) {
                    tracing::warn!(iface = %new.name, "{why}");
                }
            }
        }
        self.host.devices = self.host.device_specs(&families);
        let mtu = self.host.overlay_mtu();
        self.publish();
        self.datapath.kick("external interface changed");
        if mtu != self.host.mtu {
            tracing::warn!(old = self.host.mtu, new = mtu, "the MTU for containers changed; running containers keep theirs until they are restarted");
            self.host.mtu = mtu;
            self.write_subnet_env()?;
        }
        if old.iface_addr != self.host.ext.iface_addr {
            self.reconnect().await;
        }
        self.follow_addresses(&old).await
    }

    /// The lease after the external interface's addresses changed from `old`'s: IPv6 came
    /// or went (the lease gains or drops its IPv6 part), or the public IP moved.
    async fn follow_addresses(&mut self, old: &ExtIface) -> anyhow::Result<()> {
        let v6_now = self.host.ext.v6.is_some() && self.host.cfg.ipv6_network.is_some();
        if v6_now != self.own.subnet6.is_some() && !self.own.is_reservation() {
            // IPv6 came or went on the interface: the lease gains or drops its IPv6 part.
            tracing::warn!(
                ipv6 = v6_now,
                "IPv6 on the external interface changed; acquiring the lease again"
            );
            return self.reacquire().await;
        }
        let public6 = |e: &ExtIface| e.v6.as_ref().map(|v| v.public_ip);
        let new = &self.host.ext;
        if old.public_ip != new.public_ip || public6(old) != public6(new) {
            self.advertise_public_ip().await?;
        }
        Ok(())
    }

    /// A new etcd connection after this host's own address changed: the old one is bound to
    /// an address that is gone and would only be given up after its keep-alive times out
    /// (the lease watch on it would hear nothing until then).
    async fn reconnect(&mut self) {
        match EtcdStore::connect(&self.opts.etcd).await {
            Ok(store) => {
                tracing::info!("new etcd connection from the new address");
                self.status.reconnected(store.clone());
                self.store = store;
                self.rewatch = true;
            }
            Err(e) => {
                self.metrics.etcd_errors.inc();
                tracing::warn!(error = %e, "cannot open a new etcd connection; keeping the old one");
            }
        }
    }

    /// Lists the leases on the current connection and watches from there; what changed since
    /// the leases this agent knows is handled as the events it would have been.
    async fn watch_again(&mut self) -> anyhow::Result<LeaseWatcher> {
        let (store, cfg) = (&self.store, &self.host.cfg);
        let list = retry("listing leases", &self.metrics, || {
            store.list_leases_untimed(Some(cfg))
        })
        .await?;
        let watcher = (self.store).watch_from_list(Some(self.host.cfg.clone()), list);
        let events = self.peers.changes_since(&watcher.leases());
        self.peers.unreadable = watcher.skipped_keys().borrow().len();
        self.on_events(events).await?;
        Ok(watcher)
    }
}

/// Waits until `at`, or forever without one.
async fn wake(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Runs the lease watch in a task of its own and hands its batches over a channel. The watch's
/// `next()` is not cancel-safe (a batch it has taken off the stream is lost if the future is
/// dropped while it looks up TTLs), so it must never be one branch of the agent's select.
fn spawn_watch(
    mut watcher: LeaseWatcher,
) -> tokio::sync::mpsc::Receiver<Result<Vec<LeaseEvent>, StoreError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let batch = watcher.next().await;
            let refused = batch.is_err();
            if tx.send(batch).await.is_err() {
                return;
            }
            if refused {
                // etcd refused the watch itself; asking again at once cannot help.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    rx
}

/// Tells systemd (Type=notify) that weftd is ready, when NOTIFY_SOCKET is set.
fn sd_notify_ready() {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => UnixAddr::from_abstract_name(name.as_bytes()),
        None => UnixAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(b"READY=1\n", &addr)
    });
    match sent {
        Ok(_) => tracing::debug!("told systemd READY=1"),
        Err(e) => tracing::warn!(socket = %path, error = %e, "cannot notify systemd"),
    }
}
