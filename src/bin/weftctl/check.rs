//! `weftctl check`: this host's kernel and subnet.env against the leases, through the
//! datapath's own path (see weft::check), and its network policy tables against the
//! policies, through the policy thread's own path (see weft::firewall::enforce::check).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use weft::check::Finding;
use weft::config::{BackendConfig, NetworkConfig};
use weft::firewall::enforce::Inputs;
use weft::firewall::policy::local::Shared;
use weft::firewall::policy::Workload;
use weft::iface::{self, IfaceSelect};
use weft::lease::Lease;
use weft::live::RunningConfig;
use weft::netlink::Netlink;
use weft::status::StatusRecord;
use weft::store::{ConfigKeys, EtcdStore, PolicyKey, StoreError};
use weft::subnet_env::SubnetEnv;

use super::Format;

/// How to find this host's facts: the same flags (and WEFTD_* variables) as weftd's, so one
/// environment file serves both.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    select: IfaceSelect,
    /// The subnet file weftd writes.
    #[arg(
        long,
        env = "WEFTD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: std::path::PathBuf,
    /// Name of the VXLAN device (default flannel.<VNI>).
    #[arg(long, env = "WEFTD_VXLAN_DEVICE")]
    vxlan_device: Option<String>,
}

/// The config the network runs (the record weftd follows; the document where there is none
/// yet), and the backend a migration under way moves from.
async fn running_config(
    store: &EtcdStore,
    keys: &ConfigKeys,
) -> Result<(NetworkConfig, Option<BackendConfig>)> {
    if let Some((bytes, _)) = &keys.running {
        let record = RunningConfig::parse(&store.running_key(), bytes)?;
        let cfg = record.network().map_err(|problems| StoreError::Config {
            key: store.running_key(),
            problems,
        })?;
        return Ok((cfg, record.from_backend()));
    }
    let cfg = store
        .get_config()
        .await?
        .ok_or_else(|| anyhow!("no network config in etcd at {}", store.config_key()))?;
    Ok((cfg, None))
}

/// What this host's status record says of the config it runs, when that is not the newest
/// revision of `<prefix>/config` (see weft::status::behind).
async fn config_behind(
    store: &EtcdStore,
    keys: &ConfigKeys,
    own: &Lease,
) -> Result<Option<Finding>> {
    let Some((_, newest)) = &keys.config else {
        return Ok(None);
    };
    let Some(bytes) = store.get_status(&own.key_name()).await? else {
        return Ok(None);
    };
    let record = StatusRecord::parse(&store.status_key(&own.key_name()), &bytes)?;
    let why = match &record.config {
        Some(c) => weft::status::behind::why_behind(c, *newest),
        None => Some("weftd does not report which config it runs".into()),
    };
    Ok(why.map(|w| Finding(format!("config: this host {w}"))))
}

/// The backends this host runs: of the config's and a migration's old one, those its lease
/// speaks (the config's when it has no lease yet or speaks neither).
fn backends_run(
    cfg: &NetworkConfig,
    from: Option<BackendConfig>,
    own: Option<&Lease>,
) -> Vec<BackendConfig> {
    let all: Vec<BackendConfig> = std::iter::once(cfg.backend.clone()).chain(from).collect();
    let spoken: Vec<BackendConfig> = (all.iter())
        .filter(|b| own.is_some_and(|l| l.attrs.speaks(b.type_name()).is_some()))
        .cloned()
        .collect();
    match spoken.is_empty() {
        true => vec![cfg.backend.clone()],
        false => spoken,
    }
}

/// `weftctl check`: findings on stdout (one per line, or JSON), leases this host cannot mend
/// as notes on stderr; an error (exit 1) when anything is wrong.
pub async fn run(store: &EtcdStore, out: Format, args: CheckArgs) -> Result<()> {
    let keys = store.config_keys().await?;
    let (cfg, from) = running_config(store, &keys).await?;
    // The check never reads an expiry: one read, no look-up per lease.
    let list = store.list_leases_untimed(Some(&cfg)).await?;
    let env = SubnetEnv::read(&args.subnet_file).ok();
    let select = args.select;
    let mut nl = Netlink::new().context("cannot open a netlink socket")?;
    let ext = iface::choose_in(&mut nl, &select).context("cannot choose the external interface")?;
    // This host's lease holds its PublicIP; the one subnet.env names wins if several do.
    let mine: Vec<&Lease> = list
        .leases
        .iter()
        .filter(|l| l.attrs.public_ip == ext.public_ip)
        .collect();
    let env_subnet = env.as_ref().and_then(|e| e.subnet_network());
    let own = mine
        .iter()
        .find(|l| Some(l.subnet) == env_subnet)
        .or(mine.first())
        .copied();
    let backends = backends_run(&cfg, from, own);
    let subject = weft::check::Subject {
        cfg: &cfg,
        backends: &backends,
        ext: &ext,
        device_name: args.vxlan_device.as_deref(),
        leases: &list.leases,
        env: env.as_ref(),
    };
    let mut report = weft::check::check(&mut nl, &subject, own)?;
    if let Some(f) = weft::check::docker_bridge(&mut nl, env.as_ref())? {
        report.findings.push(f);
    }
    report
        .findings
        .extend(weft::check::container_bridges(&mut nl)?);
    if let Some(own) = own {
        let lines = policy_tables(store, own, &args.subnet_file).await?;
        report.findings.extend(lines.into_iter().map(Finding));
        report
            .findings
            .extend(config_behind(store, &keys, own).await?);
    }
    for s in &list.skipped {
        report.notes.push(Finding(format!(
            "key {} is not a usable lease: {}",
            s.key, s.reason
        )));
    }
    match out {
        Format::Json => println!(
            "{}",
            json!({
                "findings": report.findings.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
                "notes": report.notes.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
            })
        ),
        Format::Table => {
            for f in &report.findings {
                say!("{f}");
            }
            for n in &report.notes {
                esay!("note: {n}");
            }
        }
    }
    match report.findings.len() {
        0 => Ok(()),
        n => bail!("{} on this host", super::text::count(n as u64, "problem")),
    }
}

/// This host's network policy tables against the policies, namespaces and workloads in
/// etcd and the plugin's records on this host, through weftd's own desired state and diff.
async fn policy_tables(
    store: &EtcdStore,
    own: &Lease,
    subnet_file: &std::path::Path,
) -> Result<Vec<String>> {
    let mut subnets = vec![ipnet::IpNet::V4(own.subnet)];
    subnets.extend(own.subnet6.map(ipnet::IpNet::V6));
    let keys = store.list_policy(Some(PolicyKey::Workload)).await?;
    let remote = (keys.keys.iter())
        .filter_map(|(_, _, v)| Workload::decode(v).ok())
        .filter(|w| !w.holds_address_in(&subnets))
        .collect();
    let inputs = Inputs {
        policies: super::policy::policies(store).await?,
        namespaces: super::policy::namespaces(store).await?,
        remote,
        subnets,
    };
    let shared = Shared::beside(subnet_file);
    Ok(weft::firewall::enforce::check(&shared, &inputs)?)
}
