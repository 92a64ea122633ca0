//! SEV-SNP ID block and ID authentication block, for operators who sign their launch digest.
//!
//! At `SNP_LAUNCH_FINISH` the VMM may hand the firmware an ID block (the expected launch digest,
//! family and image ids, guest SVN and policy) and an authentication block with an ECDSA P-384
//! signature over it by the *ID key*, optionally endorsed by an *author key*. The firmware refuses
//! to launch a guest whose measurement or policy differs from the block, and reports the SHA-384
//! digests of the two public keys (`ID_KEY_DIGEST`, `AUTHOR_KEY_DIGEST`) in every attestation
//! report, so a verifier can accept "anything this operator signed" instead of one digest.
//!
//! Layouts (AMD SEV-SNP firmware ABI, `ID_BLOCK` and `ID_AUTH_INFO` of `SNP_LAUNCH_FINISH`, and
//! the ECDSA public key and signature formats of its appendix): all integers little-endian, the
//! curve coordinates and signature scalars little-endian in 72-byte fields. Signatures are
//! ECDSA P-384 over SHA-384, deterministic (RFC 6979), so the same inputs give the same bytes.
//! QEMU takes both blocks base64-encoded (`sev-snp-guest` properties `id-block`, `id-auth`,
//! `author-key-enabled`). Cross-checked against PyPI `sev-snp-measure`'s `snp-create-id-block`
//! (see `tests/data/snp-id/README.md`).

use p384::ecdsa::signature::{Signer, Verifier};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use super::MeasureError;

/// Length of the ID block.
pub const ID_BLOCK_LEN: usize = 96;
/// Length of the ID authentication block.
pub const ID_AUTH_LEN: usize = 4096;
/// Length of a public key in the firmware's format.
pub const PUBKEY_LEN: usize = 1028;
/// Length of a signature in the firmware's format.
pub const SIG_LEN: usize = 512;

/// `ID_KEY_ALGO` / `AUTH_KEY_ALGO`: ECDSA P-384 with SHA-384.
const ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Curve id of P-384 in a public key.
const CURVE_P384: u32 = 2;
/// Length of a coordinate or scalar field.
const FIELD: usize = 72;
/// Offsets in the authentication block.
const AUTH_ID_BLOCK_SIG: usize = 0x40;
const AUTH_ID_KEY: usize = 0x240;
const AUTH_ID_KEY_SIG: usize = 0x680;
const AUTH_AUTHOR_KEY: usize = 0x880;

/// The ID block's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdBlock {
    /// The expected launch digest (MEASUREMENT).
    pub launch_digest: [u8; 48],
    /// FAMILY_ID, reported back in the attestation report.
    pub family_id: [u8; 16],
    /// IMAGE_ID, reported back in the attestation report.
    pub image_id: [u8; 16],
    /// GUEST_SVN, reported back in the attestation report.
    pub guest_svn: u32,
    /// The guest policy; the launch fails unless it equals the policy the VM is started with.
    pub policy: u64,
}

impl IdBlock {
    /// The 96 bytes the firmware takes (VERSION is 1).
    pub fn to_bytes(&self) -> [u8; ID_BLOCK_LEN] {
        let mut b = [0u8; ID_BLOCK_LEN];
        b[0..48].copy_from_slice(&self.launch_digest);
        b[48..64].copy_from_slice(&self.family_id);
        b[64..80].copy_from_slice(&self.image_id);
        b[80..84].copy_from_slice(&1u32.to_le_bytes());
        b[84..88].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[88..96].copy_from_slice(&self.policy.to_le_bytes());
        b
    }

    /// Parse 96 bytes (VERSION must be 1).
    pub fn from_bytes(b: &[u8]) -> Result<Self, MeasureError> {
        let b: &[u8; ID_BLOCK_LEN] = b.try_into().map_err(|_| {
            id_err(format!(
                "ID block is {} bytes, expected {ID_BLOCK_LEN}",
                b.len()
            ))
        })?;
        let version = u32::from_le_bytes(arr(&b[80..84]));
        if version != 1 {
            return Err(id_err(format!("ID block version {version}, expected 1")));
        }
        Ok(Self {
            launch_digest: arr(&b[0..48]),
            family_id: arr(&b[48..64]),
            image_id: arr(&b[64..80]),
            guest_svn: u32::from_le_bytes(arr(&b[84..88])),
            policy: u64::from_le_bytes(arr(&b[88..96])),
        })
    }
}

