//! The AWS KMS seal (feature `awskms`): the root key is encrypted by a KMS key with
//! `Encrypt`, bound to its installation, purpose and seal by an EncryptionContext, and decrypted
//! with `Decrypt`. A seal lists one region or several (a multi-Region key and its replicas); each
//! region is a member, tried in order like the members of an HSM pair.
//!
//! The SDK is async; the [`Seal`] trait blocks. The seal owns a small runtime (one worker thread)
//! on which every call runs, with the seal's timeout; the caller waits on a channel, so a call may
//! come from any thread.
//!
//! Failures are told apart ([`error`]): unreachable, timed out and throttled are retried by the
//! auto-unseal loop with its backoff; denied and key-unavailable answers need an operator, so the
//! member is left alone by automatic attempts for `denied_retry` (an operator's `operator unseal`
//! asks at once).

pub mod config;
mod error;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeyMetadata, KeySpec, KeyState, KeyUsageType};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use config::AwsKmsConfig;
use config::{Credentials, Resolved};
pub use error::KmsError;

use super::cloud::{Runner, Tracker};
use super::{
    Attempt, BlobContext, BlobError, Failure, FailureKind, MemberHealth, MemberSelfTest, Seal,
    SealError, SealHealth, Unwrapped, WrappedBlob, associated_data,
};
use crate::locks::MutexExt;

pub const SEAL_TYPE: &str = "awskms";
/// The EncryptionContext key that carries the blob's associated data.
pub const CONTEXT_KEY: &str = "sealkeeper:aad";

/// What an awskms blob records besides the common header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsParams {
    /// The ARN of the key that encrypted it (as KMS answered: an alias is resolved).
    pub key_arn: String,
    /// The region that encrypted it.
    pub region: String,
    /// base64: KMS's CiphertextBlob.
    pub ciphertext: String,
}

/// What DescribeKey said of the key in one region.
#[derive(Debug, Clone)]
struct KeyFacts {
    arn: String,
    state: String,
    multi_region: bool,
}

/// One region.
struct Member {
    region: String,
    endpoint: Option<String>,
    client: tokio::sync::OnceCell<Client>,
    health: Tracker,
    key: Mutex<Option<KeyFacts>>,
}

/// The settings a client is built from (the secrets stay in [`SecretString`]s until the SDK's
/// credentials are made).
#[derive(Clone)]
struct ClientSettings {
    credentials: Credentials,
    access_key: Option<String>,
    secret_key: Option<SecretString>,
    session_token: Option<SecretString>,
    shared_creds_filename: Option<std::path::PathBuf>,
    shared_creds_profile: Option<String>,
    role_arn: Option<String>,
    role_session_name: Option<String>,
    web_identity_token_file: Option<std::path::PathBuf>,
    timeout: Duration,
    fips_mode: bool,
}

pub struct AwsKmsSeal {
    name: String,
    key_id: String,
    resolved: Resolved,
    credentials_from: String,
    settings: Arc<ClientSettings>,
    members: Vec<Arc<Member>>,
    runner: Runner,
}

impl AwsKmsSeal {
    pub fn from_config(name: &str, cfg: &AwsKmsConfig, fips_mode: bool) -> AwsKmsSeal {
        Self::with_env(name, cfg, fips_mode, &config::process_env)
    }

    pub fn with_env(
        name: &str,
        cfg: &AwsKmsConfig,
        fips_mode: bool,
        env: config::Env<'_>,
    ) -> AwsKmsSeal {
        let resolved = cfg.resolve(env);
        let key_id = resolved
            .key_id
            .as_ref()
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        let members = resolved
            .regions
            .iter()
            .zip(&resolved.endpoints)
            .map(|((region, _), endpoint)| {
                let endpoint = endpoint.as_ref().map(|(e, _)| e.clone());
                let mut detail = std::collections::BTreeMap::new();
                detail.insert("region".to_string(), region.clone().into());
                if let Some(e) = &endpoint {
                    detail.insert("endpoint".to_string(), e.clone().into());
                }
                Arc::new(Member {
                    region: region.clone(),
                    endpoint,
                    client: tokio::sync::OnceCell::new(),
                    health: Tracker::new(
                        name,
                        "AWS KMS region",
                        region,
                        detail,
                        resolved.denied_retry,
                    ),
                    key: Mutex::new(None),
                })
            })
            .collect();
        let settings = Arc::new(ClientSettings {
            credentials: resolved.credentials.clone(),
            access_key: cfg.access_key.clone(),
            secret_key: cfg.secret_key.clone(),
            session_token: cfg.session_token.clone(),
            shared_creds_filename: cfg.shared_creds_filename.clone(),
            shared_creds_profile: cfg.shared_creds_profile.clone(),
            role_arn: cfg.role_arn.clone(),
            role_session_name: cfg.role_session_name.clone(),
            web_identity_token_file: cfg.web_identity_token_file.clone(),
            timeout: resolved.timeout,
            fips_mode,
        });
        let runner = Runner::new(format!("awskms-{name}"), resolved.timeout);
        AwsKmsSeal {
            name: name.to_string(),
            key_id,
            credentials_from: resolved.credentials.describe(cfg),
            resolved,
            settings,
            members,
            runner,
        }
    }

    fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, KmsError>> + Send + 'static,
    ) -> Result<T, KmsError> {
        self.runner.run(op, f)
    }

    fn client_fut(
        &self,
        m: &Arc<Member>,
    ) -> impl Future<Output = Result<Client, KmsError>> + Send + 'static {
        let m = m.clone();
        let s = self.settings.clone();
        async move {
            m.client
                .get_or_try_init(|| build_client(s, m.region.clone(), m.endpoint.clone()))
                .await
                .cloned()
        }
    }

    /// The key id to use in `region`: a multi-Region key's ARN names its own region, so a replica
    /// is addressed by the same ARN with the region replaced.
    fn key_in_region(key: &str, region: &str) -> String {
        let parts: Vec<&str> = key.splitn(6, ':').collect();
        if parts.len() == 6 && parts[5].starts_with("key/mrk-") && parts[3] != region {
            return format!(
                "{}:{}:{}:{}:{}:{}",
                parts[0], parts[1], parts[2], region, parts[4], parts[5]
            );
        }
        key.to_string()
    }

    /// DescribeKey in the member's region: the key must be enabled, symmetric and for encryption.
    fn describe(&self, m: &Arc<Member>) -> Result<KeyFacts, KmsError> {
        let client = self.client_fut(m);
        let key = Self::key_in_region(&self.key_id, &m.region);
        let facts = self.run("DescribeKey", async move {
            let c = client.await?;
            let out = c
                .describe_key()
                .key_id(key)
                .send()
                .await
                .map_err(|e| error::classify("DescribeKey", e))?;
            let md = out
                .key_metadata
                .ok_or_else(|| KmsError::other("DescribeKey", "the answer has no KeyMetadata"))?;
            check_metadata(&md)
        });
        if let Ok(f) = &facts {
            m.health.set_detail("key_arn", f.arn.clone().into());
            m.health.set_detail("key_state", f.state.clone().into());
            *m.key.lock_recover() = Some(f.clone());
        }
        facts
    }

    /// The key's facts in this region, asking KMS the first time.
    fn facts(&self, m: &Arc<Member>) -> Result<KeyFacts, KmsError> {
        if let Some(f) = m.key.lock_recover().clone() {
            return Ok(f);
        }
        self.describe(m)
    }

    fn encrypt(
        &self,
        m: &Arc<Member>,
        aad: &str,
        plaintext: &[u8],
    ) -> Result<(String, Vec<u8>), KmsError> {
        let facts = self.facts(m)?;
        let client = self.client_fut(m);
        let pt = Zeroizing::new(plaintext.to_vec());
        let aad = aad.to_string();
        let key = facts.arn.clone();
        self.run("Encrypt", async move {
            let c = client.await?;
            let out = c
                .encrypt()
                .key_id(key)
                .plaintext(Blob::new(pt.to_vec()))
                .encryption_context(CONTEXT_KEY, aad)
                .send()
                .await
                .map_err(|e| error::classify("Encrypt", e))?;
            let arn = out
                .key_id
                .ok_or_else(|| KmsError::other("Encrypt", "the answer has no KeyId"))?;
            let ct = out
                .ciphertext_blob
                .ok_or_else(|| KmsError::other("Encrypt", "the answer has no CiphertextBlob"))?;
            Ok((arn, ct.into_inner()))
        })
    }

    fn decrypt(
        &self,
        m: &Arc<Member>,
        key_arn: &str,
        aad: &str,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let client = self.client_fut(m);
        let key = Self::key_in_region(key_arn, &m.region);
        let aad = aad.to_string();
        self.run("Decrypt", async move {
            let c = client.await?;
            let out = c
                .decrypt()
                .key_id(key)
                .ciphertext_blob(Blob::new(ciphertext))
                .encryption_context(CONTEXT_KEY, aad)
                .send()
                .await
                .map_err(|e| error::classify("Decrypt", e))?;
            let pt = out
                .plaintext
                .ok_or_else(|| KmsError::other("Decrypt", "the answer has no Plaintext"))?;
            Ok(Zeroizing::new(pt.into_inner()))
        })
    }

    fn failures(&self, summary: &'static str, errors: Vec<(String, KmsError)>) -> SealError {
        SealError::Members {
            seal: self.name.clone(),
            summary,
            errors: errors
                .into_iter()
                .map(|(member, e)| Failure {
                    member,
                    kind: e.kind,
                    source: Arc::new(e),
                })
                .collect(),
        }
    }

    fn params(blob: &WrappedBlob) -> Result<AwsKmsParams, BlobError> {
        blob.params_as()
    }

    fn decode(&self, p: &AwsKmsParams) -> Result<Vec<u8>, SealError> {
        if config::check_key_id(&p.key_arn).is_err() || !p.key_arn.starts_with("arn:") {
            return Err(SealError::Invalid {
                seal: self.name.clone(),
                message: "stored blob's key_arn is not a KMS key ARN".into(),
            });
        }
        B64.decode(&p.ciphertext).map_err(|_| SealError::Invalid {
            seal: self.name.clone(),
            message: "stored blob's ciphertext is not valid base64".into(),
        })
    }

    fn unwrap_on(
        &self,
        m: &Arc<Member>,
        blob: &WrappedBlob,
        p: &AwsKmsParams,
        ct: &[u8],
        attempt: Attempt,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        if let Some(e) = m.health.held(attempt) {
            return Err(e);
        }
        m.health.timed("unwrap", || {
            self.decrypt(m, &p.key_arn, &blob.aad, ct.to_vec())
        })
    }

    /// Whether `arn` names the configured key (in any region, for a multi-Region key).
    fn is_configured(&self, arn: &str) -> bool {
        let known: Vec<KeyFacts> = self
            .members
            .iter()
            .filter_map(|m| m.key.lock_recover().clone())
            .collect();
        let key_part = |a: &str| a.rsplit_once(':').map(|(_, k)| k.to_string());
        if !known.is_empty() {
            return known
                .iter()
                .any(|f| f.arn == arn || (f.multi_region && key_part(&f.arn) == key_part(arn)));
        }
        // Not described yet: compare what the configuration names, where it can be compared.
        let k = &self.key_id;
        if k.starts_with("arn:") && k.contains(":key/") {
            return k == arn || (k.contains(":key/mrk-") && key_part(k) == key_part(arn));
        }
        if k.starts_with("alias/") || k.contains(":alias/") {
            return true;
        }
        arn.ends_with(&format!(":key/{k}"))
    }
}

