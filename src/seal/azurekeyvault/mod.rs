//! The Azure Key Vault seal (feature `azurekeyvault`). Key Vault's wrapKey has no associated data,
//! so the root key is sealed locally with a fresh AES-256-GCM envelope key bound to the blob's
//! associated data, and only that envelope key is wrapped by the vault's RSA key with RSA-OAEP-256
//! (as Vault's seal does, plus the binding). The blob records the key's full id with its version,
//! so a rotation in Key Vault keeps old blobs unwrappable and `operator rewrap` moves to the latest
//! version.

pub mod config;

use std::future::Future;
use std::sync::{Arc, Mutex};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, KeyClientGetKeyOptions, KeyClientWrapKeyOptions, KeyOperationParameters,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use config::AzureKeyVaultConfig;
use config::{Cloud, Credentials, Resolved};

use super::cloud::{KmsError, Runner, Tracker};
use super::{
    Attempt, BlobContext, BlobError, FailureKind, MemberSelfTest, Seal, SealError, SealHealth,
    Unwrapped, WrappedBlob, associated_data,
};
use crate::crypto;
use crate::locks::MutexExt;

pub const SEAL_TYPE: &str = "azurekeyvault";
const ALGORITHM: &str = "RSA-OAEP-256";

/// What an azurekeyvault blob records besides the common header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureKeyVaultParams {
    /// The key's id with its version (`https://<vault>/keys/<name>/<version>`), as the vault
    /// answered the wrap.
    pub key_id: String,
    pub algorithm: String,
    /// base64: the envelope key wrapped by the vault.
    pub wrapped_key: String,
    /// base64: the envelope's GCM nonce.
    pub iv: String,
    /// base64: the root key sealed by the envelope key, with its tag.
    pub ciphertext: String,
}

/// What get key said.
#[derive(Debug, Clone)]
struct KeyFacts {
    /// The latest (or configured) version's id.
    kid: String,
}

/// The settings a client is built from.
struct Settings {
    resolved: Resolved,
    client_secret: Option<secrecy::SecretString>,
    tls_ca_file: Option<std::path::PathBuf>,
    /// The vault is on a loopback address (an emulator): its challenge's resource is not checked.
    loopback: bool,
}

pub struct AzureKeyVaultSeal {
    name: String,
    member: String,
    key_name: String,
    key_version: Option<String>,
    vault_url: String,
    credentials_from: String,
    settings: Arc<Settings>,
    client: Arc<tokio::sync::OnceCell<Arc<KeyClient>>>,
    health: Tracker,
    key: Mutex<Option<KeyFacts>>,
    runner: Runner,
}

