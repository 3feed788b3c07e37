//! The `[[seal]]` section of `type = "azurekeyvault"`, with Vault's key names and environment.
//!
//! Precedence follows Vault's azurekeyvault seal: the environment overrides the file
//! (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_ENVIRONMENT`,
//! `AZURE_AD_RESOURCE`, `AZUREKEYVAULT_WRAPPER_VAULT_NAME` then `VAULT_AZUREKEYVAULT_VAULT_NAME`,
//! `AZUREKEYVAULT_WRAPPER_KEY_NAME` then `VAULT_AZUREKEYVAULT_KEY_NAME`), unless
//! `disallow_env_vars = true`. Credentials, as Vault chooses them: a client secret when tenant,
//! client id and secret are all known; otherwise workload identity when its token file is set
//! (`AZURE_FEDERATED_TOKEN_FILE`, AKS); otherwise managed identity (user-assigned when a client id
//! is given). `azure_identity` has no default chain and reads none of these variables itself: the
//! choice is made here.
//!
//! Sealkeeper's additions: `endpoint` (the vault's URL, instead of `https://<vault_name>.<resource>/`,
//! e.g. a private endpoint), `tls_ca_file` (extra trust roots, e.g. a TLS-inspecting proxy's CA),
//! `timeout` and `denied_retry`.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::located::{Problem, Seg, problem};
pub use crate::seal::cloud::{Env, Source, process_env};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DENIED_RETRY: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureKeyVaultConfig {
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    /// Discouraged: a secret written into the config file.
    pub client_secret: Option<SecretString>,
    pub environment: Option<String>,
    pub resource: Option<String>,
    pub vault_name: Option<String>,
    pub key_name: Option<String>,
    /// Wrap with this version instead of the key's latest.
    pub key_version: Option<String>,
    /// Vault's flag: use a managed identity (also chosen when no client secret is given).
    #[serde(default)]
    pub use_msi: bool,
    pub endpoint: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub disallow_env_vars: bool,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub denied_retry: Option<Duration>,
}

/// An Azure cloud, as `environment` names it (Vault's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Public,
    UsGovernment,
    China,
}

impl Cloud {
    pub fn from_name(n: &str) -> Option<Cloud> {
        match n.to_ascii_uppercase().replace(['_', '-'], "").as_str() {
            "AZUREPUBLICCLOUD" | "PUBLIC" => Some(Cloud::Public),
            "AZUREUSGOVERNMENTCLOUD" | "AZUREUSGOVERNMENT" | "USGOVERNMENT" => {
                Some(Cloud::UsGovernment)
            }
            "AZURECHINACLOUD" | "CHINA" => Some(Cloud::China),
            _ => None,
        }
    }

    /// The Key Vault DNS suffix (Vault's default `resource`).
    pub fn vault_suffix(self) -> &'static str {
        match self {
            Cloud::Public => "vault.azure.net",
            Cloud::UsGovernment => "vault.usgovcloudapi.net",
            Cloud::China => "vault.azure.cn",
        }
    }
}

/// How credentials are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    ClientSecret,
    WorkloadIdentity,
    /// System-assigned, or user-assigned with the client id.
    ManagedIdentity,
}

/// The section with the environment applied.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub tenant_id: Option<(String, Source)>,
    pub client_id: Option<(String, Source)>,
    /// The secret itself stays in the section or the environment; this says where it is.
    pub client_secret_from: Option<Source>,
    pub environment: Option<(String, Source)>,
    pub cloud: Cloud,
    pub vault_name: Option<(String, Source)>,
    pub key_name: Option<(String, Source)>,
    /// `https://<vault_name>.<resource>/`, or `endpoint`.
    pub vault_url: Option<(String, Source)>,
    pub credentials: Credentials,
    pub timeout: Duration,
    pub denied_retry: Duration,
}

impl Credentials {
    pub fn describe(&self, r: &Resolved) -> String {
        match self {
            Credentials::ClientSecret => format!(
                "client secret ({}) of client {}",
                r.client_secret_from
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                r.client_id.as_ref().map(|(c, _)| c.as_str()).unwrap_or("")
            ),
            Credentials::WorkloadIdentity => {
                "workload identity (AZURE_FEDERATED_TOKEN_FILE)".into()
            }
            Credentials::ManagedIdentity => match &r.client_id {
                Some((c, _)) => format!("managed identity (user-assigned, client {c})"),
                None => "managed identity (system-assigned)".into(),
            },
        }
    }
}

