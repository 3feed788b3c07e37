//! The GCP Cloud KMS seal (feature `gcpckms`): the root key is encrypted by a Cloud KMS crypto key
//! with `additionalAuthenticatedData` binding installation, purpose and seal. The blob records the
//! CryptoKeyVersion that encrypted it; Cloud KMS decrypts with that version (the crypto key's name
//! is enough), so automatic rotation keeps old blobs decryptable, and `operator rewrap` moves the
//! root key to the primary version. Start-up checks as Vault does them: get crypto key (purpose,
//! primary version enabled) and TestIamPermissions for useToEncrypt and useToDecrypt.

pub mod config;

use std::future::Future;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use google_cloud_gax::error::rpc::Code;
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::crypto_key::CryptoKeyPurpose;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use config::GcpCkmsConfig;
use config::{Credentials, Resolved};

use super::cloud::{KmsError, Runner, Tracker};
use super::{
    Attempt, BlobContext, BlobError, FailureKind, MemberSelfTest, Seal, SealError, SealHealth,
    Unwrapped, WrappedBlob, associated_data,
};
use crate::locks::MutexExt;

pub const SEAL_TYPE: &str = "gcpckms";
/// The permissions the seal needs on the crypto key.
pub const PERMISSIONS: [&str; 2] = [
    "cloudkms.cryptoKeyVersions.useToEncrypt",
    "cloudkms.cryptoKeyVersions.useToDecrypt",
];

/// What a gcpckms blob records besides the common header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpCkmsParams {
    /// The CryptoKeyVersion that encrypted it (`.../cryptoKeys/K/cryptoKeyVersions/N`).
    pub key_version: String,
    /// base64: Cloud KMS's ciphertext.
    pub ciphertext: String,
}

#[derive(Debug, Clone)]
struct KeyFacts {
    primary: String,
}

pub struct GcpCkmsSeal {
    name: String,
    key_name: String,
    resolved: Arc<Resolved>,
    endpoint: Option<String>,
    client: Arc<tokio::sync::OnceCell<KeyManagementService>>,
    health: Tracker,
    key: Mutex<Option<KeyFacts>>,
    runner: Runner,
}

impl GcpCkmsSeal {
    pub fn from_config(name: &str, cfg: &GcpCkmsConfig) -> GcpCkmsSeal {
        let resolved = cfg.resolve(&config::process_env);
        let key_name = resolved.key_name();
        let member = resolved
            .region
            .as_ref()
            .map(|(r, _)| r.clone())
            .unwrap_or_default();
        let mut detail = std::collections::BTreeMap::new();
        if let Some(e) = &cfg.endpoint {
            detail.insert("endpoint".to_string(), e.clone().into());
        }
        GcpCkmsSeal {
            name: name.to_string(),
            health: Tracker::new(
                name,
                "Cloud KMS location",
                &member,
                detail,
                resolved.denied_retry,
            ),
            runner: Runner::new(format!("gcpckms-{name}"), resolved.timeout),
            key_name,
            endpoint: cfg.endpoint.clone(),
            resolved: Arc::new(resolved),
            client: Arc::new(tokio::sync::OnceCell::new()),
            key: Mutex::new(None),
        }
    }

    fn member(&self) -> String {
        self.health.snapshot().name
    }

