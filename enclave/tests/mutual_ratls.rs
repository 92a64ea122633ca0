//! Mutual RA-TLS between two enclaves (simulated TEE): each checks the other's evidence in the
//! handshake. A client without an RA-TLS certificate, with a plain certificate, or whose evidence
//! the server's peer policy does not accept, never completes a handshake.

use std::sync::Arc;

use chrysalis_attestation::{Policy, Timestamp};
use chrysalis_enclave::gpu::NoGpu;
use chrysalis_enclave::identity::{EnclaveConfig, Identity};
use chrysalis_enclave::tee::simulated::SimulatedDevice;
use chrysalis_ratls::{RaTlsClientVerifier, RaTlsVerifier};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A configuration told apart from others by `max_active`.
fn config(max_active: usize) -> EnclaveConfig {
    EnclaveConfig::new("simulated", Vec::new(), max_active, 1, None)
}

fn identity(max_active: usize) -> (Identity, [u8; 48]) {
    let tee = SimulatedDevice::new();
    let m = tee.measurement();
    let id =
        Identity::new(Box::new(tee), Box::new(NoGpu), &config(max_active), 1.0).expect("identity");
    (id, m)
}

fn policy(measurement: &[u8; 48], config_digest: Option<[u8; 48]>) -> Policy {
    let digests = config_digest
        .map(|d| format!("config_digest = [\"{}\"]\n", hex::encode(d)))
        .unwrap_or_default();
    Policy::from_toml(&format!(
        "version = 1\nplatforms = [\"simulated\"]\n[simulated]\nmeasurement = [\"{}\"]\n{digests}",
        hex::encode(measurement)
    ))
    .expect("policy")
}

fn now() -> Timestamp {
    chrysalis_enclave::system_now()
}

/// Run one handshake plus an echo; the server's verdict on the client comes back.
async fn handshake(
    server: rustls::ServerConfig,
    peers: Option<Arc<RaTlsClientVerifier>>,
    client: rustls::ClientConfig,
) -> Result<Option<chrysalis_ratls::PeerAttestation>, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = match (&peers, tls.get_ref().1.peer_certificates()) {
            (Some(p), Some(certs)) => certs.first().and_then(|c| p.peer(c)),
            _ => None,
        };
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("chrysalis-enclave").expect("name");
    let client_side = async {
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let client_result = client_side.await;
    let server_result = server_task.await.expect("server task");
    match (client_result, server_result) {
        (Ok(echo), Ok(peer)) => {
            assert_eq!(&echo, b"ping");
            Ok(peer)
        }
        (c, s) => Err(format!("client: {:?}; server: {:?}", c.err(), s.err())),
    }
}

#[tokio::test]
async fn two_enclaves_attest_each_other() {
    let (server_id, m) = identity(1);
    let (client_id, _) = identity(2);
    let client_digest = chrysalis_enclave::serve::config_digests(&client_config_json(2)).simulated;
    let peers = Arc::new(RaTlsClientVerifier::new(
        policy(&m, Some(client_digest)),
        now,
    ));
    let server = chrysalis_enclave::server::tls_config(&server_id, Some(peers.clone()))
        .expect("server config");
    let verifier = Arc::new(RaTlsVerifier::new(policy(&m, None), now()));
    let client = client_id
        .peer_client_config(verifier.clone())
        .expect("client config");
    let peer = handshake(server, Some(peers), client)
        .await
        .expect("mutual handshake")
        .expect("the server knows who connected");
    // Each side learned the other's attested keys.
    assert_eq!(
        peer.hpke_public_key.as_slice(),
        client_id.hpke().public_key()
    );
    let server_seen = verifier
        .outcome()
        .expect("outcome")
        .expect("server verified");
    assert_eq!(
        server_seen.hpke_public_key.as_slice(),
        server_id.hpke().public_key()
    );
}

fn client_config_json(max_active: usize) -> Vec<u8> {
    config(max_active).canonical_json()
}

#[tokio::test]
async fn clients_that_are_not_accepted_enclaves_are_refused() {
    let (server_id, m) = identity(1);
    let (client_id, _) = identity(3);
    // The peer policy accepts only the configuration with max_active = 2.
    let only_two = chrysalis_enclave::serve::config_digests(&client_config_json(2)).simulated;
    let peers = || Arc::new(RaTlsClientVerifier::new(policy(&m, Some(only_two)), now));
    let server = || {
        let p = peers();
        (
            chrysalis_enclave::server::tls_config(&server_id, Some(p.clone())).expect("server"),
            p,
        )
    };
    let verifier = || Arc::new(RaTlsVerifier::new(policy(&m, None), now()));

    // An enclave in another configuration.
    let (cfg, p) = server();
    let e = handshake(
        cfg,
        Some(p),
        client_id.peer_client_config(verifier()).expect("cfg"),
    )
    .await
    .expect_err("wrong configuration");
    assert!(e.contains("client attestation rejected"), "{e}");

    // No client certificate at all (an ordinary client).
    let (cfg, p) = server();
    let plain = chrysalis_ratls::client_config(verifier(), None).expect("cfg");
    let e = handshake(cfg, Some(p), plain)
        .await
        .expect_err("no certificate");
    assert!(e.contains("no certificates"), "{e}");

    // A certificate without evidence.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let own = chrysalis_ratls::own_certificate(cert.der(), &key.serialize_der()).expect("own");
    let (cfg, p) = server();
    let e = handshake(
        cfg,
        Some(p),
        chrysalis_ratls::client_config(verifier(), Some(own)).expect("cfg"),
    )
    .await
    .expect_err("no evidence");
    assert!(e.contains("carries no Chrysalis evidence"), "{e}");

    // Without a peer policy the same server accepts ordinary clients.
    let cfg = chrysalis_enclave::server::tls_config(&server_id, None).expect("server");
    let plain = chrysalis_ratls::client_config(verifier(), None).expect("cfg");
    assert!(handshake(cfg, None, plain)
        .await
        .expect("plain client")
        .is_none());
}