impl AzureKeyVaultSeal {
    pub fn from_config(name: &str, cfg: &AzureKeyVaultConfig) -> AzureKeyVaultSeal {
        let resolved = cfg.resolve(&config::process_env);
        let vault_url = resolved
            .vault_url
            .as_ref()
            .map(|(u, _)| u.clone())
            .unwrap_or_default();
        let host = vault_url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or("")
            .to_string();
        let member = resolved
            .vault_name
            .as_ref()
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| host.clone());
        let loopback =
            crate::seal::cloud::is_loopback(host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host));
        let mut detail = std::collections::BTreeMap::new();
        detail.insert("endpoint".to_string(), vault_url.clone().into());
        let health = Tracker::new(
            name,
            "Azure Key Vault",
            &member,
            detail,
            resolved.denied_retry,
        );
        AzureKeyVaultSeal {
            name: name.to_string(),
            member,
            key_name: resolved
                .key_name
                .as_ref()
                .map(|(k, _)| k.clone())
                .unwrap_or_default(),
            key_version: cfg.key_version.clone(),
            credentials_from: resolved.credentials.describe(&resolved),
            runner: Runner::new(format!("azurekv-{name}"), resolved.timeout),
            settings: Arc::new(Settings {
                client_secret: cfg.client_secret.clone(),
                tls_ca_file: cfg.tls_ca_file.clone(),
                loopback,
                resolved,
            }),
            vault_url,
            client: Arc::new(tokio::sync::OnceCell::new()),
            health,
            key: Mutex::new(None),
        }
    }

    fn client_fut(
        &self,
    ) -> impl Future<Output = Result<Arc<KeyClient>, KmsError>> + Send + 'static {
        let cell = self.client.clone();
        let s = self.settings.clone();
        let url = self.vault_url.clone();
        async move {
            cell.get_or_try_init(|| async move { build_client(&s, &url).map(Arc::new) })
                .await
                .cloned()
        }
    }

    fn describe(&self) -> Result<KeyFacts, KmsError> {
        let client = self.client_fut();
        let name = self.key_name.clone();
        let version = self.key_version.clone();
        let facts = self.runner.run("get key", async move {
            let c = client.await?;
            let opts = KeyClientGetKeyOptions {
                key_version: version,
                ..Default::default()
            };
            let key = c
                .get_key(&name, Some(opts))
                .await
                .map_err(|e| classify("get key", e))?
                .into_model()
                .map_err(|e| classify("get key", e))?;
            check_key(&key)
        });
        if let Ok(f) = &facts {
            self.health.set_detail("key_id", f.kid.clone().into());
            *self.key.lock_recover() = Some(f.clone());
        }
        facts
    }

    fn facts(&self) -> Result<KeyFacts, KmsError> {
        if let Some(f) = self.key.lock_recover().clone() {
            return Ok(f);
        }
        self.describe()
    }

    /// Wraps `kek` with the configured (or latest) version; returns the version's id and the
    /// wrapped bytes.
    fn wrap_kek(&self, kek: &[u8]) -> Result<(String, Vec<u8>), KmsError> {
        self.facts()?;
        let client = self.client_fut();
        let name = self.key_name.clone();
        let version = self.key_version.clone();
        let kek = Zeroizing::new(kek.to_vec());
        self.runner.run("wrapKey", async move {
            let c = client.await?;
            let body = oaep_params(kek.to_vec())
                .try_into()
                .map_err(|e| classify("wrapKey", e))?;
            let opts = KeyClientWrapKeyOptions {
                key_version: version,
                ..Default::default()
            };
            let out = c
                .wrap_key(&name, body, Some(opts))
                .await
                .map_err(|e| classify("wrapKey", e))?
                .into_model()
                .map_err(|e| classify("wrapKey", e))?;
            let kid = out
                .kid
                .ok_or_else(|| KmsError::other("wrapKey", "the answer has no kid"))?;
            let wrapped = out
                .result
                .ok_or_else(|| KmsError::other("wrapKey", "the answer has no value"))?;
            Ok((kid, wrapped))
        })
    }

    fn unwrap_kek(&self, key_id: &str, wrapped: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let client = self.client_fut();
        let (name, version) = name_and_version(key_id).ok_or_else(|| {
            KmsError::other("unwrapKey", "the blob's key id has no key name and version")
        })?;
        self.runner.run("unwrapKey", async move {
            let c = client.await?;
            let body = oaep_params(wrapped)
                .try_into()
                .map_err(|e| classify("unwrapKey", e))?;
            let out = c
                .unwrap_key(&name, &version, body, None)
                .await
                .map_err(|e| classify("unwrapKey", e))?
                .into_model()
                .map_err(|e| classify("unwrapKey", e))?;
            out.result
                .map(Zeroizing::new)
                .ok_or_else(|| KmsError::other("unwrapKey", "the answer has no value"))
        })
    }

    fn params(blob: &WrappedBlob) -> Result<AzureKeyVaultParams, BlobError> {
        blob.params_as()
    }

    fn decode(&self, p: &AzureKeyVaultParams) -> Result<(Vec<u8>, Vec<u8>), SealError> {
        let invalid = |m: &str| SealError::Invalid {
            seal: self.name.clone(),
            message: m.to_string(),
        };
        if p.algorithm != ALGORITHM {
            return Err(invalid("stored blob's algorithm is not RSA-OAEP-256"));
        }
        if name_and_version(&p.key_id).is_none() {
            return Err(invalid(
                "stored blob's key_id is not a Key Vault key id with a version",
            ));
        }
        let wrapped = B64
            .decode(&p.wrapped_key)
            .map_err(|_| invalid("stored blob's wrapped_key is not valid base64"))?;
        let mut sealed = B64
            .decode(&p.iv)
            .map_err(|_| invalid("stored blob's iv is not valid base64"))?;
        sealed.extend(
            B64.decode(&p.ciphertext)
                .map_err(|_| invalid("stored blob's ciphertext is not valid base64"))?,
        );
        Ok((wrapped, sealed))
    }

    fn open(
        &self,
        aad: &str,
        p: &AzureKeyVaultParams,
        wrapped: &[u8],
        sealed: &[u8],
        attempt: Attempt,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        if let Some(e) = self.health.held(attempt) {
            return Err(e);
        }
        let r = self
            .health
            .timed("unwrap", || self.unwrap_kek(&p.key_id, wrapped.to_vec()));
        let kek = r?;
        crypto::open(&kek, aad.as_bytes(), sealed)
            .map(Zeroizing::new)
            .map_err(|e| {
                KmsError::new(
                    if e == crypto::CryptoError::Authentication {
                        FailureKind::Authentication
                    } else {
                        FailureKind::Other
                    },
                    "envelope",
                    None,
                    format!("the envelope does not open: {e}"),
                    Some("the stored blob was modified, or belongs to another key".into()),
                )
            })
    }
}

