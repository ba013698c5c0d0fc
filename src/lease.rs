//! A host's subnet lease and the attributes stored as its value. The value is flannel's JSON,
//! field for field (`PublicIP`, `PublicIPv6`, `BackendType`, `BackendData`, `BackendV6Data`),
//! and `BackendData` is kept exactly as stored so foreign fields survive a rewrite. A weft host
//! that speaks more than one backend (during a migration) names the others in `WeftBackends`,
//! a field flannel's decoder ignores (see [`LeaseAttrs::spoken`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::subnet::{lease_key_name, parse_lease_key_name, Family, SubnetError};

/// Why a stored lease could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Key(#[from] SubnetError),
    #[error("lease {key}: value is not a flannel lease: {why}")]
    Value { key: String, why: String },
    #[error("lease {key}: subnet {subnet} is not a subnet of the network {network}")]
    OutsideNetwork {
        key: String,
        subnet: String,
        network: String,
    },
}

/// What a lease says about its host. Field names and types are flannel's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// flannel writes `null` here for IPv4-only hosts, so weft does too.
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<Value>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<Value>,
    /// weft's own: the backends this host speaks besides `BackendType`, as
    /// `{"<type>": {"BackendData": …, "BackendV6Data": …}}`. flannel decodes a lease with Go's
    /// `encoding/json`, which skips fields it does not know, so a flannel host reads the lease
    /// as before and keeps talking `BackendType` to this host. Kept as stored; read through
    /// [`LeaseAttrs::spoken`], which ignores what is not such an object.
    #[serde(
        rename = "WeftBackends",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub weft_backends: Option<Value>,
}

/// One backend a lease's host speaks, with its data in each family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spoken<'a> {
    pub backend_type: &'a str,
    pub data: Option<&'a Value>,
    pub v6_data: Option<&'a Value>,
}

impl<'a> Spoken<'a> {
    /// The data of `family` (`BackendData`, `BackendV6Data`).
    pub fn data(&self, family: Family) -> Option<&'a Value> {
        match family {
            Family::V4 => self.data,
            Family::V6 => self.v6_data,
        }
    }
}

impl LeaseAttrs {
    /// Every backend the host speaks: `BackendType` first (flannel's one), then those in
    /// `WeftBackends` by name. An entry that is not an object, or names `BackendType` again,
    /// is ignored: another host wrote it, and it must not cost the lease its usable part.
    pub fn spoken(&self) -> Vec<Spoken<'_>> {
        let mut out = vec![Spoken {
            backend_type: &self.backend_type,
            data: self.backend_data.as_ref(),
            v6_data: self.backend_v6_data.as_ref(),
        }];
        let Some(Value::Object(extra)) = &self.weft_backends else {
            return out;
        };
        for (ty, v) in extra {
            let Value::Object(parts) = v else { continue };
            if ty.is_empty() || out.iter().any(|s| s.backend_type == ty) {
                continue;
            }
            let part = |name: &str| parts.get(name).filter(|v| !v.is_null());
            out.push(Spoken {
                backend_type: ty,
                data: part("BackendData"),
                v6_data: part("BackendV6Data"),
            });
        }
        out
    }

    /// The backend `backend_type` as this host speaks it, if it does.
    pub fn speaks(&self, backend_type: &str) -> Option<Spoken<'_>> {
        self.spoken()
            .into_iter()
            .find(|s| s.backend_type == backend_type)
    }

    /// `WeftBackends` naming `extra` backends, each with its data per family; `None` for none.
    pub fn weft_backends_of<'b>(
        extra: impl IntoIterator<Item = (&'b str, Option<Value>, Option<Value>)>,
    ) -> Option<Value> {
        let mut m = serde_json::Map::new();
        for (ty, data, v6) in extra {
            let mut parts = serde_json::Map::new();
            if let Some(d) = data {
                parts.insert("BackendData".into(), d);
            }
            if let Some(d) = v6 {
                parts.insert("BackendV6Data".into(), d);
            }
            m.insert(ty.to_string(), Value::Object(parts));
        }
        (!m.is_empty()).then_some(Value::Object(m))
    }

    /// The backend's data of `family` (`BackendData`, `BackendV6Data`), as stored: only the
    /// backend reads it.
    pub fn data(&self, family: Family) -> Option<&Value> {
        match family {
            Family::V4 => self.backend_data.as_ref(),
            Family::V6 => self.backend_v6_data.as_ref(),
        }
    }

    /// The value to store, in flannel's compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes always serialize")
    }

    /// Reads a stored value; `key` only names the lease in errors.
    pub fn from_json(key: &str, value: &[u8]) -> Result<LeaseAttrs, LeaseError> {
        serde_json::from_slice(value).map_err(|e| LeaseError::Value {
            key: key.to_string(),
            why: e.to_string(),
        })
    }
}

