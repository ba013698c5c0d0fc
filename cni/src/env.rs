//! The CNI_* environment variables: which command, which attachment, and the runtime's
//! `CNI_ARGS`. Every complaint names the variable and its value (error code 4).

use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{CniError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn from_env(lookup: &impl Fn(&str) -> Option<String>) -> Result<Command> {
        let value = lookup("CNI_COMMAND").unwrap_or_default();
        Ok(match value.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "" => return Err(CniError::env("CNI_COMMAND is not set")),
            other => {
                return Err(CniError::env(format!(
                    "CNI_COMMAND={other:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// What the runtime may pass through `CNI_ARGS` that weft understands; other keys are
/// ignored, as runtimes send keys meant for other plugins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ip: Option<IpAddr>,
    pub mac: Option<String>,
    /// `K8S_POD_NAMESPACE`: the workload's namespace for network policy.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`: the workload's name for network policy.
    pub pod_name: Option<String>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs> {
        let mut args = CniArgs::default();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::env(format!(
                    "CNI_ARGS={raw:?}: {pair:?} is not KEY=VALUE"
                )));
            };
            match key {
                // weft ignores unknown keys either way; the flag is only checked for sense.
                "IgnoreUnknown"
                    if !matches!(
                        value.to_ascii_lowercase().as_str(),
                        "1" | "true" | "0" | "false"
                    ) =>
                {
                    return Err(CniError::env(format!(
                        "CNI_ARGS: IgnoreUnknown={value:?} is not a boolean"
                    )));
                }
                "IP" => {
                    // host-local accepts a bare address; a prefix, if given, is the subnet's.
                    let addr = value.split_once('/').map_or(value, |(a, _)| a);
                    args.ip = Some(addr.parse().map_err(|_| {
                        CniError::env(format!("CNI_ARGS: IP={value:?} is not an IP address"))
                    })?);
                }
                "MAC" => args.mac = Some(value.to_string()),
                "K8S_POD_NAMESPACE" if !value.is_empty() => {
                    weft::firewall::policy::model::check_namespace("K8S_POD_NAMESPACE", value)
                        .map_err(|e| CniError::env(format!("CNI_ARGS: {e}")))?;
                    args.namespace = Some(value.to_string());
                }
                "K8S_POD_NAME" if !value.is_empty() => {
                    if value.len() > 253 || value.contains(char::is_control) {
                        return Err(CniError::env(format!(
                            "CNI_ARGS: K8S_POD_NAME={value:?} is not a name"
                        )));
                    }
                    args.pod_name = Some(value.to_string());
                }
                _ => {}
            }
        }
        Ok(args)
    }
}

/// The attachment a command works on: `(CNI_CONTAINERID, CNI_IFNAME)` and its netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<PathBuf>,
    pub args: CniArgs,
}

impl Attachment {
    /// Reads and validates the variables `command` needs. The netns is required for ADD and
    /// CHECK and optional for DEL, which must work after the namespace is gone.
    pub fn from_env(command: Command, lookup: &impl Fn(&str) -> Option<String>) -> Result<Self> {
        let container_id = lookup("CNI_CONTAINERID").unwrap_or_default();
        validate_container_id(&container_id)?;
        let ifname = lookup("CNI_IFNAME").unwrap_or_default();
        validate_ifname(&ifname).map_err(|why| {
            CniError::env(format!(
                "CNI_IFNAME={ifname:?} is not a valid interface name: {why}"
            ))
        })?;
        let netns = lookup("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if netns.is_none() && command != Command::Del {
            return Err(CniError::env(format!(
                "CNI_NETNS is not set; {} needs the container's network namespace",
                command.name()
            )));
        }
        let args = CniArgs::parse(&lookup("CNI_ARGS").unwrap_or_default())?;
        Ok(Attachment {
            container_id,
            ifname,
            netns,
            args,
        })
    }
}

pub fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = match chars.next() {
        None => return Err(CniError::env("CNI_CONTAINERID is not set")),
        Some(first) => {
            first.is_ascii_alphanumeric()
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }
    };
    if !ok {
        return Err(CniError::env(format!(
            "CNI_CONTAINERID={id:?} must start with a letter or digit and hold only letters, \
             digits, '_', '.' and '-'"
        )));
    }
    Ok(())
}

/// The kernel's and the spec's rules for an interface name.
pub fn validate_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 15 {
        return Err("it is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("it is . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("it holds '/', ':' or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn commands() {
        assert_eq!(
            Command::from_env(&env(&[("CNI_COMMAND", "GC")])).unwrap(),
            Command::Gc
        );
        let err = Command::from_env(&env(&[("CNI_COMMAND", "ADDD")])).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("\"ADDD\""), "{err}");
    }

    #[test]
    fn attachment_rules() {
        let ok = [
            ("CNI_CONTAINERID", "abc-1.2_3"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=x;IP=198.19.3.7"),
        ];
        let a = Attachment::from_env(Command::Add, &env(&ok)).unwrap();
        assert_eq!(a.args.ip, Some("198.19.3.7".parse().unwrap()));
        for (key, value, needle) in [
            ("CNI_CONTAINERID", "-x", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "a/b", "\"a/b\""),
            ("CNI_IFNAME", "eth0:1", "\"eth0:1\""),
            ("CNI_IFNAME", "abcdefghijklmnop", "15"),
            ("CNI_NETNS", "", "CNI_NETNS"),
            ("CNI_ARGS", "IP=1.2.3", "\"1.2.3\""),
            ("CNI_ARGS", "garbage", "\"garbage\""),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=Team_A", "K8S_POD_NAMESPACE"),
        ] {
            let mut vars: Vec<_> = ok.iter().filter(|(k, _)| *k != key).copied().collect();
            vars.push((key, value));
            let err = Attachment::from_env(Command::Add, &env(&vars)).unwrap_err();
            assert_eq!(err.code, 4, "{key}={value}");
            assert!(err.msg.contains(needle), "{key}={value}: {err}");
        }
        let no_netns: Vec<_> = ok
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .copied()
            .collect();
        assert!(Attachment::from_env(Command::Del, &env(&no_netns)).is_ok());
    }
}
