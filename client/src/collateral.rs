//! Endorsement collateral: Intel PCS v4 (or a PCCS) for TDX, AMD KDS for SNP, cached on disk
//! with expiry, and usable fully offline from files.
//!
//! Cache layout under the cache directory (default `$XDG_CACHE_HOME/chrysalis/collateral`, else
//! `~/.cache/chrysalis/collateral`): `tdx-<sha256 of the PCK chain>.json` holding
//! `{ "expires_at": <unix seconds>, "collateral": <PCS JSON> }`, and `snp-<product>-<hwid>-<tcb>.der`
//! beside `snp-<product>-cert_chain.pem`. Entries past `expires_at` (the earliest `nextUpdate` of
//! the TCB info and QE identity; a VCEK's `notAfter`) are never served.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrysalis_attestation::snp::{KdsQuery, SnpReport};
use chrysalis_attestation::tdx::TdxQuote;
use chrysalis_attestation::Timestamp;
use dcap_qvl::QuoteCollateralV3;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Intel's Provisioning Certification Service (v4 API).
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";
/// AMD's Key Distribution Service.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";

/// Collateral could not be found or fetched.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CollateralError {
    /// Offline mode and nothing usable cached.
    #[error("no cached {what} and --offline forbids fetching it; pass it as a file ({flag})")]
    NotCached {
        what: &'static str,
        flag: &'static str,
    },
    /// The network fetch failed.
    #[error("fetching {what} from {url} failed: {reason}")]
    Fetch {
        what: &'static str,
        url: String,
        reason: String,
    },
    /// The cache could not be read or written.
    #[error("collateral cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The evidence does not say enough to fetch its collateral.
    #[error("cannot fetch collateral: {0}")]
    Evidence(String),
}

#[derive(Serialize, Deserialize)]
struct CachedTdx {
    expires_at: u64,
    collateral: QuoteCollateralV3,
}

/// How long after a failed refresh ahead of expiry the store waits before trying again (while
/// it still serves the cached collateral, valid until its `nextUpdate`).
pub const REFRESH_RETRY_SECS: u64 = 600;

/// A disk cache of collateral in front of Intel PCS / AMD KDS.
#[derive(Clone, Debug)]
pub struct CollateralStore {
    dir: PathBuf,
    pccs_url: String,
    kds_url: String,
    offline: bool,
    refresh_ahead: Duration,
    /// Cache entry -> time (`now` seconds) of its last failed refresh.
    failed_refresh: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>>,
}

impl CollateralStore {
    /// A store in `dir`, fetching from `pccs_url` (Intel PCS by default) and AMD KDS unless offline.
    pub fn new(dir: PathBuf, pccs_url: Option<String>, offline: bool) -> Self {
        CollateralStore {
            dir,
            pccs_url: pccs_url.unwrap_or_else(|| INTEL_PCS_URL.to_string()),
            kds_url: AMD_KDS_URL.to_string(),
            offline,
            refresh_ahead: Duration::ZERO,
            failed_refresh: Default::default(),
        }
    }

    /// Fetch Intel collateral anew once its `nextUpdate` is this close, so that a long-running
    /// server never hands out collateral about to expire. Until the new one arrives the cached
    /// one is served (it is still valid); a failed refresh is retried after
    /// [`REFRESH_RETRY_SECS`]. Offline stores never refresh.
    pub fn with_refresh_ahead(mut self, ahead: Duration) -> Self {
        self.refresh_ahead = ahead;
        self
    }

    /// The refresh-ahead window.
    pub fn refresh_ahead(&self) -> Duration {
        self.refresh_ahead
    }

