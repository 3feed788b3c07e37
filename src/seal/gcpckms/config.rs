//! The `[[seal]]` section of `type = "gcpckms"`, with Vault's key names and environment.
//!
//! Precedence follows Vault's gcpckms seal: `GOOGLE_PROJECT`, `GOOGLE_REGION`,
//! `VAULT_GCPCKMS_SEAL_KEY_RING` and `VAULT_GCPCKMS_SEAL_CRYPTO_KEY` override the file; credentials
//! are `GOOGLE_CREDENTIALS` (a path or the JSON itself), then `credentials` (a service-account
//! file: discouraged, warned about), then `GOOGLE_APPLICATION_CREDENTIALS`, then application default
//! credentials (the metadata server on GCE and GKE). `disallow_env_vars = true` ignores the
//! variables. Sealkeeper's additions: `endpoint` (a regional or private endpoint, or a local
//! emulator on a loopback address, which is sent no credentials), `timeout` and `denied_retry`.

use std::time::Duration;

use serde::Deserialize;

use crate::located::{Problem, Seg, problem};
pub use crate::seal::cloud::{Env, Source, process_env};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DENIED_RETRY: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpCkmsConfig {
    pub project: Option<String>,
    /// The key ring's location (`global`, `europe-west1`, ...).
    pub region: Option<String>,
    pub key_ring: Option<String>,
    pub crypto_key: Option<String>,
    /// A service-account key file (discouraged: prefer the metadata server or workload identity).
    pub credentials: Option<String>,
    pub endpoint: Option<String>,
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
    /// A service-account key (JSON), from a file or the value itself.
    ServiceAccount(String, Source),
    /// Application default credentials (GOOGLE_APPLICATION_CREDENTIALS is read by them).
    ApplicationDefault,
    /// A local emulator on a loopback endpoint: no credentials are sent.
    Anonymous,
}

#[derive(Debug, Clone)]
pub struct Resolved {
    pub project: Option<(String, Source)>,
    pub region: Option<(String, Source)>,
    pub key_ring: Option<(String, Source)>,
    pub crypto_key: Option<(String, Source)>,
    pub credentials: Credentials,
    pub timeout: Duration,
    pub denied_retry: Duration,
}

impl Resolved {
    /// `projects/P/locations/L/keyRings/R/cryptoKeys/K`.
    pub fn key_name(&self) -> String {
        let v =
            |x: &Option<(String, Source)>| x.as_ref().map(|(v, _)| v.clone()).unwrap_or_default();
        format!(
            "projects/{}/locations/{}/keyRings/{}/cryptoKeys/{}",
            v(&self.project),
            v(&self.region),
            v(&self.key_ring),
            v(&self.crypto_key)
        )
    }

    pub fn describe_credentials(&self) -> String {
        match &self.credentials {
            Credentials::ServiceAccount(_, s) => format!("service account key ({s})"),
            Credentials::ApplicationDefault => {
                "application default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, metadata server)".into()
            }
            Credentials::Anonymous => "none (a local emulator on a loopback endpoint)".into(),
        }
    }
}

impl GcpCkmsConfig {
    fn pick(
        &self,
        env: Env<'_>,
        var: &'static str,
        file: &Option<String>,
        key: &'static str,
    ) -> Option<(String, Source)> {
        if !self.disallow_env_vars
            && let Some(v) = env(var).filter(|v| !v.is_empty())
        {
            return Some((v, Source::Env(var)));
        }
        file.clone().map(|v| (v, Source::Config(key)))
    }

