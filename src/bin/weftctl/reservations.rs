//! `weftctl reservations`: subnets pinned to a PublicIP, which never expire.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use clap::Subcommand;
use ipnet::Ipv6Net;
use weft::store::EtcdStore;
use weft::subnet::parse_subnet;

use super::{leases, Format};

#[derive(Subcommand, Debug)]
pub enum ReservationsCmd {
    /// All reservations, sorted by subnet.
    List,
    /// Reserve SUBNET for the host with PUBLIC_IP.
    Add {
        subnet: String,
        public_ip: Ipv4Addr,
        /// Also reserve this IPv6 subnet (dual stack); needs --public-ipv6.
        #[arg(long, requires = "public_ipv6")]
        ipv6_subnet: Option<Ipv6Net>,
        /// The host's public IPv6 address, with --ipv6-subnet.
        #[arg(long, requires = "ipv6_subnet")]
        public_ipv6: Option<Ipv6Addr>,
    },
    /// Remove a reservation.
    Remove { subnet: String },
}

pub async fn run(store: &EtcdStore, out: Format, cmd: ReservationsCmd) -> Result<()> {
    match cmd {
        ReservationsCmd::List => leases::list(store, out, true, false).await,
        ReservationsCmd::Add {
            subnet,
            public_ip,
            ipv6_subnet,
            public_ipv6,
        } => {
            let sn = parse_subnet(&subnet)?;
            let v6 = ipv6_subnet.zip(public_ipv6);
            if let Some((s6, _)) = v6.filter(|(s6, _)| s6.trunc() != *s6) {
                bail!("--ipv6-subnet {s6}: not a subnet address (host bits are set)");
            }
            store.add_reservation(sn, public_ip, v6).await?;
            match v6 {
                Some((s6, ip6)) => say!("reserved {sn} and {s6} for {public_ip} and {ip6}"),
                None => say!("reserved {sn} for {public_ip}"),
            }
            Ok(())
        }
        ReservationsCmd::Remove { subnet } => {
            let sn = parse_subnet(&subnet)?;
            if !store.remove_reservation(sn).await? {
                bail!("no reservation for {sn}");
            }
            say!("removed the reservation of {sn}");
            Ok(())
        }
    }
}
