//! What a config change does to running hosts, key by key: applied live (at once, traffic
//! unaware), applied but disturbing traffic (the operator confirms), or refused while the
//! network runs. The rules of the keys every network has are here; each backend judges its
//! own settings ([`crate::backend::Backend::setting_change`]). A network with no lease runs
//! nowhere yet, so nothing is refused there. The README's table says the same:
//!
//! | key | verdict |
//! |---|---|
//! | `Network`, `SubnetLen`, `IPv6Network`, `IPv6SubnetLen` | live while every lease fits; else refused |
//! | `SubnetMin`, `SubnetMax`, `IPv6SubnetMin`, `IPv6SubnetMax` | live; disturbs when leases lie outside |
//! | `EnableIPv6` | on: live; off: refused while IPv6 subnets are leased |
//! | `EnableNFTables` | live |
//! | `Backend.Type` | a migration (live; disturbs when containers get a smaller MTU); refused while a host speaks a third backend |
//! | vxlan `DirectRouting`, `Learning` | live |
//! | vxlan, wireguard `MTU` | raised: live; lowered or to/from 0: disturbs |
//! | vxlan `VNI`, `Port`, `GBP` | refused |
//! | wireguard `PSK`, `PersistentKeepaliveInterval` | live |
//! | wireguard `ListenPort`, `ListenPortV6` | disturbs |
//! | wireguard `Mode`, any other backend setting | refused |

use serde_json::{Map, Value};

use crate::backend::{Backend, SettingChange};
use crate::config::NetworkConfig;
use crate::lease::Lease;
use crate::subnet::Family;

/// One changed key and what running hosts do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// flannel's name, `Backend.` before a backend setting.
    pub key: String,
    /// The values as shown (secrets hidden, `-` for none).
    pub old: String,
    pub new: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Running hosts apply it at once and traffic notices nothing; `note` says what else
    /// follows from it, if anything.
    Live(Option<String>),
    /// Running hosts apply it and traffic may notice (why): weftctl asks for `--yes`.
    Disturbs(String),
    /// Running hosts keep what they run (why); weftctl does not write it.
    Refused(String),
}

impl Verdict {
    pub fn is_refused(&self) -> bool {
        matches!(self, Verdict::Refused(_))
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Live(None) => write!(f, "applied live"),
            Verdict::Live(Some(note)) => write!(f, "applied live; {note}"),
            Verdict::Disturbs(why) => write!(f, "applied live, disturbs traffic: {why}"),
            Verdict::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// Every key that differs between `old` (what the network runs) and `new`, with what running
/// hosts do about it, given the leases in etcd. Values are compared with every default
/// filled in, so a default written out is no change.
pub fn classify(old: &NetworkConfig, new: &NetworkConfig, leases: &[Lease]) -> Vec<KeyChange> {
    let (a, b) = (old.effective_json(), new.effective_json());
    let (Value::Object(a), Value::Object(b)) = (a, b) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for key in keys(&a, &b).filter(|k| *k != "Backend") {
        let (x, y) = (a.get(key), b.get(key));
        if x != y {
            let verdict = match leases.is_empty() {
                true => Verdict::Live(None),
                false => top_level(key, old, new, leases),
            };
            out.push(change(key.to_string(), x, y, verdict));
        }
    }
    out.extend(backend_changes(old, new, leases));
    out
}

/// The union of two objects' keys, in order.
fn keys<'a>(a: &'a Map<String, Value>, b: &'a Map<String, Value>) -> impl Iterator<Item = &'a str> {
    let mut all: Vec<&str> = a.keys().chain(b.keys()).map(String::as_str).collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter()
}

fn shown(key: &str, v: Option<&Value>) -> String {
    let secret = (crate::backend::SECRET_SETTINGS.iter()).any(|s| {
        key.rsplit('.')
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case(s))
    });
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(_) if secret => crate::json::HIDDEN.into(),
        Some(v) => crate::json::show(v),
    }
}

fn change(key: String, old: Option<&Value>, new: Option<&Value>, verdict: Verdict) -> KeyChange {
    KeyChange {
        old: shown(&key, old),
        new: shown(&key, new),
        key,
        verdict,
    }
}