/// A signed ID block, ready for the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedIdBlock {
    /// The ID block.
    pub id_block: [u8; ID_BLOCK_LEN],
    /// The authentication block.
    pub id_auth: Vec<u8>,
    /// SHA-384 of the ID public key: the report's ID_KEY_DIGEST.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author public key: the report's AUTHOR_KEY_DIGEST (with an author key).
    pub author_key_digest: Option<[u8; 48]>,
}

fn id_err(m: String) -> MeasureError {
    MeasureError::Snp(format!("ID block: {m}"))
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// Parse an ECDSA P-384 private key: PKCS#8 or SEC1 PEM (`openssl ecparam -name secp384r1
/// -genkey`), or PKCS#8 / SEC1 DER.
pub fn parse_private_key(data: &[u8]) -> Result<SigningKey, MeasureError> {
    use p384::pkcs8::DecodePrivateKey;
    let text = std::str::from_utf8(data).ok().map(str::trim_start);
    let key = match text {
        Some(t) if t.starts_with("-----BEGIN EC PRIVATE KEY-----") => {
            p384::SecretKey::from_sec1_pem(t).map_err(|e| e.to_string())
        }
        Some(t) if t.starts_with("-----BEGIN PRIVATE KEY-----") => {
            p384::SecretKey::from_pkcs8_pem(t).map_err(|e| e.to_string())
        }
        Some(t) if t.starts_with("-----BEGIN") => Err(
            "not an unencrypted EC private key (PEM \"EC PRIVATE KEY\" or \"PRIVATE KEY\")"
                .to_string(),
        ),
        _ => p384::SecretKey::from_pkcs8_der(data)
            .or_else(|_| p384::SecretKey::from_sec1_der(data))
            .map_err(|_| "neither a P-384 PKCS#8 nor a SEC1 key".to_string()),
    };
    key.map(SigningKey::from)
        .map_err(|e| id_err(format!("private key: {e} (SNP takes P-384 keys only)")))
}

/// A public key in the firmware's 1028-byte format.
pub fn encode_public_key(key: &VerifyingKey) -> [u8; PUBKEY_LEN] {
    let point = key.to_encoded_point(false);
    let mut b = [0u8; PUBKEY_LEN];
    b[0..4].copy_from_slice(&CURVE_P384.to_le_bytes());
    if let (Some(x), Some(y)) = (point.x(), point.y()) {
        b[4..4 + 48].copy_from_slice(x);
        b[4..4 + 48].reverse();
        b[4 + FIELD..4 + FIELD + 48].copy_from_slice(y);
        b[4 + FIELD..4 + FIELD + 48].reverse();
    }
    b
}

/// Parse a public key in the firmware's format.
pub fn decode_public_key(b: &[u8]) -> Result<VerifyingKey, MeasureError> {
    let b: &[u8; PUBKEY_LEN] = b
        .try_into()
        .map_err(|_| id_err(format!("public key is {} bytes", b.len())))?;
    let curve = u32::from_le_bytes(arr(&b[0..4]));
    if curve != CURVE_P384 {
        return Err(id_err(format!(
            "public key curve {curve}, expected 2 (P-384)"
        )));
    }
    let x = be48(&arr(&b[4..4 + FIELD]))
        .ok_or_else(|| id_err("public key X exceeds 48 bytes".into()))?;
    let y = be48(&arr(&b[4 + FIELD..4 + 2 * FIELD]))
        .ok_or_else(|| id_err("public key Y exceeds 48 bytes".into()))?;
    let point = p384::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    VerifyingKey::from_encoded_point(&point)
        .map_err(|_| id_err("public key is not a point on P-384".into()))
}

/// A 72-byte little-endian field as a 48-byte big-endian number (None if it is larger).
fn be48(le: &[u8; FIELD]) -> Option<[u8; 48]> {
    if le[48..].iter().any(|&b| b != 0) {
        return None;
    }
    let mut out: [u8; 48] = arr(&le[..48]);
    out.reverse();
    Some(out)
}

/// SHA-384 of a public key in the firmware's format (ID_KEY_DIGEST / AUTHOR_KEY_DIGEST).
pub fn key_digest(key: &VerifyingKey) -> [u8; 48] {
    Sha384::digest(encode_public_key(key)).into()
}

fn sign(key: &SigningKey, data: &[u8]) -> [u8; SIG_LEN] {
    let sig: Signature = key.sign(data);
    let (r, s) = sig.split_bytes();
    let mut b = [0u8; SIG_LEN];
    b[0..48].copy_from_slice(&r);
    b[0..48].reverse();
    b[FIELD..FIELD + 48].copy_from_slice(&s);
    b[FIELD..FIELD + 48].reverse();
    b
}

fn verify(
    key: &VerifyingKey,
    data: &[u8],
    sig: &[u8; SIG_LEN],
    what: &str,
) -> Result<(), MeasureError> {
    let bad = || id_err(format!("{what}: malformed signature"));
    let r = be48(&arr(&sig[0..FIELD])).ok_or_else(bad)?;
    let s = be48(&arr(&sig[FIELD..2 * FIELD])).ok_or_else(bad)?;
    let sig = Signature::from_scalars(r, s).map_err(|_| bad())?;
    key.verify(data, &sig)
        .map_err(|_| id_err(format!("{what}: the signature does not verify")))
}

/// Sign an ID block with the ID key, and the ID key with the author key when one is given.
pub fn sign_id_block(
    block: &IdBlock,
    id_key: &SigningKey,
    author_key: Option<&SigningKey>,
) -> SignedIdBlock {
    let id_block = block.to_bytes();
    let id_pub = encode_public_key(id_key.verifying_key());
    let mut auth = [0u8; ID_AUTH_LEN];
    auth[0..4].copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
    auth[AUTH_ID_BLOCK_SIG..AUTH_ID_BLOCK_SIG + SIG_LEN].copy_from_slice(&sign(id_key, &id_block));
    auth[AUTH_ID_KEY..AUTH_ID_KEY + PUBKEY_LEN].copy_from_slice(&id_pub);
    let author_key_digest = author_key.map(|a| {
        auth[4..8].copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
        auth[AUTH_ID_KEY_SIG..AUTH_ID_KEY_SIG + SIG_LEN].copy_from_slice(&sign(a, &id_pub));
        auth[AUTH_AUTHOR_KEY..AUTH_AUTHOR_KEY + PUBKEY_LEN]
            .copy_from_slice(&encode_public_key(a.verifying_key()));
        key_digest(a.verifying_key())
    });
    SignedIdBlock {
        id_block,
        id_auth: auth.to_vec(),
        id_key_digest: key_digest(id_key.verifying_key()),
        author_key_digest,
    }
}

/// An ID block whose signatures verified, with the key digests reports will carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedIdBlock {
    /// The block.
    pub block: IdBlock,
    /// ID_KEY_DIGEST.
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST, with the author key enabled.
    pub author_key_digest: Option<[u8; 48]>,
}

