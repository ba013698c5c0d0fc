//! What ADD did, one file per attachment, so DEL, CHECK and GC work after subnet.env changed
//! or the netns is gone. The files live in `<dataDir>/<network>/weft/`: host-local only
//! counts files named like addresses, and these hold JSON, which never matches its records.

use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{CniError, Result};
use crate::ipam::Store;

const DIR: &str = "weft";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentState {
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<PathBuf>,
    pub bridge: String,
    pub host_veth: String,
    /// One address per family, IPv4 first.
    pub addresses: Vec<IpNet>,
    /// The gateway of each address, in the same order. Records written before dual stack
    /// hold a single `gateway` instead, which is ignored: nothing reads it back.
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    pub routes: Vec<IpNet>,
    pub mtu: u32,
}

/// The file of one attachment. A container ID cannot hold '+', so the name splits uniquely.
fn path(store: &Store, container_id: &str, ifname: &str) -> PathBuf {
    store
        .dir()
        .join(DIR)
        .join(format!("{container_id}+{ifname}.json"))
}

impl AttachmentState {
    pub fn load(store: &Store, container_id: &str, ifname: &str) -> Result<Option<Self>> {
        read(&path(store, container_id, ifname))
    }

    /// Written before the kernel is touched, so a crash half-way leaves DEL what to undo.
    pub fn save(&self, store: &Store) -> Result<()> {
        let final_path = path(store, &self.container_id, &self.ifname);
        let dir = store.dir().join(DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CniError::store(format!("cannot create {}: {e}", dir.display())))?;
        let tmp = final_path.with_extension("tmp");
        let text = serde_json::to_vec(self)
            .map_err(|e| CniError::store(format!("cannot encode attachment state: {e}")))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &final_path))
            .map_err(|e| CniError::store(format!("cannot write {}: {e}", final_path.display())))
    }

    pub fn remove(store: &Store, container_id: &str, ifname: &str) -> Result<()> {
        let p = path(store, container_id, ifname);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::store(format!(
                "cannot remove {}: {e}",
                p.display()
            ))),
        }
    }

    /// Every saved attachment; an unreadable file is reported, not skipped, since GC and
    /// STATUS would otherwise act on half the truth.
    pub fn all(store: &Store) -> Result<Vec<Self>> {
        let dir = store.dir().join(DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(CniError::store(format!(
                    "cannot list {}: {e}",
                    dir.display()
                )))
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry
                .map_err(|e| CniError::store(format!("cannot list {}: {e}", dir.display())))?;
            if entry.path().extension().is_some_and(|x| x == "json") {
                if let Some(s) = read(&entry.path())? {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }
}

fn read(p: &Path) -> Result<Option<AttachmentState>> {
    match weft::file::read(p, weft::file::limit::SMALL) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CniError::store(format!("{} is not weft attachment state: {e}", p.display()))
        }),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(CniError::store(format!("cannot read {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_invisible_to_the_address_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::lock(dir.path()).unwrap();
        let s = AttachmentState {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: Some("/run/netns/x".into()),
            bridge: "cni0".into(),
            host_veth: "veth0123abcd".into(),
            addresses: vec![
                "198.19.3.2/24".parse().unwrap(),
                "2001:db8:3::2/64".parse().unwrap(),
            ],
            gateways: vec![
                "198.19.3.1".parse().unwrap(),
                "2001:db8:3::1".parse().unwrap(),
            ],
            routes: vec!["198.19.0.0/16".parse().unwrap()],
            mtu: 1450,
        };
        s.save(&store).unwrap();
        assert_eq!(
            AttachmentState::load(&store, "c1", "eth0").unwrap(),
            Some(s.clone())
        );
        assert_eq!(AttachmentState::all(&store).unwrap(), vec![s]);
        assert!(store.reservations().unwrap().is_empty());
        AttachmentState::remove(&store, "c1", "eth0").unwrap();
        AttachmentState::remove(&store, "c1", "eth0").unwrap();
        assert_eq!(AttachmentState::load(&store, "c1", "eth0").unwrap(), None);
    }

    #[test]
    fn records_from_before_dual_stack_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::lock(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join(DIR)).unwrap();
        std::fs::write(
            path(&store, "c1", "eth0"),
            r#"{"containerId":"c1","ifname":"eth0","netns":"/run/netns/x","bridge":"cni0",
                "hostVeth":"veth0123abcd","addresses":["198.19.3.2/24"],
                "gateway":"198.19.3.1","routes":["198.19.0.0/16"],"mtu":1450}"#,
        )
        .unwrap();
        let s = AttachmentState::load(&store, "c1", "eth0")
            .unwrap()
            .unwrap();
        assert_eq!(s.addresses, vec!["198.19.3.2/24".parse::<IpNet>().unwrap()]);
        assert!(s.gateways.is_empty());
    }
}