/// RSA-OAEP-256 of `value`.
// The model is non_exhaustive: no struct literal outside its crate.
#[allow(clippy::field_reassign_with_default)]
fn oaep_params(value: Vec<u8>) -> KeyOperationParameters {
    let mut p = KeyOperationParameters::default();
    p.algorithm = Some(EncryptionAlgorithm::RsaOaep256);
    p.value = Some(value);
    p
}

/// The key name and version of a key id (`https://vault/keys/<name>/<version>`).
fn name_and_version(kid: &str) -> Option<(String, String)> {
    let path = kid.split("://").nth(1)?.split_once('/')?.1;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["keys", name, version] => Some((name.to_string(), version.to_string())),
        _ => None,
    }
}

fn check_key(key: &azure_security_keyvault_keys::models::Key) -> Result<KeyFacts, KmsError> {
    use azure_security_keyvault_keys::models::KeyType;
    let jwk = key
        .key
        .as_ref()
        .ok_or_else(|| KmsError::other("get key", "the answer has no key"))?;
    let kid = jwk.kid.clone().unwrap_or_default();
    if let Some(a) = &key.attributes {
        if a.enabled == Some(false) {
            return Err(KmsError::new(
                FailureKind::KeyUnavailable,
                "get key",
                Some("KeyDisabled".into()),
                format!("key {kid} is disabled"),
                Some("enable it (az keyvault key set-attributes --enabled true)".into()),
            ));
        }
        if let Some(exp) = a.expires
            && exp < time_now()
        {
            return Err(KmsError::new(
                FailureKind::KeyUnavailable,
                "get key",
                Some("KeyExpired".into()),
                format!("key {kid} expired at {exp}"),
                Some(
                    "extend its expiry, or rotate to a new version and run `operator rewrap`"
                        .into(),
                ),
            ));
        }
    }
    if !matches!(jwk.kty, Some(KeyType::Rsa) | Some(KeyType::RsaHsm)) {
        return Err(KmsError::new(
            FailureKind::InvalidConfig,
            "get key",
            None,
            format!("key {kid} is not an RSA key"),
            Some("configure an RSA or RSA-HSM key (2048 bits or more)".into()),
        ));
    }
    if let Some(ops) = &jwk.key_ops
        && !(ops.iter().any(|o| o == "wrapKey") && ops.iter().any(|o| o == "unwrapKey"))
    {
        return Err(KmsError::new(
            FailureKind::InvalidConfig,
            "get key",
            None,
            format!(
                "key {kid} does not allow wrapKey and unwrapKey (its key_ops: {})",
                ops.join(", ")
            ),
            Some("allow the wrapKey and unwrapKey operations on the key".into()),
        ));
    }
    if name_and_version(&kid).is_none() {
        return Err(KmsError::other(
            "get key",
            format!("the key id {kid:?} has no name and version"),
        ));
    }
    Ok(KeyFacts { kid })
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn build_client(s: &Settings, url: &str) -> Result<KeyClient, KmsError> {
    let local = |m: String| KmsError::new(FailureKind::InvalidConfig, "client", None, m, None);
    let mut http = reqwest::Client::builder()
        .timeout(s.resolved.timeout)
        .connect_timeout(s.resolved.timeout.min(std::time::Duration::from_secs(5)));
    if let Some(f) = &s.tls_ca_file {
        let pem =
            std::fs::read(f).map_err(|e| local(format!("tls_ca_file {}: {e}", f.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| local(format!("tls_ca_file {}: {e}", f.display())))?;
        http = http.tls_certs_merge(certs);
    }
    let http = http
        .build()
        .map_err(|e| local(format!("cannot build the HTTPS client: {e}")))?;
    let client_options = || {
        let mut o = ClientOptions {
            transport: Some(Transport::new(Arc::new(http.clone()))),
            // The auto-unseal loop retries with its own backoff.
            retry: RetryOptions::none(),
            ..Default::default()
        };
        if s.resolved.environment.is_some() {
            o.cloud = Some(Arc::new(match s.resolved.cloud {
                Cloud::Public => azure_core::cloud::CloudConfiguration::AzurePublic,
                Cloud::UsGovernment => azure_core::cloud::CloudConfiguration::AzureGovernment,
                Cloud::China => azure_core::cloud::CloudConfiguration::AzureChina,
            }));
        }
        o
    };
    let cred_err = |e: azure_core::Error| {
        KmsError::new(
            FailureKind::Denied,
            "credential",
            Some("CredentialUnavailable".into()),
            e.to_string(),
            Some(
                "check the tenant id, client id and secret, or the managed or workload identity"
                    .into(),
            ),
        )
    };
    let r = &s.resolved;
    let credential: Arc<dyn TokenCredential> = match r.credentials {
        Credentials::ClientSecret => {
            let secret = match (&r.client_secret_from, &s.client_secret) {
                (Some(config::Source::Env(v)), _) => config::process_env(v).unwrap_or_default(),
                (_, Some(sec)) => sec.expose_secret().to_string(),
                _ => String::new(),
            };
            azure_identity::ClientSecretCredential::new(
                r.tenant_id.as_ref().map(|(t, _)| t.as_str()).unwrap_or(""),
                r.client_id
                    .as_ref()
                    .map(|(c, _)| c.clone())
                    .unwrap_or_default(),
                azure_core::credentials::Secret::new(secret),
                Some(azure_identity::ClientSecretCredentialOptions {
                    client_options: client_options(),
                }),
            )
            .map_err(cred_err)?
        }
        Credentials::WorkloadIdentity => {
            let mut o = azure_identity::WorkloadIdentityCredentialOptions::default();
            o.credential_options.client_options = client_options();
            o.client_id = r.client_id.as_ref().map(|(c, _)| c.clone());
            o.tenant_id = r.tenant_id.as_ref().map(|(t, _)| t.clone());
            azure_identity::WorkloadIdentityCredential::new(Some(o)).map_err(cred_err)?
        }
        Credentials::ManagedIdentity => azure_identity::ManagedIdentityCredential::new(Some(
            azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: r
                    .client_id
                    .as_ref()
                    .map(|(c, _)| azure_identity::UserAssignedId::ClientId(c.clone())),
                client_options: client_options(),
            },
        ))
        .map_err(cred_err)?,
    };
    KeyClient::new(
        url,
        credential,
        Some(KeyClientOptions {
            client_options: client_options(),
            // The challenge's resource must match the vault's domain, except for an emulator on
            // a loopback address.
            verify_challenge_resource: Some(!s.loopback),
            ..Default::default()
        }),
    )
    .map_err(|e| local(format!("Key Vault client for {url}: {e}")))
}

/// Classifies an Azure SDK error.
pub fn classify(op: &'static str, e: azure_core::Error) -> KmsError {
    use azure_core::error::ErrorKind;
    let message = crate::seal::cloud::chain(&e);
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            let code = error_code.clone().unwrap_or_else(|| format!("HTTP {status}"));
            let (kind, hint, throttled) = classify_status(op, status, &code, &message);
            let mut k = KmsError::new(kind, op, Some(code), message, hint);
            k.throttled = throttled;
            k
        }
        ErrorKind::Connection | ErrorKind::Io => KmsError::new(
            FailureKind::Unreachable,
            op,
            None,
            format!("cannot reach the vault: {message}"),
            Some("check the vault URL, DNS, proxy, firewall and private endpoint".into()),
        ),
        ErrorKind::Credential => KmsError::new(
            FailureKind::Denied,
            op,
            Some("CredentialUnavailable".into()),
            message,
            Some("no token: check the tenant id, client id and secret, or the managed or workload identity".into()),
        ),
        _ => KmsError::other(op, message),
    }
}

