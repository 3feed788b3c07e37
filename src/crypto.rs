//! Software cryptography, all from aws-lc-rs: AES-256-GCM envelopes, HKDF-SHA-256, HMAC-SHA-256,
//! SHA-256 and the operating system's CSPRNG.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{digest, hkdf, hmac, rand};
use zeroize::Zeroize;

pub const KEY_LEN: usize = 32;
pub const GCM_NONCE_LEN: usize = NONCE_LEN;
pub const GCM_TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("the operating system's random generator failed")]
    Random,
    #[error("key has the wrong length ({0} bytes, expected 32)")]
    KeyLength(usize),
    #[error("authentication failed: the data was modified, or belongs to another key or context")]
    Authentication,
    #[error("ciphertext too short ({0} bytes)")]
    Truncated(usize),
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    rand::fill(buf).map_err(|_| CryptoError::Random)
}

/// AWS-LC seeds its generator on first use, which takes tens of milliseconds. The daemon does it on
/// a background thread at start, in parallel with loading the PKCS#11 module and unsealing, so the
/// first TLS handshake does not wait for it.
pub fn warm_up_in_background() {
    let _ = std::thread::Builder::new()
        .name("rng-warm-up".into())
        .spawn(|| {
            let mut b = [0u8; 1];
            let _ = fill_random(&mut b);
        });
}

/// A random identifier in the UUID text layout (8-4-4-4-12 hex digits), for request ids and
/// nonces that tie share submissions together. Not a key: a generator failure gives zeros.
pub fn random_id() -> String {
    RandomId::new().as_str().to_string()
}

/// [`random_id`] without an allocation (every answer's `request_id`).
pub struct RandomId([u8; 36]);

impl RandomId {
    pub fn new() -> RandomId {
        let mut b = [0u8; 16];
        let _ = fill_random(&mut b);
        let mut out = [b'-'; 36];
        let mut at = 0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                at += 1;
            }
            hex::encode_to_slice([*byte], &mut out[at..at + 2]).unwrap_or_default();
            at += 2;
        }
        RandomId(out)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("00000000-0000-0000-0000-000000000000")
    }
}

impl Default for RandomId {
    fn default() -> Self {
        Self::new()
    }
}

pub fn random_vec(len: usize) -> Result<Vec<u8>, CryptoError> {
    let mut v = vec![0u8; len];
    fill_random(&mut v)?;
    Ok(v)
}

fn gcm_key(key: &[u8]) -> Result<LessSafeKey, CryptoError> {
    let unbound =
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::KeyLength(key.len()))?;
    Ok(LessSafeKey::new(unbound))
}

/// AES-256-GCM with a fresh random 96-bit nonce. Output: nonce || ciphertext || tag.
pub fn seal(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key = gcm_key(key)?;
    let mut nonce = [0u8; GCM_NONCE_LEN];
    fill_random(&mut nonce)?;
    // Encrypted in place in the one output buffer: the plaintext is never copied elsewhere, and
    // a failure wipes what was copied in.
    let mut out = Vec::with_capacity(GCM_NONCE_LEN + plaintext.len() + GCM_TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    match key.seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut out[GCM_NONCE_LEN..],
    ) {
        Ok(tag) => {
            out.extend_from_slice(tag.as_ref());
            Ok(out)
        }
        Err(_) => {
            out.zeroize();
            Err(CryptoError::Authentication)
        }
    }
}

/// Opens the output of [`seal`]. The returned plaintext should be zeroized by the caller when it is
/// secret.
pub fn open(key: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key = gcm_key(key)?;
    if sealed.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
        return Err(CryptoError::Truncated(sealed.len()));
    }
    let (nonce, body) = sealed.split_at(GCM_NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| CryptoError::Truncated(sealed.len()))?;
    let mut buf = body.to_vec();
    match key.open_in_place(nonce, Aad::from(aad), &mut buf) {
        Ok(plain) => {
            let n = plain.len();
            buf.truncate(n);
            Ok(buf)
        }
        Err(_) => {
            buf.zeroize();
            Err(CryptoError::Authentication)
        }
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256 (RFC 5869) extract-and-expand into `out`.
pub fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, Len(out.len()))
        .map_err(|_| CryptoError::KeyLength(out.len()))?;
    okm.fill(out).map_err(|_| CryptoError::KeyLength(out.len()))
}

/// An HMAC-SHA-256 key whose precomputed state (the inner and outer hash states, as good as the
/// key itself) is kept in locked memory, so that each signature skips the key setup.
pub struct HmacKey(crate::secret::Locked<hmac::Key>);

impl HmacKey {
    pub fn new(
        key: &[u8],
        policy: crate::secret::MemoryPolicy,
    ) -> Result<HmacKey, crate::secret::MemoryError> {
        crate::secret::Locked::new(hmac::Key::new(hmac::HMAC_SHA256, key), policy).map(HmacKey)
    }

