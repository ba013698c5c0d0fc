//! weftd's start-up, in a fixed order: etcd, the network config, the external interface, the
//! backend's devices (made before the lease, so it advertises their MACs), the lease, the
//! probes and the datapath. Nothing here tears down what an earlier weftd or flanneld made:
//! devices are adopted as they are.

use std::sync::Arc;

use anyhow::{bail, Context as _};

use super::host::{families, HostFacts};
use super::peers::Peers;
use super::{retry, Agent, AgentConfig};
use crate::config::NetworkConfig;
use crate::datapath::{Datapath, Report, Settings};
use crate::http::Shown;
use crate::iface::{self, ExtIface, IfaceSelect};
use crate::metrics::Metrics;
use crate::netlink::{format_mac, Mac, Netlink};
use crate::probe::{ProbeConfig, Prober};
use crate::status::{Facts, StatusFeed};
use crate::store::{EtcdStore, LeaseList, Previous};
use crate::subnet::{Family, PerFamily};
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
    let cfg = read_config(&store, &metrics).await?;
    let ext = choose_iface(opts.select.clone()).await?;
    let known = retry("listing leases", &metrics, || {
        store.list_leases_untimed(Some(&cfg))
    })
    .await?;
    let host = set_up_host(&opts, cfg, ext, &known).await?;
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
    };
    Ok((agent, known, reports))
}

/// This host's facts once its backend's devices are ready: usable for the backend, with its
/// secrets loaded and each device made or adopted. A device that must be made gets the MAC
/// a lease of this host in `known` already advertises, so peers need not learn a new one.
async fn set_up_host(
    opts: &AgentConfig,
    cfg: NetworkConfig,
    ext: ExtIface,
    known: &LeaseList,
) -> anyhow::Result<HostFacts> {
    let backend = cfg.backend.backend();
    let families = families(&cfg, &ext);
    for f in &families {
        backend.usable(&ext, *f).map_err(anyhow::Error::msg)?;
    }
    let secrets = backend.load_secrets().map_err(anyhow::Error::msg)?;
    tracing::info!(iface = %ext.name, public_ip = %ext.public_ip, public_ipv6 = ?ext.v6.as_ref().map(|v| v.public_ip), mtu = ext.mtu, "external interface chosen");
    let mut advertised = PerFamily::default();
    if let Some(l) = known
        .leases
        .iter()
        .find(|l| l.attrs.public_ip == ext.public_ip)
    {
        for f in Family::ALL {
            advertised[f] = backend.advertised_mac(&l.attrs, f);
        }
    }
    let mut host = HostFacts {
        mtu: ext.mtu,
        cfg,
        ext,
        devices: PerFamily::default(),
        secrets,
        device_mac: PerFamily::default(),
        device_name: opts.vxlan_device.clone(),
    };
    host.devices = host.device_specs(&families);
    set_up_devices(&mut host, advertised).await?;
    Ok(host)
}

/// Creates or adopts the backend's devices, noting each one's MAC and the MTU containers get.
async fn set_up_devices(
    host: &mut HostFacts,
    advertised: PerFamily<Option<Mac>>,
) -> anyhow::Result<()> {
    for f in Family::ALL {
        let Some(spec) = host.devices[f].clone() else {
            continue;
        };
        let (s, mac) = (spec.clone(), advertised[f]);
        let dev = netlink(move |nl| Ok(s.kind.ensure(nl, &s, mac)?))
            .await
            .with_context(|| format!("cannot set up the device {}", spec.name))?;
        tracing::info!(device = %spec.name, backend = host.cfg.backend.type_name(), mac = ?dev.mac.map(|m| format_mac(&m)), mtu = dev.mtu, created = dev.created, "device ready");
        host.device_mac[f] = dev.mac;
    }
    host.mtu = host.overlay_mtu();
    Ok(())
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