    fn client_fut(
        &self,
    ) -> impl Future<Output = Result<KeyManagementService, KmsError>> + Send + 'static {
        let cell = self.client.clone();
        let r = self.resolved.clone();
        let endpoint = self.endpoint.clone();
        async move {
            cell.get_or_try_init(|| build_client(r, endpoint))
                .await
                .cloned()
        }
    }

    fn describe(&self) -> Result<KeyFacts, KmsError> {
        let client = self.client_fut();
        let name = self.key_name.clone();
        let facts = self.runner.run("GetCryptoKey", async move {
            let c = client.await?;
            let key = c
                .get_crypto_key()
                .set_name(name.clone())
                .send()
                .await
                .map_err(|e| classify("GetCryptoKey", e))?;
            let facts = check_crypto_key(&key)?;
            // As Vault does: the permissions to encrypt and decrypt, without using them.
            match c
                .test_iam_permissions()
                .set_resource(name)
                .set_permissions(PERMISSIONS)
                .send()
                .await
            {
                Ok(r) => {
                    check_permissions(&r.permissions)?;
                    Ok((facts, true))
                }
                // The check itself is not offered (an emulator): encrypt and decrypt will tell.
                Err(e)
                    if e.status().is_some_and(|s| {
                        matches!(s.code, Code::NotFound | Code::Unimplemented)
                    }) || e.http_status_code() == Some(404) =>
                {
                    Ok((facts, false))
                }
                Err(e) => Err(classify("TestIamPermissions", e)),
            }
        });
        if let Ok((f, checked)) = &facts {
            self.health
                .set_detail("primary_version", f.primary.clone().into());
            self.health
                .set_detail("permissions_checked", (*checked).into());
            *self.key.lock_recover() = Some(f.clone());
        }
        facts.map(|(f, _)| f)
    }

    fn facts(&self) -> Result<KeyFacts, KmsError> {
        if let Some(f) = self.key.lock_recover().clone() {
            return Ok(f);
        }
        self.describe()
    }

    fn encrypt(&self, aad: &str, plaintext: &[u8]) -> Result<(String, Vec<u8>), KmsError> {
        self.facts()?;
        let client = self.client_fut();
        let name = self.key_name.clone();
        let pt = Zeroizing::new(plaintext.to_vec());
        let aad = aad.as_bytes().to_vec();
        self.runner.run("Encrypt", async move {
            let c = client.await?;
            let out = c
                .encrypt()
                .set_name(name)
                .set_plaintext(pt.to_vec())
                .set_additional_authenticated_data(aad)
                .send()
                .await
                .map_err(|e| classify("Encrypt", e))?;
            if out.name.is_empty() || out.ciphertext.is_empty() {
                return Err(KmsError::other(
                    "Encrypt",
                    "the answer has no name or ciphertext",
                ));
            }
            Ok((out.name, out.ciphertext.to_vec()))
        })
    }

    fn decrypt(&self, aad: &str, ciphertext: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let client = self.client_fut();
        let name = self.key_name.clone();
        let aad = aad.as_bytes().to_vec();
        self.runner.run("Decrypt", async move {
            let c = client.await?;
            let out = c
                .decrypt()
                .set_name(name)
                .set_ciphertext(ciphertext)
                .set_additional_authenticated_data(aad)
                .send()
                .await
                .map_err(|e| classify("Decrypt", e))?;
            Ok(Zeroizing::new(out.plaintext.to_vec()))
        })
    }

    fn params(blob: &WrappedBlob) -> Result<GcpCkmsParams, BlobError> {
        blob.params_as()
    }

    fn decode(&self, p: &GcpCkmsParams) -> Result<Vec<u8>, SealError> {
        let invalid = |m: &str| SealError::Invalid {
            seal: self.name.clone(),
            message: m.to_string(),
        };
        if !p.key_version.contains("/cryptoKeyVersions/") {
            return Err(invalid(
                "stored blob's key_version is not a CryptoKeyVersion name",
            ));
        }
        B64.decode(&p.ciphertext)
            .map_err(|_| invalid("stored blob's ciphertext is not valid base64"))
    }

    fn failed(&self, summary: &'static str, e: KmsError) -> SealError {
        super::cloud::failed(&self.name, &self.health.snapshot().name, summary, e)
    }
}