/// The key in DescribeKey's answer must be usable to wrap: enabled, symmetric, ENCRYPT_DECRYPT.
fn check_metadata(md: &KeyMetadata) -> Result<KeyFacts, KmsError> {
    let state = md.key_state.clone();
    let arn = md.arn.clone().unwrap_or_default();
    let facts = KeyFacts {
        arn: arn.clone(),
        state: state
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        multi_region: md.multi_region.unwrap_or(false),
    };
    let unavailable = |msg: String, hint: &str| {
        Err(KmsError::new(
            FailureKind::KeyUnavailable,
            "DescribeKey",
            Some(format!("KeyState {}", facts.state)),
            msg,
            Some(hint.to_string()),
        ))
    };
    match state {
        Some(KeyState::Enabled) => {}
        Some(KeyState::Disabled) => {
            return unavailable(
                format!("key {arn} is disabled"),
                "enable it (aws kms enable-key) if it was disabled by mistake",
            );
        }
        Some(KeyState::PendingDeletion) | Some(KeyState::PendingReplicaDeletion) => {
            let when = md
                .deletion_date
                .map(|d| format!(" on {d}"))
                .unwrap_or_default();
            return unavailable(
                format!("key {arn} is scheduled for deletion{when}"),
                "cancel it now (aws kms cancel-key-deletion), then enable the key: a deleted key cannot be recovered",
            );
        }
        Some(KeyState::PendingImport) => {
            return unavailable(
                format!("key {arn} has no key material (PendingImport)"),
                "import the key material that wrapped the root key",
            );
        }
        Some(KeyState::Unavailable) => {
            return unavailable(
                format!("key {arn} is unavailable (its custom key store is disconnected)"),
                "reconnect the custom key store",
            );
        }
        Some(other) => {
            return unavailable(
                format!("key {arn} is in state {}", other.as_str()),
                "wait for the key to become Enabled",
            );
        }
        None => return Err(KmsError::other("DescribeKey", "the answer has no KeyState")),
    }
    let symmetric = md
        .key_usage
        .as_ref()
        .is_none_or(|u| *u == KeyUsageType::EncryptDecrypt)
        && md
            .key_spec
            .as_ref()
            .is_none_or(|s| *s == KeySpec::SymmetricDefault);
    if !symmetric {
        return Err(KmsError::new(
            FailureKind::InvalidConfig,
            "DescribeKey",
            None,
            format!("key {arn} is not a symmetric ENCRYPT_DECRYPT key"),
            Some("configure a symmetric encryption key (SYMMETRIC_DEFAULT)".into()),
        ));
    }
    if arn.is_empty() {
        return Err(KmsError::other("DescribeKey", "the answer has no key Arn"));
    }
    Ok(facts)
}

