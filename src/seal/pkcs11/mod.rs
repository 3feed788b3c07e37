//! The PKCS#11 seal: one HSM key, held by one or more members (an HA pair), tried in order.

pub mod config;
mod error;
mod member;
mod module;
pub mod uri;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

pub use error::{ErrorKind, HsmError, MemberError};
use member::Member;
pub use member::MemberSpec;
pub use module::ModuleRegistry;

use super::{
    Attempt, BlobContext, BlobError, Failure, FailureKind, Seal, SealError, SealHealth, Unwrapped,
    WrappedBlob, associated_data,
};
use crate::crypto;
pub use config::{
    HsmConfig, Mechanism, OaepHash, PinSource, Pkcs11Config, TokenSelector, parse_mechanism,
};

pub const SEAL_TYPE: &str = "pkcs11";

/// What a PKCS#11 blob records besides the common header.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Params {
    pub key_label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub mechanism: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oaep_hash: Option<String>,
    /// base64: the GCM IV the HSM used (AES-GCM), or the software nonce (RSA-OAEP envelope).
    pub iv: String,
    /// base64: ciphertext with its 128-bit tag.
    pub ciphertext: String,
    /// base64: the RSA-OAEP-wrapped envelope key (RSA-OAEP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_key: Option<String>,
}

impl From<MemberError> for Failure {
    fn from(e: MemberError) -> Failure {
        let kind = match e.error.kind {
            ErrorKind::Library
            | ErrorKind::TokenNotFound
            | ErrorKind::Session
            | ErrorKind::Device => FailureKind::Unreachable,
            ErrorKind::Pin | ErrorKind::PinBlocked | ErrorKind::PinSource => FailureKind::Denied,
            ErrorKind::Key => FailureKind::KeyUnavailable,
            ErrorKind::Mechanism => FailureKind::InvalidConfig,
            ErrorKind::Authentication => FailureKind::Authentication,
            ErrorKind::Timeout | ErrorKind::Hung => FailureKind::Timeout,
            ErrorKind::LocalResource => FailureKind::LocalResource,
            ErrorKind::Other => FailureKind::Other,
        };
        Failure {
            member: e.member,
            kind,
            source: Arc::new(e.error),
        }
    }
}

fn params(blob: &WrappedBlob) -> Result<Pkcs11Params, BlobError> {
    blob.params_as()
}

pub struct Pkcs11Seal {
    name: String,
    key_label: String,
    key_id: Option<Vec<u8>>,
    mechanism: Mechanism,
    members: Vec<Member>,
    registry: Arc<ModuleRegistry>,
}

impl Pkcs11Seal {
    pub fn from_config(
        name: &str,
        cfg: &Pkcs11Config,
        registry: Arc<ModuleRegistry>,
        fips_mode: bool,
    ) -> Pkcs11Seal {
        let key_label = cfg.key_label().unwrap_or_default();
        let key_id = cfg.key_id_bytes();
        let mechanism = cfg.mechanism();
        let members = cfg
            .hsm
            .iter()
            .map(|h| {
                Member::start(
                    MemberSpec {
                        seal: name.to_string(),
                        name: h.name.clone(),
                        lib: h.lib(),
                        selector: h.selector(),
                        pin: h.pin_source(),
                        rw_session: h.rw_session(),
                        timeout: h.timeout(),
                        key_label: key_label.clone(),
                        key_id: key_id.clone(),
                        mechanism,
                        fips_mode,
                    },
                    registry.clone(),
                )
            })
            .collect();
        Pkcs11Seal {
            name: name.to_string(),
            key_label,
            key_id,
            mechanism,
            members,
            registry,
        }
    }

    fn members_failed(&self, summary: &'static str, errors: Vec<MemberError>) -> SealError {
        SealError::Members {
            seal: self.name.clone(),
            summary,
            errors: errors.into_iter().map(Failure::from).collect(),
        }
    }

    fn unwrap_with(
        &self,
        m: &Member,
        blob: &WrappedBlob,
        p: &Pkcs11Params,
        attempt: Attempt,
    ) -> Result<Zeroizing<Vec<u8>>, MemberError> {
        let aad = blob.aad.clone().into_bytes();
        let iv = B64.decode(&p.iv).unwrap_or_default();
        let ct = B64.decode(&p.ciphertext).unwrap_or_default();
        let override_latch = attempt == Attempt::Operator;
        let key = self.recorded_key(p);
        let key2 = key.clone();
        match self.mechanism {
            Mechanism::AesGcm => m.call("unwrap", move |w| {
                w.override_latch = override_latch;
                w.key_override = key;
                let r = w.gcm_decrypt(&iv, &ct, &aad);
                w.override_latch = false;
                w.key_override = None;
                r
            }),
            Mechanism::RsaOaep(hash) => {
                let wrapped = B64
                    .decode(p.wrapped_key.as_deref().unwrap_or_default())
                    .unwrap_or_default();
                let kek = m.call("unwrap", move |w| {
                    w.override_latch = override_latch;
                    w.key_override = key2;
                    let r = w.rsa_decrypt(&wrapped, hash);
                    w.override_latch = false;
                    w.key_override = None;
                    r
                })?;
                let mut sealed = iv;
                sealed.extend_from_slice(&ct);
                crypto::open(&kek, &aad, &sealed)
                    .map(Zeroizing::new)
                    .map_err(|e| MemberError {
                        member: m.name().to_string(),
                        error: HsmError::new(
                            if e == crypto::CryptoError::Authentication {
                                ErrorKind::Authentication
                            } else {
                                ErrorKind::Other
                            },
                            format!("envelope: {e}"),
                        ),
                    })
            }
        }
    }