impl AzureKeyVaultConfig {
    fn pick(
        &self,
        env: Env<'_>,
        names: &[&'static str],
        file: &Option<String>,
        key: &'static str,
    ) -> Option<(String, Source)> {
        if !self.disallow_env_vars
            && let Some(v) = names.iter().find_map(|n| {
                env(n)
                    .filter(|v| !v.is_empty())
                    .map(|v| (v, Source::Env(n)))
            })
        {
            return Some(v);
        }
        file.clone().map(|v| (v, Source::Config(key)))
    }

    pub fn resolve(&self, env: Env<'_>) -> Resolved {
        let tenant_id = self.pick(env, &["AZURE_TENANT_ID"], &self.tenant_id, "tenant_id");
        let client_id = self.pick(env, &["AZURE_CLIENT_ID"], &self.client_id, "client_id");
        let client_secret_from = if !self.disallow_env_vars
            && env("AZURE_CLIENT_SECRET").is_some_and(|s| !s.is_empty())
        {
            Some(Source::Env("AZURE_CLIENT_SECRET"))
        } else {
            self.client_secret
                .as_ref()
                .map(|_| Source::Config("client_secret"))
        };
        let environment = self.pick(
            env,
            &["AZURE_ENVIRONMENT"],
            &self.environment,
            "environment",
        );
        let cloud = environment
            .as_ref()
            .and_then(|(e, _)| Cloud::from_name(e))
            .unwrap_or(Cloud::Public);
        let resource = self.pick(env, &["AZURE_AD_RESOURCE"], &self.resource, "resource");
        let vault_name = self.pick(
            env,
            &[
                "AZUREKEYVAULT_WRAPPER_VAULT_NAME",
                "VAULT_AZUREKEYVAULT_VAULT_NAME",
            ],
            &self.vault_name,
            "vault_name",
        );
        let key_name = self.pick(
            env,
            &[
                "AZUREKEYVAULT_WRAPPER_KEY_NAME",
                "VAULT_AZUREKEYVAULT_KEY_NAME",
            ],
            &self.key_name,
            "key_name",
        );
        let vault_url = match (&self.endpoint, &vault_name) {
            (Some(e), _) => Some((
                e.trim_end_matches('/').to_string() + "/",
                Source::Config("endpoint"),
            )),
            (None, Some((v, src))) => {
                let suffix = resource
                    .as_ref()
                    .map(|(r, _)| {
                        r.trim_start_matches("https://")
                            .trim_end_matches('/')
                            .to_string()
                    })
                    .unwrap_or_else(|| cloud.vault_suffix().to_string());
                Some((format!("https://{v}.{suffix}/"), src.clone()))
            }
            (None, None) => None,
        };
        let credentials = if tenant_id.is_some()
            && client_id.is_some()
            && client_secret_from.is_some()
            && !self.use_msi
        {
            Credentials::ClientSecret
        } else if !self.use_msi && env("AZURE_FEDERATED_TOKEN_FILE").is_some_and(|f| !f.is_empty())
        {
            Credentials::WorkloadIdentity
        } else {
            Credentials::ManagedIdentity
        };
        Resolved {
            tenant_id,
            client_id,
            client_secret_from,
            environment,
            cloud,
            vault_name,
            key_name,
            vault_url,
            credentials,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            denied_retry: self.denied_retry.unwrap_or(DEFAULT_DENIED_RETRY),
        }
    }

    pub fn inline_secret(&self) -> Option<Vec<crate::located::Seg>> {
        self.client_secret
            .is_some()
            .then(|| vec![crate::located::Seg::Key("client_secret")])
    }

    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.client_secret.is_some() {
            out.push(
                "the azurekeyvault seal has client_secret in the config file; this is discouraged: use a \
                 managed identity, workload identity, or AZURE_CLIENT_SECRET from a credential"
                    .to_string(),
            );
        }
        out
    }