/// Check an ID block and its authentication block as the firmware does: the ID key's signature
/// over the block, and with `author_key_enabled` the author key's signature over the ID key.
/// Returns the key digests the attestation report will carry.
pub fn verify_id_block(
    id_block: &[u8],
    id_auth: &[u8],
    author_key_enabled: bool,
) -> Result<VerifiedIdBlock, MeasureError> {
    let block = IdBlock::from_bytes(id_block)?;
    let id_auth: &[u8; ID_AUTH_LEN] = id_auth.try_into().map_err(|_| {
        id_err(format!(
            "authentication block is {} bytes, expected {ID_AUTH_LEN}",
            id_auth.len()
        ))
    })?;
    let algo = u32::from_le_bytes(arr(&id_auth[0..4]));
    if algo != ALGO_ECDSA_P384_SHA384 {
        return Err(id_err(format!("ID_KEY_ALGO {algo}, expected 1")));
    }
    let id_pub = &id_auth[AUTH_ID_KEY..AUTH_ID_KEY + PUBKEY_LEN];
    let id_key = decode_public_key(id_pub)?;
    verify(
        &id_key,
        id_block,
        &arr(&id_auth[AUTH_ID_BLOCK_SIG..AUTH_ID_BLOCK_SIG + SIG_LEN]),
        "ID block signature",
    )?;
    let author = if author_key_enabled {
        let algo = u32::from_le_bytes(arr(&id_auth[4..8]));
        if algo != ALGO_ECDSA_P384_SHA384 {
            return Err(id_err(format!("AUTH_KEY_ALGO {algo}, expected 1")));
        }
        let author = decode_public_key(&id_auth[AUTH_AUTHOR_KEY..AUTH_AUTHOR_KEY + PUBKEY_LEN])?;
        verify(
            &author,
            id_pub,
            &arr(&id_auth[AUTH_ID_KEY_SIG..AUTH_ID_KEY_SIG + SIG_LEN]),
            "ID key signature by the author key",
        )?;
        Some(key_digest(&author))
    } else {
        None
    };
    Ok(VerifiedIdBlock {
        block,
        id_key_digest: key_digest(&id_key),
        author_key_digest: author,
    })
}

