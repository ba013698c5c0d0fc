//! WireGuard's cross-platform control protocol (UAPI), spoken over the unix socket a
//! userspace implementation (wireguard-go) opens for each device: read the device's key, port
//! and peers, and change them. Written here because it is a dozen lines of `key=value` text
//! over a socket; no maintained crate speaks it without also bundling an implementation.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{Key, WgPeer};

/// Where wireguard-go listens for device `dev` (in the caller's mount namespace).
pub fn socket_path(dev: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{dev}.sock"))
}

#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("cannot talk to WireGuard device {dev} at {path}: {error}")]
    Io {
        dev: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("WireGuard device {dev} refused the change (errno {errno})")]
    Refused { dev: String, errno: i32 },
    #[error("WireGuard device {dev} answered something unreadable: {line:?}")]
    Garbled { dev: String, line: String },
}

/// A device as UAPI reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<WgPeer>,
}

/// A change to a device: its key and port when given, then peers set (replacing their
/// allowed IPs) and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub private_key: Option<Key>,
    pub listen_port: Option<u16>,
    pub set: Vec<WgPeer>,
    pub remove: Vec<Key>,
}

fn hex(k: &Key) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Key> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

/// The text of a `set` request.
pub fn set_request(c: &Change) -> String {
    let mut out = String::from("set=1\n");
    if let Some(k) = &c.private_key {
        out += &format!("private_key={}\n", hex(k));
    }
    if let Some(p) = c.listen_port {
        out += &format!("listen_port={p}\n");
    }
    for p in &c.set {
        out += &format!("public_key={}\n", hex(&p.public_key));
        // All zeros removes a PSK the peer had.
        out += &format!("preshared_key={}\n", hex(&p.psk.unwrap_or([0; 32])));
        if let Some(e) = p.endpoint {
            out += &format!("endpoint={e}\n");
        }
        out += &format!("persistent_keepalive_interval={}\n", p.keepalive);
        out += "replace_allowed_ips=true\n";
        for ip in &p.allowed_ips {
            out += &format!("allowed_ip={ip}\n");
        }
    }
    for k in &c.remove {
        out += &format!("public_key={}\nremove=true\n", hex(k));
    }
    out + "\n"
}

/// Reads a `get` answer (without the final `errno` line's check, see [`get`]).
pub fn parse_get(text: &str) -> Result<DeviceState, String> {
    let mut dev = DeviceState::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once('=').ok_or_else(|| line.to_string())?;
        let bad = || line.to_string();
        match k {
            "private_key" => dev.private_key = Some(unhex(v).ok_or_else(bad)?),
            "listen_port" => dev.listen_port = v.parse().map_err(|_| bad())?,
            "public_key" => dev.peers.push(WgPeer {
                public_key: unhex(v).ok_or_else(bad)?,
                endpoint: None,
                allowed_ips: Vec::new(),
                psk: None,
                keepalive: 0,
                last_handshake: None,
            }),
            "last_handshake_time_sec" | "last_handshake_time_nsec" => {
                let peer = dev.peers.last_mut().ok_or_else(bad)?;
                let n: u64 = v.parse().map_err(|_| bad())?;
                peer.last_handshake = add_handshake_part(peer.last_handshake, k, n);
            }
            "preshared_key" | "endpoint" | "persistent_keepalive_interval" | "allowed_ip" => {
                let peer = dev.peers.last_mut().ok_or_else(bad)?;
                match k {
                    "preshared_key" => {
                        peer.psk = Some(unhex(v).ok_or_else(bad)?).filter(|k| *k != [0; 32])
                    }
                    "endpoint" => peer.endpoint = Some(v.parse::<SocketAddr>().map_err(|_| bad())?),
                    "persistent_keepalive_interval" => {
                        peer.keepalive = v.parse().map_err(|_| bad())?
                    }
                    _ => peer.allowed_ips.push(v.parse().map_err(|_| bad())?),
                }
            }
            // Counters, fwmark, protocol version: not weft's concern.
            _ => {}
        }
    }
    Ok(dev)
}

/// The handshake time so far with one of its two lines (seconds, nanoseconds) added; the
/// protocol gives both as 0 for a peer without a handshake, which stays None.
fn add_handshake_part(so_far: Option<SystemTime>, key: &str, n: u64) -> Option<SystemTime> {
    let part = match key {
        "last_handshake_time_sec" => Duration::from_secs(n),
        _ => Duration::from_nanos(n.min(999_999_999)),
    };
    if part.is_zero() {
        return so_far;
    }
    so_far.unwrap_or(SystemTime::UNIX_EPOCH).checked_add(part)
}

