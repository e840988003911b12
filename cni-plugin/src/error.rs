//! CNI errors: the spec's numeric codes plus a message naming what was wrong.
//! Printed as the spec's error JSON on stdout; the process exits non-zero.
use serde_json::json;

/// Error codes from the CNI spec (1.1.0, "Error" section). 100+ are plugin-specific.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// CHECK found the container's network differs from prevResult.
    pub const CHECK_MISMATCH: u32 = 100;
    /// The agent refused or failed the request.
    pub const AGENT_ERROR: u32 = 101;
    /// Wiring the pod's interface failed.
    pub const WIRING_FAILED: u32 = 102;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's error object.
    #[must_use]
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

pub type Result<T> = std::result::Result<T, CniError>;