/// The file `chrysalis measure snp-id-block --json` writes and the host agent reads
/// (`snp_id_block = "FILE"` in a VM's configuration). Bytes are lowercase hex; the other fields
/// are what the bytes say, written out for people and checked against them on load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdBlockFile {
    /// Always [`ID_BLOCK_FORMAT`].
    pub format: String,
    /// The launch digest the block admits.
    pub launch_digest: String,
    /// FAMILY_ID.
    pub family_id: String,
    /// IMAGE_ID.
    pub image_id: String,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// The guest policy the block admits, e.g. `0x30000`.
    pub policy: String,
    /// Whether the author key signs the ID key (QEMU `author-key-enabled`).
    pub author_key_enabled: bool,
    /// The report's ID_KEY_DIGEST for this block.
    pub id_key_digest: String,
    /// The report's AUTHOR_KEY_DIGEST (with an author key).
    pub author_key_digest: Option<String>,
    /// The ID block, 96 bytes.
    pub id_block: String,
    /// The authentication block, 4096 bytes.
    pub id_auth: String,
}

/// Format tag of [`IdBlockFile`].
pub const ID_BLOCK_FORMAT: &str = "chrysalis-snp-id-block/v1";

impl IdBlockFile {
    /// The file for a signed block.
    pub fn new(signed: &SignedIdBlock) -> Result<Self, MeasureError> {
        let b = IdBlock::from_bytes(&signed.id_block)?;
        Ok(Self {
            format: ID_BLOCK_FORMAT.into(),
            launch_digest: hex::encode(b.launch_digest),
            family_id: hex::encode(b.family_id),
            image_id: hex::encode(b.image_id),
            guest_svn: b.guest_svn,
            policy: format!("{:#x}", b.policy),
            author_key_enabled: signed.author_key_digest.is_some(),
            id_key_digest: hex::encode(signed.id_key_digest),
            author_key_digest: signed.author_key_digest.map(hex::encode),
            id_block: hex::encode(signed.id_block),
            id_auth: hex::encode(&signed.id_auth),
        })
    }

