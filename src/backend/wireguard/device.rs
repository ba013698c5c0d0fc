//! A WireGuard device made ready: the kernel's when it has the module, else a userspace one
//! (Debian's wireguard-go, as wg-quick falls back to it), started if it is not running and
//! left running when weftd stops, so no packet waits for weftd. Either way the device gets
//! this host's key and listen port ([`WgSpec`]); its peers are read and written through
//! [`WgTunnel`], which speaks to either implementation.

use std::any::Any;
use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{genl, uapi, Key, WgPeer};
use crate::backend::{
    Device, DeviceError, DeviceKind, DeviceSpec, PeerId, Tunnel, TunnelChange, TunnelPeer,
};
use crate::netlink::{Link, Mac, Netlink, NetlinkError};

/// The userspace implementation weft starts when the kernel has no WireGuard.
pub const WIREGUARD_GO: &str = "wireguard-go";

#[derive(Debug, thiserror::Error)]
pub enum WgDeviceError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Uapi(#[from] uapi::UapiError),
    #[error(transparent)]
    Genl(#[from] genl::GenlError),
    #[error("the kernel has no WireGuard and {WIREGUARD_GO} cannot be started for {dev}: {why}")]
    Userspace { dev: String, why: String },
    #[error("{dev} exists but is a {kind} device, not WireGuard")]
    Foreign { dev: String, kind: String },
    #[error("WireGuard device {0} does not exist")]
    Missing(String),
    #[error("device {0} cannot be set up without this host's key")]
    NoKey(String),
}

/// A WireGuard device as the backend wants it: the port it listens on and this host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgSpec {
    pub port: u16,
    pub key: Option<Key>,
    /// Whether this family's pass manages the device's peers: with one device for both
    /// families the IPv4 pass does, for both.
    pub peers: bool,
}

impl From<WgDeviceError> for DeviceError {
    fn from(e: WgDeviceError) -> DeviceError {
        DeviceError::Backend(Box::new(e))
    }
}

impl DeviceKind for WgSpec {
    fn ensure(
        &self,
        nl: &mut Netlink,
        spec: &DeviceSpec,
        _mac: Option<Mac>,
    ) -> Result<Device, DeviceError> {
        let key = self.key.ok_or(WgDeviceError::NoKey(spec.name.clone()))?;
        let dev = ensure(nl, &spec.name, &key, self.port, spec.mtu)?;
        Ok(Device {
            index: dev.link.index,
            mac: None,
            mtu: dev.link.mtu,
            created: dev.created,
        })
    }

