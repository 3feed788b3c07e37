//! Recovery keys: a random 256-bit recovery key split into Shamir shares (vsss-rs, GF(2^8)).
//!
//! A share is 39 bytes: format version (1), threshold, x coordinate, 32 bytes of y, and a 4-byte
//! checksum (truncated SHA-256 over a domain label, the installation id and the preceding bytes), so
//! that a mistyped or corrupted share, or a share of another installation, is reported as such when
//! it is submitted instead of silently combining into a wrong key. Only a
//! verifier (HMAC-SHA-256 keyed by the recovery key, over this installation's id) is stored.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use vsss_rs::Gf256;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{self, KEY_LEN};

const SHARE_VERSION: u8 = 1;
const SHARE_LEN: usize = 3 + KEY_LEN + 4;
const CHECK_LABEL: &[u8] = b"sealkeeper-recovery-share-v1";
const VERIFIER_LABEL: &[u8] = b"sealkeeper-recovery-verifier-v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryError {
    #[error(
        "invalid recovery split: {0} (need 1 <= threshold <= shares <= 255, and threshold > 1 when shares > 1)"
    )]
    Parameters(String),
    #[error("share is neither hex nor base64")]
    Encoding,
    #[error("share has the wrong length ({0} bytes, expected {SHARE_LEN})")]
    Length(usize),
    #[error("share has an unknown format version {0}")]
    Version(u8),
    #[error(
        "share checksum mismatch: the share is corrupted or mistyped, or belongs to another installation"
    )]
    Checksum,
    #[error("shares come from different splits (thresholds {0} and {1})")]
    Mixed(u8, u8),
    #[error("the same share was given twice")]
    Duplicate,
    #[error("not enough shares: {have} of {need}")]
    NotEnough { have: usize, need: usize },
    #[error("the shares do not reconstruct this installation's recovery key")]
    WrongKey,
    #[error("secret sharing failed: {0}")]
    Sharing(String),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
}

/// One decoded share. Holds secret bytes: no Debug, zeroized on drop.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct Share {
    bytes: Vec<u8>,
}

impl Share {
    pub fn threshold(&self) -> u8 {
        self.bytes.get(1).copied().unwrap_or(0)
    }

    fn x(&self) -> u8 {
        self.bytes.get(2).copied().unwrap_or(0)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    pub fn to_base64(&self) -> String {
        B64.encode(&self.bytes)
    }

    /// Parses a share given as hex or base64 (surrounding white space ignored) and checks its
    /// checksum, which binds it to the installation `context`.
    pub fn parse(text: &str, context: &str) -> Result<Share, RecoveryError> {
        let t = text.trim();
        let bytes = if t.len() == SHARE_LEN * 2 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|_| RecoveryError::Encoding)?
        } else {
            B64.decode(t).map_err(|_| RecoveryError::Encoding)?
        };
        let share = Share { bytes };
        share.check_shape()?;
        let (body, check) = share.bytes.split_at(SHARE_LEN - 4);
        if checksum(body, context) != check {
            return Err(RecoveryError::Checksum);
        }
        Ok(share)
    }

    fn check_shape(&self) -> Result<(), RecoveryError> {
        if self.bytes.len() != SHARE_LEN {
            return Err(RecoveryError::Length(self.bytes.len()));
        }
        if self.bytes.first() != Some(&SHARE_VERSION) {
            return Err(RecoveryError::Version(
                self.bytes.first().copied().unwrap_or(0),
            ));
        }
        Ok(())
    }

    /// The share's x coordinate: two shares of one split never share it.
    pub fn index(&self) -> u8 {
        self.x()
    }

    fn y(&self) -> &[u8] {
        self.bytes.get(3..3 + KEY_LEN).unwrap_or(&[])
    }
}

fn checksum(body: &[u8], context: &str) -> [u8; 4] {
    let mut input = Vec::with_capacity(CHECK_LABEL.len() + context.len() + 1 + body.len());
    input.extend_from_slice(CHECK_LABEL);
    input.extend_from_slice(context.as_bytes());
    input.push(0);
    input.extend_from_slice(body);
    let d = crypto::sha256(&input);
    input.zeroize();
    [d[0], d[1], d[2], d[3]]
}

