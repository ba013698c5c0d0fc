//! The CNI spec versions the plugin speaks, and which commands each of them allows.
//! A request is answered in the version it asked for; anything else is error code 1.

use crate::error::{code, CniError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

impl Version {
    pub const LATEST: Version = Version::V1_1_0;

    pub fn parse(s: &str) -> Option<Version> {
        SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// The version a request asked for, or error code 1 naming it.
    pub fn require(asked: Option<&str>) -> Result<Version, CniError> {
        let supported = || {
            SUPPORTED
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match asked {
            Some(s) => Version::parse(s).ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "cniVersion {s:?} is not supported (weft supports {})",
                        supported()
                    ),
                )
            }),
            // Runtimes read a missing cniVersion as 0.1.0, which predates the result weft writes.
            None => Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "the network config has no cniVersion (weft supports {})",
                    supported()
                ),
            )),
        }
    }

    /// CHECK exists from 0.4.0 on, GC and STATUS from 1.1.0 on; an older config asking for them
    /// is refused as the reference plugins do.
    pub fn allows(self, command: &str) -> Result<(), CniError> {
        let since = match command {
            "CHECK" => Version::V0_4_0,
            "GC" | "STATUS" => Version::V1_1_0,
            _ => return Ok(()),
        };
        if self < since {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {} does not have {command}; it needs {} or newer",
                    self.as_str(),
                    since.as_str()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_supported_versions() {
        for v in SUPPORTED {
            assert_eq!(Version::parse(v.as_str()), Some(v));
        }
        assert_eq!(Version::parse("0.2.0"), None);
        let err = Version::require(Some("2.0.0")).unwrap_err();
        assert_eq!(err.code, 1);
        assert!(err.msg.contains("\"2.0.0\""), "{err}");
        assert_eq!(Version::require(None).unwrap_err().code, 1);
    }

    #[test]
    fn commands_need_their_version() {
        assert!(Version::V0_3_1.allows("CHECK").is_err());
        assert!(Version::V0_4_0.allows("CHECK").is_ok());
        assert!(Version::V1_0_0.allows("GC").is_err());
        assert!(Version::V1_1_0.allows("STATUS").is_ok());
        assert!(Version::V0_3_0.allows("ADD").is_ok());
    }
}