/// TestIamPermissions' answer must grant every permission the seal needs.
fn check_permissions(granted: &[String]) -> Result<(), KmsError> {
    let missing: Vec<&str> = PERMISSIONS
        .iter()
        .filter(|p| !granted.iter().any(|g| g == *p))
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(KmsError::new(
        FailureKind::Denied,
        "TestIamPermissions",
        Some("PERMISSION_DENIED".into()),
        format!("the credentials lack {}", missing.join(", ")),
        Some("grant roles/cloudkms.cryptoKeyEncrypterDecrypter on the crypto key".into()),
    ))
}

/// The crypto key must be for ENCRYPT_DECRYPT with an enabled primary version.
fn check_crypto_key(key: &google_cloud_kms_v1::model::CryptoKey) -> Result<KeyFacts, KmsError> {
    if key.purpose != CryptoKeyPurpose::EncryptDecrypt {
        return Err(KmsError::new(
            FailureKind::InvalidConfig,
            "GetCryptoKey",
            None,
            format!("crypto key {} is not an ENCRYPT_DECRYPT key", key.name),
            Some("configure a symmetric encryption key".into()),
        ));
    }
    let Some(primary) = &key.primary else {
        return Err(KmsError::new(
            FailureKind::KeyUnavailable,
            "GetCryptoKey",
            Some("NO_PRIMARY".into()),
            format!("crypto key {} has no primary version", key.name),
            Some("set a primary version (gcloud kms keys set-primary-version)".into()),
        ));
    };
    let unavailable = |state: &str, hint: &str| {
        Err(KmsError::new(
            FailureKind::KeyUnavailable,
            "GetCryptoKey",
            Some(state.to_string()),
            format!("the primary version {} is {state}", primary.name),
            Some(hint.to_string()),
        ))
    };
    match &primary.state {
        CryptoKeyVersionState::Enabled => Ok(KeyFacts {
            primary: primary.name.clone(),
        }),
        CryptoKeyVersionState::Disabled => {
            unavailable("DISABLED", "enable it (gcloud kms keys versions enable)")
        }
        CryptoKeyVersionState::DestroyScheduled => unavailable(
            "DESTROY_SCHEDULED",
            "restore it now (gcloud kms keys versions restore), then enable it: a destroyed version cannot be recovered",
        ),
        CryptoKeyVersionState::Destroyed => unavailable(
            "DESTROYED",
            "the version is gone: unseal from another seal, or with recovery_keys_fallback",
        ),
        other => unavailable(
            &format!("{other:?}").to_uppercase(),
            "wait for the version to become ENABLED",
        ),
    }
}

async fn build_client(
    r: Arc<Resolved>,
    endpoint: Option<String>,
) -> Result<KeyManagementService, KmsError> {
    let local = |m: String| KmsError::new(FailureKind::InvalidConfig, "client", None, m, None);
    let denied = |m: String| {
        KmsError::new(
            FailureKind::Denied,
            "credentials",
            Some("CredentialsUnavailable".into()),
            m,
            Some("check the service-account key, GOOGLE_APPLICATION_CREDENTIALS, or the metadata server".into()),
        )
    };
    let credentials = match &r.credentials {
        Credentials::Anonymous => google_cloud_auth::credentials::anonymous::Builder::new().build(),
        Credentials::ServiceAccount(c, _) => {
            let text = if c.trim_start().starts_with('{') {
                c.clone()
            } else {
                std::fs::read_to_string(c)
                    .map_err(|e| denied(format!("cannot read the service-account key {c}: {e}")))?
            };
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| denied(format!("the service-account key is not JSON: {e}")))?;
            google_cloud_auth::credentials::service_account::Builder::new(json)
                .build()
                .map_err(|e| denied(format!("the service-account key is not usable: {e}")))?
        }
        Credentials::ApplicationDefault => google_cloud_auth::credentials::Builder::default()
            .build()
            .map_err(|e| denied(format!("no application default credentials: {e}")))?,
    };
    let mut b = KeyManagementService::builder().with_credentials(credentials);
    if let Some(e) = endpoint {
        b = b.with_endpoint(e);
    }
    b.build()
        .await
        .map_err(|e| local(format!("Cloud KMS client: {e}")))
}

