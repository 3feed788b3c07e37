//! The `[[seal]]` section of `type = "awskms"`, with Vault's key names so that a Vault `seal
//! "awskms"` stanza translates line for line, and where each value comes from.
//!
//! Precedence follows Vault's awskms seal: `AWSKMS_WRAPPER_KEY_ID`, then `VAULT_AWSKMS_SEAL_KEY_ID`,
//! then `kms_key_id`; `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `region`, then us-east-1;
//! `AWSKMS_ENDPOINT` (or `AWS_KMS_ENDPOINT`), then `endpoint`. `disallow_env_vars = true` ignores
//! all of those variables. Credentials: `access_key`/`secret_key` from the file, else a role with a
//! web identity token file, else a shared credentials file or profile, else the SDK's default chain
//! (environment, profile, web identity, ECS task role, EC2 instance role over IMDSv2); `role_arn`
//! without a token file assumes that role with the chosen credentials.
//!
//! Sealkeeper's additions: `regions` (a multi-Region key and its replicas, tried in order like the
//! members of an HSM pair), `[seal.endpoints]` (one endpoint per region, e.g. VPC endpoints),
//! `timeout` (every call) and `denied_retry` (how long a member that answered "denied" or "key
//! unavailable" is left alone by the automatic retries).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::located::{Problem, Seg, problem};
pub use crate::seal::cloud::{Env, Source, check_endpoint, process_env};

pub const ENV_KEY_ID: [&str; 2] = ["AWSKMS_WRAPPER_KEY_ID", "VAULT_AWSKMS_SEAL_KEY_ID"];
pub const ENV_REGION: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];
pub const ENV_ENDPOINT: [&str; 2] = ["AWSKMS_ENDPOINT", "AWS_KMS_ENDPOINT"];
/// Vault's default when no region is given anywhere.
pub const DEFAULT_REGION: &str = "us-east-1";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DENIED_RETRY: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsConfig {
    pub kms_key_id: Option<String>,
    pub region: Option<String>,
    pub regions: Option<Vec<String>>,
    pub endpoint: Option<String>,
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    pub access_key: Option<String>,
    /// Discouraged: a secret written into the config file.
    pub secret_key: Option<SecretString>,
    pub session_token: Option<SecretString>,
    pub shared_creds_filename: Option<PathBuf>,
    pub shared_creds_profile: Option<String>,
    pub role_arn: Option<String>,
    pub role_session_name: Option<String>,
    pub web_identity_token_file: Option<PathBuf>,
    #[serde(default)]
    pub disallow_env_vars: bool,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub denied_retry: Option<Duration>,
}

/// How credentials are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `access_key`, `secret_key` (and `session_token`) from the file.
    Static,
    /// `role_arn` + `web_identity_token_file` (EKS IRSA and the like).
    WebIdentity,
    /// `shared_creds_filename` and/or `shared_creds_profile`.
    Profile,
    /// The SDK's default chain: environment, profile, web identity, ECS, EC2 IMDSv2.
    DefaultChain,
}

impl Credentials {
    pub fn describe(&self, cfg: &AwsKmsConfig) -> String {
        let base = match self {
            Credentials::Static => "config access_key/secret_key".to_string(),
            Credentials::WebIdentity => format!(
                "web identity token file {}",
                cfg.web_identity_token_file
                    .as_deref()
                    .unwrap_or_else(|| std::path::Path::new(""))
                    .display()
            ),
            Credentials::Profile => format!(
                "shared credentials {}profile {:?}",
                cfg.shared_creds_filename
                    .as_ref()
                    .map(|p| format!("file {} ", p.display()))
                    .unwrap_or_default(),
                cfg.shared_creds_profile.as_deref().unwrap_or("default")
            ),
            Credentials::DefaultChain => {
                "default chain (environment, profile, web identity, ECS, EC2 IMDSv2)".to_string()
            }
        };
        match (&cfg.role_arn, self) {
            (Some(r), c) if *c != Credentials::WebIdentity => format!("{base}, assuming role {r}"),
            _ => base,
        }
    }
}

/// The section with the environment applied: what the seal uses.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub key_id: Option<(String, Source)>,
    /// In the order they are tried.
    pub regions: Vec<(String, Source)>,
    /// The endpoint per region (`None`: the SDK's own for the region).
    pub endpoints: Vec<Option<(String, Source)>>,
    pub credentials: Credentials,
    pub timeout: Duration,
    pub denied_retry: Duration,
}

