//! Kubernetes `networking.k8s.io/v1` NetworkPolicy documents, read strictly: every field
//! weft does not implement, and every value Kubernetes would refuse, is an error naming the
//! field's path and value. What passes is a [`Policy`] with Kubernetes' defaults applied.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::refuse;
pub use super::error::PolicyError;
use super::selector::LabelSelector;

pub const API_VERSION: &str = "networking.k8s.io/v1";
pub const KIND: &str = "NetworkPolicy";
/// The namespace of a workload or policy that names none, as in Kubernetes.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The label every namespace carries, with its own name as the value.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A validated policy, defaults applied. It is stored in etcd as [`Policy::to_document`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// `Some` when the policy isolates its workloads for ingress: the allowed rules.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule: traffic to or from any of `peers` (all when `None`) on any of
/// `ports` (all when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<Port>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Workloads chosen by labels, in the policy's namespace or in namespaces chosen by theirs.
    Workloads(WorkloadSelector),
    Block {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

/// Which workloads: by namespace (the policy's own, or by namespace labels) and pod labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub namespace: NamespaceMatch,
    pub pods: LabelSelector,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceMatch {
    Named(String),
    Labels(LabelSelector),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// A protocol and, optionally, a port or a range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub protocol: Protocol,
    /// `(first, last)`; `None`: every port of the protocol.
    pub range: Option<(u16, u16)>,
}

impl Port {
    pub fn matches(&self, protocol: Protocol, port: Option<u16>) -> bool {
        self.protocol == protocol
            && match (self.range, port) {
                (None, _) => true,
                (Some((a, b)), Some(p)) => a <= p && p <= b,
                (Some(_), None) => false,
            }
    }
}

// The document as Kubernetes writes it. Unknown fields are refused by serde.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Metadata {
    name: String,
    namespace: Option<String>,
    // Kept by kubectl-made files; they mean nothing to enforcement.
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    pod_selector: LabelSelector,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<IngressRule>>,
    egress: Option<Vec<EgressRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressRule {
    from: Option<Vec<PeerDoc>>,
    ports: Option<Vec<PortDoc>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressRule {
    to: Option<Vec<PeerDoc>>,
    ports: Option<Vec<PortDoc>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PeerDoc {
    pod_selector: Option<LabelSelector>,
    namespace_selector: Option<LabelSelector>,
    ip_block: Option<IpBlockDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IpBlockDoc {
    cidr: String,
    #[serde(default)]
    except: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortDoc {
    protocol: Option<String>,
    port: Option<Value>,
    end_port: Option<Value>,
}

/// Reads one document (already decoded from YAML or JSON). `default_namespace` is the
/// namespace for a document that names none; a document naming another one is refused, as
/// kubectl refuses it.
pub fn parse(doc: &Value, default_namespace: Option<&str>) -> Result<Policy, PolicyError> {
    let parsed: Document = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        refuse(
            if path == "." { "document".into() } else { path },
            e.into_inner().to_string(),
        )
    })?;
    if parsed.api_version != API_VERSION {
        return Err(refuse(
            "apiVersion",
            format!("{:?} is not {API_VERSION:?}", parsed.api_version),
        ));
    }
    if parsed.kind != KIND {
        return Err(refuse("kind", format!("{:?} is not {KIND:?}", parsed.kind)));
    }
    let meta = parsed.metadata;
    check_dns_name("metadata.name", &meta.name, 253)?;
    let namespace = match (meta.namespace, default_namespace) {
        (Some(ns), Some(given)) if ns != given => {
            return Err(refuse(
                "metadata.namespace",
                format!("{ns:?} differs from the namespace asked for ({given:?})"),
            ))
        }
        (Some(ns), _) => ns,
        (None, given) => given.unwrap_or(DEFAULT_NAMESPACE).to_string(),
    };
    check_dns_name("metadata.namespace", &namespace, 63)?;
    spec(parsed.spec, namespace, meta.name)
}

fn spec(s: Spec, namespace: String, name: String) -> Result<Policy, PolicyError> {
    s.pod_selector.validate("spec.podSelector")?;
    let (mut ingress_on, mut egress_on) = (true, s.egress.as_ref().is_some_and(|e| !e.is_empty()));
    if let Some(types) = &s.policy_types {
        (ingress_on, egress_on) = (false, false);
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => ingress_on = true,
                "Egress" => egress_on = true,
                other => {
                    return Err(refuse(
                        format!("spec.policyTypes[{i}]"),
                        format!("{other:?} is neither \"Ingress\" nor \"Egress\""),
                    ))
                }
            }
        }
        if types.is_empty() {
            // Kubernetes defaults an empty list as it defaults a missing one.
            (ingress_on, egress_on) = (true, s.egress.as_ref().is_some_and(|e| !e.is_empty()));
        }
    }
    let mut ingress = Vec::new();
    for (i, r) in s.ingress.unwrap_or_default().into_iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        ingress.push(rule(&at, "from", r.from, r.ports, &namespace)?);
    }
    let mut egress = Vec::new();
    for (i, r) in s.egress.unwrap_or_default().into_iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        egress.push(rule(&at, "to", r.to, r.ports, &namespace)?);
    }
    Ok(Policy {
        namespace,
        name,
        pod_selector: s.pod_selector,
        ingress: ingress_on.then_some(ingress),
        egress: egress_on.then_some(egress),
    })
}

