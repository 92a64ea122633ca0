//! Sealed prompts and sealed answers.
//!
//! - A client sets up one HPKE context (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256),
//!   HKDF-SHA256, ChaCha20-Poly1305) to the enclave's attested public key: a [`SealingSession`].
//!   Its requests are numbered 0, 1, 2, ...; request `n`'s keys are exported from that context
//!   under a label that carries `n`, so every request has keys of its own, and requests of one
//!   session may travel concurrently and arrive in any order.
//! - The request body is sealed (ChaCha20-Poly1305) under request `n`'s body key, so it stays
//!   confidential across every hop that terminates TLS.
//! - The answer travels as numbered chunks, each sealed under request `n`'s answer key. Chunk `i`
//!   uses nonce `base XOR i` and authenticates `i` and the `last` flag as associated data, so the
//!   client detects a tampered, replayed, reordered or dropped chunk, and a stream that ends
//!   without its last one.
//! - Every request carries the session's encapsulated key, so the enclave needs no state to open
//!   it. It keeps the contexts it has opened in a bounded cache ([`HpkeKeyPair`]), so a session's
//!   later requests cost no X25519 at all; a request number it has already opened in a cached
//!   session is refused as a replay. A lone request is a session of one.
//!
//! Secrets (private keys, HPKE contexts, exported keys) are zeroized on drop and never printed.
//! The exact encoding is in `docs/protocol.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hpke::aead::{AeadCtxR, AeadCtxS, ChaCha20Poly1305 as HpkeChaCha};
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
/// HPKE `info` of a session's context.
pub const INFO: &[u8] = b"chrysalis/sealed-request/v2";
/// Exporter context of request `n`'s keys: this label, then `u64be(n)`.
const EXPORT_REQUEST: &[u8] = b"chrysalis/sealed-request/v2/keys";
const REQUEST_AAD: &[u8] = b"chrysalis/sealed-request/v2/aad";
const CHUNK_AAD: &[u8] = b"chrysalis/response/v2/chunk\0";
/// Bytes exported per request: body key and nonce, answer key and nonce base.
const EXPORT_LEN: usize = 2 * (32 + 12);

/// How many opened sessions the enclave keeps at most.
pub const MAX_SESSIONS: usize = 4096;
/// How long an opened session stays cached without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(600);
/// How far behind the newest request number of a cached session a request may be (requests of
/// one session travel concurrently, so they may overtake each other by this much).
pub const REPLAY_WINDOW: u64 = 1024;

/// HPKE's receiver context of our suite.
type Receiver = AeadCtxR<HpkeChaCha, HkdfSha256, X25519HkdfSha256>;
/// HPKE's sender context of our suite.
type Sender = AeadCtxS<HpkeChaCha, HkdfSha256, X25519HkdfSha256>;
/// An encapsulated key, the name of a session.
type Enc = [u8; 32];

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
    /// A request number of a session that was already opened.
    #[error("request {0} of this sealing session was already received (replayed)")]
    ReplayedRequest(u64),
    /// A request number too far behind the session's newest to tell whether it was seen.
    #[error(
        "request {got} of this sealing session is more than {REPLAY_WINDOW} behind request \
         {newest}: refused, as it cannot be told from a replay (start a new session)"
    )]
    StaleRequest {
        /// The request's number.
        got: u64,
        /// The newest number seen in the session.
        newest: u64,
    },
    /// The session has sealed as many requests as its numbers allow.
    #[error("this sealing session has no request numbers left: start a new one")]
    SessionExhausted,
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

fn hpke_error(e: hpke::HpkeError) -> SealError {
    SealError::Hpke(e.to_string())
}

/// The enclave's HPKE key pair, and the sessions opened with it. The private key and the
/// sessions' contexts are zeroized on drop and never printed.
pub struct HpkeKeyPair {
    private: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    public: <X25519HkdfSha256 as hpke::Kem>::PublicKey,
    public_bytes: [u8; 32],
    sessions: Mutex<Sessions>,
}

