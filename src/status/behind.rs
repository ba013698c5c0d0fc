//! Which hosts do not run the network's newest config, and why, as their status records say:
//! what `weftctl status` lists (and fails on while the fleet disagrees) and `weftctl check`
//! says of one host.

use super::view::{Host, HostState};
use super::ConfigState;

/// Why a host whose record says `state` does not run revision `newest` of `<prefix>/config`;
/// None when it does.
pub fn why_behind(state: &ConfigState, newest: i64) -> Option<String> {
    if let Some(n) = &state.newer {
        return Some(format!(
            "runs revision {}, not {}: {}: {}",
            state.rev, n.rev, n.state, n.why
        ));
    }
    (state.rev < newest).then(|| {
        format!(
            "runs revision {}, not {newest}: has not reported the newer one yet (records are written at most every {} s)",
            state.rev,
            super::MIN_GAP.as_secs()
        )
    })
}

/// The live weft hosts (gone ones and hosts without a record aside) that do not run revision
/// `newest`, each with why. A record from a weft that does not report its revision counts
/// as behind: nobody can say what it runs.
pub fn behind(hosts: &[Host], newest: i64) -> Vec<(&Host, String)> {
    let live = |h: &&Host| matches!(h.state, HostState::Ready | HostState::NotReady);
    (hosts.iter().filter(live))
        .filter_map(|h| {
            let r = h.record.as_ref()?;
            let why = match &r.config {
                Some(c) => why_behind(c, newest)?,
                None => "does not report which config it runs (a weft from before that)".into(),
            };
            Some((h, why))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Newer;

    #[test]
    fn a_host_is_behind_when_it_says_so_or_reports_an_older_revision() {
        let at = |rev| ConfigState { rev, newer: None };
        assert_eq!(why_behind(&at(7), 7), None);
        assert!(why_behind(&at(5), 7)
            .unwrap()
            .starts_with("runs revision 5, not 7: has not"));
        let refused = ConfigState {
            rev: 5,
            newer: Some(Newer {
                rev: 7,
                state: "refused".into(),
                why: "Backend.VNI 1 → 2: peers would split".into(),
            }),
        };
        assert_eq!(
            why_behind(&refused, 7).unwrap(),
            "runs revision 5, not 7: refused: Backend.VNI 1 → 2: peers would split"
        );
    }
}
