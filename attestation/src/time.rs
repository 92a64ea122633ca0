//! Verification time as an explicit input.
//!
//! Collateral, CRLs and certificates have issue and expiry dates, so a verdict is only meaningful
//! at a given instant. This crate never reads the clock: callers pass a [`Timestamp`].

use std::fmt;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::ParseError;

/// Seconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Parse RFC 3339 (`2025-06-20T00:00:00Z`) or plain unix seconds (`1750377600`).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse::<u64>()
                .map(Timestamp)
                .map_err(|_| ParseError::Time(format!("unix seconds out of range: {text}")));
        }
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
            ParseError::Time(format!(
                "{text:?} is neither RFC 3339 nor unix seconds: {e}"
            ))
        })?;
        u64::try_from(parsed.unix_timestamp())
            .map(Timestamp)
            .map_err(|_| ParseError::Time(format!("{text:?} is before 1970")))
    }

    /// RFC 3339 text in UTC.
    pub fn to_rfc3339(self) -> String {
        i64::try_from(self.0)
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| format!("@{}", self.0))
    }

    /// Seconds since the epoch.
    pub fn secs(self) -> u64 {
        self.0
    }

    /// Convert an RFC 3339 string found inside collateral.
    pub(crate) fn from_rfc3339_field(what: &str, text: &str) -> Result<Self, ParseError> {
        Self::parse(text).map_err(|_| ParseError::Time(format!("{what}: bad date {text:?}")))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            Timestamp::parse("1750377600").ok(),
            Some(Timestamp(1_750_377_600))
        );
        assert_eq!(
            Timestamp::parse("2025-06-20T00:00:00Z").ok(),
            Some(Timestamp(1_750_377_600))
        );
        assert_eq!(
            Timestamp::parse("2025-06-20T02:00:00+02:00").ok(),
            Some(Timestamp(1_750_377_600))
        );
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("").is_err());
        assert!(Timestamp::parse("1969-12-31T23:59:59Z").is_err());
        assert_eq!(
            Timestamp(1_750_377_600).to_rfc3339(),
            "2025-06-20T00:00:00Z"
        );
    }
}