/// Classifies a Cloud KMS error by its status code.
pub fn classify(op: &'static str, e: google_cloud_kms_v1::Error) -> KmsError {
    let message = crate::seal::cloud::chain(&e);
    if e.is_timeout() {
        return KmsError::new(
            FailureKind::Timeout,
            op,
            None,
            "the call timed out",
            Some("check the network path to the Cloud KMS endpoint".into()),
        );
    }
    if e.is_authentication() {
        return KmsError::new(
            FailureKind::Denied,
            op,
            Some("UNAUTHENTICATED".into()),
            message,
            Some(
                "no usable credentials: check the service-account key or the metadata server"
                    .into(),
            ),
        );
    }
    if let Some(s) = e.status() {
        let code = format!("{:?}", s.code).to_uppercase();
        let (kind, hint, throttled) = classify_code(op, s.code);
        let mut k = KmsError::new(kind, op, Some(code), s.message.clone(), hint);
        k.throttled = throttled;
        return k;
    }
    if e.is_io() || e.is_connect() || e.is_transport() {
        return KmsError::new(
            FailureKind::Unreachable,
            op,
            None,
            format!("cannot reach Cloud KMS: {message}"),
            Some("check the endpoint, DNS, proxy, firewall and Private Google Access".into()),
        );
    }
    KmsError::other(op, message)
}

/// What a status code means.
pub fn classify_code(op: &'static str, code: Code) -> (FailureKind, Option<String>, bool) {
    match code {
        Code::PermissionDenied | Code::Unauthenticated => (
            FailureKind::Denied,
            Some("grant roles/cloudkms.cryptoKeyEncrypterDecrypter on the crypto key to the credentials".into()),
            false,
        ),
        Code::NotFound => (
            FailureKind::KeyUnavailable,
            Some("no such project, location, key ring or crypto key: check project, region, key_ring, crypto_key".into()),
            false,
        ),
        Code::FailedPrecondition => (
            FailureKind::KeyUnavailable,
            Some("the key version is not enabled (disabled, or scheduled for destruction): gcloud kms keys versions list".into()),
            false,
        ),
        Code::InvalidArgument if op == "Decrypt" => (
            FailureKind::Authentication,
            Some("the stored blob was not encrypted by this key with this AAD: it was modified, or belongs to another key".into()),
            false,
        ),
        Code::ResourceExhausted => (FailureKind::Unreachable, None, true),
        Code::Unavailable | Code::Internal | Code::DeadlineExceeded | Code::Aborted | Code::Unknown => {
            (FailureKind::Unreachable, None, false)
        }
        _ => (FailureKind::Other, None, false),
    }
}

impl Seal for GcpCkmsSeal {
    fn seal_type(&self) -> &'static str {
        SEAL_TYPE
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn wrap(&self, ctx: &BlobContext, plaintext: &[u8]) -> Result<WrappedBlob, SealError> {
        let aad = associated_data(ctx, SEAL_TYPE, &self.name);
        let r = self.health.timed("wrap", || self.encrypt(&aad, plaintext));
        match r {
            Ok((key_version, ct)) => {
                let params = GcpCkmsParams {
                    key_version,
                    ciphertext: B64.encode(ct),
                };
                Ok(WrappedBlob::new(
                    ctx,
                    SEAL_TYPE,
                    &self.name,
                    &self.member(),
                    params,
                )?)
            }
            Err(e) => {
                tracing::warn!(seal = %self.name, error = %e, "wrap failed");
                Err(self.failed("Cloud KMS could not wrap", e))
            }
        }
    }

