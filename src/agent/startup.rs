//! weftd's start-up, in a fixed order: etcd, the network config, the external interface, the
//! backend's devices (made before the lease, so it advertises their MACs), the lease, the
//! probes and the datapath. Nothing here tears down what an earlier weftd or flanneld made:
//! devices are adopted as they are.

use std::sync::Arc;

use anyhow::{bail, Context as _};

use super::config::Following;
use super::host::HostFacts;
use super::moving::{start_backend, Moving};
use super::peers::Peers;
use super::{retry, Agent, AgentConfig};
use crate::config::NetworkConfig;
use crate::datapath::{Datapath, Report, Settings};
use crate::http::Shown;
use crate::iface::{self, ExtIface, IfaceSelect};
use crate::live::{self, Situation};
use crate::netlink::Netlink;
use crate::probe::{ProbeConfig, Prober};
use crate::status::{Facts, StatusFeed};
use crate::store::{EtcdStore, LeaseList, Previous};
use crate::subnet::PerFamily;
use crate::subnet_env::SubnetEnv;

/// The agent made ready, the listing it started from and the datapath's reports.
pub(super) type Started = (
    Agent,
    LeaseList,
    tokio::sync::mpsc::UnboundedReceiver<Report>,
);

/// Start-up in order; gives the agent, ready for its main loop.
pub(super) async fn start(opts: AgentConfig, shown: Arc<Shown>) -> anyhow::Result<Started> {
    let metrics = shown.metrics.clone();
    let endpoints = opts.etcd.endpoints.join(",");
    let store = retry(
        &format!("connecting to etcd at {endpoints}"),
        &metrics,
        || EtcdStore::connect(&opts.etcd),
    )
    .await?;
    let following = super::config::settle(&store, &metrics).await?;
    let cfg = read_config(&following)?;
    let ext = choose_iface(opts.select.clone()).await?;
    let known = retry("listing leases", &metrics, || {
        store.list_leases_untimed(Some(&cfg))
    })
    .await?;
    let (host, moving) = set_up_host(&opts, cfg, ext, &known, &following).await?;
    let prev = SubnetEnv::read(&opts.subnet_file)
        .map(|e| Previous {
            subnet: e.subnet_network(),
            subnet6: e.subnet6_network(),
        })
        .unwrap_or_default();
    let (attrs, ttl) = (host.attrs(), opts.lease_ttl);
    let own = retry("acquiring a subnet lease", &metrics, || {
        store.acquire_lease(&host.cfg, &attrs, prev, ttl)
    })
    .await?;
    metrics.lease_acquisitions.inc();
    tracing::info!(subnet = %own.subnet, ipv6_subnet = ?own.subnet6, expires = ?own.expiration.map(humantime::format_rfc3339_seconds), "subnet lease acquired");

    let (reports_tx, reports) = tokio::sync::mpsc::unbounded_channel();
    let prober = start_probes(opts.probe, &shown);
    let settings = Settings {
        resync: opts.resync,
        tunnel_poll: opts.tunnel_poll,
        select: opts.select.clone(),
    };
    let datapath = Datapath::start(settings, metrics.clone(), reports_tx, prober.clone())
        .context("cannot start the datapath")?;
    let status = StatusFeed::start(store.clone(), opts.status_ttl, Facts::default());
    let agent = Agent {
        prober,
        opts,
        metrics,
        store,
        host,
        own,
        peers: Peers::new(status.ring()),
        datapath,
        notified: false,
        renew_retry_at: None,
        rewatch: false,
        status,
        policy_lease: None,
        policy_facts: tokio::sync::watch::channel(None).1,
        following,
        moving,
    };
    Ok((agent, known, reports))
}