impl std::fmt::Debug for HpkeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HpkeKeyPair")
            .field("public", &hex::encode(self.public_bytes))
            .field("private", &"<redacted>")
            .field("cached_sessions", &self.cached_sessions())
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
        Self::with_cache(rng, MAX_SESSIONS, SESSION_IDLE)
    }

    fn with_cache<R: RngCore + CryptoRng>(rng: &mut R, capacity: usize, idle: Duration) -> Self {
        let (private, public) = X25519HkdfSha256::gen_keypair(rng);
        let mut public_bytes = [0u8; 32];
        public_bytes.copy_from_slice(&public.to_bytes());
        Self {
            private,
            public,
            public_bytes,
            sessions: Mutex::new(Sessions {
                map: HashMap::new(),
                capacity: capacity.max(1),
                idle,
            }),
        }
    }

    /// The public key (32 bytes).
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_bytes
    }

    /// The public key as the HPKE library holds it.
    pub fn hpke_public(&self) -> &<X25519HkdfSha256 as hpke::Kem>::PublicKey {
        &self.public
    }

    /// How many sessions are cached now.
    pub fn cached_sessions(&self) -> usize {
        self.lock_sessions().map.len()
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // Every update leaves the map consistent, so a panic while it was held cannot tear it.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open a sealed request: its plaintext body and the context to seal the answer with.
    pub fn open_request(
        &self,
        req: &SealedRequest,
    ) -> Result<(Zeroizing<Vec<u8>>, ResponseSealer), SealError> {
        self.open_request_at(req, Instant::now())
    }

    fn open_request_at(
        &self,
        req: &SealedRequest,
        now: Instant,
    ) -> Result<(Zeroizing<Vec<u8>>, ResponseSealer), SealError> {
        check_suite(req.kem_id, req.kdf_id, req.aead_id)?;
        if req.recipient_public_key.as_slice() != self.public_bytes.as_slice() {
            return Err(SealError::WrongRecipient);
        }
        let enc: Enc = req
            .enc
            .as_slice()
            .try_into()
            .map_err(|_| SealError::Malformed("encapsulated key"))?;
        let cached = self.lock_sessions().get(&enc, now);
        let ctx = match cached {
            Some(ctx) => ctx,
            // The X25519 work runs outside the lock.
            None => Arc::new(self.decapsulate(&enc)?),
        };
        let (body_keys, answer_keys) = request_keys(|l, o| ctx.export(l, o), req.request_number)?;
        let body = Zeroizing::new(
            body_keys
                .open(0, &request_aad(req), &req.ciphertext)
                .map_err(|_| SealError::Authentication("the sealed request"))?,
        );
        // Only an authenticated request enters the cache or counts against replays.
        self.lock_sessions()
            .accept(enc, ctx, req.request_number, now)?;
        Ok((body, ResponseSealer(Chunks::new(answer_keys))))
    }

    fn decapsulate(&self, enc: &Enc) -> Result<Receiver, SealError> {
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(enc)
            .map_err(|_| SealError::Malformed("encapsulated key"))?;
        hpke::setup_receiver::<HpkeChaCha, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.private,
            &enc,
            INFO,
        )
        .map_err(hpke_error)
    }
}

/// The enclave's opened sessions, by encapsulated key.
struct Sessions {
    map: HashMap<Enc, Opened>,
    capacity: usize,
    idle: Duration,
}

struct Opened {
    ctx: Arc<Receiver>,
    last_used: Instant,
    seen: ReplayWindow,
}

impl Sessions {
    /// A live session's context, if cached.
    fn get(&mut self, enc: &Enc, now: Instant) -> Option<Arc<Receiver>> {
        let idle = self.idle;
        match self.map.get(enc) {
            Some(s) if now.saturating_duration_since(s.last_used) < idle => {
                Some(Arc::clone(&s.ctx))
            }
            Some(_) => {
                self.map.remove(enc);
                None
            }
            None => None,
        }
    }

