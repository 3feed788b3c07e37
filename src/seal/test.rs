//! An in-memory seal for the core's in-process unit tests: AES-256-GCM with keys held in this
//! process, named like HSM keys, and failures on demand (unreachable, denied, a key that is gone).
//! It is compiled into test builds only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    Attempt, BlobContext, Failure, FailureKind, MemberHealth, MemberSelfTest, MemberState, Seal,
    SealError, SealHealth, Unwrapped, WrappedBlob,
};
use crate::crypto;

pub const SEAL_TYPE: &str = "test";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestParams {
    key: String,
    sealed: String,
}

#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

pub struct TestSeal {
    name: String,
    /// Every key this "HSM" holds, by name, and the one the configuration names.
    keys: Mutex<BTreeMap<String, [u8; 32]>>,
    configured: Mutex<String>,
    failing: Mutex<Option<FailureKind>>,
    /// Calls that reached the seal (wrap, unwrap, random).
    pub calls: AtomicUsize,
}

impl TestSeal {
    /// A reachable seal whose configured key is `<name>-key`.
    pub fn new(name: &str) -> Arc<TestSeal> {
        let key_name = format!("{name}-key");
        let mut key = [0u8; 32];
        crypto::fill_random(&mut key).unwrap();
        Arc::new(TestSeal {
            name: name.to_string(),
            keys: Mutex::new([(key_name.clone(), key)].into()),
            configured: Mutex::new(key_name),
            failing: Mutex::new(None),
            calls: AtomicUsize::new(0),
        })
    }

    /// Makes every call fail with `kind` (`None`: works again).
    pub fn fail_with(&self, kind: Option<FailureKind>) {
        *self.failing.lock().unwrap() = kind;
    }

    /// Creates the key `name` (when new) and configures it, as an operator changing `key_label`.
    pub fn configure_key(&self, name: &str) {
        let mut keys = self.keys.lock().unwrap();
        keys.entry(name.to_string()).or_insert_with(|| {
            let mut key = [0u8; 32];
            crypto::fill_random(&mut key).unwrap();
            key
        });
        *self.configured.lock().unwrap() = name.to_string();
    }

    /// Destroys the key `name`, as on an HSM that lost it.
    pub fn destroy_key(&self, name: &str) {
        self.keys.lock().unwrap().remove(name);
    }

    fn failed(&self, summary: &'static str, kind: FailureKind, why: &str) -> SealError {
        SealError::Members {
            seal: self.name.clone(),
            summary,
            errors: vec![Failure {
                member: format!("{}-member", self.name),
                kind,
                source: Arc::new(Refused(why.to_string())),
            }],
        }
    }

    fn reachable(&self, summary: &'static str) -> Result<(), SealError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match *self.failing.lock().unwrap() {
            Some(kind) => Err(self.failed(summary, kind, "failing on demand")),
            None => Ok(()),
        }
    }
}

impl Seal for TestSeal {
    fn seal_type(&self) -> &'static str {
        SEAL_TYPE
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn wrap(&self, ctx: &BlobContext, plaintext: &[u8]) -> Result<WrappedBlob, SealError> {
        self.reachable("no member could wrap")?;
        let key_name = self.configured.lock().unwrap().clone();
        let key = *self.keys.lock().unwrap().get(&key_name).ok_or_else(|| {
            self.failed(
                "no member could wrap",
                FailureKind::KeyUnavailable,
                "no key",
            )
        })?;
        let aad = super::associated_data(ctx, SEAL_TYPE, &self.name);
        let sealed = crypto::seal(&key, aad.as_bytes(), plaintext)?;
        Ok(WrappedBlob::new(
            ctx,
            SEAL_TYPE,
            &self.name,
            &format!("{}-member", self.name),
            TestParams {
                key: key_name,
                sealed: B64.encode(sealed),
            },
        )?)
    }

    fn unwrap(
        &self,
        ctx: &BlobContext,
        blob: &WrappedBlob,
        _attempt: Attempt,
    ) -> Result<Unwrapped, SealError> {
        blob.check(ctx, SEAL_TYPE, &self.name)?;
        let p: TestParams = blob.params_as()?;
        self.reachable("no member could unwrap the root key")?;
        let summary = "no member could unwrap the root key";
        let key = *self
            .keys
            .lock()
            .unwrap()
            .get(&p.key)
            .ok_or_else(|| self.failed(summary, FailureKind::KeyUnavailable, "no such key"))?;
        let sealed = B64.decode(&p.sealed).unwrap_or_default();
        let plaintext = crypto::open(&key, blob.aad.as_bytes(), &sealed)
            .map_err(|_| self.failed(summary, FailureKind::Authentication, "tag mismatch"))?;
        Ok(Unwrapped {
            plaintext: Zeroizing::new(plaintext),
            member: format!("{}-member", self.name),
        })
    }

    fn random(&self, len: usize) -> Result<Vec<u8>, SealError> {
        self.reachable("no member could generate random bytes")?;
        Ok(crypto::random_vec(len)?)
    }

    fn status(&self) -> SealHealth {
        let healthy = self.failing.lock().unwrap().is_none();
        SealHealth {
            name: self.name.clone(),
            seal_type: SEAL_TYPE.into(),
            healthy,
            members: vec![MemberHealth {
                name: format!("{}-member", self.name),
                state: if healthy {
                    MemberState::Healthy
                } else {
                    MemberState::Down
                },
                healthy,
                last_error: None,
                last_checked_unix: None,
                unhealthy_since_unix: None,
                detail: Default::default(),
            }],
            detail: Default::default(),
        }
    }

    fn probe(&self) {}

    fn verify_members(
        &self,
        _ctx: &BlobContext,
        _blob: &WrappedBlob,
        _expected: &[u8],
    ) -> Result<Vec<String>, SealError> {
        Ok(vec![])
    }

    fn self_test(&self) -> Vec<MemberSelfTest> {
        vec![MemberSelfTest {
            member: format!("{}-member", self.name),
            ok: self.failing.lock().unwrap().is_none(),
            error: None,
            elapsed_ms: None,
        }]
    }

    fn shutdown(&self) {}

    fn key_matches(&self, blob: &WrappedBlob) -> bool {
        blob.params_as::<TestParams>()
            .is_ok_and(|p| p.key == *self.configured.lock().unwrap())
    }

    fn key_name(&self, blob: &WrappedBlob) -> String {
        blob.params_as::<TestParams>()
            .map(|p| p.key)
            .unwrap_or_default()
    }
}
