//! Property tests of the network config parser, the one parser of outside data that lives
//! in config.rs: arbitrary text never panics, and every config it accepts reads back the same
//! from its effective JSON (what `weftctl -o json config get` prints). `PROPTEST_CASES` sets
//! how many cases each property runs (256 by default).

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use weft::config::NetworkConfig;

/// A value for a config field: often of the right kind, sometimes not.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0u64..=40).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        (any::<u32>(), 0u8..=33)
            .prop_map(|(a, l)| Value::from(format!("{}/{l}", std::net::Ipv4Addr::from(a)))),
        any::<u32>().prop_map(|a| Value::from(std::net::Ipv4Addr::from(a).to_string())),
        (any::<u128>(), 0u8..=129)
            .prop_map(|(a, l)| Value::from(format!("{}/{l}", std::net::Ipv6Addr::from(a)))),
        any::<u128>().prop_map(|a| Value::from(std::net::Ipv6Addr::from(a).to_string())),
        "[a-zA-Z0-9./:-]{0,20}".prop_map(Value::from),
        prop::collection::vec(any::<u8>(), 0..3).prop_map(Value::from),
    ]
}

const FIELDS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "network",
    "subnetlen",
];
const BACKEND_FIELDS: &[&str] = &[
    "Type",
    "VNI",
    "Port",
    "MTU",
    "GBP",
    "Learning",
    "DirectRouting",
    "type",
];

fn backend() -> impl Strategy<Value = Value> {
    prop_oneof![
        field_value(),
        prop::collection::vec(
            (
                prop::sample::select(BACKEND_FIELDS),
                prop_oneof![
                    field_value(),
                    prop::sample::select(&["vxlan", "host-gw", "VXLAN", "udp", ""][..])
                        .prop_map(Value::from),
                ]
            ),
            0..6
        )
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
    ]
}

/// A config document: known fields with any values, sometimes a backend, sometimes junk keys.
fn document() -> impl Strategy<Value = String> {
    let object = (
        prop::collection::vec((prop::sample::select(FIELDS), field_value()), 0..8),
        proptest::option::of(backend()),
        proptest::option::of(("[A-Za-z]{1,8}", field_value())),
    )
        .prop_map(|(kv, backend, junk)| {
            let mut m: Map<String, Value> =
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if let Some(b) = backend {
                m.insert("Backend".into(), b);
            }
            if let Some((k, v)) = junk {
                m.insert(k, v);
            }
            Value::Object(m).to_string()
        });
    prop_oneof![
        4 => object,
        1 => any::<String>(),
        1 => "[{}\\[\\]\":,0-9a-zA-Z./ -]{0,64}",
    ]
}

/// A config that should be accepted: a network, a subnet length that fits, a backend.
fn valid() -> impl Strategy<Value = String> {
    (any::<u32>(), 8u8..=28)
        .prop_flat_map(|(a, plen)| {
            (
                Just(a),
                Just(plen),
                proptest::option::of((plen + 2)..=30),
                prop_oneof![
                    Just(json!({"Type": "host-gw"})),
                    (1u32..=16_777_215, any::<u16>(), any::<bool>()).prop_map(|(vni, port, dr)| {
                        json!({"Type": "vxlan", "VNI": vni, "Port": port, "DirectRouting": dr})
                    }),
                ],
            )
        })
        .prop_map(|(a, plen, len, backend)| {
            let mut v = json!({
                "Network": format!("{}/{plen}", std::net::Ipv4Addr::from(a)),
                "Backend": backend,
            });
            if let Some(len) = len {
                v["SubnetLen"] = len.into();
            }
            v.to_string()
        })
}

mod props {
    use super::*;

    proptest! {
        #[test]
        fn any_document_never_panics(doc in document()) {
            if let Ok(cfg) = NetworkConfig::parse(&doc) {
                // Whatever is accepted reads back the same from its effective JSON.
                let again = NetworkConfig::parse(&cfg.effective_json().to_string())
                    .map_err(|e| TestCaseError::fail(format!("{doc}: effective JSON refused: {e}")))?;
                prop_assert_eq!(
                    NetworkConfig { raw: Value::Null, ..again },
                    NetworkConfig { raw: Value::Null, ..cfg }
                );
            }
        }

        #[test]
        fn valid_configs_round_trip(doc in valid()) {
            let cfg = NetworkConfig::parse(&doc)
                .map_err(|e| TestCaseError::fail(format!("{doc}: {e}")))?;
            let again = NetworkConfig::parse(&cfg.effective_json().to_string())
                .map_err(|e| TestCaseError::fail(format!("{doc}: effective JSON refused: {e}")))?;
            prop_assert_eq!(
                NetworkConfig { raw: Value::Null, ..again },
                NetworkConfig { raw: Value::Null, ..cfg }
            );
        }
    }
}