/// The lease subnets `fits` refuses, in `family`, named (the first five, the rest counted).
fn outside(
    leases: &[Lease],
    family: Family,
    fits: impl Fn(ipnet::IpNet) -> bool,
) -> Option<String> {
    let out: Vec<String> = (leases.iter())
        .filter_map(|l| l.side(family).map(|s| s.subnet))
        .filter(|s| !fits(*s))
        .map(|s| s.to_string())
        .collect();
    (!out.is_empty()).then(|| crate::logging::some_of(&out, 5))
}

/// The rules of the network's own keys.
fn top_level(key: &str, old: &NetworkConfig, new: &NetworkConfig, leases: &[Lease]) -> Verdict {
    let renumber = |subnets: String| {
        Verdict::Refused(format!(
            "the leases of {subnets} would not fit: their hosts would need new subnets and their containers new addresses"
        ))
    };
    match key {
        "Network" | "SubnetLen" => match outside(leases, Family::V4, |s| new.contains(s)) {
            Some(s) => renumber(s),
            None => Verdict::Live(Some("routes and firewall rules follow at once; running containers keep their route to the old network until restarted".into())),
        },
        "IPv6Network" | "IPv6SubnetLen" if old.ipv6_network.is_some() => {
            match outside(leases, Family::V6, |s| new.contains(s)) {
                Some(s) => renumber(s),
                None => Verdict::Live(None),
            }
        }
        "SubnetMin" | "SubnetMax" | "IPv6SubnetMin" | "IPv6SubnetMax" => {
            let family = if key.starts_with("IPv6") { Family::V6 } else { Family::V4 };
            match outside(leases, family, |s| new.in_range(s)) {
                Some(s) => Verdict::Disturbs(format!(
                    "{s} lie outside the new range: each keeps its subnet while its lease lives, and takes a new one at its next start (its containers must then be restarted)"
                )),
                None => Verdict::Live(Some("new leases come from the new range".into())),
            }
        }
        "EnableIPv6" if new.enable_ipv6 => Verdict::Live(Some(
            "every host with an IPv6 address also takes an IPv6 subnet (its lease moves to a dual-stack key, its IPv4 subnet kept); containers started afterwards get IPv6 addresses".into(),
        )),
        "EnableIPv6" => match outside(leases, Family::V6, |_| false) {
            Some(s) => Verdict::Refused(format!(
                "containers hold addresses of the IPv6 subnets {s}; turning IPv6 off would cut them off"
            )),
            None => Verdict::Live(None),
        },
        "EnableNFTables" => Verdict::Live(Some("weft writes nftables rules either way".into())),
        _ => Verdict::Live(None),
    }
}

/// The backend's part: its settings one by one when the type stays, else the migration.
fn backend_changes(old: &NetworkConfig, new: &NetworkConfig, leases: &[Lease]) -> Vec<KeyChange> {
    let (a, b) = (old.backend.backend(), new.backend.backend());
    if a.type_name() != b.type_name() {
        let t = |n: &str| Value::String(n.into());
        let verdict = migration(a, b, leases);
        return vec![change(
            "Backend.Type".into(),
            Some(&t(a.type_name())),
            Some(&t(b.type_name())),
            verdict,
        )];
    }
    let (pa, pb) = (a.params(), b.params());
    keys(&pa, &pb)
        .filter(|k| pa.get(*k) != pb.get(*k))
        .map(|k| {
            let (x, y) = (pa.get(k), pb.get(k));
            let null = Value::Null;
            let verdict = match a.setting_change(k, x.unwrap_or(&null), y.unwrap_or(&null)) {
                _ if leases.is_empty() => Verdict::Live(None),
                SettingChange::Live => Verdict::Live(None),
                SettingChange::Disturbs(why) => Verdict::Disturbs(why),
                SettingChange::Refused(why) => Verdict::Refused(why),
            };
            change(format!("Backend.{k}"), x, y, verdict)
        })
        .collect()
}

/// The MTU a backend gives containers on a 1500-byte interface: its `MTU` setting, else the
/// interface's less its overhead.
fn mtu_on_1500(b: &dyn Backend) -> u64 {
    match b.params().get("MTU").and_then(Value::as_u64) {
        Some(m) if m > 0 => m,
        _ => 1500 - u64::from(b.mtu_overhead(Family::V4)),
    }
}