    fn tunnel(&self, spec: &DeviceSpec) -> Option<Box<dyn Tunnel>> {
        self.peers.then(|| {
            Box::new(WgTunnel {
                dev: spec.name.clone(),
                implementation: None,
                keepalive_held: HashSet::new(),
            }) as Box<dyn Tunnel>
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A device's peers, read and written through whichever implementation runs it (asked once,
/// and again after a failure: the device may have been made anew by the other one).
pub struct WgTunnel {
    dev: String,
    implementation: Option<Implementation>,
    /// Peers added without their keepalive, which the next write sets (see [`Tunnel::write`]).
    keepalive_held: HashSet<Key>,
}

impl WgTunnel {
    fn implementation(&mut self, nl: &mut Netlink) -> Result<Implementation, WgDeviceError> {
        match self.implementation {
            Some(i) => Ok(i),
            None => Ok(*self.implementation.insert(implementation(nl, &self.dev)?)),
        }
    }

    /// Runs `f` with the device's implementation, forgetting it when `f` fails.
    fn with<T>(
        &mut self,
        nl: &mut Netlink,
        f: impl FnOnce(&str, Implementation) -> Result<T, WgDeviceError>,
    ) -> Result<T, DeviceError> {
        let imp = self.implementation(nl)?;
        let r = f(&self.dev, imp);
        if r.is_err() {
            self.implementation = None;
        }
        Ok(r?)
    }
}

impl Tunnel for WgTunnel {
    fn read(&mut self, nl: &mut Netlink) -> Result<Vec<TunnelPeer>, DeviceError> {
        let state = self.with(nl, get)?;
        Ok((state.peers.into_iter())
            .map(|p| TunnelPeer(std::sync::Arc::new(p)))
            .collect())
    }

    /// A peer new to the device goes in without its keepalive, which the next write adds:
    /// WireGuard sends a keepalive the moment one is set, and two hosts adding each other at
    /// once would both start a handshake, neither would complete, and the pair would stall
    /// for WireGuard's 5 s retry. Setting the keepalive later finishes that peer, not drift.
    fn write(
        &mut self,
        nl: &mut Netlink,
        change: &TunnelChange,
        held: &dyn Fn(&PeerId) -> bool,
    ) -> Result<Vec<PeerId>, DeviceError> {
        let mut c = uapi::Change::default();
        let (mut finished, mut new_held) = (Vec::new(), Vec::new());
        for p in &change.set {
            let Some(p) = p.0.as_any().downcast_ref::<WgPeer>() else {
                continue;
            };
            let mut p = p.clone();
            if p.keepalive > 0 && !held(&p.public_key.to_vec()) {
                p.keepalive = 0;
                new_held.push(p.public_key);
            } else if p.keepalive > 0 && self.keepalive_held.remove(&p.public_key) {
                finished.push(p.public_key.to_vec());
            }
            c.set.push(p);
        }
        c.remove = (change.remove.iter())
            .filter_map(|p| Key::try_from(p.id().as_slice()).ok())
            .collect();
        self.with(nl, |dev, imp| set(dev, imp, &c))?;
        for k in &c.remove {
            self.keepalive_held.remove(k);
        }
        self.keepalive_held.extend(new_held);
        Ok(finished)
    }
}

/// Which implementation carries a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    Kernel,
    Userspace,
}

/// A device that exists and has the host's key and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDevice {
    pub link: Link,
    pub implementation: Implementation,
    pub created: bool,
}

/// What a link of kind `kind` is: a kernel WireGuard device, a TUN device (wireguard-go's,
/// when its control socket answers), or something else.
fn implementation_of(link: &Link) -> Option<Implementation> {
    match link.kind.as_deref() {
        Some("wireguard") => Some(Implementation::Kernel),
        Some("tun") | None if uapi::socket_path(&link.name).exists() => {
            Some(Implementation::Userspace)
        }
        _ => None,
    }
}

/// Adopts the device `name` or creates it (kernel first, then wireguard-go), then gives it
/// `key` and `port` when it has others, `mtu`, and brings it up.
pub fn ensure(
    nl: &mut Netlink,
    name: &str,
    key: &Key,
    port: u16,
    mtu: u32,
) -> Result<WgDevice, WgDeviceError> {
    let (link, implementation, created) = match nl.link_by_name(name)? {
        Some(link) => {
            let Some(i) = implementation_of(&link) else {
                return Err(WgDeviceError::Foreign {
                    dev: name.into(),
                    kind: link.kind.clone().unwrap_or_else(|| "unknown".into()),
                });
            };
            (link, i, false)
        }
        None => match nl.create_wireguard(name) {
            Ok(link) => (link, Implementation::Kernel, true),
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                (start_userspace(nl, name)?, Implementation::Userspace, true)
            }
            Err(e) => return Err(e.into()),
        },
    };
    let state = get(name, implementation)?;
    if state.private_key != Some(*key) || state.listen_port != port {
        set(
            name,
            implementation,
            &uapi::Change {
                private_key: Some(*key),
                listen_port: Some(port),
                ..uapi::Change::default()
            },
        )?;
    }
    if link.mtu != mtu {
        nl.set_mtu(link.index, mtu)?;
    }
    if !link.up {
        nl.set_up(link.index)?;
    }
    let link = nl.link_by_index(link.index)?.unwrap_or(link);
    Ok(WgDevice {
        link,
        implementation,
        created,
    })
}

/// Which implementation runs the existing device `name`.
pub fn implementation(nl: &mut Netlink, name: &str) -> Result<Implementation, WgDeviceError> {
    let link = nl
        .link_by_name(name)?
        .ok_or_else(|| WgDeviceError::Missing(name.into()))?;
    implementation_of(&link).ok_or_else(|| WgDeviceError::Foreign {
        dev: name.into(),
        kind: link.kind.unwrap_or_else(|| "unknown".into()),
    })
}

/// The key, port and peers of device `dev`, run by `imp`: over generic netlink for the
/// kernel's, over its control socket for wireguard-go's.
pub fn get(dev: &str, imp: Implementation) -> Result<uapi::DeviceState, WgDeviceError> {
    Ok(match imp {
        Implementation::Kernel => genl::get(dev)?,
        Implementation::Userspace => uapi::get(dev)?,
    })
}

/// Applies `change` to device `dev`, run by `imp` (see [`get`]).
pub fn set(dev: &str, imp: Implementation, change: &uapi::Change) -> Result<(), WgDeviceError> {
    match imp {
        Implementation::Kernel => genl::set(dev, change)?,
        Implementation::Userspace => uapi::set(dev, change)?,
    }
    Ok(())
}

/// Starts wireguard-go for `name` and waits for its device and control socket. wireguard-go
/// detaches itself, so it outlives weftd (a restart or crash of weftd loses no packet).
fn start_userspace(nl: &mut Netlink, name: &str) -> Result<Link, WgDeviceError> {
    let fail = |why: String| WgDeviceError::Userspace {
        dev: name.into(),
        why,
    };
    // A minimal environment (never weftd's own secrets), without WG_PROCESS_FOREGROUND:
    // wireguard-go detaches itself.
    let out = crate::environ::command(WIREGUARD_GO)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            fail(format!(
                "cannot run it: {e} (install Debian's wireguard-go)"
            ))
        })?;
    if !out.status.success() {
        return Err(fail(format!(
            "it exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(link) = nl.link_by_name(name)? {
            if uapi::socket_path(name).exists() {
                tracing::info!(
                    device = name,
                    "started {WIREGUARD_GO}: the kernel has no WireGuard"
                );
                return Ok(link);
            }
        }
        if Instant::now() > deadline {
            return Err(fail(
                "its device or control socket did not appear within 5 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