    /// Record request `n` of session `enc` as opened: refused if already seen. A session not
    /// cached yet (or raced in by a concurrent request) is added, making room if need be.
    fn accept(
        &mut self,
        enc: Enc,
        ctx: Arc<Receiver>,
        n: u64,
        now: Instant,
    ) -> Result<(), SealError> {
        if !self.map.contains_key(&enc) && self.map.len() >= self.capacity {
            self.make_room(now);
        }
        let s = self.map.entry(enc).or_insert_with(|| Opened {
            ctx,
            last_used: now,
            seen: ReplayWindow::default(),
        });
        s.seen.accept(n)?;
        s.last_used = s.last_used.max(now);
        Ok(())
    }

    /// Drop idle sessions; if that frees nothing, the least recently used eighth, so that a
    /// full cache pays one scan per `capacity / 8` new sessions rather than one per session.
    fn make_room(&mut self, now: Instant) {
        let idle = self.idle;
        self.map
            .retain(|_, s| now.saturating_duration_since(s.last_used) < idle);
        if self.map.len() < self.capacity {
            return;
        }
        let mut by_age: Vec<(Instant, Enc)> =
            self.map.iter().map(|(k, s)| (s.last_used, *k)).collect();
        let drop = (self.capacity / 8).max(1).min(by_age.len());
        if let Some(nth) = drop.checked_sub(1) {
            by_age.select_nth_unstable_by_key(nth, |(t, _)| *t);
        }
        for (_, k) in by_age.iter().take(drop) {
            self.map.remove(k);
        }
    }
}

/// The request numbers of a session seen within the last [`REPLAY_WINDOW`]: a ring of bits,
/// bit `n % REPLAY_WINDOW` for number `n`.
struct ReplayWindow {
    /// One past the newest number seen (0: none yet).
    top: u64,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            top: 0,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }
}

impl ReplayWindow {
    /// Number `n`'s word and bit. The word's index is below `REPLAY_WINDOW / 64`, the array's
    /// length.
    #[allow(clippy::indexing_slicing)]
    fn slot(&mut self, n: u64) -> (&mut u64, u64) {
        let i = n % REPLAY_WINDOW;
        (&mut self.bits[(i / 64) as usize], 1 << (i % 64))
    }

