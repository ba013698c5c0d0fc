//! dockerd's settings for this host's subnet, as flannel's `mk-docker-opts.sh` writes them:
//! the default bridge takes the subnet's gateway address (`--bip`), the overlay's MTU, and
//! masquerades only when weft does not (`--ip-masq`). Pure: `weftctl docker-opts` prints it.

use std::fmt::Write as _;

use crate::subnet_env::SubnetEnv;

/// Which variables to write, with flannel's script's knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptsFormat {
    /// One variable per option (`DOCKER_OPT_BIP=...`), flannel's `-i`.
    pub individual: bool,
    /// All options in one variable, flannel's `-c`.
    pub combined: bool,
    /// The combined variable's name, flannel's `-k` (default `DOCKER_OPTS`).
    pub key: String,
    /// Leave `--ip-masq` out (dockerd older than 1.3), flannel's `-m`.
    pub without_ip_masq: bool,
}

impl Default for DockerOptsFormat {
    fn default() -> Self {
        DockerOptsFormat {
            individual: false,
            combined: false,
            key: "DOCKER_OPTS".into(),
            without_ip_masq: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DockerOptsError {
    #[error("{0} holds no FLANNEL_SUBNET: this host has no IPv4 subnet for docker0 yet")]
    NoSubnet(String),
    #[error(
        "{0:?} is not a usable variable name (letters, digits and _, not starting with a digit)"
    )]
    BadKey(String),
}

/// The options in dockerd's order: (variable suffix, option).
pub fn options(env: &SubnetEnv, without_ip_masq: bool) -> Option<Vec<(&'static str, String)>> {
    let subnet = env.subnet?;
    let mut opts = vec![("BIP", format!("--bip={subnet}"))];
    if !without_ip_masq {
        // weft masquerades the overlay's traffic itself with --ip-masq; dockerd must not do it
        // a second time (and must when weft does not).
        opts.push(("IPMASQ", format!("--ip-masq={}", !env.ipmasq)));
    }
    opts.push(("MTU", format!("--mtu={}", env.mtu)));
    Some(opts)
}

/// The environment file's text. With neither `individual` nor `combined` asked for, both are
/// written, as flannel's script does.
pub fn render(
    env: &SubnetEnv,
    from: &str,
    f: &DockerOptsFormat,
) -> Result<String, DockerOptsError> {
    if !valid_key(&f.key) {
        return Err(DockerOptsError::BadKey(f.key.clone()));
    }
    let opts =
        options(env, f.without_ip_masq).ok_or_else(|| DockerOptsError::NoSubnet(from.into()))?;
    let (individual, combined) = match (f.individual, f.combined) {
        (false, false) => (true, true),
        both => both,
    };
    let mut s = String::new();
    if individual {
        for (name, opt) in &opts {
            let _ = writeln!(s, "DOCKER_OPT_{name}=\"{opt}\"");
        }
    }
    if combined {
        let all: Vec<&str> = opts.iter().map(|(_, o)| o.as_str()).collect();
        let _ = writeln!(s, "{}=\" {}\"", f.key, all.join(" "));
    }
    Ok(s)
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ipmasq: bool) -> SubnetEnv {
        SubnetEnv::for_lease(
            Some("198.19.0.0/16".parse().unwrap()),
            Some("198.19.52.0/24".parse().unwrap()),
            None,
            None,
            1450,
            ipmasq,
        )
    }

    #[test]
    fn both_forms_by_default_as_flannel_writes_them() {
        let text = render(&env(true), "subnet.env", &DockerOptsFormat::default()).unwrap();
        assert_eq!(
            text,
            "DOCKER_OPT_BIP=\"--bip=198.19.52.1/24\"\n\
             DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n\
             DOCKER_OPT_MTU=\"--mtu=1450\"\n\
             DOCKER_OPTS=\" --bip=198.19.52.1/24 --ip-masq=false --mtu=1450\"\n"
        );
    }

    #[test]
    fn dockerd_masquerades_only_when_weft_does_not() {
        let f = DockerOptsFormat {
            combined: true,
            key: "DOCKER_NETWORK_OPTIONS".into(),
            ..DockerOptsFormat::default()
        };
        assert_eq!(
            render(&env(false), "f", &f).unwrap(),
            "DOCKER_NETWORK_OPTIONS=\" --bip=198.19.52.1/24 --ip-masq=true --mtu=1450\"\n"
        );
        let f = DockerOptsFormat {
            individual: true,
            without_ip_masq: true,
            ..DockerOptsFormat::default()
        };
        assert_eq!(
            render(&env(true), "f", &f).unwrap(),
            "DOCKER_OPT_BIP=\"--bip=198.19.52.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n"
        );
    }

    #[test]
    fn refuses_a_bad_key_and_a_missing_subnet() {
        let f = DockerOptsFormat {
            key: "1BAD-KEY".into(),
            ..DockerOptsFormat::default()
        };
        let err = render(&env(true), "f", &f).unwrap_err().to_string();
        assert!(err.contains("\"1BAD-KEY\""), "{err}");
        let mut e = env(true);
        e.subnet = None;
        let err = render(&e, "/run/flannel/subnet.env", &DockerOptsFormat::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/run/flannel/subnet.env"), "{err}");
    }
}
