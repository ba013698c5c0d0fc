//! Property tests of everything the plugin reads from outside: the config on stdin (with
//! runtimeConfig and prevResult), CNI_ARGS and the other CNI_* variables. Arbitrary input
//! never panics and is refused with the spec's error code; valid values round-trip.
//! `PROPTEST_CASES` sets how many cases each property runs (256 by default).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::cmd::add::requested_addresses;
use crate::cmd::{FamilySubnet, HostSubnet};
use crate::config::{decode, NetConf};
use crate::env::{Attachment, CniArgs, Command};
use crate::error::code;
use crate::ipam::Range;
use crate::link::{format_mac, parse_mac};
use crate::result::{CniResult, Interface, IpConfig, RouteEntry};
use crate::version::{Version, SUPPORTED};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn ipnet() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| IpNet::new(Ipv4Addr::from(a).into(), l).unwrap()),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| IpNet::new(Ipv6Addr::from(a).into(), l).unwrap()),
    ]
}

fn mac() -> impl Strategy<Value = String> {
    any::<[u8; 6]>().prop_map(|m| format_mac(&m))
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
        ip().prop_map(|a| Value::from(a.to_string())),
        ipnet().prop_map(|n| Value::from(n.to_string())),
        mac().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-zA-Z]{1,10}",
                    prop::sample::select(
                        &[
                            "ips",
                            "mac",
                            "address",
                            "gateway",
                            "interface",
                            "interfaces",
                            "name",
                            "sandbox",
                            "mtu",
                            "routes",
                            "dst",
                            "gw",
                            "dns",
                            "containerID",
                            "ifname"
                        ][..]
                    )
                    .prop_map(String::from),
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const CONF_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "subnetFile",
    "dataDir",
    "bridge",
    "mtu",
    "hairpinMode",
    "isDefaultGateway",
    "dns",
    "runtimeConfig",
    "prevResult",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

/// A config object: the plugin's keys with any values, mostly near-valid ones.
fn conf_object() -> impl Strategy<Value = Map<String, Value>> {
    let version = prop::sample::select(SUPPORTED.to_vec()).prop_map(|v| json!(v.as_str()));
    (
        prop_oneof![3 => version, 1 => json_value()],
        prop_oneof![3 => Just(json!("weft")), 1 => json_value()],
        prop_oneof![3 => "[a-z0-9]{1,8}".prop_map(Value::from), 1 => json_value()],
        prop::collection::vec((prop::sample::select(CONF_KEYS), json_value()), 0..6),
    )
        .prop_map(|(version, ty, name, rest)| {
            let mut m = Map::new();
            m.insert("cniVersion".into(), version);
            m.insert("type".into(), ty);
            m.insert("name".into(), name);
            for (k, v) in rest {
                m.insert(k.to_string(), v);
            }
            m
        })
}

fn interface() -> impl Strategy<Value = Interface> {
    (
        "[a-z0-9]{1,15}",
        proptest::option::of(mac()),
        proptest::option::of(68u32..=65535),
        proptest::option::of("/[a-z0-9/]{1,20}"),
    )
        .prop_map(|(name, mac, mtu, sandbox)| Interface {
            name,
            mac,
            mtu,
            sandbox,
        })
}

fn cni_result() -> impl Strategy<Value = CniResult> {
    (
        prop::collection::vec(interface(), 0..3),
        prop::collection::vec(
            (
                ipnet(),
                proptest::option::of(ip()),
                proptest::option::of(0usize..3),
            ),
            0..3,
        ),
        prop::collection::vec((ipnet(), proptest::option::of(ip())), 0..3),
        prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..3),
    )
        .prop_map(|(interfaces, ips, routes, dns)| CniResult {
            interfaces,
            ips: ips
                .into_iter()
                .map(|(address, gateway, interface)| IpConfig {
                    address,
                    gateway,
                    interface,
                })
                .collect(),
            routes: routes
                .into_iter()
                .map(|(dst, gw)| RouteEntry { dst, gw })
                .collect(),
            dns: dns.into_iter().collect(),
        })
}

/// CNI_ARGS-like text: pairs with the keys weft reads and others, and noise.
fn cni_args_text() -> impl Strategy<Value = String> {
    let pair = prop_oneof![
        (
            prop::sample::select(&["IP", "MAC", "IgnoreUnknown", "K8S_POD_NAME", ""][..]),
            prop_oneof![
                ".{0,20}",
                ip().prop_map(|a| a.to_string()),
                ipnet().prop_map(|n| n.to_string()),
                mac(),
                prop::sample::select(&["1", "true", "FALSE", "0", "yes"][..])
                    .prop_map(String::from),
            ]
        )
            .prop_map(|(k, v)| format!("{k}={v}")),
        ".{0,12}",
    ];
    prop_oneof![
        any::<String>(),
        prop::collection::vec(pair, 0..5).prop_map(|p| p.join(";")),
    ]
}

