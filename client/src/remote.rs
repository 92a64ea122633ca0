//! Talking to an attested enclave: RA-TLS, evidence checks, sealed requests, verified streams.
//!
//! Order of operations, which is the point of the design:
//! 1. TLS handshake with a verifier that accepts the peer only if its certificate carries
//!    evidence that verifies under the policy and binds this certificate's key.
//! 2. Only then is the request sealed (HPKE) to the attested key and sent. One sealing session
//!    (one HPKE context) per verified connection serves all its requests, each under keys of
//!    its own.
//! 3. Every answer chunk is opened in order; the answer counts only when the chunk marked last
//!    arrived. If any step fails, nothing of the prompt has left the process.

use std::sync::Arc;

use crate::collateral::CollateralSource;
use chrysalis_attestation::verify::Endorsements;
use chrysalis_attestation::{Policy, Timestamp};
use chrysalis_proto::enclave_client::EnclaveClient;
use chrysalis_proto::seal::{SealError, SealingSession};
use chrysalis_proto::{AttestRequest, EvidenceBundle, SealedChunk};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use zeroize::Zeroizing;

pub use chrysalis_ratls::{
    bundle_endorsements, parse_ratls_cert, verify_bundle, verify_bundle_endorsed, PeerAttestation,
    RaTlsVerifier, Rejected, RATLS_EXTENSION_OID,
};

/// Why talking to an enclave failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URL is not `https://HOST:PORT`.
    #[error("bad URL {0:?}: expected https://HOST:PORT")]
    Url(String),
    /// The evidence was rejected.
    #[error("attestation rejected: {0}")]
    Rejected(String),
    /// Connection or TLS failure.
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// The enclave answered with an error status.
    #[error("the enclave refused: {0}")]
    Status(String),
    /// The sealed stream failed its checks.
    #[error("the answer failed verification: {0}")]
    Seal(#[from] SealError),
    /// The enclave's answer could not be understood.
    #[error("malformed answer: {0}")]
    Protocol(String),
}

fn reject(m: impl Into<String>) -> RemoteError {
    RemoteError::Rejected(m.into())
}

impl From<Rejected> for RemoteError {
    fn from(r: Rejected) -> Self {
        RemoteError::Rejected(r.0)
    }
}

/// `https://HOST:PORT` → (host, port).
pub fn parse_url(url: &str) -> Result<(String, u16), RemoteError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| RemoteError::Url(url.into()))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| RemoteError::Url(url.into()))?;
    let port: u16 = port.parse().map_err(|_| RemoteError::Url(url.into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(RemoteError::Url(url.into()));
    }
    Ok((host.to_owned(), port))
}

/// An attested connection.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The gRPC client (over the verified TLS connection).
    pub client: EnclaveClient<tonic::transport::Channel>,
    /// What the peer proved in the handshake.
    pub attestation: PeerAttestation,
    /// Endorsements from outside the bundle it was verified with (for fresh evidence too);
    /// shared, as sessions are cloned per request.
    pub endorsements: Arc<Endorsements>,
    /// The HPKE context requests are sealed with, to the attested key; shared by clones. Set up
    /// when the connection has been verified, so that no request waits for the encapsulation.
    pub sealing: Arc<SealingSession>,
}

/// Connect to `url`, verifying the enclave in the TLS handshake with the endorsements its
/// bundle carries.
pub async fn connect(url: &str, policy: &Policy, now: Timestamp) -> Result<Attested, RemoteError> {
    connect_with(url, policy, now, &CollateralSource::Bundle).await
}

/// Connect to `url`, verifying the enclave in the TLS handshake; when its bundle lacks the
/// vendor's endorsements (a TDX quote's collateral, an SNP report's VCEK), take them from
/// `source` and handshake again.
pub async fn connect_with(
    url: &str,
    policy: &Policy,
    now: Timestamp,
    source: &CollateralSource,
) -> Result<Attested, RemoteError> {
    let (err, seen) = match connect_once(url, policy, now, Endorsements::default()).await {
        Ok(a) => return Ok(a),
        Err(e) => e,
    };
    let lacking = seen.filter(crate::collateral::bundle_lacks_endorsements);
    let (Some(bundle), false) = (lacking, matches!(source, CollateralSource::Bundle)) else {
        return Err(err);
    };
    let fallback = endorsements_from(source, &bundle, now).await?;
    connect_once(url, policy, now, fallback)
        .await
        .map_err(|(e, _)| e)
}

