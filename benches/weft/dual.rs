//! Dual stack: TCP throughput and ping latency over weft's IPv6 VXLAN next to a `flannel-v6`
//! pair built by hand with iproute2 in the same two hosts, and how long a dual-stack join takes
//! to reach every host's kernel (both families) next to an IPv4-only join in the same lab.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft::netlink::{format_mac, Family, Netlink};
use weft::subnet::lease_key_name;

use crate::datapath::{iperf, iperf_server, ping};
use crate::report::{max, median, percentile, Table, Target};
use crate::rig::{etcd_client, ms, start_lab, NsRuntime, PREFIX};
use testkit::lab::Lab;
use testkit::lab6::DUAL_CONFIG;
use testkit::netns::Netns;

pub struct Sizes {
    pub secs: u32,
    pub reps: usize,
    pub pings: u32,
    /// Hosts in the convergence lab, and joins of each kind measured there.
    pub hosts: usize,
    pub joins: usize,
}

/// flannel's IPv6 VXLAN by hand in both hosts: `hvx6` (VNI 43, port 8474, nolearning, the
/// kernel's largest MTU over an IPv6 lower device: external less 70) with the subnet's
/// address/128, a bridge `hbr6` with ::1/64 as the container address, and per peer the onlink
/// route, permanent neighbour and FDB entry to its IPv6 underlay address.
fn hand_vxlan6(a: (&Netns, Ipv6Addr), b: (&Netns, Ipv6Addr)) -> (String, String) {
    let subnets: [Ipv6Net; 2] = [
        "2001:db8:200::/64".parse().expect("literal"),
        "2001:db8:201::/64".parse().expect("literal"),
    ];
    let container = |s: &Ipv6Net| Ipv6Addr::from(u128::from(s.network()) + 1);
    let mut macs = Vec::new();
    for ((ns, local), sn) in [a, b].iter().zip(&subnets) {
        let local = local.to_string();
        ns.ip(&[
            "link",
            "add",
            "hvx6",
            "type",
            "vxlan",
            "id",
            "43",
            "local",
            &local,
            "dev",
            "eth0",
            "dstport",
            "8474",
            "nolearning",
        ]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/128", sn.network()),
            "dev",
            "hvx6",
            "nodad",
        ]);
        ns.ip(&["link", "set", "hvx6", "up"]);
        ns.ip(&["link", "add", "hbr6", "type", "bridge"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", container(sn)),
            "dev",
            "hbr6",
            "nodad",
        ]);
        ns.ip(&["link", "set", "hbr6", "up"]);
        macs.push(ns.mac_of("hvx6"));
    }
    for (i, (ns, _)) in [a, b].iter().enumerate() {
        let (peer, (_, peer_ip)) = (1 - i, [a, b][1 - i]);
        let gw = subnets[peer].network().to_string();
        let mac = &macs[peer];
        ns.ip(&[
            "neigh",
            "add",
            &gw,
            "lladdr",
            mac,
            "dev",
            "hvx6",
            "nud",
            "permanent",
        ]);
        ns.bridge(&[
            "fdb",
            "add",
            mac,
            "dev",
            "hvx6",
            "dst",
            &peer_ip.to_string(),
        ]);
        ns.ip(&[
            "route",
            "add",
            &subnets[peer].to_string(),
            "via",
            &gw,
            "dev",
            "hvx6",
            "onlink",
        ]);
    }
    (
        container(&subnets[0]).to_string(),
        container(&subnets[1]).to_string(),
    )
}

