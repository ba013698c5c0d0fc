//! Addresses put into and taken out of nf_tables sets over NETLINK_NETFILTER: one batch of
//! NEWSETELEM/DELSETELEM messages, which the kernel applies whole or not at all, as `nft -f`
//! would, without starting `nft` and without it reading the whole table first.
//!
//! Written here rather than taken from a crate: `rustables` calls itself rough-edged and
//! trial-and-error, and brings its own socket layer and proc-macros; `nftnl` wraps the C
//! libnftnl. The few messages weft needs are built by pure functions (tested byte for byte
//! against the kernel's layout in linux/netfilter/nf_tables.h and nfnetlink.h) and moved
//! over the socket layer weft's route and generic netlink use too.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};

use super::socket::{align4, Conn};
use super::NetlinkError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNETLINK_V0: u8 = 0;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

/// One address added to or deleted from one set of a table. The table is the `ip` one for
/// an IPv4 address and the `ip6` one for an IPv6 address; the set holds plain addresses (no
/// intervals, no maps), so an element is its key alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementChange {
    pub add: bool,
    pub set: String,
    pub address: IpAddr,
}

impl std::fmt::Display for ElementChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (verb, prep) = if self.add {
            ("add", "to")
        } else {
            ("delete", "from")
        };
        write!(f, "{verb} {} {prep} set {}", self.address, self.set)
    }
}

/// Applies `changes` to the sets of `table`, in order, as one transaction: on any error none
/// is applied, and the error names the change the kernel refused (adding an element that is
/// there succeeds; deleting one that is not fails with ENOENT, as in nft).
pub fn change_elements(table: &str, changes: &[ElementChange]) -> Result<(), NetlinkError> {
    if changes.is_empty() {
        return Ok(());
    }
    let op = || format!("change the elements of table {table}");
    let mut conn = Conn::netfilter()?;
    let answers = conn
        .batch(batch(table, changes))
        .map_err(|e| NetlinkError::socket(op(), e))?;
    // answers[0] is the batch's begin, answers[1..=n] the changes, the last its end.
    for (i, a) in answers.into_iter().enumerate() {
        if let Some(Err(raw)) = a {
            let what = match i.checked_sub(1).and_then(|c| changes.get(c)) {
                Some(c) => format!("{c} of table {table}"),
                None => op(),
            };
            return Err(raw.into_error(what));
        }
    }
    Ok(())
}

/// The batch: begin, one acked message per change, end.
fn batch(table: &str, changes: &[ElementChange]) -> Vec<Vec<u8>> {
    let subsys = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    let mut msgs = vec![message(NFNL_MSG_BATCH_BEGIN, 0, NFPROTO_UNSPEC, subsys)];
    msgs.extend(changes.iter().map(|c| element_message(table, c)));
    msgs.push(message(NFNL_MSG_BATCH_END, 0, NFPROTO_UNSPEC, subsys));
    msgs
}

/// NEWSETELEM or DELSETELEM of one address (sequence number 0; the socket sets it).
fn element_message(table: &str, c: &ElementChange) -> Vec<u8> {
    let (family, key) = match c.address {
        IpAddr::V4(a) => (NFPROTO_IPV4, a.octets().to_vec()),
        IpAddr::V6(a) => (NFPROTO_IPV6, a.octets().to_vec()),
    };
    let (kind, flags) = if c.add {
        (NFT_MSG_NEWSETELEM, NLM_F_ACK | NLM_F_CREATE)
    } else {
        (NFT_MSG_DELSETELEM, NLM_F_ACK)
    };
    let ty = NFNL_SUBSYS_NFTABLES << 8 | kind;
    let mut m = message(ty, flags, family, [0, 0]);
    attr(&mut m, NFTA_SET_ELEM_LIST_TABLE, &c_string(table));
    attr(&mut m, NFTA_SET_ELEM_LIST_SET, &c_string(&c.set));
    let mut value = Vec::new();
    attr(&mut value, NFTA_DATA_VALUE, &key);
    let list = nest(NFTA_LIST_ELEM, &nest(NFTA_SET_ELEM_KEY, &value));
    attr(&mut m, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// A netlink header (length filled in by the caller when attributes follow) and nfgenmsg.
fn message(ty: u16, flags: u16, family: u8, res_id: [u8; 2]) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend(20u32.to_ne_bytes());
    m.extend(ty.to_ne_bytes());
    m.extend((NLM_F_REQUEST | flags).to_ne_bytes());
    m.extend([0; 8]); // sequence number and port id
    m.extend([family, NFNETLINK_V0, res_id[0], res_id[1]]);
    m
}

/// Appends one attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    out.extend(((4 + payload.len()) as u16).to_ne_bytes());
    out.extend(ty.to_ne_bytes());
    out.extend(payload);
    out.resize(align4(out.len()), 0);
}

/// A nested attribute on its own, to put into another.
fn nest(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    attr(&mut v, ty | NLA_F_NESTED, payload);
    v
}

fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

// The expected bytes are written out as a little-endian host lays them: lengths and types in
// host order, res_id and addresses in network order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_element_is_added_with_its_key_nested_three_deep() {
        let c = ElementChange {
            add: true,
            set: "s1".into(),
            address: "198.18.0.5".parse().unwrap(),
        };
        let m = element_message("t", &c);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            56, 0, 0, 0, 12, 10, 0x05, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, // NEWSETELEM, REQ|ACK|CREATE
            2, 0, 0, 0, // nfgenmsg: ip, v0, res_id 0
            6, 0, 1, 0, b't', 0, 0, 0, // table
            7, 0, 2, 0, b's', b'1', 0, 0, // set
            20, 0, 3, 0x80, // elements
            16, 0, 1, 0x80, // list elem
            12, 0, 1, 0x80, // key
            8, 0, 1, 0, 198, 18, 0, 5, // value
        ];
        assert_eq!(m, want);
    }

    #[test]
    fn an_ipv6_delete_is_acked_without_create_and_names_the_ip6_family() {
        let c = ElementChange {
            add: false,
            set: "s".into(),
            address: "2001:db8::1".parse().unwrap(),
        };
        let m = element_message("t", &c);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(&m[4..8], &[14, 10, 0x05, 0x00]);
        assert_eq!(m[16], NFPROTO_IPV6);
        let mut key = vec![20, 0, 1, 0];
        key.extend(
            "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        assert!(m.ends_with(&key));
    }

    #[test]
    fn a_batch_begins_and_ends_for_the_nftables_subsystem_in_network_order() {
        let changes = [ElementChange {
            add: true,
            set: "s".into(),
            address: "198.18.0.1".parse().unwrap(),
        }];
        let b = batch("t", &changes);
        assert_eq!(b.len(), 3);
        let begin: Vec<u8> = vec![
            20, 0, 0, 0, 16, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10,
        ];
        assert_eq!(b[0], begin);
        assert_eq!(&b[2][4..6], &[17, 0]);
        assert_eq!(&b[2][16..], &[0, 0, 0, 10]);
    }
}