async fn build_client(
    s: Arc<ClientSettings>,
    region: String,
    endpoint: Option<String>,
) -> Result<Client, KmsError> {
    use aws_config::BehaviorVersion;
    use aws_config::Region;
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_sdk_kms::config::SharedCredentialsProvider;

    let region_v = Region::new(region.clone());
    let provider_config =
        aws_config::provider_config::ProviderConfig::default().with_region(Some(region_v.clone()));
    let provider: SharedCredentialsProvider = match s.credentials {
        Credentials::Static => {
            SharedCredentialsProvider::new(aws_sdk_kms::config::Credentials::new(
                s.access_key.clone().unwrap_or_default(),
                s.secret_key
                    .as_ref()
                    .map(|k| k.expose_secret().to_string())
                    .unwrap_or_default(),
                s.session_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_string()),
                None,
                "sealkeeper-config",
            ))
        }
        Credentials::WebIdentity => {
            use aws_config::web_identity_token::{
                StaticConfiguration, WebIdentityTokenCredentialsProvider,
            };
            SharedCredentialsProvider::new(
                WebIdentityTokenCredentialsProvider::builder()
                    .configure(&provider_config)
                    .static_configuration(StaticConfiguration {
                        web_identity_token_file: s
                            .web_identity_token_file
                            .clone()
                            .unwrap_or_default(),
                        role_arn: s.role_arn.clone().unwrap_or_default(),
                        session_name: s
                            .role_session_name
                            .clone()
                            .unwrap_or_else(|| "sealkeeper".into()),
                    })
                    .build(),
            )
        }
        // The aliases are deprecated in favour of aws-runtime's names for the same types; aws-config
        // takes them as they are, and aws-runtime is not a dependency of ours.
        #[allow(deprecated)]
        Credentials::Profile => {
            use aws_config::profile::ProfileFileCredentialsProvider;
            use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
            let mut b = ProfileFileCredentialsProvider::builder().configure(&provider_config);
            if let Some(f) = &s.shared_creds_filename {
                b = b.profile_files(
                    ProfileFiles::builder()
                        .with_file(ProfileFileKind::Credentials, f)
                        .build(),
                );
            }
            if let Some(p) = &s.shared_creds_profile {
                b = b.profile_name(p);
            }
            SharedCredentialsProvider::new(b.build())
        }
        Credentials::DefaultChain => SharedCredentialsProvider::new(
            aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                .configure(provider_config.clone())
                .build()
                .await,
        ),
    };
    let provider = match (&s.role_arn, &s.credentials) {
        (Some(role), c) if *c != Credentials::WebIdentity => SharedCredentialsProvider::new(
            aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name(
                    s.role_session_name
                        .clone()
                        .unwrap_or_else(|| "sealkeeper".into()),
                )
                .region(region_v.clone())
                .build_from_provider(provider)
                .await,
        ),
        _ => provider,
    };
    let timeouts = TimeoutConfig::builder()
        .operation_timeout(s.timeout)
        .connect_timeout(s.timeout.min(Duration::from_secs(5)))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region_v)
        .credentials_provider(provider)
        .timeout_config(timeouts)
        // The auto-unseal loop retries with its own backoff; one more attempt here covers a
        // dropped connection.
        .retry_config(RetryConfig::standard().with_max_attempts(2));
    match &endpoint {
        Some(e) => loader = loader.endpoint_url(e),
        None if s.fips_mode => loader = loader.use_fips(true),
        None => {}
    }
    let conf = loader.load().await;
    Ok(Client::new(&conf))
}