    /// Decode, verify the signatures, and check that the written-out fields say what the bytes
    /// say. Returns the verified block and the raw bytes (ID block, authentication block).
    pub fn check(&self) -> Result<(VerifiedIdBlock, Vec<u8>, Vec<u8>), MeasureError> {
        if self.format != ID_BLOCK_FORMAT {
            return Err(id_err(format!(
                "format {:?}, expected {ID_BLOCK_FORMAT:?}",
                self.format
            )));
        }
        let unhex = |what: &str, s: &str| {
            hex::decode(s).map_err(|e| id_err(format!("{what}: not hex: {e}")))
        };
        let block_bytes = unhex("id_block", &self.id_block)?;
        let auth_bytes = unhex("id_auth", &self.id_auth)?;
        let v = verify_id_block(&block_bytes, &auth_bytes, self.author_key_enabled)?;
        let signed = SignedIdBlock {
            id_block: v.block.to_bytes(),
            id_auth: auth_bytes.clone(),
            id_key_digest: v.id_key_digest,
            author_key_digest: v.author_key_digest,
        };
        if Self::new(&signed)? != *self {
            return Err(id_err(
                "the file's fields do not match its id_block and id_auth bytes".into(),
            ));
        }
        Ok((v, block_bytes, auth_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        let mut b = [0u8; 48];
        b[47] = seed;
        b[0] = 0x11;
        SigningKey::from_slice(&b).expect("valid scalar")
    }

    fn block() -> IdBlock {
        IdBlock {
            launch_digest: [0xab; 48],
            family_id: [1; 16],
            image_id: [2; 16],
            guest_svn: 7,
            policy: 0x30000,
        }
    }

    #[test]
    fn round_trip_and_deterministic() {
        let (id, author) = (key(1), key(2));
        let a = sign_id_block(&block(), &id, Some(&author));
        let b = sign_id_block(&block(), &id, Some(&author));
        assert_eq!(a, b, "RFC 6979 signing is deterministic");
        let v = verify_id_block(&a.id_block, &a.id_auth, true).expect("verify");
        assert_eq!(v.block, block());
        assert_eq!(v.id_key_digest, a.id_key_digest);
        assert_eq!(v.author_key_digest, a.author_key_digest);
        assert_ne!(Some(a.id_key_digest), a.author_key_digest);
    }

    #[test]
    fn tampering_is_caught() {
        let s = sign_id_block(&block(), &key(1), Some(&key(2)));
        let mut blk = s.id_block;
        blk[0] ^= 1;
        let e = verify_id_block(&blk, &s.id_auth, true).expect_err("tampered block");
        assert!(e.to_string().contains("ID block signature"), "{e}");
        let mut auth = s.id_auth.clone();
        auth[AUTH_ID_KEY_SIG + 3] ^= 1;
        let e = verify_id_block(&s.id_block, &auth, true).expect_err("tampered key signature");
        assert!(e.to_string().contains("author key"), "{e}");
        // Without the author key enabled the author fields are not consulted.
        assert!(verify_id_block(&s.id_block, &auth, false).is_ok());
        let mut auth = s.id_auth.clone();
        auth[AUTH_ID_KEY + 4] ^= 1;
        assert!(verify_id_block(&s.id_block, &auth, false).is_err());
        let e = verify_id_block(&s.id_block[..95], &s.id_auth, false).expect_err("short");
        assert!(e.to_string().contains("96"), "{e}");
        let e = verify_id_block(&s.id_block, &s.id_auth[..100], false).expect_err("short");
        assert!(e.to_string().contains("4096"), "{e}");
    }

    #[test]
    fn file_round_trip_and_consistency() {
        let s = sign_id_block(&block(), &key(1), Some(&key(2)));
        let f = IdBlockFile::new(&s).expect("file");
        assert_eq!(f.policy, "0x30000");
        let text = serde_json::to_string(&f).expect("json");
        let back: IdBlockFile = serde_json::from_str(&text).expect("parse");
        let (v, blk, auth) = back.check().expect("check");
        assert_eq!(v.block, block());
        assert_eq!(blk, s.id_block.to_vec());
        assert_eq!(auth, s.id_auth);
        let mut lying = f.clone();
        lying.guest_svn = 8;
        let e = lying.check().expect_err("fields disagree");
        assert!(e.to_string().contains("do not match"), "{e}");
        let mut off = f.clone();
        off.author_key_enabled = false;
        assert!(
            off.check().is_err(),
            "author digest written without the author key enabled"
        );
        let mut fmt = f;
        fmt.format = "v0".into();
        assert!(fmt.check().is_err());
    }

    #[test]
    fn without_author_key() {
        let s = sign_id_block(&block(), &key(3), None);
        assert_eq!(s.author_key_digest, None);
        assert!(s.id_auth[AUTH_AUTHOR_KEY..].iter().all(|&b| b == 0));
        verify_id_block(&s.id_block, &s.id_auth, false).expect("verify");
        let e = verify_id_block(&s.id_block, &s.id_auth, true).expect_err("no author key");
        assert!(e.to_string().contains("AUTH_KEY_ALGO"), "{e}");
    }

    #[test]
    fn bad_keys_are_refused() {
        let e = parse_private_key(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n").expect_err("rsa");
        assert!(
            e.to_string().contains("not an unencrypted EC private key"),
            "{e}"
        );
        let e = parse_private_key(b"garbage").expect_err("garbage");
        assert!(e.to_string().contains("P-384"), "{e}");
    }
}