fn make_share(threshold: u8, x: u8, y: &[u8], context: &str) -> Share {
    let mut bytes = Vec::with_capacity(SHARE_LEN);
    bytes.extend_from_slice(&[SHARE_VERSION, threshold, x]);
    bytes.extend_from_slice(y);
    let c = checksum(&bytes, context);
    bytes.extend_from_slice(&c);
    Share { bytes }
}

pub fn check_parameters(shares: u32, threshold: u32) -> Result<(), RecoveryError> {
    let bad = |m: &str| Err(RecoveryError::Parameters(m.to_string()));
    if shares == 0 || shares > 255 {
        return bad(&format!("{shares} shares"));
    }
    if threshold == 0 || threshold > shares {
        return bad(&format!("threshold {threshold} with {shares} shares"));
    }
    if shares > 1 && threshold == 1 {
        return bad("threshold 1 with several shares");
    }
    Ok(())
}

/// Splits `secret` (32 bytes) into `shares` shares, any `threshold` of which reconstruct it. The
/// shares' checksums bind them to `context` (the installation id).
pub fn split(
    secret: &[u8],
    shares: u32,
    threshold: u32,
    context: &str,
) -> Result<Vec<Share>, RecoveryError> {
    check_parameters(shares, threshold)?;
    if secret.len() != KEY_LEN {
        return Err(RecoveryError::Length(secret.len()));
    }
    let t = threshold as u8;
    if threshold == 1 {
        return Ok(vec![make_share(1, 1, secret, context)]);
    }
    let raw = Gf256::split_array(
        threshold as usize,
        shares as usize,
        secret,
        crypto::SystemRng,
    )
    .map_err(|e| RecoveryError::Sharing(format!("{e:?}")))?;
    Ok(raw
        .into_iter()
        .map(|mut r| {
            let s = make_share(
                t,
                r.first().copied().unwrap_or(0),
                r.get(1..).unwrap_or(&[]),
                context,
            );
            r.zeroize();
            s
        })
        .collect())
}

/// Reconstructs the secret from at least `threshold` distinct shares of one split.
pub fn combine(shares: &[Share]) -> Result<Zeroizing<Vec<u8>>, RecoveryError> {
    let Some(first) = shares.first() else {
        return Err(RecoveryError::NotEnough { have: 0, need: 1 });
    };
    let t = first.threshold();
    for s in shares {
        s.check_shape()?;
        if s.threshold() != t {
            return Err(RecoveryError::Mixed(t, s.threshold()));
        }
    }
    for (i, a) in shares.iter().enumerate() {
        if shares.iter().skip(i + 1).any(|b| b.x() == a.x()) {
            return Err(RecoveryError::Duplicate);
        }
    }
    if shares.len() < t as usize {
        return Err(RecoveryError::NotEnough {
            have: shares.len(),
            need: t as usize,
        });
    }
    if t == 1 {
        return Ok(Zeroizing::new(first.y().to_vec()));
    }
    let raw: Vec<Vec<u8>> = shares
        .iter()
        .take(t as usize)
        .map(|s| {
            let mut v = Vec::with_capacity(1 + KEY_LEN);
            v.push(s.x());
            v.extend_from_slice(s.y());
            v
        })
        .collect();
    let raw = Zeroizing::new(raw);
    let secret =
        Gf256::combine_array(&raw[..]).map_err(|e| RecoveryError::Sharing(format!("{e:?}")))?;
    Ok(Zeroizing::new(secret))
}

/// The stored verifier of a recovery key for one installation.
pub fn verifier(recovery_key: &[u8], installation_id: &str) -> String {
    let mut msg = VERIFIER_LABEL.to_vec();
    msg.extend_from_slice(installation_id.as_bytes());
    hex::encode(crypto::hmac_sha256(recovery_key, &msg))
}