    fn unwrap(
        &self,
        ctx: &BlobContext,
        blob: &WrappedBlob,
        attempt: Attempt,
    ) -> Result<Unwrapped, SealError> {
        blob.check(ctx, SEAL_TYPE, &self.name)?;
        let p = Self::params(blob)?;
        let ct = self.decode(&p)?;
        let r = match self.health.held(attempt) {
            Some(e) => Err(e),
            None => self.health.timed("unwrap", || self.decrypt(&blob.aad, ct)),
        };
        match r {
            Ok(plaintext) => Ok(Unwrapped {
                plaintext,
                member: self.member(),
            }),
            Err(e) => {
                tracing::warn!(seal = %self.name, error = %e, "unwrap failed");
                Err(self.failed("Cloud KMS could not unwrap the root key", e))
            }
        }
    }

    fn random(&self, _len: usize) -> Result<Vec<u8>, SealError> {
        Err(SealError::Invalid {
            seal: self.name.clone(),
            message: "the gcpckms seal does not take random bytes from Cloud KMS: the OS generator is used".into(),
        })
    }

    fn status(&self) -> SealHealth {
        let r = &self.resolved;
        let mut detail = std::collections::BTreeMap::new();
        detail.insert("crypto_key".to_string(), self.key_name.clone().into());
        if let Some((_, s)) = &r.crypto_key {
            detail.insert("crypto_key_from".to_string(), s.to_string().into());
        }
        if let Some((_, s)) = &r.project {
            detail.insert("project_from".to_string(), s.to_string().into());
        }
        detail.insert(
            "credentials_from".to_string(),
            r.describe_credentials().into(),
        );
        self.health.seal_health(SEAL_TYPE, detail)
    }

    fn probe(&self) {
        self.health.probe(|| self.describe());
    }

    fn verify_members(
        &self,
        _ctx: &BlobContext,
        _blob: &WrappedBlob,
        _expected: &[u8],
    ) -> Result<Vec<String>, SealError> {
        Ok(Vec::new())
    }

    fn self_test(&self) -> Vec<MemberSelfTest> {
        let aad = "sealkeeper/self-test";
        vec![super::cloud::self_test(&self.member(), |probe| {
            let (_, ct) = self.encrypt(aad, probe)?;
            self.decrypt(aad, ct)
        })]
    }

    fn shutdown(&self) {}

    fn key_matches(&self, blob: &WrappedBlob) -> bool {
        let Ok(p) = Self::params(blob) else {
            return false;
        };
        if !p
            .key_version
            .starts_with(&format!("{}/cryptoKeyVersions/", self.key_name))
        {
            return false;
        }
        // The primary version, when known: after a rotation the blob is on an older one.
        match self.key.lock_recover().as_ref() {
            Some(f) => f.primary == p.key_version,
            None => true,
        }
    }

