//! The nftables rules weftd owns: masquerade for traffic leaving the overlay, and forward
//! accepts for the overlay network. They live in tables of weft's own (`ip weft`, `ip6 weft`),
//! replaced in one atomic `nft -f` transaction, so nothing else's rules are ever touched.

use std::io::Write as _;
use std::process::Stdio;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::subnet::Family;

/// The kube-proxy mark: traffic it already NATs is left alone to avoid double NAT.
const KUBE_PROXY_MARK: u32 = 0x4000;

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("cannot run nft (is the nftables package installed?): {0}")]
    Spawn(std::io::Error),
    #[error("nft -f refused the rules for table {table}: {stderr}")]
    Apply { table: String, stderr: String },
    #[error("nft list table {table} failed: {stderr}")]
    List { table: String, stderr: String },
    #[error(transparent)]
    Forward(#[from] crate::forward::ForwardError),
}

/// What the rules are computed from: the overlay network N and this host's subnet P.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqSpec {
    pub v4: Option<(Ipv4Net, Ipv4Net)>,
    pub v6: Option<(Ipv6Net, Ipv6Net)>,
    /// Install masquerade rules (--ip-masq); forward accepts are always installed.
    pub masquerade: bool,
}

/// One address family's table: its nft family name and the script that rebuilds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableScript {
    pub family: &'static str,
    pub script: String,
}

pub const TABLE: &str = "weft";

/// nft's name of an address family (for tables and for address matches alike) and the
/// family's multicast range, which is never masqueraded.
fn nft_family(f: Family) -> (&'static str, &'static str) {
    match f {
        Family::V4 => ("ip", "224.0.0.0/4"),
        Family::V6 => ("ip6", "ff00::/8"),
    }
}