impl AwsKmsConfig {
    fn env_first(&self, env: Env<'_>, names: &[&'static str]) -> Option<(String, Source)> {
        if self.disallow_env_vars {
            return None;
        }
        names.iter().find_map(|n| {
            env(n)
                .filter(|v| !v.is_empty())
                .map(|v| (v, Source::Env(n)))
        })
    }

    pub fn resolve(&self, env: Env<'_>) -> Resolved {
        let key_id = self.env_first(env, &ENV_KEY_ID).or_else(|| {
            self.kms_key_id
                .clone()
                .map(|k| (k, Source::Config("kms_key_id")))
        });
        let regions = match &self.regions {
            // Sealkeeper's own list is not overridden by AWS_REGION (which names one region).
            Some(list) => list
                .iter()
                .map(|r| (r.clone(), Source::Config("regions")))
                .collect(),
            None => vec![
                self.env_first(env, &ENV_REGION)
                    .or_else(|| self.region.clone().map(|r| (r, Source::Config("region"))))
                    .unwrap_or_else(|| (DEFAULT_REGION.to_string(), Source::Default)),
            ],
        };
        let common = self.env_first(env, &ENV_ENDPOINT).or_else(|| {
            self.endpoint
                .clone()
                .map(|e| (e, Source::Config("endpoint")))
        });
        let endpoints = regions
            .iter()
            .map(|(r, _)| {
                self.endpoints
                    .get(r)
                    .map(|e| (e.clone(), Source::Config("endpoints")))
                    .or_else(|| common.clone())
            })
            .collect();
        let credentials = if self.access_key.is_some() {
            Credentials::Static
        } else if self.web_identity_token_file.is_some() {
            Credentials::WebIdentity
        } else if self.shared_creds_filename.is_some() || self.shared_creds_profile.is_some() {
            Credentials::Profile
        } else {
            Credentials::DefaultChain
        };
        Resolved {
            key_id,
            regions,
            endpoints,
            credentials,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            denied_retry: self.denied_retry.unwrap_or(DEFAULT_DENIED_RETRY),
        }
    }

    pub fn inline_secret(&self) -> Option<Vec<crate::located::Seg>> {
        use crate::located::Seg::Key;
        if self.secret_key.is_some() {
            Some(vec![Key("secret_key")])
        } else if self.session_token.is_some() {
            Some(vec![Key("session_token")])
        } else {
            None
        }
    }

    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.secret_key.is_some() {
            out.push(
                "the awskms seal has secret_key in the config file; this is discouraged: use an instance or \
                 task role, web identity, or a shared credentials file"
                    .to_string(),
            );
        }
        let r = self.resolve(&process_env);
        if r.regions.iter().any(|(_, s)| *s == Source::Default) {
            out.push(format!(
                "the awskms seal names no region (region, AWS_REGION or AWS_DEFAULT_REGION): using {DEFAULT_REGION}"
            ));
        }
        out
    }

    /// Problems of this section (with the environment applied), at paths relative to it.
    pub fn validate(&self, env: Env<'_>) -> Vec<Problem> {
        use Seg::Key;
        let mut out = Vec::new();
        let at = |k: &'static str| vec![Key(k)];
        let r = self.resolve(env);
        match &r.key_id {
            None => out.push(problem(
                vec![],
                "kms_key_id is required for an awskms seal (or AWSKMS_WRAPPER_KEY_ID / \
                 VAULT_AWSKMS_SEAL_KEY_ID)",
            )),
            Some((k, src)) => {
                if let Err(m) = check_key_id(k) {
                    out.push(problem(at("kms_key_id"), format!("{m} (from {src})")));
                }
            }
        }
        if self.region.is_some() && self.regions.is_some() {
            out.push(problem(at("regions"), "give region or regions, not both"));
        }
        if let Some(list) = &self.regions {
            if list.is_empty() {
                out.push(problem(at("regions"), "must name at least one region"));
            }
            let mut seen = std::collections::HashSet::new();
            for r in list {
                if !seen.insert(r) {
                    out.push(problem(
                        at("regions"),
                        format!("region {r:?} is listed twice"),
                    ));
                }
            }
        }
        for (r, _) in &r.regions {
            if !valid_region(r) {
                out.push(problem(
                    at(if self.regions.is_some() {
                        "regions"
                    } else {
                        "region"
                    }),
                    format!("{r:?} is not an AWS region name (like \"eu-west-1\")"),
                ));
            }
        }
        for region in self.endpoints.keys() {
            if !r.regions.iter().any(|(n, _)| n == region) {
                out.push(problem(
                    at("endpoints"),
                    format!("names region {region:?}, which is not one of the seal's regions"),
                ));
            }
        }
        for (e, src) in r.endpoints.iter().flatten() {
            if let Err(m) = check_endpoint(e) {
                let key = match src {
                    Source::Config(k) => k,
                    _ => "endpoint",
                };
                out.push(problem(at(key), format!("{m} (from {src})")));
            }
        }
        match (&self.access_key, &self.secret_key) {
            (Some(_), None) => out.push(problem(at("secret_key"), "access_key needs secret_key")),
            (None, Some(_)) => out.push(problem(at("access_key"), "secret_key needs access_key")),
            _ => {}
        }
        if self.session_token.is_some() && self.access_key.is_none() {
            out.push(problem(
                at("session_token"),
                "session_token needs access_key and secret_key",
            ));
        }
        if self.web_identity_token_file.is_some() && self.role_arn.is_none() {
            out.push(problem(
                at("web_identity_token_file"),
                "web_identity_token_file needs role_arn",
            ));
        }
        if self.access_key.is_some()
            && (self.shared_creds_filename.is_some() || self.shared_creds_profile.is_some())
        {
            out.push(problem(
                at("shared_creds_profile"),
                "give access_key/secret_key or a shared credentials file/profile, not both",
            ));
        }
        if let Some(f) = &self.shared_creds_filename
            && !f.is_absolute()
        {
            out.push(problem(
                at("shared_creds_filename"),
                "must be an absolute path",
            ));
        }
        if let Some(f) = &self.web_identity_token_file
            && !f.is_absolute()
        {
            out.push(problem(
                at("web_identity_token_file"),
                "must be an absolute path",
            ));
        }
        if let Some(role) = &self.role_arn
            && !role.starts_with("arn:")
        {
            out.push(problem(
                at("role_arn"),
                "must be an IAM role ARN (arn:aws:iam::...:role/...)",
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

/// A key id, key ARN, alias name or alias ARN; multi-Region keys are `mrk-...` ids.
pub fn check_key_id(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("must not be empty".into());
    }
    if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    if k.starts_with("arn:") {
        let parts: Vec<&str> = k.splitn(6, ':').collect();
        if parts.len() != 6
            || parts[2] != "kms"
            || !(parts[5].starts_with("key/") || parts[5].starts_with("alias/"))
        {
            return Err(format!(
                "{k:?} is not a KMS key or alias ARN (arn:aws:kms:REGION:ACCOUNT:key/ID or :alias/NAME)"
            ));
        }
    }
    Ok(())
}

fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && r.contains('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AwsKmsConfig {
        toml::from_str(s).unwrap()
    }

    use crate::seal::cloud::env_of;

    #[test]
    fn the_environment_overrides_the_file_as_in_vault() {
        let c = parse(
            "kms_key_id = \"alias/file\"\nregion = \"eu-west-1\"\nendpoint = \"https://kms.example\"\n",
        );
        let e = env_of(&[
            ("VAULT_AWSKMS_SEAL_KEY_ID", "alias/vault-env"),
            ("AWS_DEFAULT_REGION", "eu-central-1"),
            ("AWSKMS_ENDPOINT", "https://vpce.example"),
        ]);
        let r = c.resolve(&e);
        assert_eq!(
            r.key_id,
            Some((
                "alias/vault-env".into(),
                Source::Env("VAULT_AWSKMS_SEAL_KEY_ID")
            ))
        );
        assert_eq!(
            r.regions,
            vec![("eu-central-1".into(), Source::Env("AWS_DEFAULT_REGION"))]
        );
        assert_eq!(
            r.endpoints,
            vec![Some((
                "https://vpce.example".into(),
                Source::Env("AWSKMS_ENDPOINT")
            ))]
        );
        // AWSKMS_WRAPPER_KEY_ID outranks VAULT_AWSKMS_SEAL_KEY_ID, AWS_REGION outranks AWS_DEFAULT_REGION.
        let e = env_of(&[
            ("VAULT_AWSKMS_SEAL_KEY_ID", "b"),
            ("AWSKMS_WRAPPER_KEY_ID", "a"),
            ("AWS_DEFAULT_REGION", "eu-central-1"),
            ("AWS_REGION", "us-west-2"),
        ]);
        let r = c.resolve(&e);
        assert_eq!(r.key_id.unwrap().0, "a");
        assert_eq!(r.regions[0].0, "us-west-2");
    }

    #[test]
    fn disallow_env_vars_keeps_the_files_values() {
        let c = parse(
            "kms_key_id = \"alias/file\"\nregion = \"eu-west-1\"\ndisallow_env_vars = true\n",
        );
        let e = env_of(&[("AWSKMS_WRAPPER_KEY_ID", "x"), ("AWS_REGION", "us-west-2")]);
        let r = c.resolve(&e);
        assert_eq!(
            r.key_id,
            Some(("alias/file".into(), Source::Config("kms_key_id")))
        );
        assert_eq!(
            r.regions,
            vec![("eu-west-1".into(), Source::Config("region"))]
        );
    }

    #[test]
    fn no_region_anywhere_is_vaults_default_with_a_warning_source() {
        let c = parse("kms_key_id = \"k\"\n");
        let r = c.resolve(&|_| None);
        assert_eq!(r.regions, vec![(DEFAULT_REGION.into(), Source::Default)]);
    }

    #[test]
    fn regions_have_their_own_endpoints_or_the_common_one() {
        let c = parse(
            "kms_key_id = \"mrk-1\"\nregions = [\"us-east-1\", \"us-west-2\"]\nendpoint = \"https://a.example\"\n\
             [endpoints]\n\"us-west-2\" = \"https://b.example\"\n",
        );
        let r = c.resolve(&|_| None);
        assert_eq!(r.endpoints[0].as_ref().unwrap().0, "https://a.example");
        assert_eq!(r.endpoints[1].as_ref().unwrap().0, "https://b.example");
        assert!(c.validate(&|_| None).is_empty());
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
        assert!(msgs("region = \"us-east-1\"\n")[0].contains("kms_key_id is required"));
        assert!(
            msgs("kms_key_id = \"k\"\naccess_key = \"AKIA\"\n")[0].contains("needs secret_key")
        );
        assert!(
            msgs("kms_key_id = \"k\"\nendpoint = \"http://kms.example.com\"\n")[0]
                .contains("plain http")
        );
        assert!(msgs("kms_key_id = \"k\"\nendpoint = \"http://127.0.0.1:4566\"\n").is_empty());
        assert!(msgs("kms_key_id = \"arn:aws:s3:::bucket\"\n")[0].contains("not a KMS key"));
        assert!(
            msgs("kms_key_id = \"k\"\nregion = \"US East\"\n")[0].contains("not an AWS region")
        );
        assert!(
            msgs("kms_key_id = \"k\"\nregion = \"us-east-1\"\nregions = [\"us-east-1\"]\n")[0]
                .contains("not both")
        );
        assert!(
            msgs("kms_key_id = \"k\"\nweb_identity_token_file = \"/t\"\n")[0]
                .contains("needs role_arn")
        );
        assert!(
            msgs("kms_key_id = \"k\"\n[endpoints]\n\"eu-west-9\" = \"https://x\"\n")[0]
                .contains("not one of")
        );
    }

    #[test]
    fn credentials_are_chosen_as_vault_chooses_them() {
        let r = |s: &str| parse(s).resolve(&|_| None).credentials;
        assert_eq!(
            r("kms_key_id = \"k\"\naccess_key = \"a\"\nsecret_key = \"s\"\n"),
            Credentials::Static
        );
        assert_eq!(
            r(
                "kms_key_id = \"k\"\nrole_arn = \"arn:aws:iam::1:role/r\"\nweb_identity_token_file = \"/t\"\n"
            ),
            Credentials::WebIdentity
        );
        assert_eq!(
            r("kms_key_id = \"k\"\nshared_creds_profile = \"p\"\n"),
            Credentials::Profile
        );
        assert_eq!(r("kms_key_id = \"k\"\n"), Credentials::DefaultChain);
    }
}