    /// The default cache directory.
    pub fn default_dir() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("chrysalis/collateral");
        }
        match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache/chrysalis/collateral"),
            None => PathBuf::from(".chrysalis-cache/collateral"),
        }
    }

    fn tdx_path(&self, quote: &TdxQuote) -> Result<PathBuf, CollateralError> {
        let chain = quote
            .pck_chain_pem()
            .map_err(|e| CollateralError::Evidence(e.to_string()))?;
        Ok(self
            .dir
            .join(format!("tdx-{}.json", hex::encode(Sha256::digest(chain)))))
    }

    /// Store Intel collateral for this quote's platform.
    pub fn put_tdx(
        &self,
        quote: &TdxQuote,
        collateral: &QuoteCollateralV3,
    ) -> Result<(), CollateralError> {
        let expires_at = chrysalis_attestation::tdx::collateral_dates(collateral)
            .map_err(|e| CollateralError::Evidence(e.to_string()))?
            .next_update;
        let entry = CachedTdx {
            expires_at: expires_at.secs(),
            collateral: collateral.clone(),
        };
        let path = self.tdx_path(quote)?;
        write_atomic(
            &path,
            serde_json::to_vec(&entry).unwrap_or_default().as_slice(),
        )
    }

    /// Cached Intel collateral for this quote still valid at `now`, else fetched (unless offline).
    pub fn tdx(
        &self,
        quote: &TdxQuote,
        now: Timestamp,
    ) -> Result<QuoteCollateralV3, CollateralError> {
        let path = self.tdx_path(quote)?;
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(entry) = serde_json::from_slice::<CachedTdx>(&bytes) {
                if now.secs() < entry.expires_at {
                    if !self.refresh_due(&path, entry.expires_at, now) {
                        tracing::debug!(path = %path.display(), "intel collateral from cache");
                        return Ok(entry.collateral);
                    }
                    tracing::info!(path = %path.display(), expires_at = entry.expires_at,
                        "intel collateral expires soon: refreshing");
                    return Ok(match self.fetch_tdx(quote) {
                        Ok(c) => {
                            self.put_tdx(quote, &c)?;
                            if let Ok(mut f) = self.failed_refresh.lock() {
                                f.remove(&path);
                            }
                            c
                        }
                        Err(e) => {
                            tracing::warn!(error = %e,
                                "refreshing intel collateral failed; serving the cached one, still valid");
                            if let Ok(mut f) = self.failed_refresh.lock() {
                                f.insert(path.clone(), now.secs());
                            }
                            entry.collateral
                        }
                    });
                }
                tracing::info!(path = %path.display(), "cached intel collateral expired");
            }
        }
        if self.offline {
            return Err(CollateralError::NotCached {
                what: "Intel collateral",
                flag: "--collateral",
            });
        }
        let collateral = self.fetch_tdx(quote)?;
        self.put_tdx(quote, &collateral)?;
        Ok(collateral)
    }

    /// Whether a valid entry is close enough to expiry to fetch anew (and not just failed).
    fn refresh_due(&self, path: &Path, expires_at: u64, now: Timestamp) -> bool {
        if self.offline
            || self.refresh_ahead.is_zero()
            || now.secs().saturating_add(self.refresh_ahead.as_secs()) < expires_at
        {
            return false;
        }
        let last_failure = self
            .failed_refresh
            .lock()
            .ok()
            .and_then(|f| f.get(path).copied());
        last_failure.is_none_or(|t| now.secs() >= t.saturating_add(REFRESH_RETRY_SECS))
    }

    fn fetch_tdx(&self, quote: &TdxQuote) -> Result<QuoteCollateralV3, CollateralError> {
        let url = self.pccs_url.clone();
        tracing::info!(%url, "fetching intel collateral");
        let fetch_err = |reason: String| CollateralError::Fetch {
            what: "Intel collateral",
            url: url.clone(),
            reason,
        };
        let client = dcap_qvl::collateral::CollateralClient::with_default_http(url.clone())
            .map_err(|e| fetch_err(e.to_string()))?;
        runtime()
            .map_err(|e| fetch_err(e.to_string()))?
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), client.fetch(quote.raw())).await
            })
            .map_err(|_| fetch_err("timed out after 60 s".into()))?
            .map_err(|e| fetch_err(format!("{e:#}")))
    }

    /// VCEK for this report, from the cache or AMD KDS, and the ASK/ARK chain PEM.
    pub fn snp(&self, report: &SnpReport) -> Result<(Vec<u8>, Option<Vec<u8>>), CollateralError> {
        let query = report.kds_query();
        let products: Vec<&'static str> = match query.product {
            Some(p) => vec![p],
            None => vec!["Milan", "Genoa", "Turin"],
        };
        let mut last = None;
        for product in products {
            let vcek_path = self
                .dir
                .join(format!("snp-{}.der", vcek_cache_name(product, &query)));
            let chain_path = self.dir.join(format!("snp-{product}-cert_chain.pem"));
            if let Ok(der) = std::fs::read(&vcek_path) {
                return Ok((der, std::fs::read(&chain_path).ok()));
            }
            if self.offline {
                last = Some(CollateralError::NotCached {
                    what: "VCEK",
                    flag: "--vcek",
                });
                continue;
            }
            match self.fetch_snp(product, &query) {
                Ok((der, chain)) => {
                    write_atomic(&vcek_path, &der)?;
                    write_atomic(&chain_path, &chain)?;
                    return Ok((der, Some(chain)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(CollateralError::Evidence("unknown SNP product".into())))
    }

    fn fetch_snp(
        &self,
        product: &str,
        query: &KdsQuery,
    ) -> Result<(Vec<u8>, Vec<u8>), CollateralError> {
        let vcek_url = kds_vcek_url(&self.kds_url, product, query);
        let chain_url = format!("{}/vcek/v1/{product}/cert_chain", self.kds_url);
        let rt = runtime().map_err(|e| CollateralError::Fetch {
            what: "VCEK",
            url: vcek_url.clone(),
            reason: e.to_string(),
        })?;
        let get = |url: String, what: &'static str| -> Result<Vec<u8>, CollateralError> {
            tracing::info!(%url, "fetching from AMD KDS");
            rt.block_on(async {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .map_err(|e| CollateralError::Fetch {
                        what,
                        url: url.clone(),
                        reason: e.to_string(),
                    })?;
                let resp = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| CollateralError::Fetch {
                        what,
                        url: url.clone(),
                        reason: e.to_string(),
                    })?;
                if !resp.status().is_success() {
                    return Err(CollateralError::Fetch {
                        what,
                        url: url.clone(),
                        reason: format!("HTTP {}", resp.status()),
                    });
                }
                resp.bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| CollateralError::Fetch {
                        what,
                        url: url.clone(),
                        reason: e.to_string(),
                    })
            })
        };
        Ok((get(vcek_url, "VCEK")?, get(chain_url, "ASK/ARK chain")?))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Where a remote enclave's endorsements come from when its evidence bundle lacks them (an
/// enclave cannot reach Intel PCS or AMD KDS itself).
#[derive(Clone, Debug, Default)]
pub enum CollateralSource {
    /// Only what the bundle carries.
    #[default]
    Bundle,
    /// The host agent's cache: its `GET /v1/attestation`, at this base URL (`http://HOST:PORT`,
    /// optionally with `?vm=NAME`). The host is untrusted; what it serves is verified like
    /// anything else (signed by Intel or AMD).
    Host(String),
    /// Intel PCS (or a PCCS) and AMD KDS, through this on-disk cache.
    Store(CollateralStore),
}

/// Whether a bundle lacks what its evidence needs to verify: Intel collateral for a TDX quote,
/// the VCEK for an SNP report.
pub fn bundle_lacks_endorsements(bundle: &chrysalis_proto::EvidenceBundle) -> bool {
    match chrysalis_proto::Platform::try_from(bundle.platform) {
        Ok(chrysalis_proto::Platform::Tdx) => bundle.tdx_collateral_json.is_empty(),
        Ok(chrysalis_proto::Platform::Snp) => bundle.vcek_der.is_empty(),
        _ => false,
    }
}

/// Fill in what `bundle` lacks from `store` (cached, else fetched unless offline): Intel
/// collateral for a TDX quote; the VCEK and, when absent, the ASK/ARK chain for an SNP report.
/// Blocking (network and disk). Returns whether anything was added.
pub fn complete_bundle(
    bundle: &mut chrysalis_proto::EvidenceBundle,
    store: &CollateralStore,
    now: Timestamp,
) -> Result<bool, CollateralError> {
    if !bundle_lacks_endorsements(bundle) {
        return Ok(false);
    }
    let evidence = chrysalis_attestation::Evidence::from_bytes(&bundle.evidence)
        .map_err(|e| CollateralError::Evidence(e.to_string()))?;
    match evidence {
        chrysalis_attestation::Evidence::Tdx(q) => {
            let c = store.tdx(&q, now)?;
            bundle.tdx_collateral_json =
                serde_json::to_vec(&c).map_err(|e| CollateralError::Evidence(e.to_string()))?;
        }
        chrysalis_attestation::Evidence::Snp(r) => {
            let (vcek, chain) = store.snp(&r)?;
            bundle.vcek_der = vcek;
            if bundle.cert_chain_pem.is_empty() {
                bundle.cert_chain_pem = chain.unwrap_or_default();
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CollateralError> {
    let io = |source| CollateralError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn vcek_cache_name(product: &str, q: &KdsQuery) -> String {
    let t = &q.reported_tcb;
    format!(
        "{product}-{}-{}-{}-{}-{}-{}",
        hwid_hex(product, q),
        t.fmc.unwrap_or(0),
        t.bootloader,
        t.tee,
        t.snp,
        t.microcode
    )
}

fn hwid_hex(product: &str, q: &KdsQuery) -> String {
    // Turin VCEKs are indexed by the first 8 bytes of CHIP_ID.
    if product == "Turin" {
        hex::encode(q.chip_id.get(..8).unwrap_or_default())
    } else {
        hex::encode(q.chip_id)
    }
}

/// The KDS URL of the VCEK for this chip and TCB (KDS interface spec, pub. 57230).
pub fn kds_vcek_url(base: &str, product: &str, q: &KdsQuery) -> String {
    let t = &q.reported_tcb;
    let mut url = format!(
        "{base}/vcek/v1/{product}/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
        hwid_hex(product, q),
        t.bootloader,
        t.tee,
        t.snp,
        t.microcode
    );
    if let Some(fmc) = t.fmc {
        url.push_str(&format!("&fmcSPL={fmc}"));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_attestation::snp::TcbVersion;

    #[test]
    fn kds_urls() {
        let mut q = KdsQuery {
            chip_id: [0xab; 64],
            reported_tcb: TcbVersion {
                fmc: None,
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
            },
            product: Some("Milan"),
        };
        let url = kds_vcek_url(AMD_KDS_URL, "Milan", &q);
        assert_eq!(
            url,
            format!(
                "{AMD_KDS_URL}/vcek/v1/Milan/{}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115",
                "ab".repeat(64)
            )
        );
        q.reported_tcb.fmc = Some(1);
        let url = kds_vcek_url(AMD_KDS_URL, "Turin", &q);
        assert!(
            url.contains(&format!("/Turin/{}?", "ab".repeat(8))) && url.ends_with("&fmcSPL=1"),
            "{url}"
        );
    }
}
