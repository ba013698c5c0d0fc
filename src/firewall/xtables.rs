//! weft's accepts in iptables' and ip6tables' FORWARD chain. An accept in weft's nftables
//! table does not overrule a drop in another table's chain on the same hook, and dockerd sets
//! FORWARD's policy to DROP; so weft keeps two rules, marked `weft overlay`, at its end.

use std::fmt;
use std::process::Output;

use ipnet::IpNet;

use super::{Change, FirewallError, FirewallSpec};
use crate::subnet::Family;

/// The comment that marks weft's rules, so they are found and never confused with others'.
pub const COMMENT: &str = "weft overlay";

/// Which end of the traffic the network is matched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `-s`: traffic from the overlay.
    From,
    /// `-d`: traffic to the overlay.
    To,
}

/// One of weft's FORWARD accepts: `-A FORWARD -s|-d NET -m comment --comment "weft overlay"
/// -j ACCEPT`. A rule of any other shape is not weft's, whatever its comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Accept {
    pub direction: Direction,
    pub network: IpNet,
}

impl Accept {
    /// The rule's arguments after the chain's name, for `-A` and `-D` alike.
    fn args(&self) -> Vec<String> {
        let dir = match self.direction {
            Direction::From => "-s",
            Direction::To => "-d",
        };
        let net = self.network.to_string();
        [
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
    }

    /// The program that holds the rule: iptables or ip6tables.
    pub fn tool(&self) -> &'static str {
        tool(Family::of(self.network.addr()))
    }
}

/// The rule as `iptables -S` shows it, without the chain.
impl fmt::Display for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args = self.args().join(" ");
        f.write_str(&args.replace(COMMENT, &format!("\"{COMMENT}\"")))
    }
}

fn tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// The accepts weft wants in `family`'s FORWARD chain: from and to the overlay network.
pub fn wanted(spec: &FirewallSpec, family: Family) -> Vec<Accept> {
    let Some(overlay) = spec.overlay[family] else {
        return Vec::new();
    };
    let network = overlay.network.trunc();
    [Direction::From, Direction::To]
        .map(|direction| Accept { direction, network })
        .to_vec()
}

/// The weft accept a line of `iptables -S FORWARD` is, if it is one. That listing is
/// iptables-save's rule syntax (what iptables-restore reads back), so it is parsed as such:
/// words, with double quotes around a word that has spaces.
pub fn parse_rule(line: &str, family: Family) -> Option<Accept> {
    let words = split_words(line)?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let ["-A", "FORWARD", dir, net, "-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"] =
        words.as_slice()
    else {
        return None;
    };
    let direction = match *dir {
        "-s" => Direction::From,
        "-d" => Direction::To,
        _ => return None,
    };
    let network = family.parse_net(net)?;
    Some(Accept { direction, network })
}

/// Splits iptables-save's words: whitespace separates, `"…"` groups, `\` escapes one
/// character inside quotes. None for an unterminated quote.
fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => word.push(chars.next()?),
                    other => word.push(other),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
    Some(words)
}

/// What to do in one chain: (accepts to delete, accepts to append). A listed weft accept
/// that is not wanted (another network's) or listed twice goes; a wanted one that is missing
/// is appended, so it ends up after the rules dockerd put there.
pub fn plan(listed: &[Accept], wanted: &[Accept]) -> (Vec<Accept>, Vec<Accept>) {
    let mut kept: Vec<Accept> = Vec::new();
    let mut delete = Vec::new();
    for a in listed {
        if wanted.contains(a) && !kept.contains(a) {
            kept.push(*a);
        } else {
            delete.push(*a);
        }
    }
    let append = wanted
        .iter()
        .filter(|a| !kept.contains(a))
        .copied()
        .collect();
    (delete, append)
}