/// What an HTTP status and Key Vault error code mean.
pub fn classify_status(
    op: &'static str,
    status: u16,
    code: &str,
    message: &str,
) -> (FailureKind, Option<String>, bool) {
    let disabled = message.to_ascii_lowercase().contains("disabled") || code == "KeyDisabled";
    match status {
        401 => (
            FailureKind::Denied,
            Some("the token was refused: check the tenant and the identity".into()),
            false,
        ),
        403 if disabled => (
            FailureKind::KeyUnavailable,
            Some("the key is disabled: enable it (az keyvault key set-attributes --enabled true)".into()),
            false,
        ),
        403 => (
            FailureKind::Denied,
            Some(
                "the identity needs the get, wrapKey and unwrapKey key permissions (access policy), or the \
                 Key Vault Crypto Service Encryption User role (RBAC), and the vault's firewall must admit this host"
                    .into(),
            ),
            false,
        ),
        404 => (
            FailureKind::KeyUnavailable,
            Some("no such key or version in the vault; a deleted key can be recovered while soft-delete keeps it (az keyvault key recover)".into()),
            false,
        ),
        400 if op == "unwrapKey" => (
            FailureKind::Authentication,
            Some("the vault could not unwrap the stored envelope key: it was modified, or belongs to another key".into()),
            false,
        ),
        429 => (FailureKind::Unreachable, None, true),
        s if s >= 500 => (FailureKind::Unreachable, None, false),
        _ => (FailureKind::Other, None, false),
    }
}

