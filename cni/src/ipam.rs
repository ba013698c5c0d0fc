//! Address reservations on disk, in the reference host-local plugin's layout so a host moved
//! from flannel keeps its reservations: `<dataDir>/<network>/` holds a `lock` file (flock
//! around every change), one file per address of any family containing
//! `<containerID>\r\n<ifname>`, and `last_reserved_ip.N` per range, from where its next search
//! starts. One allocator serves both families; a [`Range`] says which.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::error::{CniError, Result};

const LINE_BREAK: &str = "\r\n";
/// Followed by the range's index: `last_reserved_ip.0` for the first range (IPv4 on a
/// dual-stack host), `last_reserved_ip.1` for the second.
const LAST_RESERVED: &str = "last_reserved_ip.";

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
        let lock = weft::file::lock_exclusive(&path)
            .map_err(|e| CniError::store(format!("cannot lock {}: {e}", path.display())))?;
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
            let text = match weft::file::read_text(&entry.path(), weft::file::limit::SMALL) {
                Ok(t) => t,
                // Released between the listing and the read.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(CniError::store(format!("cannot read {e}"))),
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

    /// Creates the address file unless it exists; false when someone holds the address. The
    /// range's `last_reserved_ip.N` follows, as host-local writes it for requested addresses too.
    pub fn reserve(
        &self,
        range: &Range,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
    ) -> Result<bool> {
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
        let last = self.dir.join(last_reserved_file(range.index));
        std::fs::write(&last, ip.to_string())
            .map_err(|e| CniError::store(format!("cannot write {}: {e}", last.display())))?;
        Ok(true)
    }

    /// Where the range's last search ended, if its file holds an address.
    pub fn last_reserved(&self, range: &Range) -> Option<IpAddr> {
        weft::file::read_text(
            &self.dir.join(last_reserved_file(range.index)),
            weft::file::limit::SMALL,
        )
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

    /// Releases every address the attachment holds, in any range and family; returns them.
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

    /// Reserves the next free address of `range` in host-local's order: after the range's last
    /// reserved one, wrapping around; never the gateway. `None` when the range is exhausted.
    pub fn allocate(
        &self,
        range: &Range,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<IpAddr>> {
        let taken: HashSet<IpAddr> = self.reservations()?.into_iter().map(|r| r.ip).collect();
        let Some((first, last)) = range.bounds() else {
            return Ok(None);
        };
        // Start after the last reserved address, wrapping around.
        let start = match self.last_reserved(range) {
            Some(prev) if range.subnet.trunc().contains(&prev) && to_int(prev) < last => {
                (to_int(prev) + 1).max(first)
            }
            _ => first,
        };
        for a in (start..=last).chain(first..start) {
            let ip = range.addr(a);
            if ip == range.gateway || taken.contains(&ip) {
                continue;
            }
            if self.reserve(range, ip, container_id, ifname)? {
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }

    /// How many addresses of `range` are free (saturating: an IPv6 range holds more than
    /// `usize` counts).
    pub fn free_count(&self, range: &Range) -> Result<usize> {
        let taken: HashSet<IpAddr> = self.reservations()?.into_iter().map(|r| r.ip).collect();
        let Some((first, last)) = range.bounds() else {
            return Ok(0);
        };
        let held = taken.iter().filter(|ip| range.assignable(**ip)).count() as u128;
        let size = (last - first) + 1 - u128::from(range.in_bounds(range.gateway));
        Ok(usize::try_from(size - held).unwrap_or(usize::MAX))
    }
}

/// host-local's file naming where the search of range `index` ended.
fn last_reserved_file(index: usize) -> String {
    format!("{LAST_RESERVED}{index}")
}

/// One range of host-local's config, one per address family: the subnet its addresses come
/// from, the gateway the bridge holds (never handed out), and its position in host-local's
/// `ranges` list, which names its `last_reserved_ip.N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub gateway: IpAddr,
    pub index: usize,
}

impl Range {
    /// The addresses a container may get, as integers (the gateway among them; callers skip
    /// it): everything after the network address, up to the broadcast address for IPv4 and
    /// the last address for IPv6, which has no broadcast. A subnet with fewer than two such
    /// addresses has none, as host-local refuses it. Counted, never listed, so a subnet.env
    /// naming a huge subnet cannot make the plugin allocate gigabytes.
    fn bounds(&self) -> Option<(u128, u128)> {
        let net = self.subnet.trunc();
        if net.prefix_len() + 1 >= net.max_prefix_len() {
            return None;
        }
        let broadcast = u128::from(net.addr().is_ipv4());
        Some((
            to_int(net.network()) + 1,
            to_int(net.broadcast()) - broadcast,
        ))
    }

    fn in_bounds(&self, ip: IpAddr) -> bool {
        self.subnet.trunc().contains(&ip)
            && self
                .bounds()
                .is_some_and(|(first, last)| (first..=last).contains(&to_int(ip)))
    }

    /// Whether `ip` may be handed to a container from this range.
    pub fn assignable(&self, ip: IpAddr) -> bool {
        ip != self.gateway && self.in_bounds(ip)
    }

    /// The address of this range's family whose integer is `n`.
    fn addr(&self, n: u128) -> IpAddr {
        match self.subnet {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }
}

/// An address as an integer, so both families share one allocator.
fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Range {
        Range {
            subnet: "198.19.7.0/29".parse().unwrap(),
            gateway: "198.19.7.1".parse().unwrap(),
            index: 0,
        }
    }

    fn v6() -> Range {
        Range {
            subnet: "2001:db8:7::/125".parse().unwrap(),
            gateway: "2001:db8:7::1".parse().unwrap(),
            index: 1,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_in_host_local_order_and_exhausts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::lock(dir.path()).unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                store
                    .allocate(&v4(), &format!("c{i}"), "eth0")
                    .unwrap()
                    .unwrap(),
            );
        }
        let want: Vec<IpAddr> = (2..=6).map(|n| ip(&format!("198.19.7.{n}"))).collect();
        assert_eq!(got, want);
        assert_eq!(store.allocate(&v4(), "c9", "eth0").unwrap(), None);
        assert_eq!(store.free_count(&v4()).unwrap(), 0);
        // Freed addresses come back only after the search wraps around.
        store.release_attachment("c1", "eth0").unwrap();
        store.release_attachment("c3", "eth0").unwrap();
        assert_eq!(
            store.allocate(&v4(), "c10", "eth0").unwrap(),
            Some(ip("198.19.7.3"))
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
    fn ipv6_range_has_no_broadcast_and_its_own_last_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::lock(dir.path()).unwrap();
        // A /125 holds ::1 (gateway) to ::7; the last address is a host address in IPv6.
        let mut got = Vec::new();
        while let Some(a) = store.allocate(&v6(), "c", "eth0").unwrap() {
            got.push(a);
        }
        let want: Vec<IpAddr> = (2..=7).map(|n| ip(&format!("2001:db8:7::{n}"))).collect();
        assert_eq!(got, want);
        assert_eq!(store.free_count(&v6()).unwrap(), 0);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("last_reserved_ip.1")).unwrap(),
            "2001:db8:7::7"
        );
        // The IPv4 range is untouched by the IPv6 one, on disk and in its count.
        assert!(!dir.path().join("last_reserved_ip.0").exists());
        assert_eq!(store.free_count(&v4()).unwrap(), 5);
        assert_eq!(
            store.allocate(&v4(), "c", "eth0").unwrap(),
            Some(ip("198.19.7.2"))
        );
        assert_eq!(store.release_attachment("c", "eth0").unwrap().len(), 7);
        assert_eq!(store.free_count(&v6()).unwrap(), 6);
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
            store.allocate(&v4(), "n", "eth0").unwrap(),
            Some(ip("198.19.7.4"))
        );
        assert_eq!(
            store.release_attachment("old", "eth0").unwrap(),
            vec![ip("198.19.7.3")]
        );
    }

    #[test]
    fn assignable_excludes_special_addresses() {
        assert!(v4().assignable(ip("198.19.7.2")));
        for bad in [
            "198.19.7.0",
            "198.19.7.1",
            "198.19.7.7",
            "198.19.8.2",
            "2001:db8:7::2",
        ] {
            assert!(!v4().assignable(ip(bad)), "{bad}");
        }
        assert!(v6().assignable(ip("2001:db8:7::7")));
        for bad in [
            "2001:db8:7::",
            "2001:db8:7::1",
            "2001:db8:7::8",
            "198.19.7.2",
        ] {
            assert!(!v6().assignable(ip(bad)), "{bad}");
        }
    }

    #[test]
    fn a_huge_subnet_is_counted_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::lock(dir.path()).unwrap();
        let huge = Range {
            subnet: "10.0.0.0/1".parse().unwrap(),
            gateway: ip("10.0.0.1"),
            index: 0,
        };
        assert_eq!(store.free_count(&huge).unwrap(), (1usize << 31) - 3);
        assert_eq!(
            store.allocate(&huge, "c", "eth0").unwrap(),
            Some(ip("0.0.0.1"))
        );
        assert_eq!(store.free_count(&huge).unwrap(), (1usize << 31) - 4);
        let huge6 = Range {
            subnet: "2001:db8::/32".parse().unwrap(),
            gateway: ip("2001:db8::1"),
            index: 1,
        };
        assert_eq!(store.free_count(&huge6).unwrap(), usize::MAX);
        assert_eq!(
            store.allocate(&huge6, "c", "eth0").unwrap(),
            Some(ip("2001:db8::2"))
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// host-local's order, spelled out with the whole list, as the reference.
        fn reference(
            range: &Range,
            taken: &HashSet<IpAddr>,
            last: Option<IpAddr>,
        ) -> (Option<IpAddr>, usize) {
            let net = range.subnet.trunc();
            let v4 = u128::from(net.addr().is_ipv4());
            let all: Vec<IpAddr> = if net.prefix_len() + 1 >= net.max_prefix_len() {
                Vec::new()
            } else {
                (to_int(net.network()) + 1..=to_int(net.broadcast()) - v4)
                    .map(|n| range.addr(n))
                    .filter(|ip| *ip != range.gateway)
                    .collect()
            };
            let free = all.iter().filter(|ip| !taken.contains(ip)).count();
            let start = match last {
                Some(l) if net.contains(&l) => all.iter().position(|&c| c > l).unwrap_or(0),
                _ => 0,
            };
            let next = (0..all.len())
                .map(|i| all[(start + i) % all.len()])
                .find(|ip| !taken.contains(ip));
            (next, free)
        }

        /// A range of either family small enough to list: /22 to /32, or /118 to /128.
        fn range() -> impl Strategy<Value = Range> {
            let v4 = (any::<u32>(), 22u8..=32)
                .prop_map(|(a, l)| IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap());
            let v6 = (any::<u128>(), 118u8..=128)
                .prop_map(|(a, l)| IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), l).unwrap());
            (prop_oneof![v4, v6], any::<u128>(), 0usize..3).prop_map(|(subnet, gw, index)| {
                let subnet = subnet.trunc();
                let r = Range {
                    subnet,
                    gateway: subnet.addr(),
                    index,
                };
                Range {
                    gateway: r.addr(to_int(subnet.network()) + gw % size(&subnet)),
                    ..r
                }
            })
        }

        fn size(subnet: &IpNet) -> u128 {
            1u128 << (subnet.max_prefix_len() - subnet.prefix_len())
        }

        proptest! {
            /// Whatever host-local (or anyone) left in the directory, the plugin reads it
            /// without panicking and allocates in host-local's order, in either family.
            #[test]
            fn allocation_follows_host_local_whatever_the_files_say(
                range in range(),
                files in prop::collection::vec((any::<u128>(), any::<Vec<u8>>()), 0..6),
                last in proptest::option::of(any::<u128>()),
                last_junk in proptest::option::of(any::<Vec<u8>>()),
            ) {
                let base = to_int(range.subnet.network());
                let size = size(&range.subnet);
                let dir = tempfile::tempdir().unwrap();
                for (offset, content) in &files {
                    let ip = range.addr(base + offset % size);
                    std::fs::write(dir.path().join(ip.to_string()), content).unwrap();
                }
                let last_file = dir.path().join(last_reserved_file(range.index));
                match (last, &last_junk) {
                    (Some(l), _) => {
                        // Sometimes just past the subnet, as a file from another subnet is.
                        let mask = u128::MAX >> (128 - u32::from(range.subnet.max_prefix_len()));
                        let l = range.addr(base.wrapping_add(l % (size + 4)) & mask);
                        std::fs::write(&last_file, l.to_string()).unwrap();
                    }
                    (None, Some(junk)) => std::fs::write(&last_file, junk).unwrap(),
                    (None, None) => {}
                }
                let store = Store::lock(dir.path()).unwrap();
                let Ok(held) = store.reservations() else {
                    // A file that is not UTF-8 is reported as an error, not a panic.
                    return Ok(());
                };
                let taken: HashSet<IpAddr> = held.iter().map(|r| r.ip).collect();
                let (want, free) = reference(&range, &taken, store.last_reserved(&range));
                prop_assert_eq!(store.free_count(&range).unwrap(), free);
                prop_assert_eq!(store.allocate(&range, "c", "eth0").unwrap(), want);
            }
        }
    }
}