    /// The key a blob records, when it is not the configured key (after a `key_label` change, until
    /// `operator rewrap`).
    fn recorded_key(&self, p: &Pkcs11Params) -> Option<(String, Option<Vec<u8>>)> {
        if self.is_configured_key(p) {
            return None;
        }
        let id = p.key_id.as_deref().and_then(|i| hex::decode(i).ok());
        Some((p.key_label.clone(), id))
    }

    /// Whether the blob was wrapped by the key the configuration names.
    fn is_configured_key(&self, p: &Pkcs11Params) -> bool {
        p.key_label == self.key_label && p.key_id == self.key_id.as_ref().map(hex::encode)
    }

    fn check_blob_shape(&self, blob: &Pkcs11Params) -> Result<(), SealError> {
        let invalid = |m: String| SealError::Invalid {
            seal: self.name.clone(),
            message: m,
        };
        if blob.mechanism != self.mechanism.name() {
            return Err(invalid(format!(
                "stored blob was wrapped with {}, but the seal is configured for {}",
                blob.mechanism,
                self.mechanism.name()
            )));
        }
        if let Some(id) = &blob.key_id
            && hex::decode(id).is_err()
        {
            return Err(invalid("stored blob's key_id is not hex".into()));
        }
        for (field, value) in [
            ("iv", Some(&blob.iv)),
            ("ciphertext", Some(&blob.ciphertext)),
            ("wrapped_key", blob.wrapped_key.as_ref()),
        ] {
            if let Some(v) = value
                && B64.decode(v).is_err()
            {
                return Err(invalid(format!(
                    "stored blob's {field} is not valid base64"
                )));
            }
        }
        if matches!(self.mechanism, Mechanism::RsaOaep(_)) && blob.wrapped_key.is_none() {
            return Err(invalid("stored RSA-OAEP blob has no wrapped_key".into()));
        }
        Ok(())
    }
}

impl Seal for Pkcs11Seal {
    fn seal_type(&self) -> &'static str {
        SEAL_TYPE
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn wrap(&self, ctx: &BlobContext, plaintext: &[u8]) -> Result<WrappedBlob, SealError> {
        let aad = associated_data(ctx, SEAL_TYPE, &self.name);
        let mut errors = Vec::new();
        for m in &self.members {
            let aad_bytes = aad.clone().into_bytes();
            let result = match self.mechanism {
                Mechanism::AesGcm => {
                    let pt = Zeroizing::new(plaintext.to_vec());
                    m.call("wrap", move |w| w.gcm_encrypt(&pt, &aad_bytes))
                        .map(|(iv, ct)| (iv, ct, None))
                }
                Mechanism::RsaOaep(hash) => {
                    // RSA-OAEP wraps a fresh envelope key; the envelope (AES-256-GCM) binds the AAD.
                    let kek = Zeroizing::new(crypto::random_vec(crypto::KEY_LEN)?);
                    let sealed = crypto::seal(&kek, &aad_bytes, plaintext)?;
                    let (iv, ct) = sealed.split_at(crypto::GCM_NONCE_LEN);
                    let (iv, ct) = (iv.to_vec(), ct.to_vec());
                    m.call("wrap", move |w| w.rsa_encrypt(&kek, hash))
                        .map(|wk| (iv, ct, Some(wk)))
                }
            };
            match result {
                Ok((iv, ct, wrapped_key)) => {
                    let params = Pkcs11Params {
                        key_label: self.key_label.clone(),
                        key_id: self.key_id.as_ref().map(hex::encode),
                        mechanism: self.mechanism.name().to_string(),
                        oaep_hash: match self.mechanism {
                            Mechanism::RsaOaep(h) => Some(h.name().to_string()),
                            Mechanism::AesGcm => None,
                        },
                        iv: B64.encode(iv),
                        ciphertext: B64.encode(ct),
                        wrapped_key: wrapped_key.map(|k| B64.encode(k)),
                    };
                    return Ok(WrappedBlob::new(
                        ctx,
                        SEAL_TYPE,
                        &self.name,
                        m.name(),
                        params,
                    )?);
                }
                Err(e) => {
                    tracing::warn!(seal = %self.name, member = %e.member, error = %e.error, "wrap failed on member");
                    errors.push(e);
                }
            }
        }
        Err(self.members_failed("no member could wrap", errors))
    }

