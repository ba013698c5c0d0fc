//! Lease acquisition under a thundering herd: many agents start at once against one etcd
//! and each must end up holding a distinct subnet. The agents are weft's own store code
//! (`EtcdStore::acquire_lease`, what weftd runs at start-up), one etcd connection each, as
//! tokio tasks in this process. Baseline: the same number of clients each doing the least
//! any etcd allocator must (grant an etcd lease, create a key it was handed in advance).

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use weft::config::NetworkConfig;
use weft::store::EtcdStore;

use crate::report::{median, Table, Target};
use crate::rig::{delete_all_leases, etcd_client, free_subnets, ms, NsRuntime, PREFIX};
use testkit::etcd::Etcd;

pub struct Sizes {
    pub agents: usize,
    pub runs: usize,
}

const CONFIG: &str = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Unary gRPC requests etcd has answered, in total and per method, from its /metrics.
fn handled(etcd: &Etcd) -> (f64, Vec<(String, f64)>) {
    let mut s = std::net::TcpStream::connect(etcd.endpoint()).expect("connecting to etcd");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("asking for metrics");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("reading metrics");
    let mut total = 0.0;
    let mut by: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_handled_total{") else {
            continue;
        };
        if !rest.contains("grpc_type=\"unary\"") {
            continue;
        }
        let method = rest
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string();
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        total += v;
        match by.iter_mut().find(|(m, _)| *m == method) {
            Some((_, n)) => *n += v,
            None => by.push((method, v)),
        }
    }
    (total, by)
}

fn diff(a: &[(String, f64)], b: &[(String, f64)]) -> Vec<(String, f64)> {
    b.iter()
        .map(|(m, v)| {
            let before = a
                .iter()
                .find(|(x, _)| x == m)
                .map(|(_, n)| *n)
                .unwrap_or(0.0);
            (m.clone(), v - before)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

fn agent_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 8, 0)) + i as u32)
}