    pub fn sign(&self, data: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.0, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Constant-time check of a tag.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.0, data, tag).is_ok()
    }
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Constant-time comparison of an HMAC-SHA-256 tag.
pub fn hmac_sha256_verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&k, data, tag).is_ok()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The OS CSPRNG as a `rand_core` generator, for libraries that take one (vsss-rs).
pub struct SystemRng;

impl rand_core::TryRng for SystemRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        // The trait promises an infallible generator. AWS-LC's generator only fails when the kernel
        // refuses getrandom(2), after which no key may be generated at all, so aborting is the only
        // safe answer.
        if rand::fill(dst).is_err() {
            std::process::abort();
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SystemRng {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcm_roundtrip_and_tamper() {
        let key = [1u8; 32];
        let ct = seal(&key, b"ctx", b"hello").unwrap();
        assert_eq!(ct.len(), 12 + 5 + 16);
        assert_eq!(open(&key, b"ctx", &ct).unwrap(), b"hello");
        assert_eq!(open(&key, b"other", &ct), Err(CryptoError::Authentication));
        let mut bad = ct.clone();
        bad[14] ^= 1;
        assert_eq!(open(&key, b"ctx", &bad), Err(CryptoError::Authentication));
        assert_eq!(
            open(&key, b"ctx", &ct[..20]),
            Err(CryptoError::Truncated(20))
        );
        assert_eq!(open(&[0u8; 31], b"", &ct), Err(CryptoError::KeyLength(31)));
    }

    #[test]
    fn random_ids_have_the_uuid_layout_and_differ() {
        let (a, b) = (random_id(), random_id());
        assert_ne!(a, b);
        for id in [&a, &b] {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(
                id.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()),
                "{id}"
            );
        }
    }

    #[test]
    fn hkdf_rfc5869_case1() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let mut okm = [0u8; 42];
        hkdf_sha256(&salt, &ikm, &info, &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn hmac_rfc4231_case2() {
        let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(hmac_sha256_verify(
            b"Jefe",
            b"what do ya want for nothing?",
            &tag
        ));
        assert!(!hmac_sha256_verify(
            b"Jefe",
            b"what do ya want for nothing!",
            &tag
        ));
        let key = HmacKey::new(b"Jefe", crate::secret::MemoryPolicy::AllowUnlocked).unwrap();
        assert_eq!(key.sign(b"what do ya want for nothing?"), tag);
        assert!(key.verify(b"what do ya want for nothing?", &tag));
        assert!(!key.verify(b"what do ya want for nothing!", &tag));
    }
}

/// The result of one known-answer test.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SelfTest {
    pub name: String,
    pub ok: bool,
}

fn kat_aes_gcm() -> bool {
    // GCM specification, test case 14: AES-256, zero key, zero IV, one zero block.
    let Ok(key) = UnboundKey::new(&AES_256_GCM, &[0u8; 32]) else {
        return false;
    };
    let key = LessSafeKey::new(key);
    let mut block = vec![0u8; 16];
    if key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::empty(),
            &mut block,
        )
        .is_err()
    {
        return false;
    }
    let ok =
        hex::encode(&block) == "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919";
    let opened = key.open_in_place(
        Nonce::assume_unique_for_key([0u8; 12]),
        Aad::empty(),
        &mut block,
    );
    ok && opened.map(|p| p == [0u8; 16]).unwrap_or(false)
}

fn kat_hmac() -> bool {
    hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?"))
        == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
}

fn kat_hkdf() -> bool {
    let (Ok(salt), Ok(info)) = (
        hex::decode("000102030405060708090a0b0c"),
        hex::decode("f0f1f2f3f4f5f6f7f8f9"),
    ) else {
        return false;
    };
    let mut okm = [0u8; 42];
    hkdf_sha256(&salt, &[0x0b; 22], &info, &mut okm).is_ok()
        && hex::encode(okm)
            == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
}

fn kat_sha() -> bool {
    let d384 = digest::digest(&digest::SHA384, b"abc");
    hex::encode(sha256(b"abc"))
        == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        && hex::encode(d384.as_ref())
            == "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
}

fn kat_random() -> bool {
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    fill_random(&mut a).is_ok() && fill_random(&mut b).is_ok() && a != b && a != [0u8; 32]
}

/// Known-answer tests of every software algorithm the daemon uses, run at every start.
pub fn self_tests() -> Vec<SelfTest> {
    [
        ("AES-256-GCM", kat_aes_gcm as fn() -> bool),
        ("HMAC-SHA-256", kat_hmac),
        ("HKDF-SHA-256", kat_hkdf),
        ("SHA-256/SHA-384", kat_sha),
        ("DRBG", kat_random),
    ]
    .into_iter()
    .map(|(name, f)| SelfTest {
        name: name.into(),
        ok: f(),
    })
    .collect()
}

/// Whether AWS-LC's FIPS 140-3 validated module is the one in use (the `fips` cargo feature).
pub fn fips_module_active() -> bool {
    aws_lc_rs::try_fips_mode().is_ok()
}

#[cfg(test)]
mod kat_tests {
    #[test]
    fn every_self_test_passes() {
        for t in super::self_tests() {
            assert!(t.ok, "{} failed", t.name);
        }
    }
}