    fn accept(&mut self, n: u64) -> Result<(), SealError> {
        // Clients never use the last number (it would leave `top` nowhere to go).
        if n == u64::MAX {
            return Err(SealError::Malformed("request number"));
        }
        if n >= self.top {
            // The numbers from `top` to `n` take the slots of numbers that leave the window.
            if n - self.top >= REPLAY_WINDOW {
                self.bits = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                for m in self.top..=n {
                    let (word, bit) = self.slot(m);
                    *word &= !bit;
                }
            }
            self.top = n + 1;
        } else if self.top - n > REPLAY_WINDOW {
            return Err(SealError::StaleRequest {
                got: n,
                newest: self.top - 1,
            });
        }
        let (word, bit) = self.slot(n);
        if *word & bit != 0 {
            return Err(SealError::ReplayedRequest(n));
        }
        *word |= bit;
        Ok(())
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
    aad.extend_from_slice(&req.request_number.to_be_bytes());
    aad
}

/// Request `n`'s body keys and answer keys, exported from the session's context.
fn request_keys(
    export: impl FnOnce(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    n: u64,
) -> Result<(AeadKeys, AeadKeys), SealError> {
    let mut label = EXPORT_REQUEST.to_vec();
    label.extend_from_slice(&n.to_be_bytes());
    let mut out = Zeroizing::new([0u8; EXPORT_LEN]);
    export(&label, out.as_mut_slice()).map_err(hpke_error)?;
    let (body_key, rest) = out.split_at(32);
    let (body_nonce, rest) = rest.split_at(12);
    let (answer_key, answer_nonce) = rest.split_at(32);
    Ok((
        AeadKeys::new(body_key, body_nonce),
        AeadKeys::new(answer_key, answer_nonce),
    ))
}

/// A ChaCha20-Poly1305 key and nonce base; message `i` uses nonce `base XOR i`.
struct AeadKeys {
    cipher: ChaCha20Poly1305,
    nonce_base: Zeroizing<[u8; 12]>,
}

impl AeadKeys {
    /// From a 32-byte key and a 12-byte nonce base.
    fn new(key_bytes: &[u8], nonce_bytes: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        let mut nonce_base = Zeroizing::new([0u8; 12]);
        key.copy_from_slice(key_bytes);
        nonce_base.copy_from_slice(nonce_bytes);
        Self {
            cipher: ChaCha20Poly1305::new(&Key::from(*key)),
            nonce_base,
        }
    }

    fn nonce(&self, seq: u64) -> Nonce {
        let mut n = *self.nonce_base;
        for (b, s) in n.iter_mut().skip(4).zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::from(n)
    }

    fn seal(&self, seq: u64, aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, SealError> {
        self.cipher
            .encrypt(&self.nonce(seq), Payload { msg, aad })
            .map_err(|_| SealError::Hpke("encryption failed".into()))
    }

    fn open(&self, seq: u64, aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, chacha20poly1305::Error> {
        self.cipher.decrypt(&self.nonce(seq), Payload { msg, aad })
    }
}

/// One direction of an answer: numbered chunks, the last one marked.
struct Chunks {
    keys: AeadKeys,
    next: u64,
    finished: bool,
}

impl Chunks {
    fn new(keys: AeadKeys) -> Self {
        Self {
            keys,
            next: 0,
            finished: false,
        }
    }

    fn aad(seq: u64, last: bool) -> Vec<u8> {
        let mut aad = CHUNK_AAD.to_vec();
        aad.extend_from_slice(&seq.to_be_bytes());
        aad.push(u8::from(last));
        aad
    }

    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("next", &self.next)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// The enclave's side of an answer: seals chunks in order.
pub struct ResponseSealer(Chunks);

impl std::fmt::Debug for ResponseSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("ResponseSealer", f)
    }
}

impl ResponseSealer {
    /// Seal the next chunk; `last` marks the final one (no chunk may follow it).
    pub fn seal(&mut self, plaintext: &[u8], last: bool) -> Result<SealedChunk, SealError> {
        let c = &mut self.0;
        if c.finished {
            return Err(SealError::AfterLast);
        }
        let seq = c.next;
        let ciphertext = c.keys.seal(seq, &Chunks::aad(seq, last), plaintext)?;
        c.next += 1;
        c.finished = last;
        Ok(SealedChunk {
            seq,
            last,
            ciphertext,
        })
    }
}

/// The client's side of one request's answer: opens its chunks in order.
pub struct RequestSealer(Chunks);

impl std::fmt::Debug for RequestSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("RequestSealer", f)
    }
}

impl RequestSealer {
    /// Open the next chunk. Returns the plaintext and whether it was the last.
    pub fn open(&mut self, chunk: &SealedChunk) -> Result<(Zeroizing<Vec<u8>>, bool), SealError> {
        let c = &mut self.0;
        if c.finished {
            return Err(SealError::AfterLast);
        }
        if chunk.seq != c.next {
            return Err(SealError::OutOfOrder {
                expected: c.next,
                got: chunk.seq,
            });
        }
        let plain = c
            .keys
            .open(
                chunk.seq,
                &Chunks::aad(chunk.seq, chunk.last),
                &chunk.ciphertext,
            )
            .map_err(|_| SealError::Authentication("an answer chunk"))?;
        c.next += 1;
        c.finished = chunk.last;
        Ok((Zeroizing::new(plain), chunk.last))
    }

    /// Call when the stream ends: an error unless the last chunk arrived.
    pub fn finish(&self) -> Result<(), SealError> {
        if self.0.finished {
            Ok(())
        } else {
            Err(SealError::Truncated)
        }
    }
}

/// A client's HPKE context to one enclave key: seals any number of requests, each with keys of
/// its own, at the cost of one encapsulation (two X25519 multiplications) for all of them.
/// Shareable between tasks: request numbers come from an atomic counter.
pub struct SealingSession {
    ctx: Sender,
    recipient: [u8; 32],
    enc: Enc,
    next: AtomicU64,
}

impl std::fmt::Debug for SealingSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingSession")
            .field("recipient", &hex::encode(self.recipient))
            .field("requests_sealed", &self.requests_sealed())
            .field("context", &"<redacted>")
            .finish()
    }
}

