//! Sealed prompts and sealed answers.
//!
//! - The request body is sealed with HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256),
//!   HKDF-SHA256, ChaCha20-Poly1305) to the enclave's attested public key, so it stays
//!   confidential across every hop that terminates TLS.
//! - The answer travels as numbered chunks, each sealed with ChaCha20-Poly1305 under a key and a
//!   nonce base exported from the same HPKE context. Chunk `i` uses nonce `base XOR i` and
//!   authenticates `seq` and the `last` flag as associated data, so the client detects a
//!   tampered, replayed, reordered or dropped chunk, and a stream that ends without its last one.
//!
//! Secrets (private keys, exported keys) are zeroized on drop and never printed.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hpke::aead::ChaCha20Poly1305 as HpkeChaCha;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore, TryRngCore};
use zeroize::Zeroizing;

use crate::v1::{SealedChunk, SealedRequest};

/// RFC 9180 KEM id of DHKEM(X25519, HKDF-SHA256).
pub const KEM_ID: u32 = 0x0020;
/// RFC 9180 KDF id of HKDF-SHA256.
pub const KDF_ID: u32 = 0x0001;
/// RFC 9180 AEAD id of ChaCha20-Poly1305.
pub const AEAD_ID: u32 = 0x0003;
/// HPKE `info` of the request context.
pub const INFO: &[u8] = b"chrysalis/sealed-request/v1";
const REQUEST_AAD: &[u8] = b"chrysalis/sealed-request/v1/aad";
const EXPORT_KEY: &[u8] = b"chrysalis/response/v1/key";
const EXPORT_NONCE: &[u8] = b"chrysalis/response/v1/nonce";
const CHUNK_AAD: &[u8] = b"chrysalis/response/v1/chunk\0";

/// Why sealing or opening failed. Carries no plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The request names an HPKE suite other than ours.
    #[error("unsupported HPKE suite (kem {kem:#06x}, kdf {kdf:#06x}, aead {aead:#06x})")]
    UnsupportedSuite {
        /// KEM id.
        kem: u32,
        /// KDF id.
        kdf: u32,
        /// AEAD id.
        aead: u32,
    },
    /// The request was sealed to another key (an old enclave, or another one).
    #[error("the request is sealed to a different public key than this enclave's")]
    WrongRecipient,
    /// A key or encapsulation of the wrong size or form.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Authentication failed: tampered, or sealed under other keys.
    #[error("{0} failed to authenticate (tampered, or sealed under other keys)")]
    Authentication(&'static str),
    /// A chunk out of order: replayed, reordered or dropped.
    #[error("answer chunk {got} arrived where chunk {expected} was due (replayed, reordered or dropped)")]
    OutOfOrder {
        /// Expected sequence number.
        expected: u64,
        /// Received sequence number.
        got: u64,
    },
    /// A chunk after the last one.
    #[error("answer chunk after the last one")]
    AfterLast,
    /// The stream ended before the chunk marked last.
    #[error("the answer was truncated: the stream ended before its last chunk")]
    Truncated,
    /// HPKE failed inside.
    #[error("HPKE error: {0}")]
    Hpke(String),
}

/// The enclave's HPKE key pair. The private key is zeroized on drop and never printed.
pub struct HpkeKeyPair {
    private: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    public: <X25519HkdfSha256 as hpke::Kem>::PublicKey,
    public_bytes: [u8; 32],
}

impl std::fmt::Debug for HpkeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HpkeKeyPair")
            .field("public", &hex::encode(self.public_bytes))
            .field("private", &"<redacted>")
            .finish()
    }
}

impl HpkeKeyPair {
    /// A fresh key pair from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self::generate_with(&mut rand_core::OsRng.unwrap_err())
    }

    /// A fresh key pair from `rng`.
    pub fn generate_with<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let (private, public) = X25519HkdfSha256::gen_keypair(rng);
        let mut public_bytes = [0u8; 32];
        public_bytes.copy_from_slice(&public.to_bytes());
        Self {
            private,
            public,
            public_bytes,
        }
    }

    /// The public key (32 bytes).
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_bytes
    }

    /// Open a sealed request: its plaintext body and the context to seal the answer with.
    pub fn open_request(
        &self,
        req: &SealedRequest,
    ) -> Result<(Zeroizing<Vec<u8>>, ResponseSealer), SealError> {
        check_suite(req.kem_id, req.kdf_id, req.aead_id)?;
        if req.recipient_public_key.as_slice() != self.public_bytes.as_slice() {
            return Err(SealError::WrongRecipient);
        }
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&req.enc)
            .map_err(|_| SealError::Malformed("encapsulated key"))?;
        let mut ctx = hpke::setup_receiver::<HpkeChaCha, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.private,
            &enc,
            INFO,
        )
        .map_err(|e| SealError::Hpke(e.to_string()))?;
        let body = ctx
            .open(&req.ciphertext, &request_aad(req))
            .map_err(|_| SealError::Authentication("the sealed request"))?;
        let keys = ChunkKeys::export(|label, out| ctx.export(label, out))?;
        Ok((
            Zeroizing::new(body),
            ResponseSealer {
                keys,
                next: 0,
                finished: false,
            },
        ))
    }

    /// The public key as the HPKE library holds it.
    pub fn hpke_public(&self) -> &<X25519HkdfSha256 as hpke::Kem>::PublicKey {
        &self.public
    }
}

