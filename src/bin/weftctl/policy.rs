//! `weftctl policy` and `weftctl namespace`: network policies in etcd as kubectl handles
//! NetworkPolicy files, namespace labels for namespaceSelector, and `why`, which explains
//! a connection's verdict with the same semantics the hosts enforce.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use weft::firewall::policy::model::{self, Protocol, DEFAULT_NAMESPACE};
use weft::firewall::policy::selector::{check_key, check_value, Labels};
use weft::firewall::policy::verdict::{self, End, Side};
use weft::firewall::policy::{Policy, Workload};
use weft::store::{EtcdStore, PolicyKey};

use super::Format;

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Store every NetworkPolicy in FILE (YAML or JSON, several documents; `-` reads stdin).
    /// All or nothing: one refused document stores none.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// The policies (of one namespace with -n).
    List {
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// One policy as stored, defaults written out.
    Show {
        name: String,
        #[arg(short = 'n', long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Delete one policy; every host drops it from its tables.
    Delete {
        name: String,
        #[arg(short = 'n', long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Why SRC may or may not reach DST (each a workload as NAMESPACE/NAME or NAME, or an
    /// address), on PORT/PROTO (e.g. 80/tcp) or any port. Exit 0 when allowed, 1 when not.
    Why {
        src: String,
        dst: String,
        port: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NamespaceCmd {
    /// Set labels (KEY=VALUE) or remove them (KEY-) on NAME, for namespaceSelector.
    Label { name: String, labels: Vec<String> },
    /// Namespaces with labels.
    List,
}

pub async fn run(store: &EtcdStore, out: Format, cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Apply { file, namespace } => apply(store, &file, namespace.as_deref()).await,
        PolicyCmd::List { namespace } => list(store, out, namespace.as_deref()).await,
        PolicyCmd::Show { name, namespace } => {
            let p = policies(store).await?;
            let Some(p) = p
                .iter()
                .find(|p| p.name == name && p.namespace == namespace)
            else {
                bail!("no policy {namespace}/{name}");
            };
            match out {
                Format::Json => println!("{}", serde_json::to_string_pretty(&p.to_document())?),
                Format::Table => print!("{}", serde_norway::to_string(&p.to_document())?),
            }
            Ok(())
        }
        PolicyCmd::Delete { name, namespace } => {
            let key = format!("{namespace}/{name}");
            if !store.delete_policy_key(PolicyKey::Policy, &key).await? {
                bail!("no policy {key}");
            }
            say!("networkpolicy {key} deleted");
            Ok(())
        }
        PolicyCmd::Why { src, dst, port } => why(store, out, &src, &dst, port.as_deref()).await,
    }
}

async fn apply(store: &EtcdStore, file: &Path, namespace: Option<&str>) -> Result<()> {
    let text = match file.to_str() {
        Some("-") => std::io::read_to_string(std::io::stdin())?,
        _ => weft::file::read_text(file, weft::file::limit::LARGE)
            .with_context(|| format!("cannot read {}", file.display()))?,
    };
    if let Some(ns) = namespace {
        model::check_namespace("--namespace", ns)?;
    }
    let at = |e: model::PolicyError| anyhow::anyhow!("{}: {e}", file.display());
    let mut parsed = Vec::new();
    for (i, doc) in model::documents(&text).map_err(at)?.iter().enumerate() {
        let p = model::parse(doc, namespace)
            .map_err(|e| anyhow::anyhow!("{}: document {}: {e}", file.display(), i + 1))?;
        parsed.push(p);
    }
    if parsed.is_empty() {
        bail!("{}: no NetworkPolicy in it", file.display());
    }
    for p in &parsed {
        let doc = p.to_document().to_string();
        store
            .put_policy_key(PolicyKey::Policy, &p.id(), &doc, None)
            .await?;
        say!("networkpolicy {} configured", p.id());
    }
    Ok(())
}

/// Every readable policy; unreadable ones are reported on stderr.
pub async fn policies(store: &EtcdStore) -> Result<Vec<Policy>> {
    let keys = store.list_policy(Some(PolicyKey::Policy)).await?;
    let mut out = Vec::new();
    for (_, name, value) in keys.keys {
        let read = serde_json::from_slice(&value)
            .map_err(|e| e.to_string())
            .and_then(|d| model::parse(&d, None).map_err(|e| e.to_string()));
        match read {
            Ok(p) => out.push(p),
            Err(why) => esay!("weftctl: policy {name} is not readable: {why}"),
        }
    }
    out.sort_by_key(Policy::id);
    Ok(out)
}

async fn list(store: &EtcdStore, out: Format, namespace: Option<&str>) -> Result<()> {
    let all = policies(store).await?;
    let shown: Vec<&Policy> = (all.iter())
        .filter(|p| namespace.is_none_or(|n| p.namespace == n))
        .collect();
    if out == Format::Json {
        let docs: Vec<_> = shown.iter().map(|p| p.to_document()).collect();
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(());
    }
    say!(
        "{:<16} {:<28} {:<28} TYPES",
        "NAMESPACE",
        "NAME",
        "POD-SELECTOR"
    );
    for p in shown {
        let types: Vec<&str> = [
            ("Ingress", p.ingress.is_some()),
            ("Egress", p.egress.is_some()),
        ]
        .into_iter()
        .filter_map(|(t, on)| on.then_some(t))
        .collect();
        say!(
            "{:<16} {:<28} {:<28} {}",
            p.namespace,
            p.name,
            p.pod_selector.describe(),
            types.join(",")
        );
    }
    Ok(())
}

pub async fn namespaces(store: &EtcdStore) -> Result<BTreeMap<String, Labels>> {
    let keys = store.list_policy(Some(PolicyKey::Namespace)).await?;
    let mut out = BTreeMap::new();
    for (_, name, value) in keys.keys {
        match model::namespace_labels(&value) {
            Ok(l) => {
                out.insert(name, l);
            }
            Err(why) => esay!("weftctl: namespace {name} is not readable: {why}"),
        }
    }
    Ok(out)
}

pub async fn run_namespace(store: &EtcdStore, out: Format, cmd: NamespaceCmd) -> Result<()> {
    let mut all = namespaces(store).await?;
    match cmd {
        NamespaceCmd::List => {
            if out == Format::Json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            for (name, labels) in &all {
                let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                say!("{name:<24} {}", shown.join(","));
            }
            Ok(())
        }
        NamespaceCmd::Label { name, labels } => {
            model::check_namespace("NAME", &name)?;
            let mut current = all.remove(&name).unwrap_or_default();
            for l in &labels {
                match l.split_once('=') {
                    Some((k, v)) => {
                        check_key("KEY", k)?;
                        check_value(k, v)?;
                        current.insert(k.into(), v.into());
                    }
                    None => match l.strip_suffix('-') {
                        Some(k) => {
                            current.remove(k);
                        }
                        None => bail!("{l:?} is neither KEY=VALUE nor KEY-"),
                    },
                }
            }
            let value = serde_json::json!({ "labels": current }).to_string();
            store
                .put_policy_key(PolicyKey::Namespace, &name, &value, None)
                .await?;
            say!("namespace {name} labeled");
            Ok(())
        }
    }
}

/// `80/tcp`, `53/udp`, `tcp`.
fn parse_port(s: &str) -> Result<(Protocol, Option<u16>)> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (Some(p), proto),
        None if s.parse::<u16>().is_ok() => (Some(s), "tcp"),
        None => (None, s),
    };
    let protocol =
        Protocol::parse(proto).with_context(|| format!("{proto:?} is not tcp, udp or sctp"))?;
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .with_context(|| format!("{p:?} is not a port number"))
        })
        .transpose()?;
    Ok((protocol, port))
}