    fn unwrap(
        &self,
        ctx: &BlobContext,
        blob: &WrappedBlob,
        attempt: Attempt,
    ) -> Result<Unwrapped, SealError> {
        blob.check(ctx, SEAL_TYPE, &self.name)?;
        let p = params(blob)?;
        self.check_blob_shape(&p)?;
        let mut errors = Vec::new();
        for m in &self.members {
            match self.unwrap_with(m, blob, &p, attempt) {
                Ok(plaintext) => {
                    return Ok(Unwrapped {
                        plaintext,
                        member: m.name().to_string(),
                    });
                }
                Err(e) => {
                    tracing::warn!(seal = %self.name, member = %e.member, error = %e.error, "unwrap failed on member");
                    errors.push(e);
                }
            }
        }
        Err(self.members_failed("no member could unwrap the root key", errors))
    }

    fn random(&self, len: usize) -> Result<Vec<u8>, SealError> {
        let mut errors = Vec::new();
        for m in &self.members {
            match m.call("random", move |w| w.random(len)) {
                Ok(r) if r.len() == len => return Ok(r),
                Ok(r) => errors.push(MemberError {
                    member: m.name().to_string(),
                    error: HsmError::new(
                        ErrorKind::Other,
                        format!("C_GenerateRandom returned {} bytes", r.len()),
                    ),
                }),
                Err(e) => errors.push(e),
            }
        }
        Err(self.members_failed("no member could generate random bytes", errors))
    }

    fn status(&self) -> SealHealth {
        let members: Vec<_> = self.members.iter().map(|m| m.status()).collect();
        SealHealth {
            name: self.name.clone(),
            seal_type: SEAL_TYPE.to_string(),
            healthy: members.iter().any(|m| m.healthy),
            members,
            detail: [
                ("key_label".to_string(), self.key_label.clone().into()),
                ("mechanism".to_string(), self.mechanism.name().into()),
            ]
            .into(),
        }
    }

    fn probe(&self) {
        for m in &self.members {
            let _ = m.call("probe", |w| w.probe());
        }
    }

    fn verify_members(
        &self,
        ctx: &BlobContext,
        blob: &WrappedBlob,
        expected: &[u8],
    ) -> Result<Vec<String>, SealError> {
        let p = params(blob)?;
        let mut unreachable = Vec::new();
        for m in self.members.iter().filter(|m| m.name() != blob.wrapped_by) {
            match self.unwrap_with(m, blob, &p, Attempt::Automatic) {
                Ok(pt) if pt.as_slice() == expected => {}
                Ok(_) => {
                    return Err(SealError::Invalid {
                        seal: self.name.clone(),
                        message: format!(
                            "member {} decrypts to a different value: the members do not hold the same key",
                            m.name()
                        ),
                    });
                }
                Err(e) if e.error.kind == ErrorKind::Authentication => {
                    return Err(SealError::Invalid {
                        seal: self.name.clone(),
                        message: format!(
                            "member {} holds a different key under label {:?} than {} (every member of a pair must hold \
                             the same key): {}",
                            m.name(),
                            self.key_label,
                            blob.wrapped_by,
                            e.error
                        ),
                    });
                }
                Err(e) => unreachable.push(format!("{}: {}", e.member, e.error)),
            }
        }
        let _ = ctx;
        Ok(unreachable)
    }

    fn key_matches(&self, blob: &WrappedBlob) -> bool {
        params(blob).is_ok_and(|p| self.is_configured_key(&p))
    }

    fn key_name(&self, blob: &WrappedBlob) -> String {
        match params(blob) {
            Ok(Pkcs11Params {
                key_label,
                key_id: Some(id),
                ..
            }) => format!("{key_label}:{id}"),
            Ok(p) => p.key_label,
            Err(_) => "(unreadable blob)".into(),
        }
    }

    fn self_test(&self) -> Vec<super::MemberSelfTest> {
        self.members
            .iter()
            .map(|m| {
                let mechanism = self.mechanism;
                let started = std::time::Instant::now();
                let result = m
                    .call("self_test", move |w| {
                        w.round_trip(mechanism, b"sealkeeper/self-test")
                    })
                    .map_err(|e| e.to_string());
                super::MemberSelfTest {
                    member: m.name().to_string(),
                    ok: result.is_ok(),
                    error: result.err(),
                    elapsed_ms: Some(started.elapsed().as_millis() as u64),
                }
            })
            .collect()
    }

    fn shutdown(&self) {
        for m in &self.members {
            m.shutdown();
        }
        self.registry.finalize_all();
    }
}

/// For `sealkeeper hsm probe`: logs in to one member, finds its seal key and does a round trip
/// with the configured mechanism, touching no stored state. Returns what was checked.
pub fn check_member(spec: MemberSpec) -> Result<String, MemberError> {
    let name = spec.name.clone();
    let label = spec.key_label.clone();
    let mechanism = spec.mechanism;
    let registry = ModuleRegistry::new();
    let m = Member::start(spec, registry.clone());
    let result = m.call("probe", move |w| {
        w.override_latch = true;
        w.probe()?;
        w.round_trip(mechanism, b"sealkeeper/probe")
    });
    m.shutdown();
    registry.finalize_all();
    result.map(|()| {
        format!(
            "{name}: key {label:?} found; {} round trip ok",
            mechanism.name()
        )
    })
}
