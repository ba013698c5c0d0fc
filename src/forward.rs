//! Forward accepts for the overlay in iptables' own FORWARD chain. weft's nftables table
//! accepts the overlay's traffic, but an accept in one table does not overrule a drop in
//! another table's chain on the same hook, and dockerd sets iptables' FORWARD policy to DROP
//! when it is the one that turns forwarding on. So where iptables is installed, weft keeps two
//! rules of its own (marked by their comment) at the end of that chain, after Docker's.

use std::process::Output;

use ipnet::IpNet;

/// The comment that marks weft's rules, so they are found and never confused with others'.
pub const COMMENT: &str = "weft overlay";

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot run {tool}: {error}")]
    Spawn {
        tool: &'static str,
        error: std::io::Error,
    },
    #[error("{tool} refused `{rule}`: {stderr}")]
    Apply {
        tool: &'static str,
        rule: String,
        stderr: String,
    },
}

/// The two rules for one network: traffic from it and to it is accepted.
pub fn rules(network: IpNet) -> [Vec<String>; 2] {
    let net = network.trunc().to_string();
    ["-s", "-d"].map(|dir| {
        [
            "FORWARD",
            dir,
            &net,
            "-m",
            "comment",
            "--comment",
            COMMENT,
            "-j",
            "ACCEPT",
        ]
        .map(String::from)
        .to_vec()
    })
}

fn tool_for(network: IpNet) -> &'static str {
    match network {
        IpNet::V4(_) => "iptables",
        IpNet::V6(_) => "ip6tables",
    }
}

fn run(tool: &'static str, op: &str, rule: &[String]) -> Result<Option<Output>, ForwardError> {
    match crate::environ::command(tool)
        .args(["-w", "5", op])
        .args(rule)
        .output()
    {
        Ok(out) => Ok(Some(out)),
        // No iptables on this host: nothing can have set its FORWARD policy either.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(ForwardError::Spawn { tool, error }),
    }
}

/// Makes iptables' FORWARD chain hold weft's accepts for each network; returns true when a
/// rule was added. Checked on every full reconciliation, so a dockerd restart or a flush by
/// hand is mended.
pub fn ensure(networks: &[IpNet]) -> Result<bool, ForwardError> {
    let mut added = false;
    for &network in networks {
        let tool = tool_for(network);
        for rule in rules(network) {
            match run(tool, "-C", &rule)? {
                None => break,
                Some(out) if out.status.success() => continue,
                Some(_) => {}
            }
            // -C failed: the rule is missing (or iptables cannot work here, which -A tells).
            let Some(out) = run(tool, "-A", &rule)? else {
                break;
            };
            if !out.status.success() {
                return Err(ForwardError::Apply {
                    tool,
                    rule: rule.join(" "),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            added = true;
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_accept_from_and_one_to_the_network() {
        let [from, to] = rules("198.19.0.0/16".parse().unwrap());
        assert_eq!(
            from.join(" "),
            "FORWARD -s 198.19.0.0/16 -m comment --comment weft overlay -j ACCEPT"
        );
        assert_eq!(
            to.join(" "),
            "FORWARD -d 198.19.0.0/16 -m comment --comment weft overlay -j ACCEPT"
        );
        assert_eq!(tool_for("2001:db8::/32".parse().unwrap()), "ip6tables");
    }
}