/// A change of `Backend.Type`: a migration, refused while hosts still speak a third backend
/// (a host runs at most two), and disturbing when containers get a smaller MTU.
fn migration(a: &dyn Backend, b: &dyn Backend, leases: &[Lease]) -> Verdict {
    if leases.is_empty() {
        return Verdict::Live(None);
    }
    let (from, to) = (a.type_name(), b.type_name());
    let third: Vec<String> = (leases.iter())
        .filter_map(|l| {
            let other = l
                .attrs
                .spoken()
                .into_iter()
                .map(|s| s.backend_type)
                .find(|t| *t != from && *t != to)?;
            Some(format!("{} ({other})", l.subnet))
        })
        .collect();
    if !third.is_empty() {
        return Verdict::Refused(format!(
            "{} still speak another backend (an earlier migration has not finished, or flannel hosts run it): a host runs at most two",
            crate::logging::some_of(&third, 5)
        ));
    }
    let how = format!(
        "a migration: each host told to move (all at once, or as `weftctl migrate` chooses) runs {to} beside {from}; each pair moves to {to} once both ends speak it, and {from} goes from a host once no peer needs it (flannel hosts keep {from})"
    );
    let (m0, m1) = (mtu_on_1500(a), mtu_on_1500(b));
    if m1 < m0 {
        return Verdict::Disturbs(format!(
            "{how}; containers get an MTU {} bytes smaller ({m0} → {m1} on a 1500-byte interface): running ones keep theirs and, for larger packets, depend on path-MTU discovery until restarted",
            m0 - m1
        ));
    }
    Verdict::Live(Some(how))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::lease;

    fn cfg(s: &str) -> NetworkConfig {
        NetworkConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn one(old: &str, new: &str, leases: &[Lease]) -> KeyChange {
        let c = classify(&cfg(old), &cfg(new), leases);
        assert_eq!(c.len(), 1, "{c:?}");
        c.into_iter().next().unwrap()
    }

    const VX: &str = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}"#;

    fn leases() -> Vec<Lease> {
        vec![
            lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2),
            lease("198.19.3.0/24", "198.18.0.3", Some("0e:00:00:00:00:03"), 3),
        ]
    }

    #[test]
    fn vxlan_settings_are_live_disturbing_or_refused_by_what_they_change() {
        let with =
            |b: &str| format!(r#"{{"Network":"198.19.0.0/16","Backend":{{"Type":"vxlan",{b}}}}}"#);
        let l = leases();
        for (b, key, want) in [
            (r#""DirectRouting":true"#, "Backend.DirectRouting", "live"),
            (r#""Learning":true"#, "Backend.Learning", "live"),
            (r#""MTU":1400"#, "Backend.MTU", "disturbs"),
            (r#""VNI":2"#, "Backend.VNI", "refused"),
            (r#""Port":4789"#, "Backend.Port", "refused"),
            (r#""GBP":true"#, "Backend.GBP", "refused"),
        ] {
            let c = one(VX, &with(b), &l);
            assert_eq!(c.key, key);
            let got = match c.verdict {
                Verdict::Live(_) => "live",
                Verdict::Disturbs(_) => "disturbs",
                Verdict::Refused(_) => "refused",
            };
            assert_eq!(got, want, "{key}: {}", c.verdict);
        }
        let c = one(VX, &with(r#""VNI":2"#), &l);
        assert_eq!((c.old.as_str(), c.new.as_str()), ("1", "2"));
        assert!(
            c.verdict.to_string().contains("flannel hosts keep 1"),
            "{}",
            c.verdict
        );
        // The kernel's default port written out is no move.
        assert_eq!(
            one(VX, &with(r#""Port":8472"#), &l).verdict,
            Verdict::Live(None)
        );
        // Raising an explicit MTU disturbs nobody.
        let c = one(&with(r#""MTU":1400"#), &with(r#""MTU":1450"#), &l);
        assert_eq!(c.verdict, Verdict::Live(None));
        // Nothing runs without leases: nothing is refused.
        assert_eq!(
            one(VX, &with(r#""VNI":2"#), &[]).verdict,
            Verdict::Live(None)
        );
    }

    #[test]
    fn the_network_may_grow_but_no_lease_may_fall_outside_it() {
        let small = r#"{"Network":"198.19.0.0/17","Backend":{"Type":"vxlan"}}"#;
        // The derived SubnetMax grows with it.
        let all = classify(&cfg(small), &cfg(VX), &leases());
        let keys: Vec<&str> = all.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["Network", "SubnetMax"]);
        assert!(
            all.iter()
                .all(|c| matches!(c.verdict, Verdict::Live(Some(_)))),
            "{all:?}"
        );
        let moved = r#"{"Network":"198.18.64.0/18","Backend":{"Type":"vxlan"}}"#;
        let all = classify(&cfg(VX), &cfg(moved), &leases());
        let net = all.iter().find(|c| c.key == "Network").unwrap();
        assert!(
            net.verdict
                .to_string()
                .contains("198.19.2.0/24, 198.19.3.0/24 would not fit"),
            "{}",
            net.verdict
        );
        let len = r#"{"Network":"198.19.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#;
        let all = classify(&cfg(VX), &cfg(len), &leases());
        assert!(
            all.iter()
                .any(|c| c.key == "SubnetLen" && c.verdict.is_refused()),
            "{all:?}"
        );
    }

    #[test]
    fn a_narrowed_range_disturbs_only_hosts_outside_it() {
        let range = |min: &str| {
            format!(
                r#"{{"Network":"198.19.0.0/16","SubnetMin":"{min}","Backend":{{"Type":"vxlan"}}}}"#
            )
        };
        let c = one(VX, &range("198.19.2.0"), &leases());
        assert!(matches!(c.verdict, Verdict::Live(_)), "{}", c.verdict);
        let c = one(VX, &range("198.19.3.0"), &leases());
        assert!(
            matches!(&c.verdict, Verdict::Disturbs(w) if w.starts_with("198.19.2.0/24 lie")),
            "{}",
            c.verdict
        );
    }

    #[test]
    fn ipv6_may_be_turned_on_but_not_off() {
        let dual = r#"{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"vxlan"}}"#;
        let on = classify(&cfg(VX), &cfg(dual), &leases());
        assert!(
            on.iter().all(|c| matches!(c.verdict, Verdict::Live(_))),
            "{on:?}"
        );
        assert!(on.iter().any(|c| c.key == "EnableIPv6"));
        let mut l = leases();
        l[0].subnet6 = Some("2001:db8:100:2::/64".parse().unwrap());
        let off = classify(&cfg(dual), &cfg(VX), &l);
        let e = off.iter().find(|c| c.key == "EnableIPv6").unwrap();
        assert!(
            e.verdict.to_string().contains("2001:db8:100:2::/64"),
            "{}",
            e.verdict
        );
    }

    #[test]
    fn a_new_backend_type_is_a_migration_that_may_lower_the_mtu() {
        let wg = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"wireguard","PSK":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="}}"#;
        let c = one(VX, wg, &leases());
        assert_eq!(
            (c.key.as_str(), c.old.as_str(), c.new.as_str()),
            ("Backend.Type", "vxlan", "wireguard")
        );
        assert!(
            matches!(&c.verdict, Verdict::Disturbs(w) if w.contains("1450 → 1420")),
            "{}",
            c.verdict
        );
        let c = one(wg, VX, &leases());
        assert!(matches!(c.verdict, Verdict::Live(Some(_))), "{}", c.verdict);
        // A host still on a third backend must finish first.
        let mut l = leases();
        l[1].attrs.backend_type = "host-gw".into();
        let c = one(VX, wg, &l);
        assert!(
            c.verdict.to_string().contains("198.19.3.0/24 (host-gw)"),
            "{}",
            c.verdict
        );
    }

    #[test]
    fn wireguard_settings_and_the_psk_is_never_shown() {
        let wg = |b: &str| {
            format!(r#"{{"Network":"198.19.0.0/16","Backend":{{"Type":"wireguard"{b}}}}}"#)
        };
        let psk = r#","PSK":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=""#;
        let c = one(&wg(""), &wg(psk), &leases());
        assert_eq!(
            (c.key.as_str(), c.old.as_str(), c.new.as_str()),
            ("Backend.PSK", "-", "(hidden)")
        );
        assert_eq!(c.verdict, Verdict::Live(None));
        let c = one(
            &wg(""),
            &wg(r#","PersistentKeepaliveInterval":25"#),
            &leases(),
        );
        assert_eq!(c.verdict, Verdict::Live(None));
        let c = one(&wg(""), &wg(r#","ListenPort":51830"#), &leases());
        assert!(matches!(c.verdict, Verdict::Disturbs(_)));
        let c = one(&wg(""), &wg(r#","Mode":"auto""#), &leases());
        assert!(c.verdict.is_refused());
    }
}
