//! The plugin's one error type: a CNI error code, a message naming the bad value, and details.
//! Every failure on every path ends as one of these, printed as the spec's error JSON on stdout.

use std::fmt;

/// Codes reserved by the CNI spec (SPEC.md, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;

    // weft's own codes (100 and up are free for plugins).
    /// Every address of the host's subnet is reserved.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// The requested address is outside the subnet, the gateway, or already taken.
    pub const ADDRESS_UNAVAILABLE: u32 = 101;
    /// The attachment (container, interface) already exists.
    pub const ATTACHMENT_EXISTS: u32 = 102;
    /// A kernel operation (netlink, namespaces) failed.
    pub const KERNEL: u32 = 103;
    /// subnet.env exists but cannot be used.
    pub const SUBNET_ENV: u32 = 104;
    /// CHECK found the container's network different from what ADD made.
    pub const CHECK_FAILED: u32 = 105;
    /// The plugin's state on disk cannot be read or written.
    pub const STORE: u32 = 106;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn env(msg: impl Into<String>) -> CniError {
        CniError::new(code::INVALID_ENV, msg)
    }

    pub fn config(msg: impl Into<String>) -> CniError {
        CniError::new(code::INVALID_CONFIG, msg)
    }

    pub fn kernel(msg: impl Into<String>) -> CniError {
        CniError::new(code::KERNEL, msg)
    }

    pub fn store(msg: impl Into<String>) -> CniError {
        CniError::new(code::STORE, msg)
    }

    /// The error as the spec's JSON object, in the protocol version in use.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub type Result<T> = std::result::Result<T, CniError>;