fn check_suite(kem: u32, kdf: u32, aead: u32) -> Result<(), SealError> {
    if (kem, kdf, aead) == (KEM_ID, KDF_ID, AEAD_ID) {
        Ok(())
    } else {
        Err(SealError::UnsupportedSuite { kem, kdf, aead })
    }
}

/// The request header, authenticated with the body.
fn request_aad(req: &SealedRequest) -> Vec<u8> {
    let mut aad = REQUEST_AAD.to_vec();
    for id in [req.kem_id, req.kdf_id, req.aead_id] {
        aad.extend_from_slice(&id.to_be_bytes());
    }
    aad.extend_from_slice(&req.recipient_public_key);
    aad
}

struct ChunkKeys {
    key: Zeroizing<[u8; 32]>,
    nonce_base: Zeroizing<[u8; 12]>,
}

impl ChunkKeys {
    fn export(
        mut export: impl FnMut(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    ) -> Result<Self, SealError> {
        let mut key = Zeroizing::new([0u8; 32]);
        let mut nonce_base = Zeroizing::new([0u8; 12]);
        export(EXPORT_KEY, key.as_mut_slice()).map_err(|e| SealError::Hpke(e.to_string()))?;
        export(EXPORT_NONCE, nonce_base.as_mut_slice())
            .map_err(|e| SealError::Hpke(e.to_string()))?;
        Ok(Self { key, nonce_base })
    }

    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut n = *self.nonce_base;
        for (b, s) in n.iter_mut().skip(4).zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn aad(seq: u64, last: bool) -> Vec<u8> {
        let mut aad = CHUNK_AAD.to_vec();
        aad.extend_from_slice(&seq.to_be_bytes());
        aad.push(u8::from(last));
        aad
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(*self.key))
    }
}

/// The enclave's side of an answer: seals chunks in order.
pub struct ResponseSealer {
    keys: ChunkKeys,
    next: u64,
    finished: bool,
}

impl std::fmt::Debug for ResponseSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseSealer")
            .field("next", &self.next)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl ResponseSealer {
    /// Seal the next chunk; `last` marks the final one (no chunk may follow it).
    pub fn seal(&mut self, plaintext: &[u8], last: bool) -> Result<SealedChunk, SealError> {
        if self.finished {
            return Err(SealError::AfterLast);
        }
        let seq = self.next;
        let nonce = self.keys.nonce(seq);
        let aad = ChunkKeys::aad(seq, last);
        let ciphertext = self
            .keys
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Hpke("chunk encryption failed".into()))?;
        self.next += 1;
        self.finished = last;
        Ok(SealedChunk {
            seq,
            last,
            ciphertext,
        })
    }
}

/// The client's side: seal a request, then open the answer's chunks in order.
pub struct RequestSealer {
    keys: ChunkKeys,
    next: u64,
    finished: bool,
}

impl std::fmt::Debug for RequestSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSealer")
            .field("next", &self.next)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// Seal `body` to `recipient` (the attested HPKE public key).
pub fn seal_request(
    recipient: &[u8],
    body: &[u8],
) -> Result<(SealedRequest, RequestSealer), SealError> {
    seal_request_with(recipient, body, &mut rand_core::OsRng.unwrap_err())
}

/// [`seal_request`] with a chosen RNG.
pub fn seal_request_with<R: RngCore + CryptoRng>(
    recipient: &[u8],
    body: &[u8],
    rng: &mut R,
) -> Result<(SealedRequest, RequestSealer), SealError> {
    let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| SealError::Malformed("recipient public key"))?;
    let (enc, mut ctx) = hpke::setup_sender::<HpkeChaCha, HkdfSha256, X25519HkdfSha256, _>(
        &OpModeS::Base,
        &pk,
        INFO,
        rng,
    )
    .map_err(|e| SealError::Hpke(e.to_string()))?;
    let mut req = SealedRequest {
        kem_id: KEM_ID,
        kdf_id: KDF_ID,
        aead_id: AEAD_ID,
        recipient_public_key: recipient.to_vec(),
        enc: enc.to_bytes().to_vec(),
        ciphertext: Vec::new(),
    };
    req.ciphertext = ctx
        .seal(body, &request_aad(&req))
        .map_err(|e| SealError::Hpke(e.to_string()))?;
    let keys = ChunkKeys::export(|label, out| ctx.export(label, out))?;
    Ok((
        req,
        RequestSealer {
            keys,
            next: 0,
            finished: false,
        },
    ))
}

