//! weftd: the weft host agent. Flags mirror flanneld's where flannel has the same knob; each
//! can also be set as WEFTD_<FLAG> (e.g. WEFTD_IFACE, WEFTD_IP_MASQ).

// No function over 80 lines (clippy.toml); CI runs clippy with -D warnings.
#![warn(clippy::too_many_lines)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use weft::agent::{self, AgentConfig};
use weft::iface::IfaceSelect;
use weft::logging;
use weft::probe::ProbeArgs;
use weft::store::EtcdOptions;

#[derive(Parser, Debug)]
#[command(
    name = "weftd",
    version,
    about = "weft host agent: leases this host's subnet from etcd and keeps the overlay's routes, neighbours and FDB entries in the kernel equal to every host's lease",
    after_help = "Every flag can also be set through the environment variable shown with it, e.g. in /etc/default/weftd. \
Stopping weftd leaves the datapath in place; the next start adopts it, and so does a first start on a host flanneld set up."
)]
struct Args {
    #[command(flatten)]
    etcd: EtcdOptions,

    #[command(flatten)]
    select: IfaceSelect,

    #[command(flatten)]
    probe: ProbeArgs,

    /// Where to write subnet.env (network, this host's subnet, MTU), which the CNI plugin
    /// reads.
    #[arg(
        long,
        env = "WEFTD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: PathBuf,

    /// Renew the lease this many minutes before it expires, at most half of
    /// --subnet-lease-ttl (so a short TTL alone works: 30m renews 15 minutes before expiry).
    #[arg(long, env = "WEFTD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60)]
    subnet_lease_renew_margin: u64,

    /// Lease time to live (e.g. 24h, 90s): how long a dead host keeps its subnet.
    #[arg(long, env = "WEFTD_SUBNET_LEASE_TTL", default_value = "24h", value_parser = weft::duration::parse)]
    subnet_lease_ttl: Duration,

    /// Time to live of this host's status record (<prefix>/weft/status/...): a host silent
    /// for longer (dead, or cut off from etcd) is shown gone. At least 3s.
    #[arg(long, env = "WEFTD_STATUS_TTL", default_value = "15s", value_parser = parse_status_ttl)]
    status_ttl: Duration,

    /// Masquerade traffic from the overlay to destinations outside it (nftables table
    /// `ip weft`). `--ip-masq` alone means true.
    #[arg(long, env = "WEFTD_IP_MASQ", num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    ip_masq: bool,

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "WEFTD_HEALTHZ_IP", default_value = "0.0.0.0")]
    healthz_ip: IpAddr,

    /// Port for /healthz, /readyz and /metrics; 0 turns the endpoint off.
    #[arg(long, env = "WEFTD_HEALTHZ_PORT", default_value_t = 0)]
    healthz_port: u16,

    /// Compare the whole kernel state with the leases this often, besides reacting to
    /// events (e.g. 30s).
    #[arg(long, env = "WEFTD_RESYNC_INTERVAL", default_value = "30s", value_parser = weft::duration::parse)]
    resync_interval: Duration,

    /// Read the WireGuard peers back this often and mend any that differ from the leases:
    /// WireGuard reports no changes, so this bounds how long a peer removed or changed by
    /// hand stays wrong.
    #[arg(long, env = "WEFTD_TUNNEL_POLL", default_value = "1s", value_parser = weft::duration::parse)]
    tunnel_poll: Duration,

    /// Name of the VXLAN device (vxlan backend only). Default: flannel.<VNI>, as flannel
    /// names it, so a host moved from flanneld keeps its device.
    #[arg(long, env = "WEFTD_VXLAN_DEVICE")]
    vxlan_device: Option<String>,

    /// Log format.
    #[arg(long, env = "WEFTD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Log level or filter (e.g. info, debug, weft=debug).
    #[arg(long, env = "WEFTD_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// Print weftd's manual page (roff, section 8) made from these flags, and exit: how the
    /// package's weftd(8) is made, so it never disagrees with --help.
    #[arg(long, hide = true)]
    man_page: bool,
}

fn parse_status_ttl(s: &str) -> Result<Duration, String> {
    let d = weft::duration::parse(s)?;
    if d < Duration::from_secs(3) {
        return Err(format!(
            "{s:?}: must be at least 3s (a keep-alive goes out every third of it)"
        ));
    }
    Ok(d)
}

/// weftd(8), from the flags above (clap_mangen), on standard output.
fn print_man_page() -> std::process::ExitCode {
    use clap::CommandFactory;
    let page = clap_mangen::Man::new(Args::command()).section("8");
    match page.render(&mut std::io::stdout().lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftd: writing the manual page: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether stderr is the journal stream systemd connected (JOURNAL_STREAM names its device and
/// inode; a child that inherited the variable but writes elsewhere does not match).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

fn main() -> std::process::ExitCode {
    // One malloc arena per thread would let each of weftd's threads keep its own high-water
    // mark of freed memory; two arenas keep the resident size close to what is in use.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let args = Args::parse();
    if args.man_page {
        return print_man_page();
    }
    // SAFETY: no other thread exists yet. The password now lives in `args` only.
    unsafe { weft::environ::forget(weft::environ::SECRETS) };
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = if args.log_format == "json" {
        logging::Format::Json
    } else if stderr_is_journal() {
        logging::Format::TextUntimed
    } else {
        logging::Format::Text
    };
    logging::init(filter, format);
    let probe = match args.probe.config() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weftd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cfg = AgentConfig {
        probe,
        etcd: args.etcd,
        select: args.select,
        subnet_file: args.subnet_file,
        lease_ttl: args.subnet_lease_ttl,
        status_ttl: args.status_ttl,
        renew_margin: Duration::from_secs(args.subnet_lease_renew_margin * 60),
        ip_masq: args.ip_masq,
        healthz: (args.healthz_port != 0)
            .then(|| SocketAddr::new(args.healthz_ip, args.healthz_port)),
        resync: args.resync_interval,
        tunnel_poll: args.tunnel_poll,
        vxlan_device: args.vxlan_device,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weftd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("weftd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
