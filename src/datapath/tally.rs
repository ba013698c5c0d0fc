//! What one apply did that an operator should read, in one line per kind however many
//! objects it touched: a deleted device brings back thousands of routes in one pass, and the
//! log says so once, with a count and a few of them.

/// Objects named in one line; the others are counted.
const NAMED: usize = 5;

#[derive(Default)]
pub(super) struct Tally {
    repaired: Vec<String>,
    removed: Vec<String>,
    failed: Vec<String>,
}

impl Tally {
    /// An object put back as the last applied state had it.
    pub fn repaired(&mut self, object: String) {
        self.repaired.push(object);
    }

    /// An object removed that no lease calls for.
    pub fn removed(&mut self, object: String) {
        self.removed.push(object);
    }

    /// A request the kernel refused, with why.
    pub fn failed(&mut self, object: String, error: &dyn std::fmt::Display) {
        self.failed.push(format!("{object}: {error}"));
    }

    /// Objects repaired (put back and removed).
    pub fn repairs(&self) -> u64 {
        (self.repaired.len() + self.removed.len()) as u64
    }

    pub fn any_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// One line per kind that happened; `device` names the tunnel device, if any.
    pub fn log(&self, device: Option<&str>) {
        let some = |v: &[String]| crate::logging::some_of(v, NAMED);
        if let [object] = self.repaired.as_slice() {
            tracing::info!(device, %object, "drift repaired");
        } else if !self.repaired.is_empty() {
            let count = self.repaired.len();
            let objects = some(&self.repaired);
            tracing::info!(
                device,
                count,
                objects,
                "drift repaired: {count} objects put back"
            );
        }
        if !self.removed.is_empty() {
            let count = self.removed.len();
            let objects = some(&self.removed);
            tracing::info!(
                device,
                count,
                objects,
                "drift repaired: removed {count} that no lease calls for"
            );
        }
        if !self.failed.is_empty() {
            let count = self.failed.len();
            let errors = some(&self.failed);
            tracing::warn!(
                device,
                count,
                errors,
                "{count} netlink requests failed; will retry"
            );
        }
    }
}