/// Endorsements for `bundle`'s evidence from `source`.
pub async fn endorsements_from(
    source: &CollateralSource,
    bundle: &EvidenceBundle,
    now: Timestamp,
) -> Result<Endorsements, RemoteError> {
    let no = |m: String| reject(format!("the evidence has no endorsements with it and {m}"));
    match source {
        CollateralSource::Bundle => Ok(Endorsements::default()),
        CollateralSource::Store(store) => {
            let (store, mut b) = (store.clone(), bundle.clone());
            tokio::task::spawn_blocking(move || {
                crate::collateral::complete_bundle(&mut b, &store, now).map(|_| b)
            })
            .await
            .map_err(|e| no(e.to_string()))?
            .map_err(|e| no(e.to_string()))
            .and_then(|b| Ok(bundle_endorsements(&b)?))
        }
        CollateralSource::Host(base) => {
            let served = host_bundle(base)
                .await
                .map_err(|e| no(format!("the host's collateral ({base}): {e}")))?;
            if served.platform != bundle.platform {
                return Err(no(format!("the host ({base}) serves another platform's")));
            }
            Ok(bundle_endorsements(&served)?)
        }
    }
}

/// The evidence bundle a host agent serves (`GET /v1/attestation`), collateral included.
pub async fn host_bundle(base: &str) -> Result<EvidenceBundle, String> {
    use prost::Message;
    let url = match base.split_once('?') {
        Some((b, q)) => format!("{}/v1/attestation?{q}", b.trim_end_matches('/')),
        None => format!("{}/v1/attestation", base.trim_end_matches('/')),
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            v.get("error").and_then(|e| e.as_str()).unwrap_or("")
        ));
    }
    if let Some(e) = v.get("collateral_error").and_then(|e| e.as_str()) {
        return Err(format!("the host could not get it: {e}"));
    }
    let hexed = v
        .get("bundle_protobuf")
        .and_then(|b| b.as_str())
        .ok_or("no bundle_protobuf in the answer")?;
    let bytes = hex::decode(hexed).map_err(|e| e.to_string())?;
    EvidenceBundle::decode(bytes.as_slice()).map_err(|e| e.to_string())
}

/// One connection attempt; on failure, also the bundle the peer presented (if any).
async fn connect_once(
    url: &str,
    policy: &Policy,
    now: Timestamp,
    fallback: Endorsements,
) -> Result<Attested, (RemoteError, Option<EvidenceBundle>)> {
    let verifier = Arc::new(RaTlsVerifier::new(policy.clone(), now).with_endorsements(fallback));
    connect_verified(url, &verifier)
        .await
        .map_err(|e| (e, verifier.seen_bundle()))
}

async fn connect_verified(
    url: &str,
    verifier: &Arc<RaTlsVerifier>,
) -> Result<Attested, RemoteError> {
    let (host, port) = parse_url(url)?;
    let cfg = chrysalis_ratls::client_config(verifier.clone(), None).map_err(|e| {
        RemoteError::Connect {
            url: url.into(),
            message: e.to_string(),
        }
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| RemoteError::Url(url.into()))?
        .to_owned();
    // Handshake once here, so a rejection is reported as such before anything else happens.
    let addr = format!("{host}:{port}");
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| RemoteError::Connect {
            url: url.into(),
            message: e.to_string(),
        })?;
    // Small frames (sealed chunks, HTTP/2 acks) must not wait for Nagle and delayed ACKs.
    let _ = tcp.set_nodelay(true);
    let tls = connector.connect(server_name.clone(), tcp).await;
    let attestation = match (tls, verifier.outcome()) {
        (Ok(stream), Some(Ok(a))) => {
            drop(stream);
            a
        }
        (_, Some(Err(reason))) => return Err(RemoteError::Rejected(reason)),
        (Err(e), _) => {
            return Err(RemoteError::Connect {
                url: url.into(),
                message: e.to_string(),
            })
        }
        (Ok(_), None) => return Err(reject("the handshake completed without evidence")),
    };
    let expected_spki = attestation.bundle.tls_spki_sha256.clone();
    // The gRPC channel makes its own connections through the same verifier, and each must
    // present the very key that was attested.
    let conn = connector.clone();
    let name = server_name.clone();
    let v2 = verifier.clone();
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
            RemoteError::Connect {
                url: url.into(),
                message: e.to_string(),
            }
        })?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let conn = conn.clone();
            let name = name.clone();
            let addr = addr.clone();
            let v2 = v2.clone();
            let expected = expected_spki.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = conn.connect(name, tcp).await?;
                match v2.outcome() {
                    Some(Ok(a)) if a.bundle.tls_spki_sha256 == expected => {}
                    _ => {
                        return Err(std::io::Error::other(
                            "the enclave's key changed since it was attested",
                        ))
                    }
                }
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| RemoteError::Connect {
            url: url.into(),
            message: e.to_string(),
        })?;
    let sealing = Arc::new(SealingSession::new(&attestation.hpke_public_key)?);
    Ok(Attested {
        client: EnclaveClient::new(channel),
        attestation,
        endorsements: verifier.endorsements(),
        sealing,
    })
}