fn rule(
    at: &str,
    peers_key: &str,
    peers: Option<Vec<PeerDoc>>,
    ports: Option<Vec<PortDoc>>,
    namespace: &str,
) -> Result<Rule, PolicyError> {
    // An empty list means the same as none: every peer, every port.
    let peers = match peers.filter(|p| !p.is_empty()) {
        None => None,
        Some(list) => Some(
            list.into_iter()
                .enumerate()
                .map(|(i, p)| peer(&format!("{at}.{peers_key}[{i}]"), p, namespace))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let ports = match ports.filter(|p| !p.is_empty()) {
        None => None,
        Some(list) => Some(
            list.into_iter()
                .enumerate()
                .map(|(i, p)| port(&format!("{at}.ports[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

fn peer(at: &str, p: PeerDoc, namespace: &str) -> Result<Peer, PolicyError> {
    match (p.pod_selector, p.namespace_selector, p.ip_block) {
        (None, None, None) => Err(refuse(
            at,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        )),
        (pods, ns, None) => {
            if let Some(p) = &pods {
                p.validate(&format!("{at}.podSelector"))?;
            }
            let namespace = match ns {
                Some(sel) => {
                    sel.validate(&format!("{at}.namespaceSelector"))?;
                    NamespaceMatch::Labels(sel)
                }
                None => NamespaceMatch::Named(namespace.to_string()),
            };
            Ok(Peer::Workloads(WorkloadSelector {
                namespace,
                pods: pods.unwrap_or_default(),
            }))
        }
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(refuse(
            format!("{at}.ipBlock"),
            "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
        )),
        (None, None, Some(b)) => ip_block(&format!("{at}.ipBlock"), b),
    }
}

fn ip_block(at: &str, b: IpBlockDoc) -> Result<Peer, PolicyError> {
    let cidr: IpNet = b
        .cidr
        .parse()
        .map_err(|_| refuse(format!("{at}.cidr"), format!("{:?} is not a CIDR", b.cidr)))?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().enumerate() {
        let field = format!("{at}.except[{i}]");
        let net: IpNet = e
            .parse()
            .map_err(|_| refuse(&field, format!("{e:?} is not a CIDR")))?;
        // Kubernetes: each except must be strictly inside the cidr.
        if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
            return Err(refuse(
                field,
                format!("{e:?} is not strictly inside the cidr {:?}", b.cidr),
            ));
        }
        except.push(net.trunc());
    }
    except.sort();
    except.dedup();
    Ok(Peer::Block {
        cidr: cidr.trunc(),
        except,
    })
}

fn port(at: &str, p: PortDoc) -> Result<Port, PolicyError> {
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => {
            return Err(refuse(
                format!("{at}.protocol"),
                format!("{other:?} is not TCP, UDP or SCTP"),
            ))
        }
    };
    let number = |key: &str, v: &Value| -> Result<u16, PolicyError> {
        let field = format!("{at}.{key}");
        match v {
            Value::String(s) => Err(refuse(
                field,
                format!("{s:?} is a named port, which weft does not support: use the number"),
            )),
            _ => match v.as_u64() {
                Some(n @ 1..=65535) => Ok(n as u16),
                _ => Err(refuse(field, format!("{v} is not a port number (1-65535)"))),
            },
        }
    };
    let start = p.port.as_ref().map(|v| number("port", v)).transpose()?;
    let end = p
        .end_port
        .as_ref()
        .map(|v| number("endPort", v))
        .transpose()?;
    let range = match (start, end) {
        (None, None) => None,
        (Some(a), None) => Some((a, a)),
        (None, Some(e)) => {
            return Err(refuse(
                format!("{at}.endPort"),
                format!("{e} needs a port to start from"),
            ))
        }
        (Some(a), Some(e)) if e < a => {
            return Err(refuse(
                format!("{at}.endPort"),
                format!("{e} is below port {a}"),
            ))
        }
        (Some(a), Some(e)) => Some((a, e)),
    };
    Ok(Port { protocol, range })
}

/// A DNS label (namespaces) or subdomain (policy names), as Kubernetes requires of names.
fn check_dns_name(field: &str, name: &str, max: usize) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && (max > 63 || !name.contains('.'));
    match ok {
        true => Ok(()),
        false => Err(refuse(
            field,
            format!(
                "{name:?} is not a valid name (lowercase letters, digits and '-', at most {max})"
            ),
        )),
    }
}

/// A namespace name as `weftctl` and the plugin take it.
pub fn check_namespace(field: &str, name: &str) -> Result<(), PolicyError> {
    check_dns_name(field, name, 63)
}

impl Policy {
    /// `namespace/name`, as policies are shown and counted.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The document as stored in etcd and shown by `weftctl policy show`: Kubernetes' shape
    /// with the defaults written out, so what is stored reads back as the same policy.
    pub fn to_document(&self) -> Value {
        let mut types = Vec::new();
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".into(), self.pod_selector.to_json());
        if let Some(rules) = &self.ingress {
            types.push("Ingress");
            spec.insert("ingress".into(), rules_json(rules, "from"));
        }
        if let Some(rules) = &self.egress {
            types.push("Egress");
            spec.insert("egress".into(), rules_json(rules, "to"));
        }
        spec.insert("policyTypes".into(), serde_json::json!(types));
        serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        })
    }
}

fn rules_json(rules: &[Rule], key: &str) -> Value {
    Value::Array(
        rules
            .iter()
            .map(|r| {
                let mut o = serde_json::Map::new();
                if let Some(peers) = &r.peers {
                    o.insert(key.into(), peers.iter().map(Peer::to_json).collect());
                }
                if let Some(ports) = &r.ports {
                    o.insert("ports".into(), ports.iter().map(Port::to_json).collect());
                }
                Value::Object(o)
            })
            .collect(),
    )
}

impl Peer {
    pub fn to_json(&self) -> Value {
        match self {
            Peer::Block { cidr, except } => {
                let mut b = serde_json::json!({"cidr": cidr.to_string()});
                if !except.is_empty() {
                    b["except"] = except.iter().map(|e| Value::from(e.to_string())).collect();
                }
                serde_json::json!({ "ipBlock": b })
            }
            Peer::Workloads(w) => {
                let mut o = serde_json::json!({"podSelector": w.pods.to_json()});
                if let NamespaceMatch::Labels(sel) = &w.namespace {
                    o["namespaceSelector"] = sel.to_json();
                }
                o
            }
        }
    }
}

impl Port {
    pub fn to_json(&self) -> Value {
        let proto = match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        };
        let mut o = serde_json::json!({ "protocol": proto });
        if let Some((a, b)) = self.range {
            o["port"] = a.into();
            if b != a {
                o["endPort"] = b.into();
            }
        }
        o
    }
}

/// A namespace's value in etcd: `{"labels": {...}}`, each label checked; the name label
/// is every namespace's own and never stored.
pub fn namespace_labels(value: &[u8]) -> Result<super::selector::Labels, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ns {
        #[serde(default)]
        labels: super::selector::Labels,
    }
    let ns: Ns = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    for (k, v) in &ns.labels {
        super::selector::check_key("labels", k).map_err(|e| e.to_string())?;
        super::selector::check_value(&format!("labels.{k}"), v).map_err(|e| e.to_string())?;
    }
    let mut labels = ns.labels;
    labels.remove(NAME_LABEL);
    Ok(labels)
}

/// The documents of a policy file as kubectl reads it: YAML (JSON is YAML too), several
/// documents separated by `---`, a `kind: List` taken item by item. Empty documents are
/// skipped.
#[cfg(feature = "daemon")]
pub fn documents(text: &str) -> Result<Vec<Value>, PolicyError> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc)
            .map_err(|e| refuse(format!("document {}", i + 1), e.to_string()))?;
        match value {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = o.get("items").and_then(Value::as_array).ok_or_else(|| {
                    refuse(format!("document {}: items", i + 1), "a List needs items")
                })?;
                out.extend(items.iter().cloned());
            }
            v => out.push(v),
        }
    }
    Ok(out)
}

