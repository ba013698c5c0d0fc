//! Statistics and markdown tables for the benchmark report: every comparison row carries
//! weft's figure, the baseline measured in the same run, their ratio, the target and whether
//! it is met.

use std::fmt::Write as _;

/// Median of a sample (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile (p in 0..=100): the smallest value with at least p % of the
/// sample at or below it. For 100 samples p99 is the second largest.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// A number with a sensible count of digits for a table.
pub fn num(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// How a figure is compared with its target.
#[derive(Clone, Copy)]
pub enum Target {
    AtMost(f64),
    Below(f64),
    AtLeast(f64),
    None,
    /// No target, said in words ("none in issue 23"): the row still stands in the summary,
    /// so a figure its issue asked for is not missing there.
    Unset(&'static str),
}

impl Target {
    pub fn text(&self, unit: &str) -> String {
        match self {
            Target::AtMost(t) => format!("≤ {}{unit}", num(*t)),
            Target::Below(t) => format!("< {}{unit}", num(*t)),
            Target::AtLeast(t) => format!("≥ {}{unit}", num(*t)),
            Target::None => "–".into(),
            Target::Unset(why) => why.to_string(),
        }
    }

    pub fn met(&self, x: f64) -> &'static str {
        let ok = match self {
            Target::AtMost(t) => x <= *t,
            Target::Below(t) => x < *t,
            Target::AtLeast(t) => x >= *t,
            Target::None | Target::Unset(_) => return "–",
        };
        if x.is_nan() {
            "not measured"
        } else if ok {
            "yes"
        } else {
            "**no**"
        }
    }
}

/// A markdown table with notes under it.
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The usual comparison layout.
    pub fn comparison(title: &str) -> Table {
        Table::new(
            title,
            &[
                "figure",
                "weft",
                "baseline",
                "weft / baseline",
                "target",
                "met?",
            ],
        )
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A comparison row; the target applies to `judged` (the figure or the ratio).
    #[allow(clippy::too_many_arguments)]
    pub fn compare(
        &mut self,
        figure: &str,
        weft: f64,
        baseline: Option<f64>,
        unit: &str,
        target: Target,
        target_on_ratio: bool,
    ) {
        let r = baseline.map(|b| ratio(weft, b)).unwrap_or(f64::NAN);
        let judged = if target_on_ratio { r } else { weft };
        let unit_t = if target_on_ratio { "" } else { unit };
        self.rows.push(vec![
            figure.into(),
            format!("{}{unit}", num(weft)),
            baseline
                .map(|b| format!("{}{unit}", num(b)))
                .unwrap_or_else(|| "–".into()),
            if r.is_nan() { "–".into() } else { num(r) },
            target.text(unit_t),
            target.met(judged).into(),
        ]);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn render(&self) -> String {
        let mut s = format!("### {}\n\n", self.title);
        let _ = writeln!(s, "| {} |", self.headers.join(" | "));
        let _ = writeln!(
            s,
            "|{}",
            self.headers.iter().map(|_| "---|").collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    pub fn print(&self) {
        println!("{}", self.render());
    }
}

/// Every row of `tables` that has a target (or says why it has none), in one table: the summary BENCHMARKS.md shows,
/// printed by the run itself so it is pasted whole and never goes stale. Each row names the
/// commit it was measured on.
pub fn summary(tables: &[Table], commit: &str) -> Table {
    let mut t = Table::new(
        &format!("Summary against the targets (commit {commit})"),
        &[
            "section",
            "figure",
            "target",
            "weft",
            "baseline (same run)",
            "ratio",
            "met?",
            "commit",
        ],
    );
    for table in tables {
        let section = table.title.split(':').next().unwrap_or(&table.title);
        for r in table.rows.iter().filter(|r| r.len() == 6 && r[4] != "–") {
            t.row(vec![
                section.to_string(),
                r[0].clone(),
                r[4].clone(),
                r[1].clone(),
                r[2].clone(),
                r[3].clone(),
                r[5].clone(),
                commit.to_string(),
            ]);
        }
    }
    t
}

/// The commit the benchmarked code is, as `git describe` names it (`-dirty` with changes).
pub fn commit() -> String {
    let out = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=7"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".into(),
    }
}

/// The machine, for the report's header.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {} GiB RAM, kernel {kernel}",
        mem_kb / (1024 * 1024)
    )
}

/// The 1-minute load average.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
