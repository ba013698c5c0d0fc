//! `subnet.env`: the file weftd writes for the CNI plugin (and for flannel's own readers).
//! Variable names and formats are flannel's; the file is replaced atomically so a reader never
//! sees half of it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    // The I/O error is part of the message, not a `source`: a report that prints the chain
    // would otherwise say it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Read(#[from] crate::file::FileError),
    #[error("{path}: line {line}: {key}={value:?} is not valid: {why}")]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        why: String,
    },
    #[error("{path}: {key} is missing")]
    Missing { path: PathBuf, key: &'static str },
}

/// What weftd tells the plugin about this host's share of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// FLANNEL_NETWORK, the whole overlay network.
    pub network: Option<Ipv4Net>,
    /// FLANNEL_SUBNET as written: the subnet's first address with the subnet's prefix
    /// (`10.5.72.1/24`), which is the bridge's gateway address.
    pub subnet: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// Builds the values for a lease: FLANNEL_SUBNET holds the subnet's first address.
    pub fn for_lease(
        network: Option<Ipv4Net>,
        lease_subnet: Option<Ipv4Net>,
        ipv6_network: Option<Ipv6Net>,
        lease_subnet6: Option<Ipv6Net>,
        mtu: u32,
        ipmasq: bool,
    ) -> SubnetEnv {
        let subnet = lease_subnet.map(|s| {
            let first = Ipv4Addr::from(u32::from(s.network()).wrapping_add(1));
            Ipv4Net::new(first, s.prefix_len()).expect("prefix comes from a valid net")
        });
        let ipv6_subnet = lease_subnet6.map(|s| {
            let first = Ipv6Addr::from(u128::from(s.network()).wrapping_add(1));
            Ipv6Net::new(first, s.prefix_len()).expect("prefix comes from a valid net")
        });
        SubnetEnv {
            network,
            subnet,
            ipv6_network,
            ipv6_subnet,
            mtu,
            ipmasq,
        }
    }

    /// The file's text, in flannel's order.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(n) = self.network {
            let _ = writeln!(s, "FLANNEL_NETWORK={n}");
        }
        if let Some(n) = self.subnet {
            let _ = writeln!(s, "FLANNEL_SUBNET={n}");
        }
        if let Some(n) = self.ipv6_network {
            let _ = writeln!(s, "FLANNEL_IPV6_NETWORK={n}");
        }
        if let Some(n) = self.ipv6_subnet {
            let _ = writeln!(s, "FLANNEL_IPV6_SUBNET={n}");
        }
        let _ = writeln!(s, "FLANNEL_MTU={}", self.mtu);
        let _ = writeln!(s, "FLANNEL_IPMASQ={}", self.ipmasq);
        s
    }

    /// Parses the text of a subnet.env. Unknown variables are ignored (operators append their
    /// own); `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let mut env = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 0,
            ipmasq: false,
        };
        let mut mtu = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim().trim_matches('"'));
            let bad = |why: String| SubnetEnvError::BadValue {
                path: path.to_path_buf(),
                line: i + 1,
                key: key.to_string(),
                value: value.to_string(),
                why,
            };
            match key {
                "FLANNEL_NETWORK" => {
                    env.network = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_SUBNET" => {
                    env.subnet = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_IPV6_NETWORK" => {
                    env.ipv6_network = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_IPV6_SUBNET" => {
                    env.ipv6_subnet = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_MTU" => {
                    let m: u32 = value.parse().map_err(|e| bad(format!("{e}")))?;
                    if !(68..=65535).contains(&m) {
                        return Err(bad("an MTU must be between 68 and 65535".into()));
                    }
                    mtu = Some(m);
                }
                "FLANNEL_IPMASQ" => {
                    env.ipmasq = value.parse().map_err(|e| bad(format!("{e}")))?;
                }
                _ => {}
            }
        }
        env.mtu = mtu.ok_or(SubnetEnvError::Missing {
            path: path.to_path_buf(),
            key: "FLANNEL_MTU",
        })?;
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            return Err(SubnetEnvError::Missing {
                path: path.to_path_buf(),
                key: "FLANNEL_SUBNET",
            });
        }
        Ok(env)
    }

    /// Reads and parses a subnet.env: a regular file of at most 64 KiB. A missing file is a
    /// `Read` error that [`is_not_found`](crate::file::FileError::is_not_found).
    pub fn read(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text = crate::file::read_text(path, crate::file::limit::SMALL)?;
        SubnetEnv::parse(&text, path)
    }

    /// Writes the file atomically (see [`write_atomically`]).
    pub fn write(&self, path: &Path) -> Result<(), SubnetEnvError> {
        write_atomically(path, &self.render())
    }

    /// The host's subnet without host bits (`10.5.72.0/24`).
    pub fn subnet_network(&self) -> Option<Ipv4Net> {
        self.subnet.map(|s| s.trunc())
    }

    /// The IPv6 subnet itself (`FLANNEL_IPV6_SUBNET` holds its first address).
    pub fn subnet6_network(&self) -> Option<Ipv6Net> {
        self.ipv6_subnet.map(|s| s.trunc())
    }
}