#[cfg(all(test, feature = "daemon"))]
mod tests {
    use super::*;
    use serde_json::json;

    fn examples() -> Vec<Policy> {
        let text = include_str!("../../../tests/data/k8s-network-policies.yaml");
        documents(text)
            .unwrap()
            .iter()
            .map(|d| parse(d, None).unwrap())
            .collect()
    }

    #[test]
    fn the_kubernetes_examples_read_with_kubernetes_defaults() {
        let p = examples();
        assert_eq!(p.len(), 7);
        let test = &p[0];
        assert_eq!(test.id(), "default/test-network-policy");
        let ingress = test.ingress.as_ref().unwrap();
        let peers = ingress[0].peers.as_ref().unwrap();
        assert_eq!(
            peers[0],
            Peer::Block {
                cidr: "172.17.0.0/16".parse().unwrap(),
                except: vec!["172.17.1.0/24".parse().unwrap()],
            }
        );
        assert!(
            matches!(&peers[1], Peer::Workloads(w) if matches!(w.namespace, NamespaceMatch::Labels(_)))
        );
        assert!(
            matches!(&peers[2], Peer::Workloads(w) if w.namespace == NamespaceMatch::Named("default".into()))
        );
        // default-deny-ingress: isolated for ingress with no rule; egress untouched.
        assert_eq!(p[1].ingress, Some(vec![]));
        assert_eq!(p[1].egress, None);
        // allow-all-ingress: one rule allowing everything.
        assert_eq!(
            p[2].ingress.as_ref().unwrap()[0],
            Rule {
                peers: None,
                ports: None
            }
        );
        assert_eq!(
            (p[5].ingress.is_some(), p[5].egress.is_some()),
            (true, true)
        );
        let range = p[6].egress.as_ref().unwrap()[0].ports.as_ref().unwrap()[0];
        assert_eq!(range.range, Some((32000, 32768)));
    }