impl RequestSealer {
    /// Open the next chunk. Returns the plaintext and whether it was the last.
    pub fn open(&mut self, chunk: &SealedChunk) -> Result<(Zeroizing<Vec<u8>>, bool), SealError> {
        if self.finished {
            return Err(SealError::AfterLast);
        }
        if chunk.seq != self.next {
            return Err(SealError::OutOfOrder {
                expected: self.next,
                got: chunk.seq,
            });
        }
        let nonce = self.keys.nonce(chunk.seq);
        let aad = ChunkKeys::aad(chunk.seq, chunk.last);
        let plain = self
            .keys
            .cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &chunk.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Authentication("an answer chunk"))?;
        self.next += 1;
        self.finished = chunk.last;
        Ok((Zeroizing::new(plain), chunk.last))
    }

    /// Call when the stream ends: an error unless the last chunk arrived.
    pub fn finish(&self) -> Result<(), SealError> {
        if self.finished {
            Ok(())
        } else {
            Err(SealError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (HpkeKeyPair, SealedRequest, RequestSealer) {
        let kp = HpkeKeyPair::generate();
        let (req, client) =
            seal_request(kp.public_key(), b"{\"prompt\":\"canary\"}").expect("seal");
        (kp, req, client)
    }

    #[test]
    fn round_trip_request_and_chunks() {
        let (kp, req, mut client) = pair();
        assert!(!req.ciphertext.windows(6).any(|w| w == b"canary"));
        let (body, mut server) = kp.open_request(&req).expect("open");
        assert_eq!(body.as_slice(), b"{\"prompt\":\"canary\"}");
        let c0 = server.seal(b"hello", false).expect("seal");
        let c1 = server.seal(b" world", true).expect("seal");
        assert!(server.seal(b"more", false).is_err());
        assert_eq!(client.open(&c0).expect("open").0.as_slice(), b"hello");
        assert!(
            client.finish().is_err(),
            "not finished before the last chunk"
        );
        let (p, last) = client.open(&c1).expect("open");
        assert!(last && p.as_slice() == b" world");
        assert!(client.finish().is_ok());
        assert_eq!(client.open(&c1), Err(SealError::AfterLast));
    }

    #[test]
    fn tamper_replay_reorder_drop_and_wrong_key_are_detected() {
        let (kp, req, _) = pair();
        let (_, mut server) = kp.open_request(&req).expect("open");
        let chunks: Vec<SealedChunk> = (0..3)
            .map(|i| {
                server
                    .seal(format!("c{i}").as_bytes(), i == 2)
                    .expect("seal")
            })
            .collect();

        // Tampered ciphertext.
        let (kp2, req2, mut client2) = pair();
        let (_, mut server2) = kp2.open_request(&req2).expect("open");
        let mut c = server2.seal(b"x", false).expect("seal");
        if let Some(b) = c.ciphertext.first_mut() {
            *b ^= 1;
        }
        assert_eq!(
            client2.open(&c),
            Err(SealError::Authentication("an answer chunk"))
        );

        // Flipping the last flag breaks authentication too.
        let (kp3, req3, mut client3) = pair();
        let (_, mut server3) = kp3.open_request(&req3).expect("open");
        let mut c = server3.seal(b"x", false).expect("seal");
        c.last = true;
        assert!(matches!(
            client3.open(&c),
            Err(SealError::Authentication(_))
        ));

        // Replay and drop.
        let (kp4, req4, mut client4) = pair();
        let (_, mut server4) = kp4.open_request(&req4).expect("open");
        let c0 = server4.seal(b"a", false).expect("seal");
        let c1 = server4.seal(b"b", false).expect("seal");
        let c2 = server4.seal(b"c", true).expect("seal");
        client4.open(&c0).expect("first");
        assert_eq!(
            client4.open(&c0),
            Err(SealError::OutOfOrder {
                expected: 1,
                got: 0
            })
        );
        assert_eq!(
            client4.open(&c2),
            Err(SealError::OutOfOrder {
                expected: 1,
                got: 2
            })
        );
        client4.open(&c1).expect("second");
        assert_eq!(
            client4.finish(),
            Err(SealError::Truncated),
            "last chunk dropped"
        );

        // Chunks of one conversation do not open in another.
        let (_, _, mut other) = pair();
        assert!(matches!(
            other.open(chunks.first().expect("chunk")),
            Err(SealError::Authentication(_))
        ));

        // A request sealed to another key is refused, and a forged recipient field fails AEAD.
        let (_, req5, _) = pair();
        assert_eq!(
            kp.open_request(&req5).err(),
            Some(SealError::WrongRecipient)
        );
        let mut forged = req5.clone();
        forged.recipient_public_key = kp.public_key().to_vec();
        assert!(matches!(
            kp.open_request(&forged),
            Err(SealError::Authentication(_))
        ));

        // Unknown suites are refused.
        let mut odd = req.clone();
        odd.aead_id = 1;
        assert!(matches!(
            kp.open_request(&odd),
            Err(SealError::UnsupportedSuite { .. })
        ));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let (kp, _, client) = pair();
        let s = format!("{kp:?} {client:?}");
        assert!(s.contains("<redacted>"));
        assert!(!s.contains(&hex::encode(kp.private.to_bytes())));
    }
}