impl Seal for AzureKeyVaultSeal {
    fn seal_type(&self) -> &'static str {
        SEAL_TYPE
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn wrap(&self, ctx: &BlobContext, plaintext: &[u8]) -> Result<WrappedBlob, SealError> {
        let aad = associated_data(ctx, SEAL_TYPE, &self.name);
        let kek = Zeroizing::new(crypto::random_vec(crypto::KEY_LEN)?);
        let sealed = crypto::seal(&kek, aad.as_bytes(), plaintext)?;
        let (iv, ct) = sealed.split_at(crypto::GCM_NONCE_LEN);
        let r = self.health.timed("wrap", || self.wrap_kek(&kek));
        match r {
            Ok((key_id, wrapped)) => {
                let params = AzureKeyVaultParams {
                    key_id,
                    algorithm: ALGORITHM.into(),
                    wrapped_key: B64.encode(wrapped),
                    iv: B64.encode(iv),
                    ciphertext: B64.encode(ct),
                };
                Ok(WrappedBlob::new(
                    ctx,
                    SEAL_TYPE,
                    &self.name,
                    &self.member,
                    params,
                )?)
            }
            Err(e) => {
                tracing::warn!(seal = %self.name, member = %self.member, error = %e, "wrap failed");
                Err(self.failed("the vault could not wrap", e))
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
        let (wrapped, sealed) = self.decode(&p)?;
        match self.open(&blob.aad, &p, &wrapped, &sealed, attempt) {
            Ok(plaintext) => Ok(Unwrapped {
                plaintext,
                member: self.member.clone(),
            }),
            Err(e) => {
                tracing::warn!(seal = %self.name, member = %self.member, error = %e, "unwrap failed");
                Err(self.failed("the vault could not unwrap the root key", e))
            }
        }
    }

    fn random(&self, _len: usize) -> Result<Vec<u8>, SealError> {
        Err(SealError::Invalid {
            seal: self.name.clone(),
            message: "Azure Key Vault has no random generator (only Managed HSM has): the OS generator is used".into(),
        })
    }

    fn status(&self) -> SealHealth {
        let r = &self.settings.resolved;
        let mut detail = std::collections::BTreeMap::new();
        detail.insert("key_name".to_string(), self.key_name.clone().into());
        if let Some((_, s)) = &r.key_name {
            detail.insert("key_name_from".to_string(), s.to_string().into());
        }
        if let Some((_, s)) = &r.vault_url {
            detail.insert("vault_from".to_string(), s.to_string().into());
        }
        detail.insert(
            "credentials_from".to_string(),
            self.credentials_from.clone().into(),
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
        // One vault: nothing else to check against.
        Ok(Vec::new())
    }

    fn self_test(&self) -> Vec<MemberSelfTest> {
        vec![super::cloud::self_test(&self.member, |probe| {
            let (kid, wrapped) = self.wrap_kek(probe)?;
            self.unwrap_kek(&kid, wrapped)
        })]
    }

    fn shutdown(&self) {}

    fn key_matches(&self, blob: &WrappedBlob) -> bool {
        let Ok(p) = Self::params(blob) else {
            return false;
        };
        let Some((name, version)) = name_and_version(&p.key_id) else {
            return false;
        };
        if name != self.key_name {
            return false;
        }
        match (&self.key_version, self.key.lock_recover().as_ref()) {
            (Some(v), _) => &version == v,
            // The latest version, when known: after a rotation in the vault the blob is stale.
            (None, Some(f)) => {
                name_and_version(&f.kid).is_some_and(|(_, latest)| latest == version)
            }
            (None, None) => true,
        }
    }

    fn key_name(&self, blob: &WrappedBlob) -> String {
        Self::params(blob)
            .map(|p| p.key_id)
            .unwrap_or_else(|_| "(unreadable blob)".into())
    }
}

impl AzureKeyVaultSeal {
    fn failed(&self, summary: &'static str, e: KmsError) -> SealError {
        super::cloud::failed(&self.name, &self.health.snapshot().name, summary, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_name_their_key_and_version() {
        assert_eq!(
            name_and_version("https://v.vault.azure.net/keys/unseal/0123abcd"),
            Some(("unseal".into(), "0123abcd".into()))
        );
        assert_eq!(
            name_and_version("https://127.0.0.1:8443//keys/unseal/0123abcd/"),
            Some(("unseal".into(), "0123abcd".into()))
        );
        assert_eq!(
            name_and_version("https://v.vault.azure.net/keys/unseal"),
            None
        );
        assert_eq!(
            name_and_version("https://v.vault.azure.net/secrets/s/1"),
            None
        );
    }

    #[test]
    fn a_disabled_key_needs_an_operator_and_a_denial_names_the_permissions() {
        let (k, hint, _) = classify_status(
            "unwrapKey",
            403,
            "Forbidden",
            "Operation unwrapKey is not allowed on a disabled key.",
        );
        assert_eq!(k, FailureKind::KeyUnavailable);
        assert!(hint.unwrap().contains("--enabled true"));
        let (k, hint, _) =
            classify_status("unwrapKey", 403, "Forbidden", "Caller is not authorized");
        assert_eq!(k, FailureKind::Denied);
        assert!(hint.unwrap().contains("unwrapKey"));
        assert_eq!(
            classify_status("get key", 404, "KeyNotFound", "").0,
            FailureKind::KeyUnavailable
        );
        assert_eq!(
            classify_status("unwrapKey", 400, "BadParameter", "").0,
            FailureKind::Authentication
        );
    }

    #[test]
    fn throttling_and_server_errors_are_retried() {
        let (k, _, throttled) = classify_status("wrapKey", 429, "Throttled", "");
        assert_eq!((k, throttled), (FailureKind::Unreachable, true));
        assert_eq!(
            classify_status("wrapKey", 503, "ServiceUnavailable", "").0,
            FailureKind::Unreachable
        );
    }
}