fn throughput(z: &Sizes) -> Vec<Table> {
    eprintln!("dual: two dual-stack hosts");
    let lab = Lab::dual(2, DUAL_CONFIG);
    let _weftds = start_lab(&lab, &[]);
    lab.wait_converged6(&[0, 1]);
    for h in &lab.hosts {
        h.add_container6();
    }
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let (hand_a, hand_b) = hand_vxlan6((&h1.ns, h1.ip6()), (&h2.ns, h2.ip6()));
    for dev in ["flannel-v6.1", "hvx6"] {
        eprintln!(
            "dual: {}",
            h1.ns.ip(&["-d", "-o", "link", "show", dev]).trim()
        );
    }
    let _server = iperf_server(&h2.ns);
    let paths = [
        (
            "weft VXLAN over IPv6",
            h1.container_ip6().to_string(),
            h2.container_ip6().to_string(),
        ),
        ("hand-made flannel-v6 VXLAN (iproute2)", hand_a, hand_b),
    ];
    for (name, src, dst) in &paths {
        let ok = crate::rig::poll(Duration::from_secs(5), Duration::from_millis(100), || {
            h1.ns
                .exec(&["ping", "-c1", "-W1", "-I", src, dst])
                .status
                .success()
                .then_some(())
        });
        assert!(ok.is_some(), "{name}: {src} cannot reach {dst}");
    }
    let mut m: Vec<[Vec<f64>; 3]> = paths.iter().map(|_| Default::default()).collect();
    for rep in 0..z.reps {
        for k in 0..paths.len() {
            let i = (k + rep) % paths.len();
            let (name, src, dst) = &paths[i];
            m[i][0].push(iperf(&h1.ns, src, dst, 1, z.secs));
            m[i][1].push(iperf(&h1.ns, src, dst, 8, z.secs));
            m[i][2].push(ping(&h1.ns, src, dst, z.pings));
            eprintln!(
                "dual rep {} {name}: {:.2} / {:.2} Gbit/s, ping {:.3} ms",
                rep + 1,
                m[i][0][rep],
                m[i][1][rep],
                m[i][2][rep]
            );
        }
    }
    let med = |i: usize, j: usize| median(&m[i][j]);
    let mut t = Table::new(
        &format!(
            "7. IPv6 datapath: two hosts, {} s iperf3 runs and {} pings (× {} repetitions)",
            z.secs, z.pings, z.reps
        ),
        &["path", "TCP 1 stream", "TCP 8 streams", "ping RTT"],
    );
    for (i, (name, _, _)) in paths.iter().enumerate() {
        t.row(vec![
            (*name).into(),
            format!("{:.2} Gbit/s", med(i, 0)),
            format!("{:.2} Gbit/s", med(i, 1)),
            format!("{:.3} ms", med(i, 2)),
        ]);
    }
    t.note("Both tunnels run over the IPv6 underlay (2001:db8::/64) between the same two hosts, at the same MTU (1430, external less 70); the hand-made pair uses VNI 43, port 8474 and 2001:db8:200::/64, 2001:db8:201::/64. Paths alternate order each repetition; medians; iperf3's received rate.");
    let mut c = Table::comparison("7. IPv6 datapath: weft against the hand-made flannel-v6 pair");
    for (figure, j, target) in [
        ("TCP 1 stream", 0, Target::AtLeast(0.97)),
        ("TCP 8 streams", 1, Target::AtLeast(0.97)),
        ("ping RTT", 2, Target::None),
    ] {
        let unit = if j == 2 { " ms" } else { " Gbit/s" };
        c.compare(figure, med(0, j), Some(med(1, j)), unit, target, true);
    }
    vec![t, c]
}

/// A remote host's lease for the join measurement: IPv4 only, or dual stack.
struct Join {
    subnet: Ipv4Net,
    subnet6: Option<Ipv6Net>,
    key: String,
    value: String,
}

fn join(n: u32, dual: bool) -> Join {
    let subnet = Ipv4Net::new(Ipv4Addr::new(198, 19, 200 + (n % 50) as u8, 0), 24).expect("/24");
    let subnet6 = dual.then(|| {
        Ipv6Net::new(
            Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0xe000 + n as u16, 0, 0, 0, 0),
            64,
        )
        .expect("/64")
    });
    let mac = |tag: u8| format_mac(&[0x0e, tag, 0, 0, (n >> 8) as u8, n as u8]);
    let mut attrs =
        weft::backend::vxlan::lease_attrs(Ipv4Addr::new(198, 18, 64, n as u8), 1, &mac(0x64));
    if dual {
        attrs.public_ipv6 = Some(Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, n as u16 + 1));
        attrs.backend_v6_data =
            weft::backend::vxlan::lease_attrs(Ipv4Addr::UNSPECIFIED, 1, &mac(0x66)).backend_data;
    }
    Join {
        subnet,
        subnet6,
        key: format!("{PREFIX}/subnets/{}", lease_key_name(subnet, subnet6)),
        value: attrs.to_json(),
    }
}