impl SealingSession {
    /// A session to `recipient` (the attested HPKE public key), from the OS's CSPRNG.
    pub fn new(recipient: &[u8]) -> Result<Self, SealError> {
        Self::new_with(recipient, &mut rand_core::OsRng.unwrap_err())
    }

    /// [`SealingSession::new`] with a chosen RNG.
    pub fn new_with<R: RngCore + CryptoRng>(
        recipient: &[u8],
        rng: &mut R,
    ) -> Result<Self, SealError> {
        let recipient: [u8; 32] = recipient
            .try_into()
            .map_err(|_| SealError::Malformed("recipient public key"))?;
        let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&recipient)
            .map_err(|_| SealError::Malformed("recipient public key"))?;
        let (enc, ctx) = hpke::setup_sender::<HpkeChaCha, HkdfSha256, X25519HkdfSha256, _>(
            &OpModeS::Base,
            &pk,
            INFO,
            rng,
        )
        .map_err(hpke_error)?;
        let enc_bytes = enc.to_bytes();
        let enc: Enc = (&*enc_bytes)
            .try_into()
            .map_err(|_| SealError::Malformed("encapsulated key"))?;
        Ok(Self {
            ctx,
            recipient,
            enc,
            next: AtomicU64::new(0),
        })
    }

    /// The public key the session seals to.
    pub fn recipient(&self) -> &[u8; 32] {
        &self.recipient
    }

    /// How many requests it has sealed.
    pub fn requests_sealed(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Seal `body` as the session's next request; the returned sealer opens its answer.
    pub fn seal(&self, body: &[u8]) -> Result<(SealedRequest, RequestSealer), SealError> {
        let n = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                n.checked_add(1).filter(|&next| next < u64::MAX)
            })
            .map_err(|_| SealError::SessionExhausted)?;
        let (body_keys, answer_keys) = request_keys(|l, o| self.ctx.export(l, o), n)?;
        let mut req = SealedRequest {
            kem_id: KEM_ID,
            kdf_id: KDF_ID,
            aead_id: AEAD_ID,
            recipient_public_key: self.recipient.to_vec(),
            enc: self.enc.to_vec(),
            ciphertext: Vec::new(),
            request_number: n,
        };
        req.ciphertext = body_keys.seal(0, &request_aad(&req), body)?;
        Ok((req, RequestSealer(Chunks::new(answer_keys))))
    }
}

/// Seal `body` to `recipient` (the attested HPKE public key) as a session of one.
pub fn seal_request(
    recipient: &[u8],
    body: &[u8],
) -> Result<(SealedRequest, RequestSealer), SealError> {
    SealingSession::new(recipient)?.seal(body)
}

