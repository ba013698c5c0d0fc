//! weftd's life: start-up in a fixed order (config → interface → device → lease → datapath →
//! subnet.env → ready), then one loop that follows the leases in etcd, renews this host's
//! own, re-acquires it when it is lost, and hands every change to the datapath thread. Nothing
//! here tears the datapath down: stopping weftd leaves the kernel as it is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use ipnet::Ipv4Net;

use crate::backend::{self, DeviceSpec, HostSecrets};
use crate::config::NetworkConfig;
use crate::datapath::{Datapath, Report, Snapshot};
use crate::firewall::{FirewallSpec, Overlay};
use crate::http::{self, Metrics};
use crate::iface::{self, ExtIface, IfaceSelect};
use crate::lease::{Lease, LeaseAttrs, LeaseEvent};
use crate::netlink::{format_mac, Mac, Netlink};
use crate::probe::{ProbeConfig, Prober};
use crate::status::{Facts, StatusFeed};
use crate::store::{EtcdOptions, EtcdStore, LeaseList, Previous, StoreError};
use crate::subnet::{Family, PerFamily};
use crate::subnet_env::SubnetEnv;

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
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.healthz {
        let listener = http::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --healthz-ip/--healthz-port {addr}"))?;
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        tokio::spawn(http::serve(listener, metrics.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        r = Agent::start(opts, metrics) => r,
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

struct Agent {
    opts: AgentConfig,
    metrics: Arc<Metrics>,
    store: EtcdStore,
    cfg: NetworkConfig,
    ext: ExtIface,
    devices: PerFamily<Option<DeviceSpec>>,
    /// What the backend keeps on this host (WireGuard's key), for the device specs.
    secrets: HostSecrets,
    /// The devices' real MACs, which the lease must advertise.
    device_mac: PerFamily<Option<Mac>>,
    mtu: u32,
    own: Lease,
    leases: BTreeMap<Ipv4Net, Arc<Lease>>,
    /// Keys in etcd that hold no usable lease (malformed, outside the network); the store
    /// drops them before they become events, but they count as skipped leases.
    unreadable: usize,
    datapath: Datapath,
    /// systemd has been told READY=1.
    notified: bool,
    /// Set while renewals fail: when to try again.
    renew_retry_at: Option<tokio::time::Instant>,
    /// The store was connected anew: the lease watch must move to the new connection.
    rewatch: bool,
    /// Probes every peer through the overlay; None when its sockets could not be opened.
    prober: Option<Arc<Prober>>,
    status: StatusFeed,
}

/// Starts the peer probes, feeding the metrics and `/peers`. Without them (no raw or ping
/// socket allowed) weftd still runs the overlay, and says why it cannot watch it.
fn start_probes(cfg: ProbeConfig, metrics: &Arc<Metrics>) -> Option<Arc<Prober>> {
    let m = metrics.clone();
    match Prober::start_observed(cfg, Box::new(move |ev| m.record_probe(ev))) {
        Ok(p) => {
            let p = Arc::new(p);
            metrics.peer_probes.set(p.clone());
            tracing::info!(interval = ?cfg.interval, timeout = ?cfg.timeout, down_after = cfg.down_after, "probing peers through the overlay");
            Some(p)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot probe peers; the overlay runs, unobserved");
            None
        }
    }
}

/// Runs a netlink job on a blocking thread.
async fn netlink<T: Send + 'static>(
    f: impl FnOnce(&mut Netlink) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || {
        let mut nl = Netlink::new().context("cannot open a netlink socket")?;
        f(&mut nl)
    })
    .await
    .context("netlink task failed")?
}

/// The network config, once one is stored; refused when it has no IPv4 network.
async fn read_config(store: &EtcdStore, metrics: &Metrics) -> anyhow::Result<NetworkConfig> {
    let cfg = store
        .wait_for_config_counting(|| {
            metrics.etcd_errors.inc();
        })
        .await?;
    if !cfg.enable_ipv4 || cfg.network.is_none() {
        bail!("the network config enables no IPv4 network; flannel's etcd layout needs an IPv4 subnet in every lease key, so weft needs EnableIPv4 with a Network");
    }
    tracing::info!(network = ?cfg.network, ipv6_network = ?cfg.ipv6_network, backend = cfg.backend.type_name(), "network config read");
    Ok(cfg)
}

/// The external interface, chosen from the kernel's links, addresses and routes.
async fn choose_iface(select: IfaceSelect) -> anyhow::Result<ExtIface> {
    netlink(move |nl| Ok(iface::choose_in(nl, &select)?))
        .await
        .context("cannot choose the external interface")
}

/// The backend's devices, made ready before the lease is acquired so the lease can advertise
/// their MACs; and the MTU containers get (the smallest of the families').
struct Ready {
    devices: PerFamily<Option<DeviceSpec>>,
    device_mac: PerFamily<Option<Mac>>,
    mtu: u32,
}

/// The families this host runs: IPv4, and IPv6 when the network has it and the external
/// interface has an IPv6 address (else a warning says why not).
fn families(cfg: &NetworkConfig, ext: &ExtIface) -> Vec<Family> {
    let mut out = vec![Family::V4];
    if cfg.ipv6_network.is_some() {
        if ext.v6.is_some() {
            out.push(Family::V6);
        } else {
            tracing::warn!(iface = %ext.name, "the network has IPv6 but the external interface has no global IPv6 address (nor is --public-ipv6 given): this host runs the IPv4 overlay only");
        }
    }
    out
}

/// The device spec of each family in `families`, for backends that have devices; the
/// `--vxlan-device` name applies to the IPv4 one.
fn device_specs(
    cfg: &NetworkConfig,
    opts: &AgentConfig,
    ext: &ExtIface,
    families: &[Family],
    secrets: &HostSecrets,
) -> PerFamily<Option<DeviceSpec>> {
    let backend = backend::of(&cfg.backend);
    let mut specs = PerFamily::default();
    for &f in families {
        let name = opts.vxlan_device.as_deref().filter(|_| f == Family::V4);
        specs[f] = backend.device(ext, name, f, secrets);
    }
    specs
}

/// The MTU containers get: the smallest the families' devices allow.
fn overlay_mtu(ext: &ExtIface, specs: &PerFamily<Option<DeviceSpec>>) -> u32 {
    Family::ALL
        .iter()
        .filter_map(|f| specs[*f].as_ref().map(|d| d.mtu))
        .min()
        .unwrap_or(ext.mtu)
}

/// Creates or adopts the backend's devices. `advertised` holds the MACs a lease of this host
/// already advertises: a device that has to be created gets its MAC, so peers need not learn
/// a new one.
async fn set_up_devices(
    cfg: &NetworkConfig,
    ext: &ExtIface,
    specs: PerFamily<Option<DeviceSpec>>,
    advertised: PerFamily<Option<Mac>>,
) -> anyhow::Result<Ready> {
    let mut device_mac = PerFamily::default();
    let mut mtu = ext.mtu;
    let mut any = false;
    for f in Family::ALL {
        let Some(spec) = specs[f].clone() else {
            continue;
        };
        let (s, b, mac) = (spec.clone(), cfg.backend.clone(), advertised[f]);
        let dev = netlink(move |nl| Ok(backend::of(&b).ensure_device(nl, &s, mac)?))
            .await
            .with_context(|| format!("cannot set up the device {}", spec.name))?;
        tracing::info!(device = %spec.name, backend = cfg.backend.type_name(), mac = ?dev.mac.map(|m| format_mac(&m)), mtu = dev.mtu, created = dev.created, "device ready");
        device_mac[f] = dev.mac;
        mtu = if any { mtu.min(dev.mtu) } else { dev.mtu };
        any = true;
    }
    Ok(Ready {
        devices: specs,
        device_mac,
        mtu,
    })
}

impl Agent {
    /// Start-up in order, then the main loop.
    async fn start(opts: AgentConfig, metrics: Arc<Metrics>) -> anyhow::Result<()> {
        let endpoints = opts.etcd.endpoints.join(",");
        let store = retry(
            &format!("connecting to etcd at {endpoints}"),
            &metrics,
            || EtcdStore::connect(&opts.etcd),
        )
        .await?;
        let cfg = read_config(&store, &metrics).await?;
        let ext = choose_iface(opts.select.clone()).await?;
        let families = families(&cfg, &ext);
        for f in &families {
            backend::of(&cfg.backend)
                .usable(&ext, *f)
                .map_err(anyhow::Error::msg)?;
        }
        let secrets = backend::of(&cfg.backend)
            .load_secrets()
            .map_err(anyhow::Error::msg)?;
        tracing::info!(iface = %ext.name, public_ip = %ext.public_ip, public_ipv6 = ?ext.v6.as_ref().map(|v| v.public_ip), mtu = ext.mtu, "external interface chosen");

        let known = retry("listing leases", &metrics, || {
            store.list_leases_untimed(Some(&cfg))
        })
        .await?;
        let mut advertised = PerFamily::default();
        if let Some(l) = known
            .leases
            .iter()
            .find(|l| l.attrs.public_ip == ext.public_ip)
        {
            for f in Family::ALL {
                advertised[f] = backend::of(&cfg.backend).advertised_mac(&l.attrs, f);
            }
        }
        let specs = device_specs(&cfg, &opts, &ext, &families, &secrets);
        let ready = set_up_devices(&cfg, &ext, specs, advertised).await?;

        let attrs = lease_attrs(&cfg, &ext, &ready.devices, &ready.device_mac);
        let prev = SubnetEnv::read(&opts.subnet_file)
            .map(|e| Previous {
                subnet: e.subnet_network(),
                subnet6: e.subnet6_network(),
            })
            .unwrap_or_default();
        let own = retry("acquiring a subnet lease", &metrics, || {
            store.acquire_lease(&cfg, &attrs, prev, opts.lease_ttl)
        })
        .await?;
        metrics.lease_acquisitions.inc();
        tracing::info!(subnet = %own.subnet, ipv6_subnet = ?own.subnet6, expires = ?own.expiration.map(humantime::format_rfc3339_seconds), "subnet lease acquired");

        let (reports_tx, reports) = tokio::sync::mpsc::unbounded_channel();
        let prober = start_probes(opts.probe, &metrics);
        let datapath = Datapath::start(
            metrics.clone(),
            opts.resync,
            opts.tunnel_poll,
            reports_tx,
            opts.select.clone(),
            prober.clone(),
        )
        .context("cannot start the datapath")?;
        let status = StatusFeed::start(store.clone(), opts.status_ttl, Facts::default());
        let mut agent = Agent {
            prober,
            opts,
            metrics,
            store,
            cfg,
            ext,
            devices: ready.devices,
            secrets,
            device_mac: ready.device_mac,
            mtu: ready.mtu,
            own,
            leases: BTreeMap::new(),
            unreadable: 0,
            datapath,
            notified: false,
            renew_retry_at: None,
            rewatch: false,
            status,
        };
        agent.note_own_lease();
        agent.adopt_listing(&known);
        agent.run(known, reports).await
    }

    /// The listing made before the acquisition is the starting state: the watch begins at its
    /// revision, so the acquisition itself (and anything else since) arrives as events.
    /// Listing 5,000 leases again would cost a cold start a second.
    fn adopt_listing(&mut self, list: &LeaseList) {
        self.unreadable = list.skipped.len();
        for l in &list.leases {
            self.leases.insert(l.subnet, Arc::new(l.clone()));
        }
        self.leases
            .insert(self.own.subnet, Arc::new(self.own.clone()));
        self.publish();
    }

    /// The main loop: lease events, renewals and datapath reports, until an error ends it.
    async fn run(
        mut self,
        list: LeaseList,
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
        let watcher = self.store.watch_from_list(Some(self.cfg.clone()), &list);
        self.rewatch = false;
        let mut unreadable = watcher.skipped_keys();
        let mut lease_events = spawn_watch(watcher);
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
                    self.unreadable = unreadable.borrow_and_update().len();
                    self.publish();
                }
                _ = tokio::time::sleep_until(renew_at) => self.renew().await?,
                Some(r) = reports.recv() => {
                    self.on_report(r).await?;
                    if std::mem::take(&mut self.rewatch) {
                        // The old watch task ends when it next tries to hand a batch over.
                        let watcher = self.watch_again().await?;
                        unreadable = watcher.skipped_keys();
                        lease_events = spawn_watch(watcher);
                    }
                    self.notify_ready_if_ready();
                }
            }
        }
    }

    /// Hands this host's facts to the status record; it is written only when they changed.
    fn feed_status(&self) {
        let m = &self.metrics;
        self.status.update(|f| {
            f.lease_key = self.own.key_name();
            f.public_ip = Some(self.ext.public_ip.into());
            f.backend = self.cfg.backend.type_name().to_string();
            f.ready = m.not_ready_reasons().is_empty();
            f.drift_repairs = m.drift_repairs.get();
            f.unreachable = self.unreachable_peers();
        });
    }

    /// The peers the probes find unreachable, by lease key, with since when (a dual-stack
    /// peer counts when either family is cut).
    fn unreachable_peers(&self) -> BTreeMap<String, SystemTime> {
        let Some(prober) = &self.prober else {
            return BTreeMap::new();
        };
        if prober.unreachable().borrow().is_empty() {
            return BTreeMap::new();
        }
        let by_subnet: BTreeMap<String, String> = self
            .leases
            .values()
            .flat_map(|l| {
                let key = l.key_name();
                std::iter::once((l.subnet.to_string(), key.clone()))
                    .chain(l.subnet6.map(|s| (s.to_string(), key)))
            })
            .collect();
        let mut out: BTreeMap<String, SystemTime> = BTreeMap::new();
        for p in prober.snapshot() {
            if p.state != crate::probe::PeerState::Unreachable {
                continue;
            }
            if let Some(key) = by_subnet.get(&p.id) {
                let since = out.entry(key.clone()).or_insert(p.since);
                *since = (*since).min(p.since);
            }
        }
        out
    }

    /// When to renew: the margin before expiry, or half the TTL when the margin is longer
    /// than that (short TTLs in labs).
    fn renew_at(&self) -> tokio::time::Instant {
        if let Some(at) = self.renew_retry_at {
            return at;
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let Some(exp) = self.own.expiration else {
            return far;
        };
        let lead = self.opts.renew_margin.min(self.opts.lease_ttl / 2);
        match exp
            .checked_sub(lead)
            .map(|t| t.duration_since(SystemTime::now()))
        {
            Some(Ok(d)) => tokio::time::Instant::now() + d,
            _ => tokio::time::Instant::now(),
        }
    }

    fn note_own_lease(&self) {
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

    fn firewall_spec(&self) -> FirewallSpec {
        let v4 = self.cfg.network.map(|n| Overlay {
            network: n.into(),
            subnet: self.own.subnet.into(),
        });
        let v6 = (self.cfg.ipv6_network.zip(self.own_subnet6())).map(|(n, s)| Overlay {
            network: n.into(),
            subnet: s.into(),
        });
        FirewallSpec {
            overlay: PerFamily { v4, v6 },
            masquerade: self.opts.ip_masq,
        }
    }

    /// This host's IPv6 subnet, when it runs the IPv6 overlay.
    fn own_subnet6(&self) -> Option<ipnet::Ipv6Net> {
        self.own.subnet6.filter(|_| self.ext.v6.is_some())
    }

    fn publish(&self) {
        self.datapath.update(Arc::new(Snapshot {
            cfg: self.cfg.clone(),
            ext: self.ext.clone(),
            devices: self.devices.clone(),
            own: self.own.clone(),
            leases: self.leases.values().cloned().collect(),
            unreadable: self.unreadable,
            firewall: self.firewall_spec(),
        }));
    }

    fn write_subnet_env(&self) -> anyhow::Result<()> {
        let subnet6 = self.own_subnet6();
        let env = SubnetEnv::for_lease(
            self.cfg.network,
            Some(self.own.subnet),
            self.cfg.ipv6_network.filter(|_| subnet6.is_some()),
            subnet6,
            self.mtu,
            self.opts.ip_masq,
        );
        env.write(&self.opts.subnet_file)
            .with_context(|| format!("cannot write {}", self.opts.subnet_file.display()))?;
        self.metrics
            .subnet_env_written
            .store(true, Ordering::Relaxed);
        tracing::info!(path = %self.opts.subnet_file.display(), subnet = %self.own.subnet, ipv6_subnet = ?subnet6, mtu = self.mtu, "subnet.env written");
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
        let mut lost = false;
        for ev in events {
            match ev {
                LeaseEvent::Added(l) => {
                    if l.subnet == self.own.subnet && l.mod_revision < self.own.mod_revision {
                        // Written before this host's last update of it (e.g. with the public
                        // IP it had before a renumbering): already superseded.
                        continue;
                    }
                    if l.subnet == self.own.subnet {
                        if l.attrs.public_ip != self.ext.public_ip {
                            tracing::error!(subnet = %l.subnet, holder = %l.attrs.public_ip, "this host's subnet now belongs to another host");
                            lost = true;
                        } else {
                            self.own = l.clone();
                        }
                    } else if !self.leases.contains_key(&l.subnet) {
                        tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer joined");
                    }
                    self.leases.insert(l.subnet, Arc::new(l));
                }
                LeaseEvent::Removed(l) | LeaseEvent::Expired(l) => {
                    // A key of a subnet that now lives under another key (a lease moved when
                    // its IPv6 part changed) is history, not a departure.
                    let held = self
                        .leases
                        .get(&l.subnet)
                        .is_some_and(|h| h.key_name() == l.key_name());
                    if !held {
                        continue;
                    }
                    if l.subnet == self.own.subnet {
                        tracing::warn!(subnet = %l.subnet, "this host's lease vanished from etcd; acquiring it again");
                        lost = true;
                    } else {
                        tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer left");
                    }
                    self.leases.remove(&l.subnet);
                }
            }
        }
        if lost {
            self.reacquire().await?;
        } else {
            self.publish();
        }
        Ok(())
    }

    /// Gets a lease again (the same subnet when it is still free) and re-advertises it; the
    /// containers keep running meanwhile.
    async fn reacquire(&mut self) -> anyhow::Result<()> {
        self.metrics.lease_held.store(false, Ordering::Relaxed);
        let attrs = self.attrs();
        let prev = Previous {
            subnet: Some(self.own.subnet),
            subnet6: self.own.subnet6,
        };
        let (store, cfg, ttl) = (&self.store, &self.cfg, self.opts.lease_ttl);
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
        self.leases.remove(&self.own.subnet);
        self.own = lease;
        self.leases
            .insert(self.own.subnet, Arc::new(self.own.clone()));
        self.note_own_lease();
        if moved {
            self.write_subnet_env()?;
        }
        self.publish();
        self.datapath.kick("own lease changed");
        Ok(())
    }

    async fn renew(&mut self) -> anyhow::Result<()> {
        match self.store.renew_lease(&self.own, self.opts.lease_ttl).await {
            Ok(l) => {
                self.own = l;
                self.leases
                    .insert(self.own.subnet, Arc::new(self.own.clone()));
                self.note_own_lease();
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

    /// A datapath report: the external interface changed, or a device's MAC did.
    async fn on_report(&mut self, r: Report) -> anyhow::Result<()> {
        if let Some(ext) = r.ext {
            self.on_external_change(ext).await?;
        }
        let changed: Vec<Family> = Family::ALL
            .into_iter()
            .filter(|f| r.device_mac[*f].is_some() && r.device_mac[*f] != self.device_mac[*f])
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        // A device was recreated without the old MAC, or changed by hand: advertise it.
        for &f in &changed {
            let mac = r.device_mac[f].expect("changed MACs are known");
            tracing::warn!(family = %f, mac = %format_mac(&mac), "device MAC changed; re-advertising it");
            self.device_mac[f] = Some(mac);
        }
        match self
            .store
            .update_lease_attrs(&self.own, &self.attrs())
            .await
        {
            Ok(l) => {
                self.own = l;
                self.leases
                    .insert(self.own.subnet, Arc::new(self.own.clone()));
                self.publish();
            }
            Err(e) => {
                self.metrics.etcd_errors.inc();
                tracing::warn!(error = %e, "cannot re-advertise the device MAC; will retry");
                for f in changed {
                    self.device_mac[f] = None;
                }
            }
        }
        Ok(())
    }

    /// This host's lease attributes as they should be now.
    fn attrs(&self) -> LeaseAttrs {
        lease_attrs(&self.cfg, &self.ext, &self.devices, &self.device_mac)
    }

    /// The external interface is another one now, or the same with another index, address or
    /// MTU. The new snapshot goes to the datapath first (it rebuilds or adjusts the device and
    /// takes no etcd round trip to do so), then subnet.env follows the MTU and the lease the
    /// public IP.
    async fn on_external_change(&mut self, ext: ExtIface) -> anyhow::Result<()> {
        if ext == self.ext {
            return Ok(());
        }
        let old = std::mem::replace(&mut self.ext, ext);
        let new = &self.ext;
        tracing::warn!(
            iface = %new.name, index = new.index, public_ip = %new.public_ip, address = %new.iface_addr, mtu = new.mtu,
            old_iface = %old.name, old_index = old.index, old_public_ip = %old.public_ip, old_address = %old.iface_addr, old_mtu = old.mtu,
            "external interface changed; following it"
        );
        let backend = backend::of(&self.cfg.backend);
        let families = families(&self.cfg, new);
        for f in &families {
            if let Err(why) = backend.usable(new, *f) {
                tracing::warn!(iface = %new.name, "{why}");
            }
        }
        self.devices = device_specs(&self.cfg, &self.opts, new, &families, &self.secrets);
        let mtu = overlay_mtu(new, &self.devices);
        self.publish();
        self.datapath.kick("external interface changed");
        if mtu != self.mtu {
            tracing::warn!(old = self.mtu, new = mtu, "the MTU for containers changed; running containers keep theirs until they are restarted");
            self.mtu = mtu;
            self.write_subnet_env()?;
        }
        if old.iface_addr != self.ext.iface_addr {
            self.reconnect().await;
        }
        let v6_now = self.ext.v6.is_some() && self.cfg.ipv6_network.is_some();
        if v6_now != self.own.subnet6.is_some() && !self.own.is_reservation() {
            // IPv6 came or went on the interface: the lease gains or drops its IPv6 part.
            tracing::warn!(
                ipv6 = v6_now,
                "IPv6 on the external interface changed; acquiring the lease again"
            );
            return self.reacquire().await;
        }
        let public6 = |e: &ExtIface| e.v6.as_ref().map(|v| v.public_ip);
        if old.public_ip != self.ext.public_ip || public6(&old) != public6(&self.ext) {
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
    async fn watch_again(&mut self) -> anyhow::Result<crate::store::LeaseWatcher> {
        let (store, cfg) = (&self.store, &self.cfg);
        let list = retry("listing leases", &self.metrics, || {
            store.list_leases_untimed(Some(cfg))
        })
        .await?;
        let watcher = self.store.watch_from_list(Some(self.cfg.clone()), &list);
        let events = changes_since(&self.leases, &list.leases);
        self.unreadable = list.skipped.len();
        self.on_events(events).await?;
        Ok(watcher)
    }

    /// Writes the new public IP into this host's lease, keeping its subnet and etcd lease, so
    /// peers send to the new address.
    async fn advertise_public_ip(&mut self) -> anyhow::Result<()> {
        let attrs = self.attrs();
        let mut delay = Duration::from_millis(250);
        loop {
            match self.store.update_lease_attrs(&self.own, &attrs).await {
                Ok(l) => {
                    tracing::info!(subnet = %l.subnet, public_ip = %self.ext.public_ip, "lease now advertises the new public IP");
                    self.own = l;
                    self.leases
                        .insert(self.own.subnet, Arc::new(self.own.clone()));
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

/// What a fresh listing says happened since the leases `known` were seen, as the watch
/// events it would have delivered: a lease not listed any more was removed; a new one, or one
/// with another revision, was added.
fn changes_since(known: &BTreeMap<Ipv4Net, Arc<Lease>>, listed: &[Lease]) -> Vec<LeaseEvent> {
    let now: BTreeMap<Ipv4Net, &Lease> = listed.iter().map(|l| (l.subnet, l)).collect();
    let mut events: Vec<LeaseEvent> = known
        .iter()
        .filter(|(s, _)| !now.contains_key(s))
        .map(|(_, l)| LeaseEvent::Removed(l.as_ref().clone()))
        .collect();
    events.extend(
        now.values()
            .filter(|l| {
                known
                    .get(&l.subnet)
                    .is_none_or(|k| k.mod_revision != l.mod_revision)
            })
            .map(|l| LeaseEvent::Added((*l).clone())),
    );
    events
}

/// Runs the lease watch in a task of its own and hands its batches over a channel. The watch's
/// `next()` is not cancel-safe (a batch it has taken off the stream is lost if the future is
/// dropped while it looks up TTLs), so it must never be one branch of the agent's select.
fn spawn_watch(
    mut watcher: crate::store::LeaseWatcher,
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

/// This host's lease attributes, with flannel's field names and types. The IPv6 fields are
/// set when the host runs the IPv6 overlay: a device for it (backends with devices), or an
/// IPv6 address and an IPv6 network (host-gw).
fn lease_attrs(
    cfg: &NetworkConfig,
    ext: &ExtIface,
    devices: &PerFamily<Option<DeviceSpec>>,
    macs: &PerFamily<Option<Mac>>,
) -> LeaseAttrs {
    let backend = backend::of(&cfg.backend);
    let v6 = cfg.ipv6_network.is_some()
        && ext.v6.is_some()
        && (devices.v6.is_some() || devices.v4.is_none());
    LeaseAttrs {
        public_ip: ext.public_ip,
        public_ipv6: ext.v6.as_ref().map(|v| v.public_ip).filter(|_| v6),
        backend_type: backend.type_name().to_string(),
        backend_data: backend.lease_data(devices.v4.as_ref(), macs.v4),
        backend_v6_data: if v6 {
            backend.lease_data(devices.v6.as_ref(), macs.v6)
        } else {
            None
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(subnet: &str, rev: i64) -> Lease {
        Lease::for_tests(subnet, rev)
    }

    #[test]
    fn a_fresh_listing_becomes_the_events_that_were_missed() {
        let known: BTreeMap<Ipv4Net, Arc<Lease>> = [
            lease("198.19.1.0/24", 1),
            lease("198.19.2.0/24", 2),
            lease("198.19.3.0/24", 3),
        ]
        .into_iter()
        .map(|l| (l.subnet, Arc::new(l)))
        .collect();
        let listed = [
            lease("198.19.1.0/24", 1),
            lease("198.19.3.0/24", 9),
            lease("198.19.4.0/24", 10),
        ];
        let events: Vec<(&str, String, i64)> = changes_since(&known, &listed)
            .iter()
            .map(|e| match e {
                LeaseEvent::Added(l) => ("added", l.subnet.to_string(), l.mod_revision),
                LeaseEvent::Removed(l) => ("removed", l.subnet.to_string(), l.mod_revision),
                LeaseEvent::Expired(l) => ("expired", l.subnet.to_string(), l.mod_revision),
            })
            .collect();
        assert_eq!(
            events,
            [
                ("removed", "198.19.2.0/24".to_string(), 2),
                ("added", "198.19.3.0/24".to_string(), 9),
                ("added", "198.19.4.0/24".to_string(), 10),
            ]
        );
        assert!(changes_since(
            &known,
            &known
                .values()
                .map(|l| l.as_ref().clone())
                .collect::<Vec<_>>()
        )
        .is_empty());
    }
}