/// One host's share of the network.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub subnet6: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    /// When the lease runs out; `None` for a reservation, which never does.
    pub expiration: Option<SystemTime>,
    /// The etcd lease the key is attached to; `None` for a reservation.
    pub etcd_lease_id: Option<i64>,
    /// etcd revision of the key's last change.
    pub mod_revision: i64,
}

/// One family's part of a lease: its subnet, its host's public address and the backend's
/// data in that family. What the desired state and the backends read, for either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side<'a> {
    pub subnet: IpNet,
    pub public_ip: Option<IpAddr>,
    pub backend_data: Option<&'a Value>,
}

impl Lease {
    /// The lease's part in `family`; `None` when it has no subnet of that family.
    pub fn side(&self, family: Family) -> Option<Side<'_>> {
        match family {
            Family::V4 => Some(Side {
                subnet: self.subnet.into(),
                public_ip: Some(self.attrs.public_ip.into()),
                backend_data: self.attrs.backend_data.as_ref(),
            }),
            Family::V6 => self.subnet6.map(|s| Side {
                subnet: s.into(),
                public_ip: self.attrs.public_ipv6.map(IpAddr::V6),
                backend_data: self.attrs.backend_v6_data.as_ref(),
            }),
        }
    }

    pub fn is_reservation(&self) -> bool {
        self.etcd_lease_id.is_none()
    }

    /// The last element of the lease's etcd key.
    pub fn key_name(&self) -> String {
        lease_key_name(self.subnet, self.subnet6)
    }

    /// Builds a lease from a key name and a stored value. Expiration, etcd lease and revision
    /// are filled in by the store.
    pub fn parse(key_name: &str, value: &[u8]) -> Result<Lease, LeaseError> {
        let (subnet, subnet6) = parse_lease_key_name(key_name)?;
        let attrs = LeaseAttrs::from_json(key_name, value)?;
        Ok(Lease {
            subnet,
            subnet6,
            attrs,
            expiration: None,
            etcd_lease_id: None,
            mod_revision: 0,
        })
    }
}

/// A change in the set of leases, as a watcher reports it. The lease is shared with the
/// watcher's cache and whoever keeps it (weftd's peers), so a fleet's leases are held once.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseEvent {
    /// A new lease, or new attributes for a known one.
    Added(Arc<Lease>),
    /// Deleted before its time (revoked, or removed by hand).
    Removed(Arc<Lease>),
    /// Deleted by etcd because nobody renewed it.
    Expired(Arc<Lease>),
}

impl LeaseEvent {
    pub fn lease(&self) -> &Lease {
        match self {
            LeaseEvent::Added(l) | LeaseEvent::Removed(l) | LeaseEvent::Expired(l) => l,
        }
    }

    /// `added`, `removed` or `expired`.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseEvent::Added(_) => "added",
            LeaseEvent::Removed(_) => "removed",
            LeaseEvent::Expired(_) => "expired",
        }
    }
}