    #[test]
    fn policy_types_default_as_kubernetes_defaults_them() {
        let doc = |spec: Value| json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p"}, "spec": spec});
        let p = parse(&doc(json!({"podSelector": {}, "egress": [{}]})), None).unwrap();
        assert!(p.ingress.is_some() && p.egress.is_some());
        let p = parse(&doc(json!({"podSelector": {}, "egress": []})), None).unwrap();
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = parse(&doc(json!({"podSelector": {}})), Some("team-a")).unwrap();
        assert_eq!(p.id(), "team-a/p");
    }

    #[test]
    fn a_stored_document_reads_back_as_the_same_policy() {
        for p in examples() {
            let again = parse(&p.to_document(), None).unwrap();
            assert_eq!(again, p);
        }
    }

    /// (where in a good document, the bad value, the field named, a part of the message).
    fn refusals() -> Vec<(&'static str, Value, &'static str, &'static str)> {
        vec![
            (
                "/spec/ingress/0/ports/0/port",
                json!("http"),
                "spec.ingress[0].ports[0].port",
                "\"http\"",
            ),
            (
                "/spec/ingress/0/ports/0/protocol",
                json!("ICMP"),
                "spec.ingress[0].ports[0].protocol",
                "ICMP",
            ),
            (
                "/spec/ingress/0/ports/0/endPort",
                json!(79),
                "spec.ingress[0].ports[0].endPort",
                "79",
            ),
            (
                "/spec/ingress/0/ports/0/port",
                json!(70000),
                "spec.ingress[0].ports[0].port",
                "70000",
            ),
        ]
    }

