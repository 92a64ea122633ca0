//! Typed errors: a caller can tell "TCB out of date" from "bad signature" from "collateral
//! expired" without reading strings.

use thiserror::Error;

use crate::evidence::Platform;

/// Evidence, collateral or a policy file could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    #[error("evidence is empty")]
    Empty,
    #[error("unrecognised evidence format: {0}")]
    UnknownFormat(String),
    #[error("{what} is truncated: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what} has {extra} unexpected trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion { what: &'static str, version: u32 },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("invalid hex in {what}: {reason}")]
    Hex { what: &'static str, reason: String },
    #[error("invalid time: {0}")]
    Time(String),
    #[error("invalid certificate {what}: {reason}")]
    Certificate { what: &'static str, reason: String },
    #[error("invalid collateral: {0}")]
    Collateral(String),
    #[error("invalid policy: {0}")]
    Policy(String),
}

impl ParseError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        ParseError::Malformed {
            what,
            reason: reason.into(),
        }
    }
}

/// Why evidence was rejected. Every variant is a rejection: none of them means "accepted with a
/// warning".
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{platform} evidence needs {what}, which was not provided")]
    MissingEndorsement {
        platform: Platform,
        what: &'static str,
    },
    #[error("intel DCAP verification failed: {0}")]
    Dcap(String),
    #[error("the platform's TCB is below every level in Intel's TCB info (no matching TCB level)")]
    NoMatchingTcbLevel,
    #[error("collateral is not valid at the verification time: {0}")]
    CollateralNotValidAt(String),
    #[error("certificate chain invalid: {0}")]
    CertificateChain(String),
    #[error("certificate chain does not end at a trusted {vendor} root key")]
    UntrustedRoot { vendor: &'static str },
    #[error("certificate {subject} is not valid at {now} (valid {not_before} to {not_after})")]
    CertificateNotValid {
        subject: String,
        not_before: String,
        not_after: String,
        now: String,
    },
    #[error("report signature invalid: {0}")]
    Signature(String),
    #[error(
        "endorsement key TCB {component} is {cert} but the report's REPORTED_TCB says {report}"
    )]
    TcbMismatch {
        component: &'static str,
        cert: u8,
        report: u8,
    },
    #[error("endorsement key belongs to another chip: hwID {cert_hwid} != CHIP_ID {chip_id}")]
    ChipIdMismatch { cert_hwid: String, chip_id: String },
    #[error("{0}")]
    Policy(#[from] PolicyViolation),
}

/// Authentic evidence that does not meet the policy.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyViolation {
    #[error("platform {0} is not allowed by the policy")]
    PlatformNotAllowed(Platform),
    #[error("simulated evidence is not confidential and is rejected unless the policy names the 'simulated' platform")]
    SimulatedNotAllowed,
    #[error("the guest runs in debug mode ({0}): its memory is readable by the host")]
    DebugEnabled(&'static str),
    #[error("TCB status {status} is not accepted (accepted: {accepted})")]
    TcbStatusNotAccepted { status: String, accepted: String },
    #[error("TCB status {status}: the platform TCB level dated {tcb_date} is past the {grace_days}-day grace window")]
    OutOfDateBeyondGrace {
        status: String,
        tcb_date: String,
        grace_days: u32,
    },
    #[error("advisory {0} is rejected by the policy")]
    AdvisoryRejected(String),
    #[error("{field} {value} is not in the policy's allowlist")]
    NotAllowed { field: &'static str, value: String },
    #[error("{field} is {value}, below the policy minimum {minimum}")]
    BelowMinimum {
        field: String,
        value: String,
        minimum: String,
    },
    #[error("required attribute missing: {0}")]
    AttributeRequired(&'static str),
    #[error("attribute not allowed: {0}")]
    AttributeForbidden(&'static str),
    #[error("report_data {actual} does not equal the required binding {expected}")]
    ReportDataMismatch { expected: String, actual: String },
    #[error(
        "collateral issued {issued} is older than the policy's maximum age of {max_age_days} days"
    )]
    CollateralTooOld { issued: String, max_age_days: u32 },
}
