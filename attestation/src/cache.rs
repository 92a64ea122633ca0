//! A cache of positive verdicts, keyed by the digest of the evidence, its endorsements and the
//! policy, for servers that see the same evidence often. An entry is served only before its
//! verdict's expiry (the earliest collateral or certificate expiry) and never after; negative
//! verdicts are not cached, so a fixed endorsement is picked up at once.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::VerifyError;
use crate::evidence::Evidence;
use crate::policy::Policy;
use crate::time::Timestamp;
use crate::verify::{Endorsements, VerifiedEvidence, Verifier};

/// Cache key: SHA-256 over evidence, endorsements and policy.
pub type CacheKey = [u8; 32];

/// A bounded map from evidence digest to a verified result and its expiry.
#[derive(Debug)]
pub struct VerificationCache {
    capacity: usize,
    entries: Mutex<HashMap<CacheKey, VerifiedEvidence>>,
}

impl VerificationCache {
    /// A cache holding at most `capacity` verdicts.
    pub fn new(capacity: usize) -> Self {
        VerificationCache {
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key for this evidence, endorsements and policy.
    pub fn key(evidence: &Evidence, endorsements: &Endorsements, policy: &Policy) -> CacheKey {
        let mut h = Sha256::new();
        h.update(b"chrysalis-verification-cache-v1");
        h.update((evidence.raw().len() as u64).to_le_bytes());
        h.update(evidence.raw());
        if let Some(c) = &endorsements.tdx_collateral {
            h.update(b"tdx-collateral");
            h.update(serde_json::to_vec(c).unwrap_or_default());
        }
        if let Some(v) = &endorsements.vcek {
            h.update(b"vcek");
            h.update(x509_cert::der::Encode::to_der(v).unwrap_or_default());
        }
        for c in &endorsements.cert_chain {
            h.update(b"chain");
            h.update(x509_cert::der::Encode::to_der(c).unwrap_or_default());
        }
        h.update(policy.digest());
        h.finalize().into()
    }

    /// Verify through the cache: a fresh hit is returned without verifying again.
    pub fn verify(
        &self,
        verifier: &Verifier,
        evidence: &Evidence,
        endorsements: &Endorsements,
        policy: &Policy,
        now: Timestamp,
    ) -> Result<VerifiedEvidence, VerifyError> {
        let key = Self::key(evidence, endorsements, policy);
        if let Some(hit) = self.lookup(&key, now) {
            return Ok(hit);
        }
        let verified = verifier.verify(evidence, endorsements, policy, now)?;
        self.insert(key, verified.clone(), now);
        Ok(verified)
    }

    /// A cached verdict still valid at `now`. Verdicts from the future (a clock set back) are
    /// not served either.
    pub fn lookup(&self, key: &CacheKey, now: Timestamp) -> Option<VerifiedEvidence> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|v| v.verified_at() <= now && now < v.expires_at())
            .cloned()
    }

    fn insert(&self, key: CacheKey, verified: VerifiedEvidence, now: Timestamp) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity {
            entries.retain(|_, v| now < v.expires_at());
        }
        if entries.len() >= self.capacity {
            // Evict the entry that expires first.
            if let Some(k) = entries
                .iter()
                .min_by_key(|(_, v)| v.expires_at())
                .map(|(k, _)| *k)
            {
                entries.remove(&k);
            }
        }
        entries.insert(key, verified);
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