pub fn run(z: &Sizes) -> Vec<Table> {
    eprintln!("acquire: etcd");
    let etcd = Etcd::new();
    etcd.put(&format!("{PREFIX}/config"), CONFIG);
    let cfg = NetworkConfig::parse(CONFIG).expect("config");
    let rt = NsRuntime::new(None, 2);
    let url = etcd.client_url();
    let u = url.clone();
    let client = rt.run(async move { etcd_client(&u).await });

    let (mut times, mut trips, mut base_times, mut base_trips) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut methods = Vec::new();
    let mut distinct_all = true;
    let mut failures = 0usize;
    for run in 0..z.runs {
        let c = client.clone();
        rt.run(async move { delete_all_leases(&c).await });
        let opts = etcd.options();
        let n = z.agents;
        let stores: Vec<EtcdStore> = rt.run(async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let o = opts.clone();
                set.spawn(async move { EtcdStore::connect(&o).await.expect("connecting") });
            }
            let mut v = Vec::new();
            while let Some(s) = set.join_next().await {
                v.push(s.expect("connect task"));
            }
            v
        });
        let (before, by0) = handled(&etcd);
        let cfg2 = cfg.clone();
        let (took, results) = rt.run(async move {
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n + 1));
            let mut set = tokio::task::JoinSet::new();
            for (i, store) in stores.into_iter().enumerate() {
                let (cfg, b) = (cfg2.clone(), barrier.clone());
                set.spawn(async move {
                    let attrs = weft::backend::vxlan::lease_attrs(
                        agent_ip(i),
                        1,
                        &format!("0e:42:00:00:{:02x}:{:02x}", i >> 8, i & 0xff),
                    );
                    b.wait().await;
                    store
                        .acquire_lease(&cfg, &attrs, None, Duration::from_secs(86_400))
                        .await
                        .map(|l| l.subnet)
                        .map_err(|e| e.to_string())
                });
            }
            barrier.wait().await;
            let t0 = Instant::now();
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.expect("agent task"));
            }
            (t0.elapsed(), out)
        });
        let (after, by1) = handled(&etcd);
        let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let distinct: HashSet<_> = ok.iter().collect();
        failures += results.len() - ok.len();
        if distinct.len() != n {
            distinct_all = false;
            if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                eprintln!("acquire: an agent failed: {e}");
            }
        }
        times.push(ms(took));
        trips.push((after - before) / n as f64);
        methods = diff(&by0, &by1);

        // Baseline: grant + create-if-absent on a subnet handed out in advance.
        let c = client.clone();
        rt.run(async move { delete_all_leases(&c).await });
        let subnets = free_subnets(24, &[], n);
        let u = url.clone();
        let clients = rt.run(async move {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(etcd_client(&u).await);
            }
            v
        });
        let (b0, _) = handled(&etcd);
        let took = rt.run(async move {
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n + 1));
            let mut set = tokio::task::JoinSet::new();
            for (i, mut c) in clients.into_iter().enumerate() {
                let b = barrier.clone();
                let key = format!(
                    "{PREFIX}/subnets/{}",
                    weft::subnet::lease_key_name(subnets[i], None)
                );
                let value = weft::backend::vxlan::lease_attrs(agent_ip(i), 1, "0e:43:00:00:00:01")
                    .to_json();
                set.spawn(async move {
                    b.wait().await;
                    let id = c.lease_grant(86_400, None).await.expect("grant").id();
                    let txn = Txn::new()
                        .when(vec![Compare::version(key.as_str(), CompareOp::Equal, 0)])
                        .and_then(vec![TxnOp::put(
                            key.as_str(),
                            value,
                            Some(PutOptions::new().with_lease(id)),
                        )]);
                    assert!(c.txn(txn).await.expect("txn").succeeded());
                });
            }
            barrier.wait().await;
            let t0 = Instant::now();
            while let Some(r) = set.join_next().await {
                r.expect("baseline client");
            }
            t0.elapsed()
        });
        let (b1, _) = handled(&etcd);
        base_times.push(ms(took));
        base_trips.push((b1 - b0) / n as f64);
        eprintln!(
            "acquire run {}: {} agents in {:.0} ms, {:.2} etcd requests each, {} distinct; baseline {:.0} ms",
            run + 1,
            n,
            times[run],
            trips[run],
            distinct.len(),
            base_times[run]
        );
    }

    let mut t = Table::comparison(&format!(
        "3. Lease acquisition: {} agents start at once against one etcd (× {} runs)",
        z.agents, z.runs
    ));
    t.compare(
        "time until all hold a subnet",
        median(&times),
        Some(median(&base_times)),
        " ms",
        Target::AtMost(5000.0),
        false,
    );
    t.compare(
        "etcd requests per acquisition",
        median(&trips),
        Some(median(&base_trips)),
        "",
        Target::None,
        false,
    );
    t.row(vec![
        "all subnets distinct, no agent failed".into(),
        if distinct_all && failures == 0 {
            "yes"
        } else {
            "**no**"
        }
        .into(),
        "yes".into(),
        "–".into(),
        "all distinct".into(),
        if distinct_all && failures == 0 {
            "yes"
        } else {
            "**no**"
        }
        .into(),
    ]);
    let per_method: Vec<String> = methods
        .iter()
        .map(|(m, d)| format!("{m} {:.2}", d / z.agents as f64))
        .collect();
    t.note(format!(
        "Agents: {} tokio tasks in the bench process, each with its own `EtcdStore` (own gRPC connection, connected before the clock starts), released together by a barrier; each calls `acquire_lease` with its own PublicIP, as weftd does at start-up. Network 198.19.0.0/16 with /24 subnets (255 free). Time: barrier release → the last agent holds its lease.",
        z.agents
    ));
    t.note(format!(
        "etcd requests: the rise of etcd's own `grpc_server_handled_total` (unary calls) from its /metrics across the acquisition, divided by the number of agents. Last run, per agent by method: {}.",
        per_method.join(", ")
    ));
    t.note("Baseline: the same number of plain etcd clients, each granting an etcd lease and creating (txn, version = 0) a key for a subnet handed to it in advance: 2 requests, no listing, no contention; the floor of any allocator on etcd.");
    vec![t]
}