/// This host's facts once its backends' devices are ready: the backends the config and a
/// migration under way call for, each usable, with its secrets loaded and its devices made or
/// adopted. A device that must be made gets the MAC a lease of this host in `known` already
/// advertises, so peers need not learn a new one. A backend a migration moves to that cannot
/// run here leaves the host on the old one, saying why.
async fn set_up_host(
    opts: &AgentConfig,
    cfg: NetworkConfig,
    ext: ExtIface,
    known: &LeaseList,
    following: &Following,
) -> anyhow::Result<(HostFacts, Moving)> {
    let mine = (known.leases.iter()).find(|l| l.attrs.public_ip == ext.public_ip);
    let from = following.record.from_backend();
    let from_type = from.as_ref().map(|f| f.type_name());
    // A host new to the network starts with the old backend too: peers may still need it.
    let keep_old = mine.is_none_or(|l| from_type.is_some_and(|t| l.attrs.speaks(t).is_some()));
    let selected = (following.record.migration.as_ref())
        .is_some_and(|m| mine.is_some_and(|l| m.hosts.contains(l.subnet)));
    tracing::info!(iface = %ext.name, public_ip = %ext.public_ip, public_ipv6 = ?ext.v6.as_ref().map(|v| v.public_ip), mtu = ext.mtu, "external interface chosen");
    let situation = |failed| Situation {
        target: &cfg.backend,
        from: from.as_ref(),
        selected,
        failed,
        keep_old,
        own: mine.map(|l| &l.attrs),
    };
    let mut failed = None;
    let mut run = live::running(&situation(None));
    let mut host = HostFacts {
        mtu: ext.mtu,
        cfg: cfg.clone(),
        ext,
        run: run.clone(),
        devices: PerFamily::default(),
        secrets: Default::default(),
        device_mac: Default::default(),
        device_name: opts.vxlan_device.clone(),
    };
    for b in run.backends.clone() {
        let Err(why) = start_backend(&mut host, &b, mine.map(|l| &l.attrs)).await else {
            continue;
        };
        if from.is_none() || b.type_name() != cfg.backend.type_name() {
            bail!("cannot run the {} backend: {why}", b.type_name());
        }
        tracing::warn!(
            backend = b.type_name(),
            "cannot run the backend the network moves to: {why}; staying on {}",
            from_type.unwrap_or_default()
        );
        failed = Some(why);
        run = live::running(&situation(failed.as_deref()));
        break;
    }
    host.run = run;
    let families = host.families();
    host.devices = host.device_specs(&families);
    host.mtu = host.overlay_mtu();
    Ok((host, Moving::new(failed, keep_old)))
}

/// Starts the peer probes, feeding the metrics and `/peers`. Without them (no raw or ping
/// socket allowed) weftd still runs the overlay, and says why it cannot watch it.
fn start_probes(cfg: ProbeConfig, shown: &Shown) -> Option<Arc<Prober>> {
    let m = shown.metrics.clone();
    match Prober::start_observed(cfg, Box::new(move |ev| m.record_probe(ev))) {
        Ok(p) => {
            let p = Arc::new(p);
            let _ = shown.prober.set(p.clone());
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

/// The config the network runs; refused when it has no IPv4 network.
fn read_config(f: &Following) -> anyhow::Result<NetworkConfig> {
    let cfg = f.record.network().map_err(|e| {
        anyhow::anyhow!(
            "the running config (revision {}) cannot be used: {e}",
            f.running_rev()
        )
    })?;
    if !cfg.enable_ipv4 || cfg.network.is_none() {
        bail!("the network config enables no IPv4 network; flannel's etcd layout needs an IPv4 subnet in every lease key, so weft needs EnableIPv4 with a Network");
    }
    tracing::info!(network = ?cfg.network, ipv6_network = ?cfg.ipv6_network, backend = cfg.backend.type_name(), revision = f.running_rev(), "network config read");
    Ok(cfg)
}

/// The external interface, chosen from the kernel's links, addresses and routes.
async fn choose_iface(select: IfaceSelect) -> anyhow::Result<ExtIface> {
    netlink(move |nl| Ok(iface::choose_in(nl, &select)?))
        .await
        .context("cannot choose the external interface")
}