/// Writes a file so that a reader sees the old or the new text, never half of it: a temporary
/// file in the same directory, fsync, rename. Shared by subnet.env and the files derived from it.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), SubnetEnvError> {
    let io = |error| SubnetEnvError::Io {
        path: path.to_path_buf(),
        error,
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("path names no file")))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_matches_flannel_text() {
        let env = SubnetEnv::for_lease(
            Some("10.5.0.0/16".parse().unwrap()),
            Some("10.5.72.0/24".parse().unwrap()),
            None,
            None,
            1450,
            true,
        );
        let text = env.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetEnv::parse(&text, Path::new("x")).unwrap(), env);
        assert_eq!(
            env.subnet_network().unwrap(),
            "10.5.72.0/24".parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn bad_values_name_the_key_and_value() {
        let err = SubnetEnv::parse(
            "FLANNEL_SUBNET=10.5.300.1/24\nFLANNEL_MTU=1450\n",
            Path::new("/run/x"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("FLANNEL_SUBNET") && err.contains("10.5.300.1/24"),
            "{err}"
        );
        let err = SubnetEnv::parse("FLANNEL_SUBNET=10.5.3.1/24\n", Path::new("/run/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FLANNEL_MTU is missing"), "{err}");
    }

    #[test]
    fn write_is_atomic_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/subnet.env");
        let env = SubnetEnv::for_lease(
            Some("198.19.0.0/16".parse().unwrap()),
            Some("198.19.3.0/24".parse().unwrap()),
            None,
            None,
            1450,
            false,
        );
        env.write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), env);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    /// Property tests: `PROPTEST_CASES` sets how many cases each one runs (256 by default).
    mod props {
        use super::*;
        use proptest::prelude::*;

        fn env() -> impl Strategy<Value = SubnetEnv> {
            let v4 = (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Ipv4Net::new(a.into(), l).unwrap());
            let v6 =
                (any::<u128>(), 0u8..=128).prop_map(|(a, l)| Ipv6Net::new(a.into(), l).unwrap());
            (
                proptest::option::of(v4.clone()),
                proptest::option::of(v4),
                proptest::option::of(v6.clone()),
                proptest::option::of(v6),
                68u32..=65535,
                any::<bool>(),
            )
                .prop_filter("a subnet of some family", |e| {
                    e.1.is_some() || e.3.is_some()
                })
                .prop_map(
                    |(network, subnet, ipv6_network, ipv6_subnet, mtu, ipmasq)| SubnetEnv {
                        network,
                        subnet,
                        ipv6_network,
                        ipv6_subnet,
                        mtu,
                        ipmasq,
                    },
                )
        }

        /// Text that is sometimes a subnet.env, sometimes a damaged one, sometimes noise.
        fn textish() -> impl Strategy<Value = String> {
            let line = prop_oneof![
                ".{0,40}",
                "(FLANNEL_(NETWORK|SUBNET|IPV6_NETWORK|IPV6_SUBNET|MTU|IPMASQ)|#|X)? ?= ?\"?[0-9a-f.:/\"-]{0,24}",
            ];
            prop_oneof![
                any::<String>(),
                prop::collection::vec(line, 0..8).prop_map(|l| l.join("\n")),
                (env(), any::<prop::sample::Index>(), ".").prop_map(|(e, i, c)| {
                    let mut t = e.render();
                    let at = i.index(t.len());
                    let at = (0..=at).rev().find(|j| t.is_char_boundary(*j)).unwrap_or(0);
                    t.insert_str(at, &c);
                    t
                }),
            ]
        }

        proptest! {
            #[test]
            fn any_text_never_panics(text in textish()) {
                if let Ok(e) = SubnetEnv::parse(&text, Path::new("/run/flannel/subnet.env")) {
                    prop_assert_eq!(SubnetEnv::parse(&e.render(), Path::new("x")).unwrap(), e);
                }
            }

            #[test]
            fn rendered_files_read_back(e in env()) {
                prop_assert_eq!(SubnetEnv::parse(&e.render(), Path::new("x")).unwrap(), e);
            }
        }
    }
}