    fn key_name(&self, blob: &WrappedBlob) -> String {
        Self::params(blob)
            .map(|p| p.key_version)
            .unwrap_or_else(|_| "(unreadable blob)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_kms_v1::model::{CryptoKey, CryptoKeyVersion};

    fn key(state: CryptoKeyVersionState) -> CryptoKey {
        CryptoKey::new()
            .set_name("projects/p/locations/global/keyRings/r/cryptoKeys/k")
            .set_purpose(CryptoKeyPurpose::EncryptDecrypt)
            .set_primary(
                CryptoKeyVersion::new()
                    .set_name(
                        "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3",
                    )
                    .set_state(state),
            )
    }

    #[test]
    fn an_enabled_primary_is_usable_and_others_need_an_operator() {
        let f = check_crypto_key(&key(CryptoKeyVersionState::Enabled)).unwrap();
        assert!(f.primary.ends_with("/cryptoKeyVersions/3"));
        for (state, hint) in [
            (CryptoKeyVersionState::Disabled, "versions enable"),
            (CryptoKeyVersionState::DestroyScheduled, "versions restore"),
            (CryptoKeyVersionState::Destroyed, "recovery_keys_fallback"),
        ] {
            let e = check_crypto_key(&key(state)).unwrap_err();
            assert_eq!(e.kind, FailureKind::KeyUnavailable);
            assert!(e.to_string().contains(hint), "{e}");
        }
        let mut k = key(CryptoKeyVersionState::Enabled);
        k.purpose = CryptoKeyPurpose::AsymmetricSign;
        assert_eq!(
            check_crypto_key(&k).unwrap_err().kind,
            FailureKind::InvalidConfig
        );
        k = key(CryptoKeyVersionState::Enabled);
        k.primary = None;
        assert_eq!(
            check_crypto_key(&k).unwrap_err().kind,
            FailureKind::KeyUnavailable
        );
    }

    #[test]
    fn after_a_rotation_the_blob_is_not_on_the_configured_version_until_a_rewrap() {
        let cfg: GcpCkmsConfig = toml::from_str(
            "project = \"p\"\nregion = \"global\"\nkey_ring = \"r\"\ncrypto_key = \"k\"\nendpoint = \"http://127.0.0.1:9\"\n",
        )
        .unwrap();
        let seal = GcpCkmsSeal::from_config("gcp", &cfg);
        let ctx = BlobContext {
            installation_id: "i".into(),
            purpose: "root-key".into(),
        };
        let blob = |v: u32| {
            WrappedBlob::new(
                &ctx,
                SEAL_TYPE,
                "gcp",
                "global",
                GcpCkmsParams {
                    key_version: format!("{}/cryptoKeyVersions/{v}", seal.key_name),
                    ciphertext: B64.encode(b"x"),
                },
            )
            .unwrap()
        };
        *seal.key.lock_recover() = Some(KeyFacts {
            primary: format!("{}/cryptoKeyVersions/2", seal.key_name),
        });
        assert!(!seal.key_matches(&blob(1)), "version 1 after rotation to 2");
        assert!(seal.key_matches(&blob(2)));
        assert_eq!(
            seal.key_name(&blob(1)),
            format!("{}/cryptoKeyVersions/1", seal.key_name)
        );
        // Another crypto key is never the configured one.
        let mut other = blob(2);
        other.params.insert(
            "key_version".into(),
            "projects/p/locations/global/keyRings/r/cryptoKeys/other/cryptoKeyVersions/2".into(),
        );
        assert!(!seal.key_matches(&other));
    }

    #[test]
    fn a_missing_permission_is_denied_and_named() {
        let all: Vec<String> = PERMISSIONS.iter().map(|p| p.to_string()).collect();
        assert!(check_permissions(&all).is_ok());
        let e = check_permissions(&all[..1]).unwrap_err();
        assert_eq!(e.kind, FailureKind::Denied);
        assert!(
            e.to_string().contains("useToDecrypt") && !e.to_string().contains("useToEncrypt,"),
            "{e}"
        );
        assert!(e.to_string().contains("cryptoKeyEncrypterDecrypter"), "{e}");
        assert_eq!(
            check_permissions(&[]).unwrap_err().kind,
            FailureKind::Denied
        );
    }

    #[test]
    fn status_codes_are_told_apart() {
        assert_eq!(
            classify_code("Decrypt", Code::PermissionDenied).0,
            FailureKind::Denied
        );
        assert_eq!(
            classify_code("Decrypt", Code::NotFound).0,
            FailureKind::KeyUnavailable
        );
        assert_eq!(
            classify_code("Decrypt", Code::FailedPrecondition).0,
            FailureKind::KeyUnavailable
        );
        assert_eq!(
            classify_code("Decrypt", Code::InvalidArgument).0,
            FailureKind::Authentication
        );
        assert_eq!(
            classify_code("Decrypt", Code::ResourceExhausted),
            (FailureKind::Unreachable, None, true)
        );
        assert_eq!(
            classify_code("Encrypt", Code::Unavailable).0,
            FailureKind::Unreachable
        );
    }
}
