//! Collateral for remote evidence: an enclave cannot reach Intel PCS or AMD KDS, so its bundle
//! arrives without them; the host agent completes it from its cache and the SDK takes what it
//! lacks from the host (or its own cache). Checked on a real TDX quote and its real Intel
//! collateral (attestation/testdata/dcap-qvl, see the README there), at a pinned time.
// Test code: a failed assumption should stop the test loudly.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use chrysalis_attestation::tdx::TdxQuote;
use chrysalis_attestation::{Policy, Timestamp};
use chrysalis_client::collateral::{
    bundle_lacks_endorsements, complete_bundle, CollateralSource, CollateralStore,
};
use chrysalis_client::remote::{self, RemoteError};
use chrysalis_proto::{EvidenceBundle, GpuStatus, Platform};

fn testdata(name: &str) -> Vec<u8> {
    let p = format!(
        "{}/../attestation/testdata/dcap-qvl/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The real quote as an enclave would send it: no collateral.
fn bare_bundle() -> EvidenceBundle {
    EvidenceBundle {
        version: 1,
        platform: Platform::Tdx as i32,
        evidence: testdata("tdx_quote"),
        tls_spki_sha256: vec![7; 32],
        hpke_public_key: vec![9; 32],
        binding_version: chrysalis_proto::binding::BINDING_VERSION,
        gpu_status: GpuStatus::None as i32,
        ..Default::default()
    }
}

/// A cache holding the quote's real Intel collateral, never fetching.
fn offline_store(dir: &std::path::Path, filled: bool) -> CollateralStore {
    let store = CollateralStore::new(dir.to_path_buf(), None, true);
    if filled {
        let quote = TdxQuote::from_bytes(&testdata("tdx_quote")).expect("quote");
        let collateral =
            serde_json::from_slice(&testdata("tdx_quote_collateral.json")).expect("collateral");
        store.put_tdx(&quote, &collateral).expect("cache");
    }
    store
}

/// When the collateral in the fixture is valid (see the demo).
fn at() -> Timestamp {
    Timestamp::parse("2025-06-20T00:00:00Z").expect("time")
}

/// Verify the bare bundle with `fallback`: the quote is real but not bound to our keys, so the
/// best possible outcome is the binding check failing after the vendor checks passed.
fn verify(fallback: &chrysalis_attestation::verify::Endorsements) -> RemoteError {
    RemoteError::from(
        remote::verify_bundle_endorsed(
            &bare_bundle(),
            &[7; 32],
            &[],
            &Policy::baseline(),
            at(),
            fallback,
        )
        .expect_err("a foreign quote never binds our keys"),
    )
}

async fn host_api(store: CollateralStore) -> String {
    host_api_at(store, at()).await
}

async fn host_api_at(store: CollateralStore, now: Timestamp) -> String {
    let config: chrysalis_host::config::VmConfig = toml::from_str(
        "name = \"td\"\nimage = \"x\"\nplatform = \"tdx\"\nvcpus = 1\nmemory = \"1G\"\nclient_listen = \"127.0.0.1:0\"\n",
    )
    .expect("config");
    let vm = chrysalis_host::vm::VmHandle::new(config);
    if let Ok(mut b) = vm.bundle.lock() {
        *b = Some(bare_bundle());
    }
    let app = chrysalis_host::api::router(chrysalis_host::api::Api {
        vms: Arc::new(vec![vm]),
        collateral: Some(store),
        now: Some(now),
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

#[test]
fn without_collateral_a_real_quote_is_refused_and_with_the_hosts_it_verifies() {
    let dir = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        assert!(bundle_lacks_endorsements(&bare_bundle()));
        // Nothing beside the evidence: refused for want of Intel's collateral.
        let bare = verify(&Default::default()).to_string();
        assert!(bare.to_lowercase().contains("collateral"), "{bare}");

        // The host serves the bundle completed from its cache.
        let url = host_api(offline_store(dir.path(), true)).await;
        let served = remote::host_bundle(&url).await.expect("host bundle");
        assert!(!served.tdx_collateral_json.is_empty());
        assert_eq!(
            served.evidence,
            bare_bundle().evidence,
            "the evidence is untouched"
        );
        let from_host =
            remote::endorsements_from(&CollateralSource::Host(url.clone()), &bare_bundle(), at())
                .await
                .expect("endorsements from the host");
        assert!(from_host.tdx_collateral.is_some());
        // Intel's signatures over the quote and collateral now check out: what fails is only
        // that this quote was not made for our keys.
        let e = verify(&from_host).to_string();
        assert!(e.contains("report_data does not bind"), "{e}");
        // ?vm=NAME selects the VM; an unknown one is an error, not an empty answer.
        assert!(remote::host_bundle(&format!("{url}?vm=td")).await.is_ok());
        let unknown = remote::host_bundle(&format!("{url}?vm=nope"))
            .await
            .expect_err("unknown");
        assert!(unknown.contains("404"), "{unknown}");
    });
}

#[test]
fn a_host_without_the_collateral_says_so_and_the_client_says_why() {
    let dir = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = host_api(offline_store(dir.path(), false)).await;
        let e = remote::endorsements_from(&CollateralSource::Host(url), &bare_bundle(), at())
            .await
            .expect_err("no collateral");
        let m = e.to_string();
        assert!(
            m.contains("could not get it") && m.contains("Intel collateral"),
            "{m}"
        );
    });
}

#[test]
fn the_local_cache_completes_a_bundle_too() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = offline_store(dir.path(), true);
    let mut b = bare_bundle();
    assert!(complete_bundle(&mut b, &store, at()).expect("complete"));
    assert!(!bundle_lacks_endorsements(&b));
    // Complete already: nothing to add.
    assert!(!complete_bundle(&mut b, &store, at()).expect("again"));
    let e = remote::verify_bundle(&b, &[7; 32], &[], &Policy::baseline(), at())
        .expect_err("foreign quote")
        .to_string();
    assert!(e.contains("report_data does not bind"), "{e}");
    // Past the collateral's nextUpdate the cache does not serve it, and offline fetches nothing.
    let late = Timestamp::parse("2027-01-01T00:00:00Z").expect("time");
    let mut b = bare_bundle();
    let e = complete_bundle(&mut b, &store, late).expect_err("expired");
    assert!(e.to_string().contains("no cached Intel collateral"), "{e}");
}