/// Makes each family's FORWARD chain hold exactly the wanted weft accepts, appending what is
/// missing and deleting weft's accepts for networks no longer in use; returns the changes.
/// A host without the tool has no such chain for anyone to set to DROP: nothing to do.
pub fn ensure(spec: &FirewallSpec, changes: &mut Vec<Change>) -> Result<(), FirewallError> {
    let mut first_error = None;
    for family in Family::ALL {
        let wanted = wanted(spec, family);
        let listed = match list(family) {
            Ok(Some(listed)) => listed,
            Ok(None) => continue,
            // A family weft does not use may have no working FORWARD chain at all (no kernel
            // support): only weft's own rules could be missed there, and weft writes none.
            Err(e) if wanted.is_empty() => {
                tracing::debug!(error = %e, "cannot list {} FORWARD", tool(family));
                continue;
            }
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let (delete, append) = plan(&listed, &wanted);
        for (op, rules) in [("-D", delete), ("-A", append)] {
            for accept in rules {
                match change(op, &accept) {
                    Ok(()) if op == "-D" => changes.push(Change::AcceptRemoved(accept)),
                    Ok(()) => changes.push(Change::AcceptAdded(accept)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// weft's accepts in `family`'s FORWARD chain, in order; None without the tool.
fn list(family: Family) -> Result<Option<Vec<Accept>>, FirewallError> {
    let tool = tool(family);
    let Some(out) = run(tool, &["-S", "FORWARD"])? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Some(
        text.lines().filter_map(|l| parse_rule(l, family)).collect(),
    ))
}

fn change(op: &str, accept: &Accept) -> Result<(), FirewallError> {
    let mut args = vec![op, "FORWARD"];
    let rule = accept.args();
    args.extend(rule.iter().map(String::as_str));
    // The tool was found by the listing just before; gone since is an error like any other.
    run(accept.tool(), &args)?.ok_or(FirewallError::Spawn {
        program: accept.tool(),
        error: std::io::ErrorKind::NotFound.into(),
    })?;
    Ok(())
}

/// Runs `tool -w 5 ARGS` (waiting up to 5 s for the xtables lock that dockerd also takes);
/// None when the tool is not installed, an error on a non-zero exit.
fn run(tool: &'static str, args: &[&str]) -> Result<Option<Output>, FirewallError> {
    let out = match crate::environ::command(tool)
        .args(["-w", "5"])
        .args(args)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(FirewallError::Spawn {
                program: tool,
                error,
            })
        }
    };
    if !out.status.success() {
        return Err(FirewallError::Failed {
            command: format!("{tool} -w 5 {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(direction: Direction, net: &str) -> Accept {
        Accept {
            direction,
            network: net.parse().unwrap(),
        }
    }

    #[test]
    fn weft_accepts_are_read_from_iptables_rule_listing() {
        let from = accept(Direction::From, "198.19.0.0/16");
        let line = r#"-A FORWARD -s 198.19.0.0/16 -m comment --comment "weft overlay" -j ACCEPT"#;
        assert_eq!(parse_rule(line, Family::V4), Some(from));
        assert_eq!(format!("-A FORWARD {from}"), line);
        let v6 = r#"-A FORWARD -d 2001:db8::/32 -m comment --comment "weft overlay" -j ACCEPT"#;
        assert_eq!(
            parse_rule(v6, Family::V6),
            Some(accept(Direction::To, "2001:db8::/32"))
        );
        assert_eq!(parse_rule(v6, Family::V4), None);
    }

    #[test]
    fn rules_of_another_shape_are_not_weft_s_whatever_their_comment() {
        for line in [
            "-P FORWARD DROP",
            "-A FORWARD -s 198.19.0.0/16 -j ACCEPT",
            r#"-A FORWARD -s 198.19.0.0/16 -m comment --comment "weft overlay" -j DROP"#,
            r#"-A FORWARD -s 198.19.0.0/16 -m comment --comment "other" -j ACCEPT"#,
            r#"-A FORWARD -i eth0 -s 198.19.0.0/16 -m comment --comment "weft overlay" -j ACCEPT"#,
            r#"-A DOCKER -s 198.19.0.0/16 -m comment --comment "weft overlay" -j ACCEPT"#,
            r#"-A FORWARD -s 198.19.0.0/16 -m comment --comment "weft overlay -j ACCEPT"#,
        ] {
            assert_eq!(parse_rule(line, Family::V4), None, "{line}");
        }
    }

    #[test]
    fn quoted_words_keep_their_spaces_and_escapes() {
        assert_eq!(
            split_words(r#"-A X --comment "a \"b\" c"  -j Y"#).unwrap(),
            ["-A", "X", "--comment", "a \"b\" c", "-j", "Y"]
        );
    }

    #[test]
    fn another_networks_accepts_and_duplicates_go_missing_ones_are_appended() {
        let old_from = accept(Direction::From, "198.19.0.0/16");
        let old_to = accept(Direction::To, "198.19.0.0/16");
        let new_from = accept(Direction::From, "198.18.64.0/18");
        let new_to = accept(Direction::To, "198.18.64.0/18");
        let listed = [old_from, new_to, old_to, new_to];
        let (delete, append) = plan(&listed, &[new_from, new_to]);
        assert_eq!(delete, [old_from, old_to, new_to]);
        assert_eq!(append, [new_from]);
        assert_eq!(
            plan(&[new_from, new_to], &[new_from, new_to]),
            (vec![], vec![])
        );
        assert_eq!(plan(&[new_from], &[]), (vec![new_from], vec![]));
    }
}
