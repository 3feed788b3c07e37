//! Client tokens. A token is shown once at creation; only its HMAC-SHA-256 (under a key derived
//! from the keyring) is kept, with an accessor that names it in listings and revocations.
//! Periodic tokens never expire while they are renewed within their period.

use crate::locks::RwLockExt;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::Result;
use crate::clock::now_unix;
use crate::crypto;
use crate::secret::LockedBytes;

pub const PREFIX: &str = "auth/tokens/";
pub const TOKEN_PREFIX: &str = "sks.";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub accessor: String,
    /// hex HMAC-SHA-256 of the token.
    pub hash: String,
    pub policies: Vec<String>,
    pub display_name: String,
    pub period_secs: Option<u64>,
    pub ttl_secs: u64,
    pub created_unix: u64,
    pub expire_unix: Option<u64>,
    pub renewable: bool,
    pub last_renewal_unix: Option<u64>,
}

impl TokenRecord {
    pub fn remaining_ttl(&self, now: u64) -> u64 {
        self.expire_unix.map(|e| e.saturating_sub(now)).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default)]
    pub policies: Vec<String>,
    /// Seconds, or a duration such as "768h".
    #[serde(default, deserialize_with = "duration_opt")]
    pub period: Option<u64>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub renewable: Option<bool>,
}

/// Accepts 3600, "3600", "3600s" or "1h".
pub(crate) fn duration_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::N(n)) => Ok(Some(n)),
        Some(Raw::S(s)) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

pub fn parse_duration(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// The records by the HMAC of their token. A record is shared (`Arc`), so a lookup on the request
/// path copies nothing.
pub struct TokenStore {
    key: crypto::HmacKey,
    by_hash: RwLock<HashMap<[u8; 32], Arc<TokenRecord>>>,
}

impl TokenStore {
    pub fn new(key: LockedBytes, memory: crate::secret::MemoryPolicy) -> Result<TokenStore> {
        Ok(TokenStore {
            key: crypto::HmacKey::new(key.as_slice(), memory)?,
            by_hash: RwLock::new(HashMap::new()),
        })
    }

    fn tag(&self, token: &str) -> [u8; 32] {
        self.key.sign(token.as_bytes())
    }

    fn hash(&self, token: &str) -> String {
        hex::encode(self.tag(token))
    }

    /// A new token and its record (not yet stored).
    pub fn mint(&self, req: &TokenRequest) -> Result<(TokenRecord, String)> {
        let token = format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(crypto::random_vec(32)?)
        );
        let accessor = hex::encode(crypto::random_vec(12)?);
        let now = now_unix();
        // Default: a periodic token of 32 days, which never expires while it is renewed.
        let period = match (req.period, req.ttl) {
            (None, None) => Some(768 * 3600),
            (p, _) => p,
        };
        if period == Some(0) || req.ttl == Some(0) {
            return Err(super::bad("period and ttl must be greater than zero"));
        }
        let ttl = period.or(req.ttl).unwrap_or(0);
        let rec = TokenRecord {
            accessor,
            hash: self.hash(&token),
            policies: req.policies.clone(),
            display_name: req.display_name.clone().unwrap_or_else(|| "token".into()),
            period_secs: period,
            ttl_secs: ttl,
            created_unix: now,
            expire_unix: Some(now + ttl),
            renewable: req.renewable.unwrap_or(true),
            last_renewal_unix: None,
        };
        Ok((rec, token))
    }

    /// Adds or replaces a record (a record whose stored hash is not 64 hex digits names no token
    /// that could be presented, and is left out).
    pub fn insert(&self, rec: TokenRecord) {
        let mut tag = [0u8; 32];
        if hex::decode_to_slice(&rec.hash, &mut tag).is_ok() {
            self.by_hash.write_recover().insert(tag, Arc::new(rec));
        }
    }

    /// Finds a token by its HMAC. The map is keyed by an HMAC the caller cannot compute, so the
    /// lookup's timing reveals nothing about stored tokens.
    pub fn lookup(&self, token: &str) -> Option<Arc<TokenRecord>> {
        let h = self.tag(token);
        self.by_hash.read_recover().get(&h).cloned()
    }

    pub fn contains_accessor(&self, accessor: &str) -> bool {
        self.by_hash
            .read_recover()
            .values()
            .any(|r| r.accessor == accessor)
    }

    pub fn remove_accessor(&self, accessor: &str) {
        self.by_hash
            .write_recover()
            .retain(|_, r| r.accessor != accessor);
    }

    pub fn all(&self) -> Vec<TokenRecord> {
        let mut v: Vec<TokenRecord> = self
            .by_hash
            .read_recover()
            .values()
            .map(|r| TokenRecord::clone(r))
            .collect();
        v.sort_by(|a, b| {
            a.created_unix
                .cmp(&b.created_unix)
                .then(a.accessor.cmp(&b.accessor))
        });
        v
    }
}

/// The record after a renewal at `now`: a periodic token gets its full period again; another gets
/// `increment` (at most its TTL) or its TTL.
pub fn renewed(rec: &TokenRecord, increment: Option<u64>, now: u64) -> TokenRecord {
    let ttl = match rec.period_secs {
        Some(p) => p,
        None => match increment {
            Some(i) if i > 0 => i.min(rec.ttl_secs),
            _ => rec.ttl_secs,
        },
    };
    TokenRecord {
        expire_unix: Some(now + ttl),
        last_renewal_unix: Some(now),
        ..rec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(period: Option<u64>, ttl: u64) -> TokenRecord {
        TokenRecord {
            accessor: "a".into(),
            hash: "h".into(),
            policies: vec![],
            display_name: "t".into(),
            period_secs: period,
            ttl_secs: ttl,
            created_unix: 0,
            expire_unix: Some(ttl),
            renewable: true,
            last_renewal_unix: None,
        }
    }

    #[test]
    fn periodic_renewal_resets_to_the_period_whatever_the_increment() {
        let r = renewed(&rec(Some(3600), 3600), Some(0), 10_000);
        assert_eq!(r.expire_unix, Some(13_600));
        let r = renewed(&rec(Some(3600), 3600), Some(60), 10_000);
        assert_eq!(r.expire_unix, Some(13_600));
        assert_eq!(r.last_renewal_unix, Some(10_000));
    }

    #[test]
    fn ttl_renewal_is_capped() {
        assert_eq!(
            renewed(&rec(None, 600), Some(60), 1000).expire_unix,
            Some(1060)
        );
        assert_eq!(
            renewed(&rec(None, 600), Some(6000), 1000).expire_unix,
            Some(1600)
        );
        assert_eq!(renewed(&rec(None, 600), None, 1000).expire_unix, Some(1600));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("768h"), Ok(768 * 3600));
        assert_eq!(parse_duration("90"), Ok(90));
        assert!(parse_duration("soon").is_err());
    }
}
