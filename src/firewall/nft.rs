//! Running `nft` for weft's tables: which tables exist, a table's contents read back as typed
//! objects, and one JSON batch applied as one transaction. Decisions are made from the typed
//! listing and nft's exit code; nft's messages only go into errors for people to read.

use std::collections::HashSet;
use std::io::Write as _;
use std::process::{Output, Stdio};

use nftables::batch::Batch;
use nftables::schema::{NfListObject, NfObject, Nftables};
use serde_json::Value;

use super::tables::{nf_family, TABLE};
use super::FirewallError;
use crate::subnet::Family;

/// weft's table of one family as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// The objects nft listed (metainfo included; [`super::tables::normalize`] drops it).
    Objects(Vec<NfListObject<'static>>),
    /// The table exists but its listing does not parse: not something weft wrote.
    Unreadable(String),
}

/// The families in which a table named weft's exists, from `nft -j list tables`.
pub fn families_with_table() -> Result<HashSet<Family>, FirewallError> {
    families_with(TABLE)
}

/// The families in which a table named `table` exists.
pub fn families_with(table: &str) -> Result<HashSet<Family>, FirewallError> {
    let args = ["-j", "list", "tables"];
    let out = run(&args, None)?;
    let objects = parse(&out.stdout).map_err(|error| FirewallError::Listing {
        command: command_line(&args),
        error,
    })?;
    let mut found = HashSet::new();
    for o in objects {
        if let NfListObject::Table(t) = o {
            let family = Family::ALL.into_iter().find(|f| nf_family(*f) == t.family);
            if let Some(f) = family.filter(|_| t.name == table) {
                found.insert(f);
            }
        }
    }
    Ok(found)
}

/// weft's table of `family`, which [`families_with_table`] found.
pub fn list(family: Family) -> Result<Listing, FirewallError> {
    list_table(family, TABLE)
}

/// The table `table` of `family`, which [`families_with`] found.
pub fn list_table(family: Family, table: &str) -> Result<Listing, FirewallError> {
    let args = ["-j", "list", "table", nft_name(family), table];
    let out = run(&args, None)?;
    Ok(match parse(&out.stdout) {
        Ok(objects) => Listing::Objects(objects),
        Err(e) => Listing::Unreadable(e),
    })
}

/// [`list_table`], with the packets each named counter holds, read from nft's own JSON (the
/// crate's counter type holds 32 bits; its value is clamped to them before it is read).
/// Only weftd counts drops; the plugin never reads counters.
#[cfg(feature = "daemon")]
pub fn list_table_counted(
    family: Family,
    table: &str,
) -> Result<(Listing, std::collections::BTreeMap<String, u64>), FirewallError> {
    let args = ["-j", "list", "table", nft_name(family), table];
    let out = run(&args, None)?;
    let mut counts = std::collections::BTreeMap::new();
    if let Ok(doc) = serde_json::from_slice::<Value>(&out.stdout) {
        let objects = doc.get("nftables").and_then(Value::as_array);
        for c in objects
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("counter"))
        {
            if let (Some(name), Some(n)) = (c["name"].as_str(), c["packets"].as_u64()) {
                counts.insert(name.to_string(), n);
            }
        }
    }
    let listing = match parse(&out.stdout) {
        Ok(objects) => Listing::Objects(objects),
        Err(e) => Listing::Unreadable(e),
    };
    Ok((listing, counts))
}

/// Applies `batch` in one transaction (`nft -j -f -`): all of it or, on failure, none.
pub fn apply(batch: Batch<'static>) -> Result<(), FirewallError> {
    let json = serde_json::to_vec(&batch.to_nftables()).map_err(FirewallError::Encode)?;
    run(&["-j", "-f", "-"], Some(&json)).map(|_| ())
}

fn nft_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// nft's JSON as the crate's typed objects. nft lists a single NAT flag as a plain string
/// (`"flags": "fully-random"`) where the crate (0.6.3) only reads a list, so such a string is
/// made a one-element list first; everything else is read as the crate's types.
fn parse(json: &[u8]) -> Result<Vec<NfListObject<'static>>, String> {
    let mut value: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let objects = value.get_mut("nftables").and_then(Value::as_array_mut);
    for c in objects
        .into_iter()
        .flatten()
        .filter_map(|o| o.get_mut("counter"))
    {
        for k in ["packets", "bytes"] {
            if c[k].as_u64().is_some_and(|n| n > u64::from(u32::MAX)) {
                c[k] = Value::from(u32::MAX);
            }
        }
    }
    for statement in statements_mut(&mut value) {
        for nat in ["masquerade", "snat", "dnat", "redirect"] {
            if let Some(flags) = statement.get_mut(nat).and_then(|n| n.get_mut("flags")) {
                if flags.is_string() {
                    *flags = Value::Array(vec![flags.take()]);
                }
            }
        }
    }
    let doc: Nftables<'static> = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(doc
        .objects
        .into_owned()
        .into_iter()
        .filter_map(|o| match o {
            NfObject::ListObject(l) => Some(l),
            NfObject::CmdObject(_) => None,
        })
        .collect())
}

/// Every statement of every rule in an nft JSON document.
fn statements_mut(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    let objects = doc.get_mut("nftables").and_then(Value::as_array_mut);
    objects
        .into_iter()
        .flatten()
        .filter_map(|o| o.get_mut("rule")?.get_mut("expr")?.as_array_mut())
        .flatten()
}

/// Runs nft with a minimal environment; a non-zero exit is an error carrying nft's message.
fn run(args: &[&str], stdin: Option<&[u8]>) -> Result<Output, FirewallError> {
    let spawn = |error| FirewallError::Spawn {
        program: "nft",
        error,
    };
    let spawn_one = |program: &str| {
        crate::environ::command(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // A runtime may run the CNI plugin with a PATH that leaves /usr/sbin out.
    let mut child = match spawn_one("nft") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => spawn_one("/usr/sbin/nft"),
        other => other,
    }
    .map_err(spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(FirewallError::Failed {
            command: command_line(args),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

fn command_line(args: &[&str]) -> String {
    format!("nft {}", args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftables::stmt::{NATFlag, Statement};

    #[test]
    fn a_single_nat_flag_listed_as_a_string_is_read() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "weft", "handle": 1}},
            {"rule": {"family": "ip", "table": "weft", "chain": "postrouting", "handle": 5,
              "expr": [{"masquerade": {"flags": "fully-random"}}]}}]}"#;
        let objects = parse(json).unwrap();
        assert_eq!(objects.len(), 3);
        let NfListObject::Rule(rule) = &objects[2] else {
            panic!("{objects:?}")
        };
        let Statement::Masquerade(Some(nat)) = &rule.expr[0] else {
            panic!("{rule:?}")
        };
        assert_eq!(nat.flags, Some(HashSet::from([NATFlag::FullyRandom])));
    }

    #[test]
    fn what_is_not_nfts_json_is_an_error() {
        assert!(parse(b"table ip weft {}").is_err());
        assert!(parse(br#"{"nftables": [{"table": {"family": "nope"}}]}"#).is_err());
    }
}