#[cfg(test)]
impl Lease {
    /// A host-gw lease of `subnet` at etcd revision `rev`, for the crate's unit tests.
    pub(crate) fn for_tests(subnet: &str, rev: i64) -> Lease {
        Lease {
            subnet: subnet.parse().expect("a test subnet"),
            subnet6: None,
            attrs: LeaseAttrs {
                public_ip: "198.18.0.2".parse().expect("an address"),
                public_ipv6: None,
                backend_type: "host-gw".into(),
                backend_data: None,
                backend_v6_data: None,
                weft_backends: None,
            },
            expiration: None,
            etcd_lease_id: None,
            mod_revision: rev,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte for byte what flannel stores (FLANNEL-COMPAT.md).
    const FLANNEL: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn reads_flannel_value() {
        let l = Lease::parse("10.5.52.0-24", FLANNEL.as_bytes()).unwrap();
        assert_eq!(l.subnet, "10.5.52.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(l.attrs.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(l.attrs.public_ipv6, None);
        assert_eq!(l.attrs.backend_type, "vxlan");
        assert_eq!(
            l.attrs.data(Family::V4),
            Some(&serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}))
        );
        assert_eq!(l.attrs.backend_v6_data, None);
        assert!(l.is_reservation());
        assert_eq!(l.key_name(), "10.5.52.0-24");
    }

    /// A host's attributes with `data` as BackendData of `backend_type`.
    fn attrs_of(ip: Ipv4Addr, backend_type: &str, data: Option<Value>) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: ip,
            public_ipv6: None,
            backend_type: backend_type.into(),
            backend_data: data,
            backend_v6_data: None,
            weft_backends: None,
        }
    }

    #[test]
    fn writes_flannel_value() {
        let data = serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"});
        let a = attrs_of(Ipv4Addr::new(192, 168, 64, 3), "vxlan", Some(data));
        assert_eq!(a.to_json(), FLANNEL);
        assert_eq!(
            attrs_of(Ipv4Addr::new(198, 18, 0, 1), "host-gw", None).to_json(),
            r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
    }

    /// A dual-stack vxlan lease as flannel stores it: key with both subnets, IPv6 fields in
    /// flannel's order.
    const FLANNEL_DUAL: &str = r#"{"PublicIP":"198.18.0.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}}"#;

    #[test]
    fn reads_and_writes_flannels_dual_stack_lease_byte_for_byte() {
        let key = "198.19.5.0-24&2001:db8:100:5::-64";
        let l = Lease::parse(key, FLANNEL_DUAL.as_bytes()).unwrap();
        assert_eq!(l.subnet6, Some("2001:db8:100:5::/64".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(
            l.attrs.data(Family::V6).unwrap()["VtepMAC"],
            "0e:00:00:00:00:02"
        );
        let v6 = l.side(Family::V6).unwrap();
        assert_eq!(v6.public_ip, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(l.key_name(), key);
        assert_eq!(l.attrs.to_json(), FLANNEL_DUAL);
        let hg = LeaseAttrs {
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
            ..attrs_of(Ipv4Addr::new(198, 18, 0, 1), "host-gw", None)
        };
        assert_eq!(
            hg.to_json(),
            r#"{"PublicIP":"198.18.0.1","PublicIPv6":"2001:db8::1","BackendType":"host-gw"}"#
        );
        // An IPv4-only lease has no IPv6 side, whatever its value says.
        let v4 = Lease::parse("198.19.5.0-24", FLANNEL_DUAL.as_bytes()).unwrap();
        assert!(v4.side(Family::V6).is_none());
    }

    #[test]
    fn keeps_foreign_backend_data() {
        let v = r#"{"PublicIP":"198.18.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff","Extra":[1,2]},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:fe"}}"#;
        let a = LeaseAttrs::from_json("k", v.as_bytes()).unwrap();
        assert_eq!(
            a.backend_data.as_ref().unwrap()["Extra"],
            serde_json::json!([1, 2])
        );
        assert_eq!(a.data(Family::V6).unwrap()["VtepMAC"], "aa:bb:cc:dd:ee:fe");
        let again = LeaseAttrs::from_json("k", a.to_json().as_bytes()).unwrap();
        assert_eq!(again, a);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Lease::parse("10.5.52.0-24", b"{not json").unwrap_err();
        assert!(e.to_string().starts_with("lease 10.5.52.0-24:"), "{e}");
        let e = Lease::parse("10.5.52.0-24", br#"{"PublicIP":"nope"}"#).unwrap_err();
        assert!(e.to_string().starts_with("lease 10.5.52.0-24:"), "{e}");
        let e = Lease::parse("10.5.52.0", FLANNEL.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("\"10.5.52.0\""), "{e}");
        let a = LeaseAttrs::from_json(
            "k",
            br#"{"PublicIP":"198.18.0.1","BackendData":{"VNI":"x"}}"#,
        )
        .unwrap();
        assert_eq!(
            crate::backend::summary(&a, Family::V4).map(|(_, t)| t),
            None
        );
    }

    /// Property tests: `PROPTEST_CASES` sets how many cases each one runs (256 by default).
    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, a few levels deep, as a foreign BackendData may be.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e15f64..1e15).prop_map(Value::from),
                ".{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map("[A-Za-z]{1,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn mac() -> impl Strategy<Value = String> {
            any::<[u8; 6]>().prop_map(|m| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            })
        }

        fn backend_data() -> impl Strategy<Value = Option<Value>> {
            prop_oneof![
                Just(None),
                (any::<u32>(), mac())
                    .prop_map(|(vni, m)| Some(serde_json::json!({"VNI": vni, "VtepMAC": m}))),
                (any::<[u8; 32]>(), any::<u16>()).prop_map(|(key, port)| {
                    use base64::Engine as _;
                    let key = base64::engine::general_purpose::STANDARD.encode(key);
                    Some(serde_json::json!({"PublicKey": key, "Port": port}))
                }),
                // A stored `null` reads as no BackendData, as flannel reads it.
                json_value()
                    .prop_filter("not null", |v| !v.is_null())
                    .prop_map(Some),
            ]
        }

        fn attrs() -> impl Strategy<Value = LeaseAttrs> {
            (
                any::<u32>(),
                proptest::option::of(any::<u128>()),
                prop_oneof![Just(String::new()), ".{1,12}"],
                backend_data(),
                backend_data(),
            )
                .prop_map(|(ip, ip6, backend_type, bd, bd6)| LeaseAttrs {
                    public_ip: Ipv4Addr::from(ip),
                    public_ipv6: ip6.map(Ipv6Addr::from),
                    backend_type,
                    backend_data: bd,
                    backend_v6_data: bd6,
                    weft_backends: None,
                })
        }

        /// Bytes that are sometimes a lease value, sometimes almost one, sometimes noise.
        fn valueish() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                any::<Vec<u8>>(),
                attrs().prop_map(|a| a.to_json().into_bytes()),
                (attrs(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(a, i, b)| {
                    let mut v = a.to_json().into_bytes();
                    let at = i.index(v.len());
                    v[at] = b;
                    v
                }),
                json_value().prop_map(|v| v.to_string().into_bytes()),
            ]
        }

        proptest! {
            #[test]
            fn values_never_panic(key in ".{0,32}", value in valueish()) {
                if let Ok(l) = Lease::parse(&key, &value) {
                    // Whatever parses can be written back and read again unchanged.
                    let again = LeaseAttrs::from_json(&key, l.attrs.to_json().as_bytes());
                    prop_assert_eq!(again.as_ref(), Ok(&l.attrs));
                    // Every backend reads what it is given without a panic.
                    for f in Family::ALL {
                        let _ = crate::backend::summary(&l.attrs, f);
                    }
                }
            }

            #[test]
            fn values_round_trip(a in attrs()) {
                let back = LeaseAttrs::from_json("k", a.to_json().as_bytes());
                prop_assert_eq!(back.as_ref(), Ok(&a));
            }

        }
    }
}