/// Whether `nl`'s kernel routes to every subnet of `j` (`present`), or to none.
fn programmed(nl: &mut Netlink, j: &Join, present: bool) -> bool {
    let mut want: Vec<IpNet> = vec![j.subnet.into()];
    want.extend(j.subnet6.map(IpNet::V6));
    want.iter().all(|dst| {
        let family = if dst.addr().is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        let routes = nl.routes(family).expect("dumping routes");
        routes.iter().any(|r| r.dst == *dst) == present
    })
}

fn convergence(z: &Sizes) -> Vec<Table> {
    eprintln!("dual: {} dual-stack hosts for joins", z.hosts);
    let lab = Lab::dual(z.hosts, DUAL_CONFIG);
    let _weftds = start_lab(&lab, &[]);
    let all: Vec<usize> = (0..z.hosts).collect();
    lab.wait_converged6(&all);
    // One netlink socket per host, opened inside its namespace (a socket stays where it was
    // made, whichever thread reads it).
    let mut sockets: Vec<Netlink> = lab
        .hosts
        .iter()
        .map(|h| {
            weft::netlink::run_in_netns(&h.ns.path(), Netlink::new)
                .expect("entering a host")
                .expect("a netlink socket")
        })
        .collect();
    let rt = NsRuntime::new(Some(&lab.underlay.path()), 1);
    let url = lab.etcd.client_url();
    let client = rt.run(async move { etcd_client(&url).await });
    // [v4 only, dual stack]: the slowest host of each join, in ms.
    let mut took: [Vec<f64>; 2] = Default::default();
    for n in 0..(2 * z.joins as u32) {
        let dual = n % 2 == 1;
        let j = join(n, dual);
        let mut c = client.clone();
        let (key, value) = (j.key.clone(), j.value.clone());
        let t0 = Instant::now();
        let id = rt.run(async move {
            let id = c.lease_grant(3600, None).await.expect("granting").id();
            let opts = etcd_client::PutOptions::new().with_lease(id);
            c.put(key, value, Some(opts))
                .await
                .expect("writing the lease");
            id
        });
        for nl in sockets.iter_mut() {
            let ok = crate::rig::poll(Duration::from_secs(10), Duration::from_micros(500), || {
                programmed(nl, &j, true).then_some(())
            });
            assert!(ok.is_some(), "join {n} not programmed within 10 s");
        }
        took[dual as usize].push(ms(t0.elapsed()));
        let mut c = client.clone();
        rt.run(async move { c.lease_revoke(id).await.expect("revoking") });
        for nl in sockets.iter_mut() {
            let gone = crate::rig::poll(Duration::from_secs(10), Duration::from_millis(1), || {
                programmed(nl, &j, false).then_some(())
            });
            assert!(gone.is_some(), "join {n} not removed within 10 s");
        }
    }
    let mut t = Table::comparison(&format!(
        "8. Dual-stack join: {} hosts, {} joins of each kind, time until every host routes to every subnet of the new lease",
        z.hosts, z.joins
    ));
    for (figure, p) in [("p50", 50.0), ("p99", 99.0)] {
        t.compare(
            &format!("join {figure}, dual stack vs IPv4 only"),
            percentile(&took[1], p),
            Some(percentile(&took[0], p)),
            " ms",
            Target::None,
            false,
        );
    }
    t.compare(
        "join max, dual stack vs IPv4 only",
        max(&took[1]),
        Some(max(&took[0])),
        " ms",
        Target::None,
        false,
    );
    t.note("Start: before the etcd lease grant and put of the new key (one client round trip each). End: every host's kernel, polled every 0.5 ms through a netlink route dump in its namespace, holds the IPv4 route (and, for a dual-stack lease, the IPv6 route). Joins alternate between the two kinds in one lab; each is revoked and seen gone before the next.");
    vec![t]
}

pub fn run(z: &Sizes) -> Vec<Table> {
    let mut out = throughput(z);
    out.extend(convergence(z));
    out
}