impl Seal for AwsKmsSeal {
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
            let r = m.health.timed("wrap", || self.encrypt(m, &aad, plaintext));
            match r {
                Ok((key_arn, ct)) => {
                    let params = AwsKmsParams {
                        key_arn,
                        region: m.region.clone(),
                        ciphertext: B64.encode(ct),
                    };
                    return Ok(WrappedBlob::new(
                        ctx, SEAL_TYPE, &self.name, &m.region, params,
                    )?);
                }
                Err(e) => {
                    tracing::warn!(seal = %self.name, member = %m.region, error = %e, "wrap failed in region");
                    errors.push((m.region.clone(), e));
                }
            }
        }
        Err(self.failures("no region could wrap", errors))
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
        let mut errors = Vec::new();
        for m in &self.members {
            match self.unwrap_on(m, blob, &p, &ct, attempt) {
                Ok(plaintext) => {
                    return Ok(Unwrapped {
                        plaintext,
                        member: m.region.clone(),
                    });
                }
                Err(e) => {
                    tracing::warn!(seal = %self.name, member = %m.region, error = %e, "unwrap failed in region");
                    errors.push((m.region.clone(), e));
                }
            }
        }
        Err(self.failures("no region could unwrap the root key", errors))
    }

    fn random(&self, len: usize) -> Result<Vec<u8>, SealError> {
        let mut errors = Vec::new();
        for m in &self.members {
            let client = self.client_fut(m);
            let r = self.run("GenerateRandom", async move {
                let c = client.await?;
                let out = c
                    .generate_random()
                    .number_of_bytes(len as i32)
                    .send()
                    .await
                    .map_err(|e| error::classify("GenerateRandom", e))?;
                Ok(out.plaintext.map(|b| b.into_inner()).unwrap_or_default())
            });
            match r {
                Ok(b) if b.len() == len => return Ok(b),
                Ok(b) => errors.push((
                    m.region.clone(),
                    KmsError::other(
                        "GenerateRandom",
                        format!("returned {} bytes, not {len}", b.len()),
                    ),
                )),
                Err(e) => errors.push((m.region.clone(), e)),
            }
        }
        Err(self.failures("no region could generate random bytes", errors))
    }

    fn status(&self) -> SealHealth {
        let members: Vec<MemberHealth> = self.members.iter().map(|m| m.health.snapshot()).collect();
        let key_from = self
            .resolved
            .key_id
            .as_ref()
            .map(|(_, s)| s.to_string())
            .unwrap_or_default();
        let regions_from = self
            .resolved
            .regions
            .first()
            .map(|(_, s)| s.to_string())
            .unwrap_or_default();
        let mut detail = std::collections::BTreeMap::new();
        detail.insert("kms_key_id".to_string(), self.key_id.clone().into());
        detail.insert("kms_key_id_from".to_string(), key_from.into());
        detail.insert("region_from".to_string(), regions_from.into());
        detail.insert(
            "credentials_from".to_string(),
            self.credentials_from.clone().into(),
        );
        if let Some((_, s)) = self.resolved.endpoints.iter().flatten().next() {
            detail.insert("endpoint_from".to_string(), s.to_string().into());
        }
        SealHealth {
            name: self.name.clone(),
            seal_type: SEAL_TYPE.to_string(),
            healthy: members.iter().any(|m| m.healthy),
            members,
            detail,
        }
    }

    fn probe(&self) {
        for m in &self.members {
            if m.health.held(Attempt::Automatic).is_some() {
                continue;
            }
            let _ = m.health.timed("probe", || self.describe(m));
        }
    }

    fn verify_members(
        &self,
        _ctx: &BlobContext,
        blob: &WrappedBlob,
        expected: &[u8],
    ) -> Result<Vec<String>, SealError> {
        let p = Self::params(blob)?;
        let ct = self.decode(&p)?;
        let mut unreachable = Vec::new();
        for m in self.members.iter().filter(|m| m.region != blob.wrapped_by) {
            match self.unwrap_on(m, blob, &p, &ct, Attempt::Automatic) {
                Ok(pt) if pt.as_slice() == expected => {}
                Ok(_) => {
                    return Err(SealError::Invalid {
                        seal: self.name.clone(),
                        message: format!("region {} decrypts to a different value", m.region),
                    });
                }
                Err(e) if e.kind == FailureKind::Authentication => {
                    return Err(SealError::Invalid {
                        seal: self.name.clone(),
                        message: format!(
                            "region {} cannot decrypt what {} encrypted (every region of an awskms seal must hold \
                             a replica of the same multi-Region key): {e}",
                            m.region, blob.wrapped_by
                        ),
                    });
                }
                Err(e) => unreachable.push(format!("{}: {e}", m.region)),
            }
        }
        Ok(unreachable)
    }

    fn self_test(&self) -> Vec<MemberSelfTest> {
        let aad = "sealkeeper/self-test";
        self.members
            .iter()
            .map(|m| {
                super::cloud::self_test(&m.region, |probe| {
                    let (arn, ct) = self.encrypt(m, aad, probe)?;
                    self.decrypt(m, &arn, aad, ct)
                })
            })
            .collect()
    }

    fn shutdown(&self) {}

    fn key_matches(&self, blob: &WrappedBlob) -> bool {
        Self::params(blob).is_ok_and(|p| self.is_configured(&p.key_arn))
    }

    fn key_name(&self, blob: &WrappedBlob) -> String {
        Self::params(blob)
            .map(|p| p.key_arn)
            .unwrap_or_else(|_| "(unreadable blob)".into())
    }
}