/// The table for the family of `network`: the same rules for IPv4 and IPv6.
fn rules(network: IpNet, subnet: IpNet, masquerade: bool) -> TableScript {
    let (family, mcast) = nft_family(Family::of(network.addr()));
    let ip = family;
    let n = network.trunc();
    let p = subnet.trunc();
    let mut s = String::new();
    // Declaring then deleting makes the transaction work whether or not the table exists;
    // the whole script is applied atomically, so there is no moment without rules.
    s.push_str(&format!(
        "table {family} {TABLE}\ndelete table {family} {TABLE}\n"
    ));
    s.push_str(&format!("table {family} {TABLE} {{\n"));
    if masquerade {
        s.push_str("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
        s.push_str(&format!(
            "    meta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x} return\n"
        ));
        s.push_str(&format!("    {ip} saddr {p} {ip} daddr {n} return\n"));
        s.push_str(&format!("    {ip} saddr {n} {ip} daddr {p} return\n"));
        // Traffic from outside the overlay to this host's containers keeps its source, so
        // they see who really called. (flannel's nftables variant writes `saddr != P` here,
        // which swallows the last masquerade rule below.)
        s.push_str(&format!("    {ip} saddr != {n} {ip} daddr {p} return\n"));
        s.push_str(&format!(
            "    {ip} saddr {n} {ip} daddr != {mcast} masquerade fully-random\n"
        ));
        s.push_str(&format!(
            "    {ip} saddr != {n} {ip} daddr {n} masquerade fully-random\n"
        ));
        s.push_str("  }\n");
    }
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    s.push_str(&format!("    {ip} saddr {n} accept\n"));
    s.push_str(&format!("    {ip} daddr {n} accept\n"));
    s.push_str("  }\n}\n");
    TableScript { family, script: s }
}

impl MasqSpec {
    /// The scripts for every family in use; pure, so the rule text is unit-tested.
    pub fn scripts(&self) -> Vec<TableScript> {
        let mut out = Vec::new();
        if let Some((n, p)) = self.v4 {
            out.push(rules(IpNet::V4(n), IpNet::V4(p), self.masquerade));
        }
        if let Some((n, p)) = self.v6 {
            out.push(rules(IpNet::V6(n), IpNet::V6(p), self.masquerade));
        }
        out
    }
}

/// Applies and watches weft's tables. It remembers how the kernel listed each table right
/// after it was written, so a later difference (a flush by hand, another tool's `nft flush
/// ruleset`) is noticed and repaired.
#[derive(Debug, Default)]
pub struct Masq {
    applied: Vec<(TableScript, String)>,
}

impl Masq {
    pub fn new() -> Masq {
        Masq::default()
    }

    /// Makes the kernel hold exactly these tables. Returns true when anything was written.
    pub fn ensure(&mut self, spec: &MasqSpec) -> Result<bool, MasqError> {
        let wanted = spec.scripts();
        let mut wrote = false;
        let mut applied = Vec::with_capacity(wanted.len());
        for table in wanted {
            let current = list_table(table.family)?;
            let unchanged = self
                .applied
                .iter()
                .any(|(t, listing)| *t == table && Some(listing) == current.as_ref());
            let listing = if unchanged {
                current.unwrap_or_default()
            } else {
                run_nft(&table.script, table.family)?;
                wrote = true;
                list_table(table.family)?.unwrap_or_default()
            };
            applied.push((table, listing));
        }
        // A family no longer in use (e.g. IPv6 turned off) loses its table.
        for (old, _) in &self.applied {
            if !applied.iter().any(|(t, _)| t.family == old.family) {
                remove_table(old.family)?;
                wrote = true;
            }
        }
        self.applied = applied;
        // Another table's drop (Docker's FORWARD policy) is not overruled by weft's accepts.
        let networks: Vec<IpNet> = (spec.v4.map(|(n, _)| IpNet::V4(n)).into_iter())
            .chain(spec.v6.map(|(n, _)| IpNet::V6(n)))
            .collect();
        wrote |= crate::forward::ensure(&networks)?;
        Ok(wrote)
    }
}

/// Removes weft's table of one family; absent is fine.
pub fn remove_table(family: &str) -> Result<(), MasqError> {
    run_nft(
        &format!("table {family} {TABLE}\ndelete table {family} {TABLE}\n"),
        family,
    )
}

fn run_nft(script: &str, family: &str) -> Result<(), MasqError> {
    let mut child = crate::environ::command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MasqError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(MasqError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(MasqError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MasqError::Apply {
            table: format!("{family} {TABLE}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The kernel's listing of weft's table of one family, or None when it does not exist.
/// Whether it exists is read from nft's JSON list of tables, not from an error message.
pub fn list_table(family: &str) -> Result<Option<String>, MasqError> {
    let tables = nft_output(&["-j", "list", "tables", family], family)?;
    if !has_table(&tables, family) {
        return Ok(None);
    }
    nft_output(&["list", "table", family, TABLE], family).map(Some)
}

/// What nft printed, or its complaint when it exits with a failure.
fn nft_output(args: &[&str], family: &str) -> Result<String, MasqError> {
    let out = crate::environ::command("nft")
        .args(args)
        .output()
        .map_err(MasqError::Spawn)?;
    if !out.status.success() {
        return Err(MasqError::List {
            table: format!("{family} {TABLE}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `nft -j list tables` output names weft's table of `family`.
fn has_table(json: &str, family: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return false;
    };
    let items = v.get("nftables").and_then(|n| n.as_array());
    items.into_iter().flatten().any(|item| {
        let t = &item["table"];
        t["family"] == family && t["name"] == TABLE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_found_in_nfts_json_listing() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "filter", "handle": 1}},
            {"table": {"family": "ip", "name": "weft", "handle": 2}}]}"#;
        assert!(has_table(json, "ip"));
        assert!(!has_table(json, "ip6"));
        assert!(!has_table(r#"{"nftables": [{"metainfo": {}}]}"#, "ip"));
        assert!(!has_table("not json", "ip"));
    }

    #[test]
    fn masquerade_rules_follow_flannel_semantics() {
        let spec = MasqSpec {
            v4: Some((
                "198.19.0.0/16".parse().unwrap(),
                "198.19.7.0/24".parse().unwrap(),
            )),
            v6: None,
            masquerade: true,
        };
        let scripts = spec.scripts();
        assert_eq!(scripts.len(), 1);
        let s = &scripts[0].script;
        let order = [
            "meta mark & 0x4000 == 0x4000 return",
            "ip saddr 198.19.7.0/24 ip daddr 198.19.0.0/16 return",
            "ip saddr 198.19.0.0/16 ip daddr 198.19.7.0/24 return",
            "ip saddr != 198.19.0.0/16 ip daddr 198.19.7.0/24 return",
            "ip saddr 198.19.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 198.19.0.0/16 ip daddr 198.19.0.0/16 masquerade fully-random",
            "ip saddr 198.19.0.0/16 accept",
            "ip daddr 198.19.0.0/16 accept",
        ];
        let mut at = 0;
        for rule in order {
            let found = s[at..]
                .find(rule)
                .unwrap_or_else(|| panic!("{rule} in\n{s}"));
            at += found + rule.len();
        }
        // The flannel nftables bug: a `saddr != P` return rule makes the last masquerade
        // rule unreachable.
        assert!(!s.contains("saddr != 198.19.7.0/24"), "{s}");
    }

    #[test]
    fn without_ip_masq_only_forward_rules() {
        let spec = MasqSpec {
            v4: Some((
                "198.19.0.0/16".parse().unwrap(),
                "198.19.7.0/24".parse().unwrap(),
            )),
            v6: Some((
                "fd00:5::/48".parse().unwrap(),
                "fd00:5:0:7::/64".parse().unwrap(),
            )),
            masquerade: false,
        };
        let scripts = spec.scripts();
        assert_eq!(scripts.len(), 2);
        assert!(!scripts[0].script.contains("masquerade"));
        assert!(scripts[1].script.contains("ip6 saddr fd00:5::/48 accept"));
    }
}
