//! Address reservations on disk, in the reference host-local plugin's layout so a host moved
//! from flannel keeps its reservations: `<dataDir>/<network>/` holds a `lock` file (flock
//! around every change), one file per address containing `<containerID>\r\n<ifname>`, and
//! `last_reserved_ip.0`, from where the next search starts.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::error::{CniError, Result};

const LINE_BREAK: &str = "\r\n";
/// weft allocates from one range, host-local's range index 0.
const LAST_RESERVED: &str = "last_reserved_ip.0";

/// An address file: who holds the address. Files written by very old host-local versions
/// hold only the container ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: Option<String>,
}

impl Reservation {
    pub fn belongs_to(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }
}

/// The network's store with its lock held; dropping it closes the lock file, which releases
/// the lock, so every change happens inside one `Store`'s life.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Creates the directory if needed and waits for the lock.
    pub fn lock(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CniError::store(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CniError::store(format!("cannot open {}: {e}", path.display())))?;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != ErrorKind::Interrupted {
                return Err(CniError::store(format!(
                    "cannot lock {}: {err}",
                    path.display()
                )));
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every address file in the directory (names that parse as addresses; `lock`,
    /// `last_reserved_ip.*` and weft's own state are not).
    pub fn reservations(&self) -> Result<Vec<Reservation>> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| CniError::store(format!("cannot list {}: {e}", self.dir.display())))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry
                .map_err(|e| CniError::store(format!("cannot list {}: {e}", self.dir.display())))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let text = match std::fs::read_to_string(entry.path()) {
                Ok(t) => t,
                // Released between the listing and the read.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(CniError::store(format!(
                        "cannot read {}: {e}",
                        entry.path().display()
                    )))
                }
            };
            let text = text.trim();
            let (container_id, ifname) = match text.split_once(LINE_BREAK) {
                Some((id, ifname)) => (id.trim().to_string(), Some(ifname.trim().to_string())),
                None => (text.to_string(), None),
            };
            out.push(Reservation {
                ip,
                container_id,
                ifname,
            });
        }
        Ok(out)
    }

    /// Creates the address file unless it exists; false when someone holds the address.
    pub fn reserve(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(CniError::store(format!(
                    "cannot create {}: {e}",
                    path.display()
                )))
            }
        };
        if let Err(e) = file.write_all(format!("{container_id}{LINE_BREAK}{ifname}").as_bytes()) {
            let _ = std::fs::remove_file(&path);
            return Err(CniError::store(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
        let last = self.dir.join(LAST_RESERVED);
        std::fs::write(&last, ip.to_string())
            .map_err(|e| CniError::store(format!("cannot write {}: {e}", last.display())))?;
        Ok(true)
    }

    pub fn last_reserved(&self) -> Option<IpAddr> {
        std::fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Removes one address file; an address already free is fine.
    pub fn release(&self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::store(format!(
                "cannot remove {}: {e}",
                path.display()
            ))),
        }
    }

    /// Releases every address the attachment holds, in any subnet; returns them.
    pub fn release_attachment(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for r in self.reservations()? {
            if r.belongs_to(container_id, ifname) {
                self.release(r.ip)?;
                released.push(r.ip);
            }
        }
        Ok(released)
    }

    /// Reserves the next free address of `subnet` in host-local's order: after the last
    /// reserved one, wrapping around; never the network, gateway or broadcast address.
    /// `None` when the pool is exhausted.
    pub fn allocate(
        &self,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Ipv4Addr>> {
        let taken: HashSet<IpAddr> = self.reservations()?.into_iter().map(|r| r.ip).collect();
        let Some((first, last)) = pool(subnet) else {
            return Ok(None);
        };
        // Start after the last reserved address, wrapping around.
        let start = match self.last_reserved() {
            Some(IpAddr::V4(prev)) if subnet.trunc().contains(&prev) && u32::from(prev) < last => {
                (u32::from(prev) + 1).max(first)
            }
            _ => first,
        };
        for a in (start..=last).chain(first..start) {
            let ip = Ipv4Addr::from(a);
            if ip == gateway || taken.contains(&IpAddr::V4(ip)) {
                continue;
            }
            if self.reserve(IpAddr::V4(ip), container_id, ifname)? {
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }

    /// How many addresses of `subnet` are free.
    pub fn free_count(&self, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<usize> {
        let taken: HashSet<IpAddr> = self.reservations()?.into_iter().map(|r| r.ip).collect();
        let Some((first, last)) = pool(subnet) else {
            return Ok(0);
        };
        let in_range = |ip: Ipv4Addr| (first..=last).contains(&u32::from(ip));
        let in_pool = |ip: Ipv4Addr| in_range(ip) && ip != gateway;
        let size = u64::from(last - first) + 1 - u64::from(in_range(gateway));
        let held = taken
            .iter()
            .filter(|ip| matches!(ip, IpAddr::V4(v4) if in_pool(*v4)))
            .count() as u64;
        Ok(usize::try_from(size - held).unwrap_or(usize::MAX))
    }
}

/// The range of addresses a container may get (without the gateway, which the callers skip):
/// everything but the network and broadcast address. Counted, never listed, so a subnet.env
/// naming a huge subnet cannot make the plugin allocate gigabytes.
fn pool(subnet: Ipv4Net) -> Option<(u32, u32)> {
    let net = subnet.trunc();
    if net.prefix_len() >= 31 {
        return None;
    }
    Some((u32::from(net.network()) + 1, u32::from(net.broadcast()) - 1))
}

/// Whether `ip` may be handed to a container in `subnet`.
pub fn assignable(subnet: Ipv4Net, gateway: Ipv4Addr, ip: Ipv4Addr) -> bool {
    let net = subnet.trunc();
    net.contains(&ip)
        && ip != gateway
        && ip != net.network()
        && (net.prefix_len() >= 31 || ip != net.broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Ipv4Net {
        "198.19.7.0/29".parse().unwrap()
    }
    fn gw() -> Ipv4Addr {
        "198.19.7.1".parse().unwrap()
    }

    #[test]
    fn allocates_in_host_local_order_and_exhausts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::lock(dir.path()).unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                store
                    .allocate(net(), gw(), &format!("c{i}"), "eth0")
                    .unwrap()
                    .unwrap(),
            );
        }
        let want: Vec<Ipv4Addr> = (2..=6).map(|n| Ipv4Addr::new(198, 19, 7, n)).collect();
        assert_eq!(got, want);
        assert_eq!(store.allocate(net(), gw(), "c9", "eth0").unwrap(), None);
        assert_eq!(store.free_count(net(), gw()).unwrap(), 0);
        // Freed addresses come back only after the search wraps around.
        store.release_attachment("c1", "eth0").unwrap();
        store.release_attachment("c3", "eth0").unwrap();
        assert_eq!(
            store.allocate(net(), gw(), "c10", "eth0").unwrap(),
            Some(Ipv4Addr::new(198, 19, 7, 3))
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("198.19.7.3")).unwrap(),
            "c10\r\neth0"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("last_reserved_ip.0")).unwrap(),
            "198.19.7.3"
        );
        assert!(dir.path().join("lock").exists());
    }

    #[test]
    fn reads_host_local_files_old_and_new() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("198.19.7.2"), "abc\r\neth0").unwrap();
        std::fs::write(dir.path().join("198.19.7.3"), "old\n").unwrap();
        std::fs::write(dir.path().join("last_reserved_ip.0"), "198.19.7.3").unwrap();
        let store = Store::lock(dir.path()).unwrap();
        let mut rs = store.reservations().unwrap();
        rs.sort_by_key(|r| r.ip);
        assert_eq!(rs[0].ifname.as_deref(), Some("eth0"));
        assert_eq!(rs[1].ifname, None);
        assert!(rs[1].belongs_to("old", "net1"));
        assert_eq!(
            store.allocate(net(), gw(), "n", "eth0").unwrap(),
            Some(Ipv4Addr::new(198, 19, 7, 4))
        );
        assert_eq!(
            store.release_attachment("old", "eth0").unwrap(),
            vec!["198.19.7.3".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn assignable_excludes_special_addresses() {
        assert!(assignable(net(), gw(), "198.19.7.2".parse().unwrap()));
        for bad in ["198.19.7.0", "198.19.7.1", "198.19.7.7", "198.19.8.2"] {
            assert!(!assignable(net(), gw(), bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn a_huge_subnet_is_counted_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::lock(dir.path()).unwrap();
        let huge: Ipv4Net = "10.0.0.0/1".parse().unwrap();
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(store.free_count(huge, gw).unwrap(), (1usize << 31) - 3);
        assert_eq!(
            store.allocate(huge, gw, "c", "eth0").unwrap(),
            Some(Ipv4Addr::new(0, 0, 0, 1))
        );
        assert_eq!(store.free_count(huge, gw).unwrap(), (1usize << 31) - 4);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// host-local's order, spelled out with the whole list, as the reference.
        fn reference(
            subnet: Ipv4Net,
            gateway: Ipv4Addr,
            taken: &HashSet<IpAddr>,
            last: Option<IpAddr>,
        ) -> (Option<Ipv4Addr>, usize) {
            let net = subnet.trunc();
            let all: Vec<Ipv4Addr> = if net.prefix_len() >= 31 {
                Vec::new()
            } else {
                (u32::from(net.network()) + 1..u32::from(net.broadcast()))
                    .map(Ipv4Addr::from)
                    .filter(|ip| *ip != gateway)
                    .collect()
            };
            let free: Vec<Ipv4Addr> = all
                .iter()
                .copied()
                .filter(|ip| !taken.contains(&IpAddr::V4(*ip)))
                .collect();
            let start = match last {
                Some(IpAddr::V4(l)) if net.contains(&l) => {
                    all.iter().position(|&c| c > l).unwrap_or(0)
                }
                _ => 0,
            };
            let next = (0..all.len())
                .map(|i| all[(start + i) % all.len()])
                .find(|ip| !taken.contains(&IpAddr::V4(*ip)));
            (next, free.len())
        }

        proptest! {
            /// Whatever host-local (or anyone) left in the directory, the plugin reads it
            /// without panicking and allocates in host-local's order.
            #[test]
            fn allocation_follows_host_local_whatever_the_files_say(
                base in any::<u32>(),
                len in 22u8..=32,
                gw_offset in any::<u32>(),
                files in prop::collection::vec((any::<u32>(), any::<Vec<u8>>()), 0..6),
                last in proptest::option::of(any::<u32>()),
                last_junk in proptest::option::of(any::<Vec<u8>>()),
            ) {
                let subnet = Ipv4Net::new(Ipv4Addr::from(base), len).unwrap().trunc();
                let size = 1u64 << (32 - u32::from(len));
                let gateway = Ipv4Addr::from(
                    u32::from(subnet.network()).wrapping_add((u64::from(gw_offset) % size) as u32),
                );
                let dir = tempfile::tempdir().unwrap();
                for (offset, content) in &files {
                    let ip = Ipv4Addr::from(
                        u32::from(subnet.network()).wrapping_add((u64::from(*offset) % size) as u32),
                    );
                    std::fs::write(dir.path().join(ip.to_string()), content).unwrap();
                }
                match (last, &last_junk) {
                    (Some(l), _) => {
                        let l = Ipv4Addr::from(
                            u32::from(subnet.network()).wrapping_add((u64::from(l) % (size + 4)) as u32),
                        );
                        std::fs::write(dir.path().join(LAST_RESERVED), l.to_string()).unwrap();
                    }
                    (None, Some(junk)) => {
                        std::fs::write(dir.path().join(LAST_RESERVED), junk).unwrap();
                    }
                    (None, None) => {}
                }
                let store = Store::lock(dir.path()).unwrap();
                let Ok(held) = store.reservations() else {
                    // A file that is not UTF-8 is reported as an error, not a panic.
                    return Ok(());
                };
                let taken: HashSet<IpAddr> = held.iter().map(|r| r.ip).collect();
                let (want, free) = reference(subnet, gateway, &taken, store.last_reserved());
                prop_assert_eq!(store.free_count(subnet, gateway).unwrap(), free);
                prop_assert_eq!(store.allocate(subnet, gateway, "c", "eth0").unwrap(), want);
            }
        }
    }
}