/// A PCS that accepts connections and closes them at once: every fetch fails, each one counted.
fn dead_pcs() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            if s.is_ok() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    (url, n)
}

#[test]
fn collateral_is_refreshed_ahead_of_expiry_and_the_valid_one_served_meanwhile() {
    use std::sync::atomic::Ordering::SeqCst;
    // The fixture's earliest nextUpdate (TCB info).
    let next_update = Timestamp::parse("2025-07-19T10:16:03Z").expect("time");
    let t = |delta: i64| Timestamp(next_update.secs().saturating_add_signed(delta));
    let dir = tempfile::tempdir().expect("tmp");
    offline_store(dir.path(), true);
    let (url, attempts) = dead_pcs();
    let store = CollateralStore::new(dir.path().to_path_buf(), Some(url), false)
        .with_refresh_ahead(std::time::Duration::from_secs(24 * 3600));
    let complete_at = |now: Timestamp| {
        let mut b = bare_bundle();
        complete_bundle(&mut b, &store, now).map(|_| b)
    };
    // Two days ahead: the cache serves, nothing is fetched.
    let b = complete_at(t(-48 * 3600)).expect("cached");
    assert!(!b.tdx_collateral_json.is_empty());
    assert_eq!(attempts.load(SeqCst), 0);
    // One hour ahead: a refresh is tried; it fails, and the cached one (still valid) is served.
    let b = complete_at(t(-3600)).expect("cached while the refresh fails");
    assert!(!b.tdx_collateral_json.is_empty());
    let tried = attempts.load(SeqCst);
    assert!(tried >= 1, "a refresh was attempted");
    // A minute later: within the retry delay, not tried again.
    complete_at(t(-3540)).expect("cached");
    assert_eq!(attempts.load(SeqCst), tried);
    // After the retry delay: tried again.
    let retry = chrysalis_client::collateral::REFRESH_RETRY_SECS as i64;
    complete_at(t(-3600 + retry + 1)).expect("cached");
    assert!(attempts.load(SeqCst) > tried);
    // Past nextUpdate the cached one is never served: the failed fetch is the answer.
    let e = complete_at(t(1)).expect_err("expired and unfetchable");
    assert!(e.to_string().contains("fetching Intel collateral"), "{e}");

    // The host agent does the same for the bundles it serves, and says when it cannot.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // (Past the retry delay of the last failure above: the store is shared.)
        let url = host_api_at(store.clone(), t(-3600 + 2 * retry + 2)).await;
        let before = attempts.load(SeqCst);
        let served = remote::host_bundle(&url).await.expect("host bundle");
        assert!(!served.tdx_collateral_json.is_empty());
        assert!(attempts.load(SeqCst) > before, "the host tried to refresh");
        let late = host_api_at(store.clone(), t(3600)).await;
        let e = remote::endorsements_from(&CollateralSource::Host(late), &bare_bundle(), t(3600))
            .await
            .expect_err("expired, not refreshed");
        assert!(e.to_string().contains("Intel collateral"), "{e}");
    });
}