    fn loopback_endpoint(&self) -> bool {
        self.endpoint.as_deref().is_some_and(|e| {
            let host = e
                .split("://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .unwrap_or("");
            let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
            crate::seal::cloud::is_loopback(host)
        })
    }

    pub fn resolve(&self, env: Env<'_>) -> Resolved {
        let credentials = if let Some((c, s)) = (!self.disallow_env_vars)
            .then(|| env("GOOGLE_CREDENTIALS").filter(|v| !v.is_empty()))
            .flatten()
            .map(|c| (c, Source::Env("GOOGLE_CREDENTIALS")))
            .or_else(|| {
                self.credentials
                    .clone()
                    .map(|c| (c, Source::Config("credentials")))
            }) {
            Credentials::ServiceAccount(c, s)
        } else if self.loopback_endpoint() {
            Credentials::Anonymous
        } else {
            Credentials::ApplicationDefault
        };
        Resolved {
            project: self.pick(env, "GOOGLE_PROJECT", &self.project, "project"),
            region: self.pick(env, "GOOGLE_REGION", &self.region, "region"),
            key_ring: self.pick(
                env,
                "VAULT_GCPCKMS_SEAL_KEY_RING",
                &self.key_ring,
                "key_ring",
            ),
            crypto_key: self.pick(
                env,
                "VAULT_GCPCKMS_SEAL_CRYPTO_KEY",
                &self.crypto_key,
                "crypto_key",
            ),
            credentials,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            denied_retry: self.denied_retry.unwrap_or(DEFAULT_DENIED_RETRY),
        }
    }

    /// A service-account key written into the config file.
    pub fn inline_secret(&self) -> Option<Vec<crate::located::Seg>> {
        self.credentials
            .as_deref()
            .is_some_and(|c| c.trim_start().starts_with('{'))
            .then(|| vec![crate::located::Seg::Key("credentials")])
    }

    pub fn warnings(&self) -> Vec<String> {
        match &self.credentials {
            Some(_) => vec![
                "the gcpckms seal names a service-account key (credentials); this is discouraged: use the \
                 metadata server (GCE, GKE workload identity) or application default credentials"
                    .to_string(),
            ],
            None => Vec::new(),
        }
    }

    pub fn validate(&self, env: Env<'_>) -> Vec<Problem> {
        use Seg::Key;
        let mut out = Vec::new();
        let r = self.resolve(env);
        for (v, key, var) in [
            (&r.project, "project", "GOOGLE_PROJECT"),
            (&r.region, "region", "GOOGLE_REGION"),
            (&r.key_ring, "key_ring", "VAULT_GCPCKMS_SEAL_KEY_RING"),
            (&r.crypto_key, "crypto_key", "VAULT_GCPCKMS_SEAL_CRYPTO_KEY"),
        ] {
            match v {
                None => out.push(problem(
                    vec![],
                    format!("{key} is required for a gcpckms seal (or {var})"),
                )),
                Some((v, src))
                    if v.is_empty()
                        || !v
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
                {
                    out.push(problem(
                        vec![Key(key)],
                        format!("{v:?} (from {src}) may hold only letters, digits, '-' and '_'"),
                    ))
                }
                _ => {}
            }
        }
        if let Some(e) = &self.endpoint
            && let Err(m) = crate::seal::cloud::check_endpoint(e)
        {
            out.push(problem(vec![Key("endpoint")], m));
        }
        if r.timeout < Duration::from_millis(100) {
            out.push(problem(vec![Key("timeout")], "must be at least 100ms"));
        }
        if r.denied_retry < Duration::from_secs(1) {
            out.push(problem(vec![Key("denied_retry")], "must be at least 1s"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::cloud::env_of;

    fn parse(s: &str) -> GcpCkmsConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn the_environment_overrides_the_file_and_credentials_rank_as_in_vault() {
        let c = parse(
            "project = \"p\"\nregion = \"global\"\nkey_ring = \"r\"\ncrypto_key = \"k\"\ncredentials = \"/etc/sa.json\"\n",
        );
        let r = c.resolve(&env_of(&[
            ("VAULT_GCPCKMS_SEAL_CRYPTO_KEY", "env-key"),
            ("GOOGLE_REGION", "europe-west1"),
        ]));
        assert_eq!(
            r.key_name(),
            "projects/p/locations/europe-west1/keyRings/r/cryptoKeys/env-key"
        );
        assert_eq!(
            r.credentials,
            Credentials::ServiceAccount("/etc/sa.json".into(), Source::Config("credentials"))
        );
        // GOOGLE_CREDENTIALS outranks the file's credentials.
        let r = c.resolve(&env_of(&[("GOOGLE_CREDENTIALS", "/run/sa.json")]));
        assert_eq!(
            r.credentials,
            Credentials::ServiceAccount("/run/sa.json".into(), Source::Env("GOOGLE_CREDENTIALS"))
        );
        let d = parse(
            "project = \"p\"\nregion = \"global\"\nkey_ring = \"r\"\ncrypto_key = \"k\"\ndisallow_env_vars = true\n",
        );
        let r = d.resolve(&env_of(&[("GOOGLE_PROJECT", "other")]));
        assert_eq!(r.project.unwrap().0, "p");
        assert_eq!(r.credentials, Credentials::ApplicationDefault);
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
        assert!(
            msgs("region = \"global\"\nkey_ring = \"r\"\ncrypto_key = \"k\"\n")[0]
                .contains("project is required")
        );
        assert!(
            msgs("project = \"p/x\"\nregion = \"global\"\nkey_ring = \"r\"\ncrypto_key = \"k\"\n")
                [0]
            .contains("only letters")
        );
        assert!(msgs("project = \"p\"\nregion = \"global\"\nkey_ring = \"r\"\ncrypto_key = \"k\"\nendpoint = \"http://kms.example\"\n")[0].contains("plain http"));
        let c = parse(
            "project = \"p\"\nregion = \"global\"\nkey_ring = \"r\"\ncrypto_key = \"k\"\nendpoint = \"http://127.0.0.1:9\"\n",
        );
        assert!(c.validate(&|_| None).is_empty());
        assert_eq!(c.resolve(&|_| None).credentials, Credentials::Anonymous);
    }
}