/// Where each value of the seal came from (for `seal probe`).
pub fn sources(cfg: &AwsKmsConfig) -> Vec<(String, String)> {
    let r = cfg.resolve(&config::process_env);
    let mut out = Vec::new();
    if let Some((k, s)) = &r.key_id {
        out.push(("kms_key_id".to_string(), format!("{k} ({s})")));
    }
    for ((region, s), e) in r.regions.iter().zip(&r.endpoints) {
        let ep = e
            .as_ref()
            .map(|(e, s)| format!(", endpoint {e} ({s})"))
            .unwrap_or_default();
        out.push(("region".to_string(), format!("{region} ({s}){ep}")));
    }
    out.push(("credentials".to_string(), r.credentials.describe(cfg)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(state: KeyState) -> KeyMetadata {
        KeyMetadata::builder()
            .key_id("1234abcd-12ab-34cd-56ef-1234567890ab")
            .arn("arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab")
            .key_state(state)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .key_spec(KeySpec::SymmetricDefault)
            .build()
            .unwrap()
    }

    #[test]
    fn an_enabled_symmetric_key_is_usable() {
        let f = check_metadata(&md(KeyState::Enabled)).unwrap();
        assert!(f.arn.ends_with("1234567890ab"));
        assert_eq!(f.state, "Enabled");
    }

    #[test]
    fn a_disabled_or_deleted_key_needs_an_operator_and_says_what_to_do() {
        let e = check_metadata(&md(KeyState::Disabled)).unwrap_err();
        assert_eq!(e.kind, FailureKind::KeyUnavailable);
        assert!(
            e.to_string().contains("disabled") && e.to_string().contains("enable-key"),
            "{e}"
        );
        let e = check_metadata(&md(KeyState::PendingDeletion)).unwrap_err();
        assert_eq!(e.kind, FailureKind::KeyUnavailable);
        assert!(e.to_string().contains("cancel-key-deletion"), "{e}");
        let e = check_metadata(&md(KeyState::Unavailable)).unwrap_err();
        assert!(e.to_string().contains("custom key store"), "{e}");
    }

    #[test]
    fn an_asymmetric_or_signing_key_is_a_configuration_error() {
        let mut m = md(KeyState::Enabled);
        m.key_usage = Some(KeyUsageType::SignVerify);
        assert_eq!(
            check_metadata(&m).unwrap_err().kind,
            FailureKind::InvalidConfig
        );
        let mut m = md(KeyState::Enabled);
        m.key_spec = Some(KeySpec::Rsa2048);
        assert_eq!(
            check_metadata(&m).unwrap_err().kind,
            FailureKind::InvalidConfig
        );
    }

    #[test]
    fn a_multi_region_key_is_addressed_in_each_region() {
        let arn = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd";
        assert_eq!(
            AwsKmsSeal::key_in_region(arn, "eu-west-1"),
            "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd"
        );
        assert_eq!(AwsKmsSeal::key_in_region(arn, "us-east-1"), arn);
        // A single-Region key keeps its ARN (KMS then says it is not found in another region).
        let single = "arn:aws:kms:us-east-1:111122223333:key/1234abcd";
        assert_eq!(AwsKmsSeal::key_in_region(single, "eu-west-1"), single);
        assert_eq!(AwsKmsSeal::key_in_region("alias/x", "eu-west-1"), "alias/x");
    }
}