    pub fn validate(&self, env: Env<'_>) -> Vec<Problem> {
        use Seg::Key;
        let at = |k: &'static str| vec![Key(k)];
        let mut out = Vec::new();
        let r = self.resolve(env);
        if r.key_name.is_none() {
            out.push(problem(
                vec![],
                "key_name is required for an azurekeyvault seal (or VAULT_AZUREKEYVAULT_KEY_NAME)",
            ));
        }
        if self.endpoint.is_none() && r.vault_name.is_none() {
            out.push(problem(
                vec![],
                "vault_name is required for an azurekeyvault seal (or VAULT_AZUREKEYVAULT_VAULT_NAME, or endpoint)",
            ));
        }
        if let Some((v, _)) = &r.vault_name
            && !(3..=24).contains(&v.len())
        {
            out.push(problem(
                at("vault_name"),
                "must be 3-24 characters (an Azure Key Vault name)",
            ));
        }
        if let Some((v, _)) = &r.vault_name
            && !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            out.push(problem(
                at("vault_name"),
                "may hold only letters, digits and '-'",
            ));
        }
        if let Some((k, _)) = &r.key_name
            && (k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            out.push(problem(
                at("key_name"),
                "may hold only letters, digits and '-'",
            ));
        }
        if let Some(v) = &self.key_version
            && !v.chars().all(|c| c.is_ascii_alphanumeric())
        {
            out.push(problem(
                at("key_version"),
                "must be a key version (32 hex digits)",
            ));
        }
        if let Some((e, src)) = &r.environment
            && Cloud::from_name(e).is_none()
        {
            out.push(problem(
                at("environment"),
                format!(
                    "{e:?} (from {src}) is not AZUREPUBLICCLOUD, AZUREUSGOVERNMENTCLOUD or AZURECHINACLOUD"
                ),
            ));
        }
        if let Some(e) = &self.endpoint
            && let Err(m) = crate::seal::cloud::check_endpoint(e)
        {
            out.push(problem(at("endpoint"), m));
        }
        if let Some(e) = &self.endpoint
            && e.starts_with("http://")
        {
            out.push(problem(
                at("endpoint"),
                "must be https:// (Azure's SDK sends credentials over https only)",
            ));
        }
        if let Some(f) = &self.tls_ca_file
            && !f.is_absolute()
        {
            out.push(problem(at("tls_ca_file"), "must be an absolute path"));
        }
        if self.client_secret.is_some() && (r.tenant_id.is_none() || r.client_id.is_none()) {
            out.push(problem(
                at("client_secret"),
                "client_secret needs tenant_id and client_id",
            ));
        }
        if r.timeout < Duration::from_millis(100) {
            out.push(problem(at("timeout"), "must be at least 100ms"));
        }
        if r.denied_retry < Duration::from_secs(1) {
            out.push(problem(at("denied_retry"), "must be at least 1s"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AzureKeyVaultConfig {
        toml::from_str(s).unwrap()
    }

    use crate::seal::cloud::env_of;

    #[test]
    fn the_environment_overrides_the_file_as_in_vault() {
        let c = parse("vault_name = \"file-vault\"\nkey_name = \"file-key\"\ntenant_id = \"t\"\n");
        let e = env_of(&[
            ("VAULT_AZUREKEYVAULT_VAULT_NAME", "env-vault"),
            ("AZUREKEYVAULT_WRAPPER_KEY_NAME", "env-key"),
            ("VAULT_AZUREKEYVAULT_KEY_NAME", "not-this"),
            ("AZURE_ENVIRONMENT", "AZUREUSGOVERNMENTCLOUD"),
        ]);
        let r = c.resolve(&e);
        assert_eq!(
            r.vault_name.unwrap(),
            (
                "env-vault".into(),
                Source::Env("VAULT_AZUREKEYVAULT_VAULT_NAME")
            )
        );
        assert_eq!(r.key_name.unwrap().0, "env-key");
        assert_eq!(r.cloud, Cloud::UsGovernment);
        assert_eq!(
            r.vault_url.unwrap().0,
            "https://env-vault.vault.usgovcloudapi.net/"
        );
        let d = parse("vault_name = \"file-vault\"\nkey_name = \"k\"\ndisallow_env_vars = true\n")
            .resolve(&e);
        assert_eq!(d.vault_name.unwrap().0, "file-vault");
    }

    #[test]
    fn credentials_are_chosen_as_vault_chooses_them() {
        let base = "vault_name = \"v12\"\nkey_name = \"k\"\n";
        let r = parse(&format!(
            "{base}tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"
        ))
        .resolve(&|_| None);
        assert_eq!(r.credentials, Credentials::ClientSecret);
        let r = parse(base).resolve(&env_of(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
        ]));
        assert_eq!(r.credentials, Credentials::ClientSecret);
        assert_eq!(
            r.client_secret_from,
            Some(Source::Env("AZURE_CLIENT_SECRET"))
        );
        let r = parse(&format!("{base}client_id = \"c\"\n")).resolve(&|_| None);
        assert_eq!(r.credentials, Credentials::ManagedIdentity);
        assert!(
            Credentials::ManagedIdentity
                .describe(&r)
                .contains("user-assigned, client c")
        );
        let r = parse(base).resolve(&env_of(&[("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token")]));
        assert_eq!(r.credentials, Credentials::WorkloadIdentity);
    }

    #[test]
    fn bad_sections_are_refused_by_name() {
        let msgs = |s: &str| -> Vec<String> {
            parse(s)
                .validate(&|_| None)
                .into_iter()
                .map(|p| p.message)
                .collect()
        };
        assert!(msgs("vault_name = \"v12\"\n")[0].contains("key_name is required"));
        assert!(msgs("key_name = \"k\"\n")[0].contains("vault_name is required"));
        assert!(msgs("vault_name = \"v\"\nkey_name = \"k\"\n")[0].contains("3-24"));
        assert!(
            msgs("vault_name = \"v12\"\nkey_name = \"k\"\nenvironment = \"mars\"\n")[0]
                .contains("AZUREPUBLICCLOUD")
        );
        assert!(msgs("key_name = \"k\"\nendpoint = \"http://127.0.0.1:1\"\n")[0].contains("https"));
        assert!(
            msgs("vault_name = \"v12\"\nkey_name = \"k\"\nclient_secret = \"s\"\n")[0]
                .contains("needs tenant_id")
        );
        assert!(msgs("key_name = \"k\"\nendpoint = \"https://127.0.0.1:8443\"\n").is_empty());
    }
}