/// [`seal_request`] with a chosen RNG.
pub fn seal_request_with<R: RngCore + CryptoRng>(
    recipient: &[u8],
    body: &[u8],
    rng: &mut R,
) -> Result<(SealedRequest, RequestSealer), SealError> {
    SealingSession::new_with(recipient, rng)?.seal(body)
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

    fn body(i: u64) -> Vec<u8> {
        format!("{{\"prompt\":\"request {i}\"}}").into_bytes()
    }

    #[test]
    fn a_session_seals_many_requests_over_one_context_in_any_order() {
        let kp = HpkeKeyPair::generate();
        let session = SealingSession::new(kp.public_key()).expect("session");
        let sealed: Vec<_> = (0..3)
            .map(|i| session.seal(&body(i)).expect("seal"))
            .collect();
        assert_eq!(session.requests_sealed(), 3);
        let mut answers = Vec::new();
        for i in [2, 0, 1] {
            let (req, _) = sealed.get(i).expect("request");
            assert_eq!(req.request_number, i as u64);
            assert_eq!(
                req.enc,
                sealed.first().expect("first").0.enc,
                "one encapsulation"
            );
            let (plain, mut server) = kp.open_request(req).expect("open");
            assert_eq!(plain.as_slice(), body(i as u64).as_slice());
            answers.push((
                i,
                server
                    .seal(format!("answer {i}").as_bytes(), true)
                    .expect("seal"),
            ));
        }
        assert_eq!(kp.cached_sessions(), 1);
        for (i, chunk) in &answers {
            // Each request's answer opens with its own sealer only.
            let other = (i + 1) % 3;
            let mut wrong = RequestSealer(Chunks::new(
                request_keys(|l, o| session.ctx.export(l, o), other as u64)
                    .expect("keys")
                    .1,
            ));
            assert!(matches!(
                wrong.open(chunk),
                Err(SealError::Authentication(_))
            ));
        }
        let mut sealed = sealed;
        for (i, chunk) in answers {
            let (_, opener) = sealed.get_mut(i).expect("request");
            let (plain, last) = opener.open(&chunk).expect("own answer");
            assert!(last);
            assert_eq!(plain.as_slice(), format!("answer {i}").as_bytes());
        }
    }

    #[test]
    fn a_replayed_or_renumbered_request_is_refused() {
        let kp = HpkeKeyPair::generate();
        let session = SealingSession::new(kp.public_key()).expect("session");
        let (r0, _) = session.seal(&body(0)).expect("seal");
        let (r1, _) = session.seal(&body(1)).expect("seal");
        kp.open_request(&r0).expect("open");
        assert_eq!(
            kp.open_request(&r0).err(),
            Some(SealError::ReplayedRequest(0))
        );
        // A request number changed in transit selects other keys: it fails to authenticate,
        // and the genuine request with that number still opens afterwards.
        let mut renumbered = r0.clone();
        renumbered.request_number = 1;
        assert_eq!(
            kp.open_request(&renumbered).err(),
            Some(SealError::Authentication("the sealed request"))
        );
        let (plain, _) = kp.open_request(&r1).expect("request 1");
        assert_eq!(plain.as_slice(), body(1).as_slice());
        // A request whose body fails to authenticate never enters the cache.
        let other = SealingSession::new(kp.public_key()).expect("session");
        let (mut bad, _) = other.seal(&body(0)).expect("seal");
        if let Some(b) = bad.ciphertext.first_mut() {
            *b ^= 1;
        }
        assert!(matches!(
            kp.open_request(&bad),
            Err(SealError::Authentication(_))
        ));
        assert_eq!(kp.cached_sessions(), 1);
    }

    #[test]
    fn the_replay_window_tracks_numbers_across_its_ring() {
        let mut w = ReplayWindow::default();
        for n in [0, 5, 3, 1023, 1024, 2000] {
            w.accept(n).expect("new number");
        }
        // 2000 is newest: 977..=2000 are in the window.
        assert_eq!(w.accept(1024), Err(SealError::ReplayedRequest(1024)));
        assert_eq!(w.accept(2000), Err(SealError::ReplayedRequest(2000)));
        // 1023 shares its slot with 2047, which has not come: it is still marked as seen.
        assert_eq!(w.accept(1023), Err(SealError::ReplayedRequest(1023)));
        w.accept(977).expect("oldest in the window, unseen");
        assert_eq!(
            w.accept(976),
            Err(SealError::StaleRequest {
                got: 976,
                newest: 2000
            })
        );
        assert!(matches!(w.accept(3), Err(SealError::StaleRequest { .. })));
        // Slots freed by the window moving on hold new numbers, not stale ones.
        w.accept(2001 + 4).expect("jump within the window");
        w.accept(2003).expect("skipped, unseen");
        assert_eq!(w.accept(2003), Err(SealError::ReplayedRequest(2003)));
        // A jump past the whole window clears it.
        w.accept(10_000).expect("far jump");
        w.accept(10_000 - 1023).expect("unseen after the jump");
        assert_eq!(
            w.accept(u64::MAX),
            Err(SealError::Malformed("request number"))
        );
    }

    #[test]
    fn the_cache_is_bounded_and_an_evicted_session_still_opens() {
        let mut rng = rand_core::OsRng.unwrap_err();
        let idle = Duration::from_secs(60);
        let kp = HpkeKeyPair::with_cache(&mut rng, 2, idle);
        let sessions: Vec<SealingSession> = (0..3)
            .map(|_| SealingSession::new(kp.public_key()).expect("session"))
            .collect();
        let t0 = Instant::now();
        for (i, s) in sessions.iter().enumerate() {
            let (req, _) = s.seal(&body(0)).expect("seal");
            kp.open_request_at(&req, t0 + Duration::from_secs(i as u64))
                .expect("open");
        }
        assert_eq!(kp.cached_sessions(), 2, "the least recently used left");
        let first = sessions.first().expect("first");
        let evicted = |enc: &[u8]| {
            let e: Enc = enc.try_into().expect("32 bytes");
            !kp.lock_sessions().map.contains_key(&e)
        };
        assert!(evicted(&first.enc));
        // The evicted session's next request costs a decapsulation, nothing more.
        let (req, _) = first.seal(&body(1)).expect("seal");
        let (plain, _) = kp
            .open_request_at(&req, t0 + Duration::from_secs(3))
            .expect("opens again");
        assert_eq!(plain.as_slice(), body(1).as_slice());
        assert!(!evicted(&first.enc));
        // Idle sessions expire: a request after the idle time finds none cached and re-opens.
        let later = t0 + Duration::from_secs(3) + idle;
        let (req, _) = first.seal(&body(2)).expect("seal");
        kp.open_request_at(&req, later).expect("opens after expiry");
        let second = sessions.get(1).expect("second");
        let (req, _) = second.seal(&body(1)).expect("seal");
        kp.open_request_at(&req, later).expect("opens");
        assert_eq!(kp.cached_sessions(), 2);
    }

    #[test]
    fn a_full_cache_drops_its_least_recently_used_eighth() {
        let mut rng = rand_core::OsRng.unwrap_err();
        let kp = HpkeKeyPair::with_cache(&mut rng, 16, Duration::from_secs(60));
        let t0 = Instant::now();
        let sessions: Vec<SealingSession> = (0..17)
            .map(|_| SealingSession::new(kp.public_key()).expect("session"))
            .collect();
        for (i, s) in sessions.iter().enumerate() {
            let (req, _) = s.seal(&body(0)).expect("seal");
            kp.open_request_at(&req, t0 + Duration::from_millis(i as u64))
                .expect("open");
        }
        let cached: Vec<bool> = sessions
            .iter()
            .map(|s| kp.lock_sessions().map.contains_key(&s.enc))
            .collect();
        let mut expected = vec![true; 17];
        expected[0] = false;
        expected[1] = false;
        assert_eq!(cached, expected);
    }

    #[test]
    fn sessions_refuse_bad_keys_and_never_print_secrets() {
        assert_eq!(
            SealingSession::new(&[7; 31]).err(),
            Some(SealError::Malformed("recipient public key"))
        );
        let kp = HpkeKeyPair::generate();
        let s = SealingSession::new(kp.public_key()).expect("session");
        let printed = format!("{s:?} {kp:?}");
        assert!(printed.contains("<redacted>"));
        assert!(!printed.contains(&hex::encode(kp.private.to_bytes())));
        let mut exported = [0u8; 32];
        s.ctx.export(b"probe", &mut exported).expect("export");
        let (req, _) = s.seal(&body(0)).expect("seal");
        let mut short = req.clone();
        short.enc.pop();
        assert_eq!(
            kp.open_request(&short).err(),
            Some(SealError::Malformed("encapsulated key"))
        );
        assert!(!printed.contains(&hex::encode(exported)));
    }
}