    fn more_refusals() -> Vec<(&'static str, Value, &'static str, &'static str)> {
        vec![
            (
                "/spec/ingress/0/from/0/ipBlock/cidr",
                json!("198.18.0.0/33"),
                "spec.ingress[0].from[0].ipBlock.cidr",
                "198.18.0.0/33",
            ),
            (
                "/spec/ingress/0/from/0/ipBlock/except",
                json!(["198.19.0.0/24"]),
                "spec.ingress[0].from[0].ipBlock.except[0]",
                "198.19.0.0/24",
            ),
            (
                "/spec/ingress/0/from/0/podSelector",
                json!({}),
                "spec.ingress[0].from[0].ipBlock",
                "combined",
            ),
            (
                "/spec/ingress/0/from/0",
                json!({}),
                "spec.ingress[0].from[0]",
                "needs",
            ),
            (
                "/spec/ingress/0/bogus",
                json!(1),
                "spec.ingress[0]",
                "bogus",
            ),
            (
                "/spec/policyTypes",
                json!(["Sideways"]),
                "spec.policyTypes[0]",
                "Sideways",
            ),
            (
                "/spec/podSelector/matchExpressions",
                json!([{"key": "a", "operator": "Near", "values": ["b"]}]),
                "spec.podSelector.matchExpressions[0].operator",
                "Near",
            ),
            (
                "/apiVersion",
                json!("networking.k8s.io/v1beta1"),
                "apiVersion",
                "v1beta1",
            ),
            ("/kind", json!("Pod"), "kind", "Pod"),
            (
                "/metadata/name",
                json!("Bad_Name"),
                "metadata.name",
                "Bad_Name",
            ),
            ("/metadata/finalizers", json!([]), "metadata", "finalizers"),
            ("/status", json!({}), "status", "unknown field `status`"),
        ]
    }

    #[test]
    fn every_unsupported_or_invalid_part_is_refused_naming_field_and_value() {
        let base = json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/16"}}],
            "ports": [{"port": 80}]}]}});
        assert!(parse(&base, None).is_ok());
        for (pointer, value, field, needle) in refusals().into_iter().chain(more_refusals()) {
            let mut doc = base.clone();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let slot = doc.pointer_mut(parent).unwrap();
            match key.parse::<usize>() {
                Ok(i) if slot.is_array() => slot[i] = value,
                _ => slot[key] = value,
            }
            let e = parse(&doc, None).unwrap_err();
            assert!(e.field.starts_with(field), "{pointer}: {e}");
            assert!(e.to_string().contains(needle), "{pointer}: {e}");
        }
        assert_eq!(parse(&base, Some("other")).unwrap().namespace, "other");
        let mut doc = base.clone();
        doc["metadata"]["namespace"] = json!("a");
        assert_eq!(
            parse(&doc, Some("b")).unwrap_err().field,
            "metadata.namespace"
        );
    }

    proptest::proptest! {
        /// A policy file is outside data: whatever it holds, reading it returns an answer.
        #[test]
        fn any_text_reads_without_panicking(text in "\\PC{0,300}") {
            if let Ok(docs) = documents(&text) {
                for d in docs {
                    let _ = parse(&d, None);
                }
            }
        }

        #[test]
        fn policy_shaped_documents_read_without_panicking(
            port in proptest::prelude::any::<i64>(), end in proptest::prelude::any::<i64>(),
            cidr in "[0-9a-f.:/]{0,20}", key in "\\PC{0,10}", op in "[A-Za-z]{0,12}",
            proto in "[A-Z]{0,5}",
        ) {
            let doc = json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p"},
                "spec": {"podSelector": {"matchExpressions": [{"key": key, "operator": op, "values": ["x"]}]},
                "egress": [{"to": [{"ipBlock": {"cidr": cidr, "except": [cidr]}}],
                "ports": [{"protocol": proto, "port": port, "endPort": end}]}]}});
            if let Ok(p) = parse(&doc, None) {
                proptest::prop_assert_eq!(parse(&p.to_document(), None).unwrap(), p);
            }
        }
    }
}
