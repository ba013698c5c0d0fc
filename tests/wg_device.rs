//! A WireGuard device made by weft on a kernel without WireGuard: wireguard-go started and
//! configured over UAPI, checked with `wg`, WireGuard's own tool (an independent reader of the
//! same device).

use std::process::Command;

use testkit::netns::Netns;
use weft::backend::wireguard::device::{self as wgdev, Implementation};
use weft::backend::wireguard::key::public_key;
use weft::backend::wireguard::uapi::{self, Change};
use weft::backend::wireguard::{format_key, WgPeer};
use weft::netlink::{run_in_netns, Netlink};

fn wg(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "wg"])
        .args(args)
        .output()
        .expect("running wg (apt-get install wireguard-tools)");
    assert!(
        out.status.success(),
        "wg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the device when the test ends (also on failure): wireguard-go then exits and
/// removes its control socket. A namespace alone would stay alive while wireguard-go holds
/// its TUN device.
struct DeviceGuard<'a> {
    ns: &'a Netns,
    dev: String,
}

impl Drop for DeviceGuard<'_> {
    fn drop(&mut self) {
        let _ = self.ns.try_ip(&["link", "del", &self.dev]);
        let sock = uapi::socket_path(&self.dev);
        for _ in 0..100 {
            if !sock.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("wireguard-go left {} behind", sock.display());
    }
}

#[test]
fn a_userspace_device_gets_the_hosts_key_port_and_peers_as_wg_reads_them() {
    let ns = Netns::new("wg");
    // A name of its own: wireguard-go's control socket lives in the shared /var/run.
    let dev = format!("wgt{}", std::process::id() % 100_000);
    let _guard = DeviceGuard {
        ns: &ns,
        dev: dev.clone(),
    };
    // A clamped key, as `wg genkey` and weft make them (a device stores keys clamped).
    let mut key = [0x41; 32];
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    let path = ns.path();
    let (d, name) = (dev.clone(), dev.clone());
    let made = run_in_netns(&path, move || {
        let mut nl = Netlink::new().expect("netlink");
        wgdev::ensure(&mut nl, &d, &key, 51820, 1420)
    })
    .expect("entering the namespace")
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(made.implementation, Implementation::Userspace);
    assert!(
        made.created && made.link.up && made.link.mtu == 1420,
        "{made:?}"
    );

    let shown = wg(&ns, &["show", &name, "dump"]);
    let first: Vec<&str> = shown.lines().next().unwrap().split('\t').collect();
    assert_eq!(first[0], format_key(&key));
    assert_eq!(first[1], format_key(&public_key(&key)));
    assert_eq!(first[2], "51820");

    // Peers set through UAPI are what wg shows; a second ensure adopts the running device.
    let peer = WgPeer {
        public_key: [0x42; 32],
        endpoint: Some("198.18.0.2:51820".parse().unwrap()),
        allowed_ips: vec!["198.19.2.0/24".parse().unwrap()],
        psk: Some([0x43; 32]),
        keepalive: 25,
        last_handshake: None,
    };
    let p6 = WgPeer {
        public_key: [0x44; 32],
        endpoint: Some("[2001:db8::2]:51821".parse().unwrap()),
        allowed_ips: vec!["2001:db8:100:2::/64".parse().unwrap()],
        psk: None,
        keepalive: 0,
        last_handshake: None,
    };
    let change = Change {
        set: vec![peer.clone(), p6.clone()],
        ..Change::default()
    };
    uapi::set(&dev, &change).unwrap();
    let dump = wg(&ns, &["show", &name, "dump"]);
    let line = dump
        .lines()
        .find(|l| l.starts_with(&format_key(&[0x42; 32])))
        .unwrap_or_else(|| panic!("no peer in {dump}"));
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(
        (f[1], f[2], f[3], f[7]),
        (
            format_key(&[0x43; 32]).as_str(),
            "198.18.0.2:51820",
            "198.19.2.0/24",
            "25"
        )
    );
    let mut peers = uapi::get(&dev).unwrap().peers;
    peers.sort_by_key(|p| p.public_key);
    assert_eq!(peers, vec![peer.clone(), p6]);

    let again = run_in_netns(&path, move || {
        let mut nl = Netlink::new().expect("netlink");
        wgdev::ensure(&mut nl, &name, &key, 51820, 1420)
    })
    .unwrap()
    .unwrap();
    assert!(!again.created);
    assert_eq!(
        uapi::get(&dev).unwrap().peers.len(),
        2,
        "adopting keeps the peers"
    );

    // Removing a peer.
    uapi::set(
        &dev,
        &Change {
            remove: vec![[0x44; 32]],
            ..Change::default()
        },
    )
    .unwrap();
    assert_eq!(uapi::get(&dev).unwrap().peers, vec![peer]);
}