fn lookup(vars: HashMap<String, String>) -> impl Fn(&str) -> Option<String> {
    move |k| vars.get(k).cloned()
}

proptest! {
    #[test]
    fn stdin_bytes_never_panic(bytes in prop_oneof![
        any::<Vec<u8>>(),
        conf_object().prop_map(|m| Value::Object(m).to_string().into_bytes()),
    ]) {
        match decode(&bytes) {
            Ok(obj) => {
                if let Err(e) = NetConf::parse(&obj) {
                    prop_assert!(matches!(e.code, code::INCOMPATIBLE_VERSION | code::INVALID_CONFIG), "{}", e);
                }
            }
            Err(e) => prop_assert_eq!(e.code, code::DECODE),
        }
    }

    #[test]
    fn config_objects_never_panic(obj in conf_object()) {
        match NetConf::parse(&obj) {
            Ok(conf) => {
                // Whatever prevResult is accepted as a value must also be read or refused
                // cleanly, as CHECK and DEL read it.
                if let Some(prev) = &conf.prev_result {
                    let _ = CniResult::parse(prev);
                }
            }
            Err(e) => prop_assert!(
                matches!(e.code, code::INCOMPATIBLE_VERSION | code::INVALID_CONFIG),
                "{}", e
            ),
        }
    }

    #[test]
    fn valid_configs_round_trip(
        version in prop::sample::select(SUPPORTED.to_vec()),
        name in "[a-z0-9][a-z0-9_.-]{0,15}",
        bridge in "[a-z][a-z0-9]{0,14}",
        mtu in proptest::option::of(68u32..=65535),
        hairpin in any::<bool>(),
        gateway in any::<bool>(),
        ips in prop::collection::vec(ip(), 0..3),
        mac in proptest::option::of(mac()),
        attachments in prop::collection::btree_set(("[a-z0-9]{1,12}", "[a-z0-9]{1,15}"), 0..3),
    ) {
        let mut v = json!({
            "cniVersion": version.as_str(), "name": name, "type": "weft", "bridge": bridge,
            "hairpinMode": hairpin, "isDefaultGateway": gateway,
            "runtimeConfig": {"ips": ips.iter().map(|a| a.to_string()).collect::<Vec<_>>()},
            "cni.dev/valid-attachments": attachments.iter()
                .map(|(c, i)| json!({"containerID": c, "ifname": i})).collect::<Vec<_>>(),
        });
        if let Some(m) = mtu {
            v["mtu"] = m.into();
        }
        if let Some(m) = &mac {
            v["runtimeConfig"]["mac"] = m.clone().into();
        }
        let conf = NetConf::parse(v.as_object().unwrap())
            .map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
        prop_assert_eq!(conf.cni_version, version);
        prop_assert_eq!(&conf.name, &name);
        prop_assert_eq!(&conf.bridge, &bridge);
        prop_assert_eq!(conf.mtu, mtu);
        prop_assert_eq!((conf.hairpin_mode, conf.is_default_gateway), (hairpin, gateway));
        prop_assert_eq!(&conf.runtime_ips, &ips);
        prop_assert_eq!(&conf.runtime_mac, &mac);
        prop_assert_eq!(conf.valid_attachments, Some(attachments.into_iter().collect()));
    }

    #[test]
    fn prev_results_never_panic(v in json_value(), r in cni_result()) {
        if let Err(e) = CniResult::parse(&v) {
            prop_assert_eq!(e.code, code::INVALID_CONFIG);
        }
        // A result with one field swapped for noise.
        let mut w = r.write(Version::LATEST);
        if let Some(o) = w.as_object_mut() {
            o.insert("ips".into(), v);
        }
        let _ = CniResult::parse(&w);
    }

    #[test]
    fn results_round_trip_in_every_version(r in cni_result()) {
        for v in SUPPORTED {
            let mut back = CniResult::parse(&r.write(v))
                .map_err(|e| TestCaseError::fail(format!("{v:?}: {e}")))?;
            // Only 1.1.0 carries an interface's MTU.
            if v < Version::V1_1_0 {
                for (b, i) in back.interfaces.iter_mut().zip(&r.interfaces) {
                    b.mtu = i.mtu;
                }
            }
            prop_assert_eq!(&back, &r, "{:?}", v);
        }
    }

    #[test]
    fn cni_args_never_panic(raw in cni_args_text()) {
        if let Err(e) = CniArgs::parse(&raw) {
            prop_assert_eq!(e.code, code::INVALID_ENV);
        }
    }

    #[test]
    fn cni_args_round_trip(a in ip(), m in mac(), other in "[a-zA-Z0-9_]{1,12}") {
        let raw = format!("IgnoreUnknown=1;K8S_POD_NAME={other};IP={a};MAC={m}");
        let args = CniArgs::parse(&raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(args, CniArgs { ip: Some(a), mac: Some(m), pod_name: Some(other), ..CniArgs::default() });
    }

    #[test]
    fn environment_never_panics(
        vars in prop::collection::hash_map(
            prop::sample::select(&[
                "CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_ARGS", "CNI_PATH"
            ][..]).prop_map(String::from),
            prop_oneof![
                ".{0,20}",
                prop::sample::select(&["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "eth0", "/run/netns/x"][..])
                    .prop_map(String::from),
                cni_args_text(),
            ],
            0..6,
        )
    ) {
        let env = lookup(vars);
        if let Ok(command) = Command::from_env(&env) {
            if let Err(e) = Attachment::from_env(command, &env) {
                prop_assert_eq!(e.code, code::INVALID_ENV);
            }
        }
    }

    #[test]
    fn macs_never_panic_and_round_trip(s in "[0-9a-fA-F:]{0,20}|.{0,20}", m in any::<[u8; 6]>()) {
        let _ = parse_mac(&s);
        prop_assert_eq!(parse_mac(&format_mac(&m)).unwrap(), m);
        prop_assert_eq!(parse_mac(&format_mac(&m).to_uppercase()).unwrap(), m);
    }

    /// Whatever the runtime asks for (`runtimeConfig.ips` and `CNI_ARGS` `IP=`), on a host
    /// with IPv4, IPv6 or both: either one address per family of the host, each the one
    /// asked for, or code 101 naming an address that was asked for.
    #[test]
    fn requested_addresses_are_one_per_family_or_code_101(
        asked in prop::collection::vec(ip(), 0..4),
        arg in proptest::option::of(ip()),
        families in prop::sample::select(&[(true, false), (false, true), (true, true)][..]),
    ) {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "weft"});
        conf["runtimeConfig"] = json!({"ips": asked.iter().map(|a| a.to_string()).collect::<Vec<_>>()});
        let conf = NetConf::parse(conf.as_object().unwrap()).unwrap();
        let att = Attachment {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: None,
            args: CniArgs { ip: arg, ..CniArgs::default() },
        };
        let subnets = [
            (families.0, "198.19.0.1/24"),
            (families.1, "2001:db8::1/64"),
        ];
        let host = HostSubnet {
            families: subnets
                .into_iter()
                .filter(|(on, _)| *on)
                .enumerate()
                .map(|(index, (_, gw))| {
                    let gateway: IpNet = gw.parse().unwrap();
                    FamilySubnet {
                        network: None,
                        gateway,
                        range: Range { subnet: gateway.trunc(), gateway: gateway.addr(), index },
                    }
                })
                .collect(),
            mtu: 1400,
        };
        let all: Vec<IpAddr> = asked.iter().copied().chain(arg).collect();
        match requested_addresses(&conf, &att, &host) {
            Ok(slots) => {
                prop_assert_eq!(slots.len(), host.families.len());
                for (slot, family) in slots.iter().zip(&host.families) {
                    let of_family: Vec<IpAddr> = all
                        .iter()
                        .copied()
                        .filter(|a| a.is_ipv4() == family.gateway.addr().is_ipv4())
                        .collect();
                    prop_assert_eq!(*slot, of_family.first().copied());
                    prop_assert!(of_family.iter().all(|a| Some(*a) == *slot));
                }
                prop_assert!(all.iter().all(|a| host.family_of(*a).is_some()));
            }
            Err(e) => {
                prop_assert_eq!(e.code, code::ADDRESS_UNAVAILABLE);
                prop_assert!(all.iter().any(|a| e.msg.contains(&a.to_string())), "{}", e.msg);
                // Refused only for a reason: a family the host lacks, or two of one family.
                let homeless = all.iter().any(|a| host.family_of(*a).is_none());
                let clash = all.iter().any(|a| {
                    all.iter().any(|b| a != b && a.is_ipv4() == b.is_ipv4())
                });
                prop_assert!(homeless || clash, "{}", e.msg);
            }
        }
    }
}