fn find<'w>(workloads: &'w [Workload], what: &str) -> Result<End<'w>> {
    if let Ok(addr) = what.parse::<IpAddr>() {
        let w = workloads.iter().find(|w| w.addresses.contains(&addr));
        return Ok(End { addr, workload: w });
    }
    let (ns, name) = what.split_once('/').unwrap_or((DEFAULT_NAMESPACE, what));
    let w = (workloads.iter())
        .find(|w| w.namespace == ns && w.name == name)
        .with_context(|| format!("no workload {ns}/{name} (and {what:?} is no address)"))?;
    let addr = w.addresses[0];
    Ok(End {
        addr,
        workload: Some(w),
    })
}

async fn why(
    store: &EtcdStore,
    out: Format,
    src: &str,
    dst: &str,
    port: Option<&str>,
) -> Result<()> {
    let port = port.map(parse_port).transpose()?;
    let policies = policies(store).await?;
    let namespaces = namespaces(store).await?;
    let keys = store.list_policy(Some(PolicyKey::Workload)).await?;
    let workloads: Vec<Workload> = (keys.keys.iter())
        .filter_map(|(_, _, v)| Workload::decode(v).ok())
        .collect();
    let (s, d) = (find(&workloads, src)?, find(&workloads, dst)?);
    let v = verdict::why(&policies, &namespaces, s, d, port);
    if out == Format::Json {
        let side = |x: &Side| serde_json::json!({"selecting": x.selecting, "allowedBy": x.allowed_by, "allowed": x.allowed()});
        let j = serde_json::json!({"allowed": v.allowed(), "egress": side(&v.egress), "ingress": side(&v.ingress)});
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        let name = |e: &End| {
            e.workload
                .map_or(e.addr.to_string(), |w| format!("{} ({})", w.id(), e.addr))
        };
        say!(
            "{} -> {}: {}",
            name(&s),
            name(&d),
            if v.allowed() { "ALLOWED" } else { "REFUSED" }
        );
        for (dir, side, who) in [("egress", &v.egress, &s), ("ingress", &v.ingress, &d)] {
            let line = match (
                &side.allowed_by,
                side.selecting.is_empty(),
                who.workload.is_some(),
            ) {
                (_, true, false) => "not a workload: ipBlock rules only".to_string(),
                (_, true, true) => "no policy selects it: not isolated".to_string(),
                (Some(rule), false, _) => format!(
                    "allowed by {rule} (selected by {})",
                    side.selecting.join(", ")
                ),
                (None, false, _) => format!(
                    "refused: no rule of {} allows it",
                    side.selecting.join(", ")
                ),
            };
            say!("  {dir:<7} at {}: {line}", name(who));
        }
    }
    if !v.allowed() {
        std::process::exit(1);
    }
    Ok(())
}