/// Sends `request` and returns the answer up to its `errno` line, checking the errno.
fn exchange(dev: &str, request: &str) -> Result<String, UapiError> {
    let path = socket_path(dev);
    let io = |error| UapiError::Io {
        dev: dev.to_string(),
        path: path.clone(),
        error,
    };
    let mut s = UnixStream::connect(&path).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    s.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    let mut reader = BufReader::new(s);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            return Err(UapiError::Garbled {
                dev: dev.into(),
                line: "end of stream before errno".into(),
            });
        }
        if let Some(errno) = line.trim_end().strip_prefix("errno=") {
            let errno: i32 = errno.parse().map_err(|_| UapiError::Garbled {
                dev: dev.into(),
                line: line.clone(),
            })?;
            if errno != 0 {
                return Err(UapiError::Refused {
                    dev: dev.into(),
                    errno,
                });
            }
            return Ok(answer);
        }
        answer += &line;
    }
}

/// The device's key, port and peers.
pub fn get(dev: &str) -> Result<DeviceState, UapiError> {
    let text = exchange(dev, "get=1\n\n")?;
    parse_get(&text).map_err(|line| UapiError::Garbled {
        dev: dev.into(),
        line: without_secret(line),
    })
}

/// A line of an answer fit for an error message: a key's value is left out.
fn without_secret(line: String) -> String {
    match line.split_once('=') {
        Some((k @ ("private_key" | "preshared_key"), _)) => format!("{k}=(hidden)"),
        _ => line,
    }
}

/// Applies a change.
pub fn set(dev: &str, change: &Change) -> Result<(), UapiError> {
    exchange(dev, &set_request(change)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> WgPeer {
        WgPeer {
            public_key: [0xab; 32],
            endpoint: Some("198.18.0.2:51820".parse().unwrap()),
            allowed_ips: vec!["198.19.2.0/24".parse().unwrap()],
            psk: Some([1; 32]),
            keepalive: 25,
            last_handshake: None,
        }
    }

    #[test]
    fn an_unreadable_key_line_is_not_repeated_in_the_error() {
        assert_eq!(
            without_secret("preshared_key=00ff".into()),
            "preshared_key=(hidden)"
        );
        assert_eq!(
            without_secret("private_key=zz".into()),
            "private_key=(hidden)"
        );
        assert_eq!(without_secret("listen_port=x".into()), "listen_port=x");
    }

    #[test]
    fn a_set_request_and_a_get_answer_say_the_same_peer() {
        let c = Change {
            private_key: Some([2; 32]),
            listen_port: Some(51820),
            set: vec![peer()],
            remove: vec![[0xcd; 32]],
        };
        let text = set_request(&c);
        assert!(text.starts_with("set=1\nprivate_key=0202"), "{text}");
        assert!(text.ends_with(&format!("public_key={}\nremove=true\n\n", "cd".repeat(32))));
        // What a device answers for that peer, in the protocol's order.
        let answer = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\npreshared_key={}\nendpoint=198.18.0.2:51820\nlast_handshake_time_sec=0\npersistent_keepalive_interval=25\nallowed_ip=198.19.2.0/24\nrx_bytes=0\n",
            "02".repeat(32),
            "ab".repeat(32),
            "01".repeat(32)
        );
        let dev = parse_get(&answer).unwrap();
        assert_eq!(dev.private_key, Some([2; 32]));
        assert_eq!(dev.listen_port, 51820);
        assert_eq!(dev.peers, vec![peer()]);
        let v6 = parse_get(&format!(
            "public_key={}\npreshared_key={}\nendpoint=[2001:db8::2]:51821\nallowed_ip=2001:db8:100:2::/64\n",
            "ab".repeat(32),
            "00".repeat(32)
        ))
        .unwrap();
        assert_eq!(v6.peers[0].psk, None);
        assert_eq!(v6.peers[0].last_handshake, None);
        // A handshake is read as wall-clock time, from its two lines.
        let shook = parse_get(&format!(
            "public_key={}\nlast_handshake_time_sec=1800000000\nlast_handshake_time_nsec=500000000\n",
            "ab".repeat(32)
        ))
        .unwrap();
        assert_eq!(
            shook.peers[0].last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_500))
        );
        assert_eq!(
            v6.peers[0].endpoint,
            Some("[2001:db8::2]:51821".parse().unwrap())
        );
    }

    #[test]
    fn garbage_is_refused_naming_the_line() {
        assert_eq!(
            parse_get("allowed_ip=198.19.0.0/16"),
            Err("allowed_ip=198.19.0.0/16".into())
        );
        assert_eq!(parse_get("private_key=zz"), Err("private_key=zz".into()));
        assert!(parse_get("no equals sign").is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever a device (or something squatting on its socket) answers, reading it
            /// never panics.
            #[test]
            fn parse_get_never_panics(text in "(([a-z_]{0,24})=([0-9a-f:./\\[\\]]{0,70})\n){0,12}") {
                let _ = parse_get(&text);
            }
        }
    }
}