/// Checks reconstructed shares against the stored verifier (constant time).
pub fn verify(
    recovery_key: &[u8],
    installation_id: &str,
    stored: &str,
) -> Result<(), RecoveryError> {
    let tag = hex::decode(stored).map_err(|_| RecoveryError::WrongKey)?;
    let mut msg = VERIFIER_LABEL.to_vec();
    msg.extend_from_slice(installation_id.as_bytes());
    if crypto::hmac_sha256_verify(recovery_key, &msg, &tag) {
        Ok(())
    } else {
        Err(RecoveryError::WrongKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_combine_any_quorum() {
        let secret = [42u8; 32];
        let shares = split(&secret, 5, 3, "i").unwrap();
        assert_eq!(shares.len(), 5);
        for combo in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let pick: Vec<Share> = combo.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(&combine(&pick).unwrap()[..], &secret[..]);
        }
        let two: Vec<Share> = shares[..2].to_vec();
        assert_eq!(
            combine(&two).err(),
            Some(RecoveryError::NotEnough { have: 2, need: 3 })
        );
    }

    #[test]
    fn shares_roundtrip_as_hex_and_base64() {
        let shares = split(&[9u8; 32], 3, 2, "i").unwrap();
        let a = Share::parse(&shares[0].to_hex(), "i").unwrap();
        let b = Share::parse(&format!(" {}\n", shares[2].to_base64()), "i").unwrap();
        assert_eq!(&combine(&[a, b]).unwrap()[..], &[9u8; 32]);
    }

    #[test]
    fn corrupted_share_is_detected() {
        let shares = split(&[1u8; 32], 3, 2, "i").unwrap();
        let mut h = shares[0].to_hex().into_bytes();
        h[20] = if h[20] == b'0' { b'1' } else { b'0' };
        let h = String::from_utf8(h).unwrap();
        assert_eq!(Share::parse(&h, "i").err(), Some(RecoveryError::Checksum));
        assert_eq!(Share::parse("zz", "i").err(), Some(RecoveryError::Encoding));
        assert_eq!(
            Share::parse("AAAA", "i").err(),
            Some(RecoveryError::Length(3))
        );
    }

    #[test]
    fn a_share_of_another_installation_is_refused_when_parsed() {
        let shares = split(&[7u8; 32], 3, 2, "installation-a").unwrap();
        assert!(Share::parse(&shares[1].to_hex(), "installation-a").is_ok());
        assert_eq!(
            Share::parse(&shares[1].to_hex(), "installation-b").err(),
            Some(RecoveryError::Checksum)
        );
    }

    #[test]
    fn duplicate_and_mixed_shares_are_refused() {
        let a = split(&[1u8; 32], 3, 2, "i").unwrap();
        let b = split(&[1u8; 32], 4, 3, "i").unwrap();
        assert_eq!(
            combine(&[a[0].clone(), a[0].clone()]).err(),
            Some(RecoveryError::Duplicate)
        );
        assert_eq!(
            combine(&[a[0].clone(), b[1].clone()]).err(),
            Some(RecoveryError::Mixed(2, 3))
        );
    }

    #[test]
    fn single_share_and_parameter_checks() {
        let s = split(&[5u8; 32], 1, 1, "i").unwrap();
        assert_eq!(&combine(&s).unwrap()[..], &[5u8; 32]);
        assert!(split(&[5u8; 32], 3, 1, "i").is_err());
        assert!(split(&[5u8; 32], 2, 3, "i").is_err());
        assert!(split(&[5u8; 32], 0, 0, "i").is_err());
        assert!(split(&[5u8; 32], 256, 2, "i").is_err());
    }

    #[test]
    fn verifier_accepts_only_the_right_key() {
        let v = verifier(&[3u8; 32], "inst-1");
        assert!(verify(&[3u8; 32], "inst-1", &v).is_ok());
        assert_eq!(
            verify(&[4u8; 32], "inst-1", &v),
            Err(RecoveryError::WrongKey)
        );
        assert_eq!(
            verify(&[3u8; 32], "inst-2", &v),
            Err(RecoveryError::WrongKey)
        );
    }
}