/// A TLS certificate verifier that accepts any certificate. Only for untrusted intermediaries
/// (the host agent's readiness checks and its evidence relay): nothing learned through such a
/// connection is trusted, and no prompt is ever sent over it.
#[derive(Debug)]
struct AcceptAnyForRelay(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyForRelay {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        // Nothing learned over this connection is trusted: there is nothing to check it against.
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An UNVERIFIED gRPC client to an enclave at `host:port`, for untrusted intermediaries (the
/// host agent) that check readiness and pass the evidence bundle on for clients to verify
/// themselves. Never seal a prompt over it: use [`connect`].
pub async fn connect_unverified(
    addr: std::net::SocketAddr,
) -> Result<EnclaveClient<tonic::transport::Channel>, RemoteError> {
    let url = format!("https://{addr}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RemoteError::Connect {
            url: url.clone(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyForRelay(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| RemoteError::Connect {
            url: url.clone(),
            message: e.to_string(),
        })?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let conn = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("enclave")
                    .map_err(std::io::Error::other)?
                    .to_owned();
                let tls = conn.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| RemoteError::Connect {
            url,
            message: e.to_string(),
        })?;
    Ok(EnclaveClient::new(channel))
}

/// Ask for fresh evidence over a random nonce and verify it (proves liveness of the key).
pub async fn attest_fresh(
    a: &mut Attested,
    policy: &Policy,
    now: Timestamp,
) -> Result<PeerAttestation, RemoteError> {
    let mut nonce = [0u8; 32];
    rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, &mut nonce)
        .map_err(|e| RemoteError::Protocol(format!("no randomness for the nonce: {e}")))?;
    let bundle = a
        .client
        .attest(AttestRequest {
            nonce: nonce.to_vec(),
        })
        .await
        .map_err(|s| RemoteError::Status(s.message().to_owned()))?
        .into_inner();
    let spki: [u8; 32] = a
        .attestation
        .bundle
        .tls_spki_sha256
        .as_slice()
        .try_into()
        .map_err(|_| reject("bad TLS key hash"))?;
    let fresh = verify_bundle_endorsed(&bundle, &spki, &nonce, policy, now, &a.endorsements)?;
    if fresh.hpke_public_key != a.attestation.hpke_public_key {
        return Err(reject(
            "fresh evidence names another HPKE key than the handshake's",
        ));
    }
    Ok(fresh)
}

/// One piece of a verified answer.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerPiece {
    /// Text.
    Text(String),
    /// The end, with the enclave's totals (JSON).
    Done(serde_json::Value),
}

/// Seal a chat request (JSON body) to the attested key and stream the verified answer.
/// `on_piece` sees each piece as it is opened; the function returns Ok only when the whole
/// answer, up to the chunk marked last, arrived and verified.
pub async fn generate(
    a: &mut Attested,
    body: &serde_json::Value,
    mut on_piece: impl FnMut(&AnswerPiece),
) -> Result<serde_json::Value, RemoteError> {
    let plain =
        Zeroizing::new(serde_json::to_vec(body).map_err(|e| RemoteError::Protocol(e.to_string()))?);
    let (sealed, mut opener) = a.sealing.seal(&plain)?;
    drop(plain);
    let mut stream = a
        .client
        .generate(sealed)
        .await
        .map_err(|s| RemoteError::Status(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    loop {
        let chunk: Option<SealedChunk> = stream
            .message()
            .await
            .map_err(|s| RemoteError::Status(format!("{:?}: {}", s.code(), s.message())))?;
        let Some(chunk) = chunk else {
            opener.finish()?;
            return Err(RemoteError::Protocol(
                "stream ended after its last chunk without a result".into(),
            ));
        };
        let (plain, last) = opener.open(&chunk)?;
        let v: serde_json::Value =
            serde_json::from_slice(&plain).map_err(|e| RemoteError::Protocol(e.to_string()))?;
        match v.get("type").and_then(|t| t.as_str()) {
            Some("text") if !last => {
                let t = v
                    .get("text")
                    .and_then(|t| t.as_str())
                    .unwrap_or("")
                    .to_owned();
                on_piece(&AnswerPiece::Text(t));
            }
            Some("done") if last => {
                let usage = v.get("usage").cloned().unwrap_or_default();
                on_piece(&AnswerPiece::Done(usage.clone()));
                // Nothing may follow the last chunk.
                if let Ok(Some(_)) = stream.message().await {
                    return Err(SealError::AfterLast.into());
                }
                return Ok(usage);
            }
            Some("error") if last => {
                let m = v
                    .get("message")
                    .and_then(|t| t.as_str())
                    .unwrap_or("unknown error");
                return Err(RemoteError::Status(m.to_owned()));
            }
            _ => return Err(RemoteError::Protocol("unexpected chunk".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:7443").ok(),
            Some(("127.0.0.1".into(), 7443))
        );
        assert_eq!(
            parse_url("https://[::1]:7443/").ok(),
            Some(("::1".into(), 7443))
        );
        for bad in [
            "http://x:1",
            "https://x",
            "https://:1",
            "https://x:99999",
            "x:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
