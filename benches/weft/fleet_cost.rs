//! What a join, a death and a half/half partition cost etcd at 10, 100 and 1,000 hosts, for
//! weft and for flannel's etcd mode: light hosts (testkit's fleet: weftd's own lease, watch
//! and status code, no namespaces) against one real etcd, counted by etcd itself. The
//! flannel fleet runs the same lease and watch code without status records, which is what a
//! flanneld does to etcd: one lease key per host, one watch of the leases.

use testkit::fleet::{measure, Cost, Costs};

use crate::report::Table;

pub struct Sizes {
    pub hosts: Vec<u16>,
}

pub fn run(z: &Sizes) -> Vec<Table> {
    raise_open_files();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut rows = Vec::new();
    for &n in &z.hosts {
        eprintln!("fleet-cost: {n} weft hosts");
        let weft = rt.block_on(measure(n, true));
        eprintln!("fleet-cost: {n} flannel-like hosts");
        let flannel = rt.block_on(measure(n, false));
        rows.push((n, weft, flannel));
    }
    let events: [(&str, Pick); 3] = [
        ("one host joins", |c| c.join),
        ("one host dies", |c| c.death),
        ("the fleet is cut in two halves", |c| c.partition),
    ];
    let mut tables: Vec<Table> = events.iter().map(|(e, f)| table(e, *f, &rows)).collect();
    let mut sizes = Table::new(
        "Fleet cost: the largest status record after the partition",
        &["hosts", "weft: bytes", "flannel"],
    );
    for (n, w, _) in &rows {
        sizes.row(vec![
            n.to_string(),
            w.largest_record.to_string(),
            "no record".into(),
        ]);
    }
    tables.push(sizes);
    tables
}

/// One event's cost out of a fleet's.
type Pick = fn(&Costs) -> Cost;

fn table(event: &str, pick: Pick, rows: &[(u16, Costs, Costs)]) -> Table {
    let mut t = Table::new(
        &format!("Fleet cost: {event}"),
        &[
            "hosts",
            "weft: requests to etcd",
            "weft: watch messages delivered",
            "weft: bytes to / from etcd",
            "flannel: requests",
            "flannel: messages delivered",
            "flannel: bytes to / from etcd",
        ],
    );
    for (n, w, f) in rows {
        let (w, f) = (pick(w), pick(f));
        t.row(vec![
            n.to_string(),
            w.requests.to_string(),
            w.delivered.to_string(),
            format!("{} / {}", w.bytes_in, w.bytes_out),
            f.requests.to_string(),
            f.delivered.to_string(),
            format!("{} / {}", f.bytes_in, f.bytes_out),
        ]);
    }
    t.note("Counted by etcd itself: requests are the gRPC messages it received (keep-alives of etcd leases left out: they are periodic, not caused by the event), messages delivered are the watch responses it sent, bytes are its client gRPC byte counters, each read before and after the event.");
    t
}

/// A thousand light hosts hold a thousand etcd connections, and etcd as many.
fn raise_open_files() {
    let want = libc::rlimit {
        rlim_cur: 65_536,
        rlim_max: 65_536,
    };
    // SAFETY: setrlimit with a valid struct; a failure leaves the old limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        eprintln!(
            "fleet-cost: cannot raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
}
