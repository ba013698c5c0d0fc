//! VERSION: the spec versions weft speaks, answered in the version asked when it is one of
//! them. Runtimes call it with dummy CNI_* values, so nothing else is looked at.

use serde_json::{json, Value};

use crate::config::{asked_version, decode};
use crate::error::Result;
use crate::version::{Version, SUPPORTED};

pub fn run(stdin: &[u8]) -> Result<Value> {
    let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        asked_version(&decode(stdin)?).and_then(Version::parse)
    };
    let version = asked.unwrap_or(Version::LATEST);
    Ok(json!({
        "cniVersion": version.as_str(),
        "supportedVersions": SUPPORTED.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    }))
}
