//! Configuration: a TOML file, parsed with serde (`deny_unknown_fields` everywhere) and validated.
//! Every error names the file, the line and the key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub const DEFAULT_SOCKET: &str = "/run/sealkeeper/admin.sock";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: KeyName,
        message: String,
    },
}

/// The dotted name of a config key, printed with a trailing ": " when known.
#[derive(Debug, Clone, Default)]
pub struct KeyName(pub String);

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

impl ConfigError {
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Read { .. } => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub storage: StorageConfig,
    pub listener: ListenerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub seal: Vec<SealConfig>,
    #[serde(default)]
    pub unseal: UnsealConfig,
    #[serde(default)]
    pub transit: TransitConfig,
    pub audit: Option<AuditConfig>,
    /// Development only: allow key material in memory that could not be locked.
    #[serde(default)]
    pub disable_mlock: bool,
    /// Only approved algorithms, mechanisms and TLS suites; self-tests gate serving.
    #[serde(default)]
    pub fips_mode: bool,
    /// Reported as `cluster_name` by sys/health and sys/seal-status.
    #[serde(default)]
    pub cluster_name: Option<String>,
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_disable: bool,
    /// CA bundle (PEM) that client certificates are verified against.
    pub tls_client_ca_file: Option<PathBuf>,
    /// Refuse connections without a client certificate signed by `tls_client_ca_file`.
    #[serde(default)]
    pub tls_require_and_verify_client_cert: bool,
    /// A connection that has not completed its TLS handshake within this time is closed.
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// A connection that has not sent its first request's headers within this time is closed
    /// (Vault's name; also bounds each later request's headers on HTTP/1.1).
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub http_read_header_timeout: Duration,
    /// A request whose body has not arrived within this time is refused with 408 (Vault's name).
    #[serde(default = "d_30s", with = "humantime_serde")]
    pub http_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed (Vault's name).
    #[serde(default = "d_60s", with = "humantime_serde")]
    pub http_idle_timeout: Duration,
    /// Concurrent connections on the public listener; further connections wait in the kernel's
    /// backlog until one closes. Lowered at start to fit the descriptor limit (RLIMIT_NOFILE).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Request bodies held in memory at once, across all connections; a request whose body does
    /// not fit waits (at most `http_read_timeout`, then 503). At least `transit.max_request_bytes`.
    #[serde(default = "default_max_inflight")]
    pub max_inflight_request_bytes: usize,
    /// Peers (addresses or CIDR ranges, e.g. a load balancer) whose `X-Forwarded-For` names the
    /// client for throttling and the audit trail (Vault's name). Others' header is ignored.
    #[serde(default)]
    pub x_forwarded_for_authorized_addrs: Vec<String>,
    /// Failed authentications (an unknown, expired or revoked token) one client address may make
    /// per `auth_failure_window` before it is answered 429 until the window ends.
    #[serde(default = "default_auth_failure_limit")]
    pub auth_failure_limit: u32,
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub auth_failure_window: Duration,
}

fn default_max_connections() -> usize {
    1024
}
fn default_max_inflight() -> usize {
    64 * 1024 * 1024
}
fn default_auth_failure_limit() -> u32 {
    20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit log (JSON lines, hash-chained). Created with mode 0600.
    pub path: PathBuf,
    /// Rotate (rename to `<path>.<time>`) when the file reaches this size; the chain continues.
    pub max_file_bytes: Option<u64>,
    /// Also record `/v1/sys/health` probes (off: load balancers probe every few seconds).
    #[serde(default)]
    pub log_health: bool,
    /// Denials that never reach a key (failed authentication, throttling, refused client
    /// certificates) are recorded once per client address per interval, with a count.
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub denial_summary_interval: Duration,
    /// How often the newest keyed record is anchored in the sealed state (also at every rotation
    /// and at shutdown): truncation and edits up to the anchor are detected.
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub anchor_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitConfig {
    /// Mount path of the Transit API, as in `/v1/<mount>/encrypt/<key>`.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Largest request body accepted on the Transit API, in bytes.
    #[serde(default = "default_max_request")]
    pub max_request_bytes: usize,
    /// Most items one `batch_input` may hold; a larger batch is refused with 400.
    #[serde(default = "default_max_batch_items")]
    pub max_batch_items: usize,
}

fn default_max_batch_items() -> usize {
    1024
}

fn default_mount() -> String {
    "transit".into()
}
fn default_max_request() -> usize {
    1024 * 1024
}

impl Default for TransitConfig {
    fn default() -> Self {
        TransitConfig {
            mount: default_mount(),
            max_request_bytes: default_max_request(),
            max_batch_items: default_max_batch_items(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_uids")]
    pub allowed_uids: Vec<u32>,
    #[serde(default)]
    pub allowed_gids: Vec<u32>,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_uids() -> Vec<u32> {
    vec![0]
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: default_socket(),
            allowed_uids: default_uids(),
            allowed_gids: vec![],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealConfig {
    /// First delay between automatic unseal attempts.
    #[serde(default = "d_1s", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Cap of the exponential backoff.
    #[serde(default = "d_60s", with = "humantime_serde")]
    pub retry_max: Duration,
    /// How often each HSM member is probed for health.
    #[serde(default = "d_30s", with = "humantime_serde")]
    pub probe_interval: Duration,
}

fn d_1s() -> Duration {
    Duration::from_secs(1)
}
fn d_5s() -> Duration {
    Duration::from_secs(5)
}
fn d_10s() -> Duration {
    Duration::from_secs(10)
}
fn d_30s() -> Duration {
    Duration::from_secs(30)
}
fn d_60s() -> Duration {
    Duration::from_secs(60)
}

impl Default for UnsealConfig {
    fn default() -> Self {
        UnsealConfig {
            retry_initial: d_1s(),
            retry_max: d_60s(),
            probe_interval: d_30s(),
        }
    }
}

/// One `[[seal]]` entry as written. `type` selects the kind; [`SealConfig::kind`] gives the
/// validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealConfig {
    #[serde(rename = "type")]
    pub seal_type: String,
    pub name: String,
    pub key_label: Option<String>,
    pub key_id: Option<String>,
    pub mechanism: Option<String>,
    pub rsa_oaep_hash: Option<String>,
    /// Lower is tried first at unseal; defaults to the entry's position in the file.
    pub priority: Option<u32>,
    /// A seal being migrated away from: it is only used by `operator unseal --migrate`.
    #[serde(default)]
    pub disabled: bool,
    /// Break-glass: when every auto seal is unreachable, a quorum of recovery keys may unseal.
    /// Only possible when it was on at init (the root key must be wrapped by the recovery key).
    #[serde(default)]
    pub recovery_keys_fallback: bool,
    #[serde(default)]
    pub hsm: Vec<HsmConfig>,
}

impl SealConfig {
    pub fn is_shamir(&self) -> bool {
        self.seal_type == "shamir"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    AesGcm,
    RsaOaep(OaepHash),
}

impl Mechanism {
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::AesGcm => "CKM_AES_GCM",
            Mechanism::RsaOaep(_) => "CKM_RSA_PKCS_OAEP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OaepHash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl OaepHash {
    pub fn name(&self) -> &'static str {
        match self {
            OaepHash::Sha1 => "sha1",
            OaepHash::Sha256 => "sha256",
            OaepHash::Sha384 => "sha384",
            OaepHash::Sha512 => "sha512",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    pub name: String,
    /// An HSM profile (hsm-profiles/) whose defaults fill `lib`, `rw_session` and `timeout`.
    pub profile: Option<String>,
    pub lib: Option<PathBuf>,
    pub token_label: Option<String>,
    pub slot: Option<u64>,
    pub serial: Option<String>,
    pub pin_file: Option<PathBuf>,
    pub pin_env: Option<String>,
    pub pin_credential: Option<String>,
    /// Discouraged: a PIN written into the config file.
    pub pin: Option<SecretString>,
    /// A call to this member that takes longer marks it down (default 5s, or the profile's).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Open read-write sessions (some modules, e.g. CloudHSM, want them).
    #[serde(default)]
    pub rw_session: Option<bool>,
}

/// How a member's token is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Slot(u64),
    Serial(String),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "token label {l:?}"),
            TokenSelector::Slot(s) => write!(f, "slot {s}"),
            TokenSelector::Serial(s) => write!(f, "token serial {s:?}"),
        }
    }
}

/// Where a member's PIN comes from.
#[derive(Debug, Clone)]
pub enum PinSource {
    File(PathBuf),
    Env(String),
    Credential(String),
    Inline(SecretString),
}

impl HsmConfig {
    fn profile_defaults(&self) -> Option<crate::profiles::Profile> {
        self.profile.as_deref().and_then(crate::profiles::get)
    }

    /// The module path: `lib`, else the profile's.
    pub fn lib(&self) -> PathBuf {
        self.lib
            .clone()
            .or_else(|| self.profile_defaults().map(|p| p.lib))
            .unwrap_or_default()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
            .or_else(|| self.profile_defaults().map(|p| p.timeout))
            .unwrap_or_else(d_5s)
    }

    pub fn rw_session(&self) -> bool {
        self.rw_session
            .or_else(|| self.profile_defaults().map(|p| p.rw_session))
            .unwrap_or(false)
    }
    pub fn selector(&self) -> TokenSelector {
        if let Some(l) = &self.token_label {
            TokenSelector::Label(l.clone())
        } else if let Some(s) = self.slot {
            TokenSelector::Slot(s)
        } else {
            TokenSelector::Serial(self.serial.clone().unwrap_or_default())
        }
    }

    pub fn pin_source(&self) -> PinSource {
        if let Some(p) = &self.pin_file {
            PinSource::File(p.clone())
        } else if let Some(v) = &self.pin_env {
            PinSource::Env(v.clone())
        } else if let Some(c) = &self.pin_credential {
            PinSource::Credential(c.clone())
        } else {
            PinSource::Inline(
                self.pin
                    .clone()
                    .unwrap_or_else(|| SecretString::from(String::new())),
            )
        }
    }
}

impl SealConfig {
    /// The mechanism, or the error the config validation would give.
    pub fn mechanism_checked(&self) -> Result<Mechanism, String> {
        parse_mechanism(self.mechanism.as_deref(), self.rsa_oaep_hash.as_deref())
    }
    pub fn mechanism(&self) -> Mechanism {
        parse_mechanism(self.mechanism.as_deref(), self.rsa_oaep_hash.as_deref())
            .unwrap_or(Mechanism::AesGcm)
    }

    pub fn key_id_bytes(&self) -> Option<Vec<u8>> {
        self.key_id.as_deref().and_then(|k| hex::decode(k).ok())
    }
}

fn parse_mechanism(m: Option<&str>, hash: Option<&str>) -> Result<Mechanism, String> {
    let hash = match hash.map(|h| h.to_ascii_lowercase().replace('-', "")) {
        None => OaepHash::Sha256,
        Some(h) if h == "sha1" => OaepHash::Sha1,
        Some(h) if h == "sha256" => OaepHash::Sha256,
        Some(h) if h == "sha384" => OaepHash::Sha384,
        Some(h) if h == "sha512" => OaepHash::Sha512,
        Some(h) => {
            return Err(format!(
                "rsa_oaep_hash {h:?} is not one of sha1, sha256, sha384, sha512"
            ));
        }
    };
    match m.map(|s| s.trim().to_ascii_uppercase()) {
        None => Ok(Mechanism::AesGcm),
        Some(s) if s == "CKM_AES_GCM" || s == "0X1087" || s == "4231" => Ok(Mechanism::AesGcm),
        Some(s) if s == "CKM_RSA_PKCS_OAEP" || s == "0X0009" || s == "0X9" || s == "9" => {
            Ok(Mechanism::RsaOaep(hash))
        }
        Some(s) => Err(format!(
            "mechanism {s:?} is not supported; use CKM_AES_GCM (0x1087) or CKM_RSA_PKCS_OAEP (0x0009)"
        )),
    }
}

/// A path into the TOML document, for locating errors.
#[derive(Debug, Clone)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

struct Problem {
    at: Vec<Seg>,
    message: String,
}

fn problem(at: Vec<Seg>, message: impl Into<String>) -> Problem {
    Problem {
        at,
        message: message.into(),
    }
}

impl Config {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text, path)?;
        cfg.source = path.to_path_buf();
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o002 != 0
        {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                key: KeyName(String::new()),
                message: format!(
                    "the config file is writable by anyone (mode {:o}); chmod 0600 or 0640 it",
                    meta.permissions().mode() & 0o777
                ),
            });
        }
        if cfg
            .seal
            .iter()
            .any(|s| s.hsm.iter().any(|h| h.pin.is_some()))
            && let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                key: KeyName("seal.hsm.pin".into()),
                message: format!(
                    "the config holds an inline PIN but is readable by group or others (mode {:o}); \
                             chmod 0600 it, or better use pin_file / pin_credential",
                    meta.permissions().mode() & 0o777
                ),
            });
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key: KeyName(String::new()),
                message: e.message().trim().to_string(),
            }
        })?;
        if let Some(p) = cfg.validate().into_iter().next() {
            let (line, column) = locate(text, &p.at);
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key: KeyName(dotted(&p.at)),
                message: p.message,
            });
        }
        Ok(cfg)
    }

    fn validate(&self) -> Vec<Problem> {
        use Seg::{Index, Key};
        let mut out = Vec::new();
        if !self.storage.path.is_absolute() {
            out.push(problem(
                vec![Key("storage"), Key("path")],
                "must be an absolute path",
            ));
        }
        let l = &self.listener;
        if !l.tls_disable {
            if l.tls_cert_file.is_none() {
                out.push(problem(
                    vec![Key("listener")],
                    "tls_cert_file is required (or tls_disable = true for local testing)",
                ));
            }
            if l.tls_key_file.is_none() {
                out.push(problem(
                    vec![Key("listener")],
                    "tls_key_file is required (or tls_disable = true for local testing)",
                ));
            }
        }
        for (name, d) in [
            ("tls_handshake_timeout", l.tls_handshake_timeout),
            ("http_read_header_timeout", l.http_read_header_timeout),
            ("http_read_timeout", l.http_read_timeout),
            ("http_idle_timeout", l.http_idle_timeout),
            ("auth_failure_window", l.auth_failure_window),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                out.push(problem(
                    vec![Key("listener"), Key(name)],
                    "must be greater than zero and at most 1h",
                ));
            }
        }
        if l.max_connections == 0 {
            out.push(problem(
                vec![Key("listener"), Key("max_connections")],
                "must be at least 1",
            ));
        }
        if l.auth_failure_limit == 0 {
            out.push(problem(
                vec![Key("listener"), Key("auth_failure_limit")],
                "must be at least 1",
            ));
        }
        for (i, a) in l.x_forwarded_for_authorized_addrs.iter().enumerate() {
            if let Err(e) = crate::http::client::Cidr::parse(a) {
                out.push(problem(
                    vec![
                        Key("listener"),
                        Key("x_forwarded_for_authorized_addrs"),
                        Index(i),
                    ],
                    &e,
                ));
            }
        }
        if l.tls_require_and_verify_client_cert && l.tls_client_ca_file.is_none() {
            out.push(problem(
                vec![Key("listener"), Key("tls_require_and_verify_client_cert")],
                "needs tls_client_ca_file",
            ));
        }
        let m = self.transit.mount.trim_matches('/');
        if m.is_empty()
            || m.split('/').any(|seg| {
                seg.is_empty()
                    || !seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            })
            || ["sys", "auth"].contains(&m.split('/').next().unwrap_or(""))
        {
            out.push(problem(
                vec![Key("transit"), Key("mount")],
                "must be a path of a-z, 0-9, '-', '_' segments, not under sys/ or auth/",
            ));
        }
        if self.fips_mode && l.tls_disable {
            out.push(problem(
                vec![Key("listener"), Key("tls_disable")],
                "fips_mode requires TLS on the listener",
            ));
        }
        if let Some(a) = &self.audit
            && !a.path.is_absolute()
        {
            out.push(problem(
                vec![Key("audit"), Key("path")],
                "must be an absolute path",
            ));
        }
        if self.transit.max_batch_items == 0 || self.transit.max_batch_items > 1_000_000 {
            out.push(problem(
                vec![Key("transit"), Key("max_batch_items")],
                "must be 1 to 1000000",
            ));
        }
        if let Some(a) = &self.audit
            && (a.denial_summary_interval < Duration::from_secs(1)
                || a.denial_summary_interval > Duration::from_secs(3600))
        {
            out.push(problem(
                vec![Key("audit"), Key("denial_summary_interval")],
                "must be 1s to 1h",
            ));
        }
        if let Some(a) = &self.audit
            && (a.anchor_interval < Duration::from_secs(1)
                || a.anchor_interval > Duration::from_secs(3600))
        {
            out.push(problem(
                vec![Key("audit"), Key("anchor_interval")],
                "must be 1s to 1h",
            ));
        }
        if self.listener.max_inflight_request_bytes < self.transit.max_request_bytes
            || u32::try_from(self.listener.max_inflight_request_bytes).is_err()
        {
            out.push(problem(
                vec![Key("listener"), Key("max_inflight_request_bytes")],
                "must be at least transit.max_request_bytes and below 4 GiB",
            ));
        }
        if self.transit.max_request_bytes < 1024 {
            out.push(problem(
                vec![Key("transit"), Key("max_request_bytes")],
                "must be at least 1024",
            ));
        }
        if !self.admin.socket.is_absolute() {
            out.push(problem(
                vec![Key("admin"), Key("socket")],
                "must be an absolute path",
            ));
        }
        if self.admin.allowed_uids.is_empty() && self.admin.allowed_gids.is_empty() {
            out.push(problem(
                vec![Key("admin"), Key("allowed_uids")],
                "no uid or gid may administer this daemon; allow at least one",
            ));
        }
        let u = &self.unseal;
        if u.retry_initial.is_zero() || u.retry_initial > u.retry_max {
            out.push(problem(
                vec![Key("unseal"), Key("retry_initial")],
                "must be greater than zero and at most retry_max",
            ));
        }
        if u.probe_interval < Duration::from_millis(100) {
            out.push(problem(
                vec![Key("unseal"), Key("probe_interval")],
                "must be at least 100ms",
            ));
        }
        if self.seal.is_empty() {
            out.push(problem(
                vec![Key("seal")],
                "at least one [[seal]] is required",
            ));
        }
        let enabled: Vec<&SealConfig> = self.seal.iter().filter(|s| !s.disabled).collect();
        if !self.seal.is_empty() && enabled.is_empty() {
            out.push(problem(
                vec![Key("seal")],
                "every [[seal]] is disabled; at least one must be enabled",
            ));
        }
        if enabled.iter().any(|s| s.is_shamir()) && enabled.len() > 1 {
            out.push(problem(
                vec![Key("seal")],
                "a shamir seal cannot be combined with other enabled seals (keep the old seal with \
                 disabled = true while migrating)",
            ));
        }
        if self.seal.iter().filter(|s| s.disabled).count() > 1 {
            out.push(problem(
                vec![Key("seal")],
                "at most one seal may be disabled (the seal being migrated away from)",
            ));
        }
        let mut seal_names = HashSet::new();
        let mut priorities = HashSet::new();
        for (i, s) in self.seal.iter().enumerate() {
            let at = |k: &'static str| vec![Key("seal"), Index(i), Key(k)];
            if !valid_name(&s.name) {
                out.push(problem(
                    at("name"),
                    "must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                ));
            } else if !seal_names.insert(s.name.clone()) {
                out.push(problem(
                    at("name"),
                    format!("duplicate seal name {:?}", s.name),
                ));
            }
            if let Some(p) = s.priority
                && !priorities.insert(p)
            {
                out.push(problem(
                    at("priority"),
                    format!("another seal already has priority {p}"),
                ));
            }
            if s.is_shamir() {
                let extra = [
                    ("key_label", s.key_label.is_some()),
                    ("key_id", s.key_id.is_some()),
                    ("mechanism", s.mechanism.is_some()),
                    ("rsa_oaep_hash", s.rsa_oaep_hash.is_some()),
                    ("hsm", !s.hsm.is_empty()),
                    ("recovery_keys_fallback", s.recovery_keys_fallback),
                ];
                for (k, present) in extra {
                    if present {
                        out.push(problem(at(k), "does not apply to a shamir seal"));
                    }
                }
                continue;
            }
            if s.seal_type != "pkcs11" {
                out.push(problem(
                    at("type"),
                    format!(
                        "unknown seal type {:?}; supported: \"pkcs11\", \"shamir\"",
                        s.seal_type
                    ),
                ));
                continue;
            }
            match &s.key_label {
                None => out.push(problem(
                    vec![Key("seal"), Index(i)],
                    "key_label is required for a pkcs11 seal",
                )),
                Some(k) if k.is_empty() => out.push(problem(at("key_label"), "must not be empty")),
                _ => {}
            }
            if let Some(id) = &s.key_id
                && (id.is_empty() || hex::decode(id).is_err())
            {
                out.push(problem(
                    at("key_id"),
                    "must be a non-empty hex string, e.g. \"01\"",
                ));
            }
            if self.fips_mode && s.mechanism() == Mechanism::RsaOaep(OaepHash::Sha1) {
                out.push(problem(
                    at("rsa_oaep_hash"),
                    "RSA-OAEP with SHA-1 is not approved in fips_mode (SoftHSM 2.6 only has SHA-1 OAEP): use sha256 or \
                     stronger, or CKM_AES_GCM",
                ));
            }
            if let Err(m) = parse_mechanism(s.mechanism.as_deref(), s.rsa_oaep_hash.as_deref()) {
                let k = if m.starts_with("rsa_oaep_hash") {
                    "rsa_oaep_hash"
                } else {
                    "mechanism"
                };
                out.push(problem(at(k), m));
            }
            if s.hsm.is_empty() {
                out.push(problem(
                    vec![Key("seal"), Index(i)],
                    "a pkcs11 seal needs at least one [[seal.hsm]] member",
                ));
            }
            let mut names = HashSet::new();
            for (j, h) in s.hsm.iter().enumerate() {
                let at =
                    |k: &'static str| vec![Key("seal"), Index(i), Key("hsm"), Index(j), Key(k)];
                let table = vec![Key("seal"), Index(i), Key("hsm"), Index(j)];
                if !valid_name(&h.name) {
                    out.push(problem(
                        at("name"),
                        "must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                    ));
                } else if !names.insert(h.name.clone()) {
                    out.push(problem(
                        at("name"),
                        format!("duplicate member name {:?}", h.name),
                    ));
                }
                if let Some(name) = &h.profile
                    && crate::profiles::get(name).is_none()
                {
                    out.push(problem(
                        at("profile"),
                        format!(
                            "unknown HSM profile {name:?}; known: {}",
                            crate::profiles::names().join(", ")
                        ),
                    ));
                }
                match &h.lib {
                    Some(lib) if !lib.is_absolute() => out.push(problem(
                        at("lib"),
                        "must be an absolute path to the PKCS#11 module",
                    )),
                    None if h.profile.is_none() => {
                        out.push(problem(table.clone(), "give lib (or a profile)"))
                    }
                    _ => {}
                }
                let selectors = [
                    h.token_label.is_some(),
                    h.slot.is_some(),
                    h.serial.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if selectors != 1 {
                    out.push(problem(
                        table.clone(),
                        "give exactly one of token_label, slot, serial",
                    ));
                }
                let pins = [
                    h.pin_file.is_some(),
                    h.pin_env.is_some(),
                    h.pin_credential.is_some(),
                    h.pin.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if pins != 1 {
                    out.push(problem(
                        table.clone(),
                        "give exactly one of pin_file, pin_env, pin_credential, pin",
                    ));
                }
                if let Some(c) = &h.pin_credential
                    && (c.contains('/') || c.is_empty())
                {
                    out.push(problem(
                        at("pin_credential"),
                        "must be a credential name, not a path",
                    ));
                }
                if h.timeout() < Duration::from_millis(50) {
                    out.push(problem(at("timeout"), "must be at least 50ms"));
                }
            }
        }
        out
    }

    /// Warnings to log at every start (inline PINs, TLS disabled, unlocked memory).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.listener.tls_disable {
            w.push(
                "TLS is disabled on the listener (tls_disable = true): for local testing only"
                    .to_string(),
            );
        }
        if self.audit.is_none() {
            w.push("no [audit] table: operations are not recorded in an audit trail".to_string());
        }
        if self.disable_mlock {
            w.push(
                "disable_mlock = true: key material may be swapped to disk; development only"
                    .to_string(),
            );
        }
        for s in &self.seal {
            for h in &s.hsm {
                if h.pin.is_some() {
                    w.push(format!(
                        "HSM member {:?} has an inline pin in the config file; this is discouraged: use pin_file, \
                         pin_env or pin_credential",
                        h.name
                    ));
                }
            }
        }
        w
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn dotted(at: &[Seg]) -> String {
    let mut s = String::new();
    for seg in at {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Finds the line of the deepest part of `at` present in the document.
fn locate(text: &str, at: &[Seg]) -> (usize, usize) {
    let Ok(doc) = text.parse::<toml_edit::Document<String>>() else {
        return (1, 1);
    };
    let mut best = None;
    let mut item: Option<&toml_edit::Item> = None;
    let mut table: Option<&toml_edit::Table> = Some(doc.as_table());
    for seg in at {
        match seg {
            Seg::Key(k) => {
                let Some(t) = table else { break };
                if let Some(key) = t.key(k) {
                    best = key.span().or(best);
                }
                item = t.get(k);
                if let Some(span) = item.and_then(|i| i.span()) {
                    best = best.or(Some(span));
                }
                table = item.and_then(|i| i.as_table());
                if item.is_none() {
                    break;
                }
            }
            Seg::Index(i) => {
                let Some(aot) = item.and_then(|it| it.as_array_of_tables()) else {
                    break;
                };
                let Some(t) = aot.get(*i) else { break };
                best = t.span().or(best);
                table = Some(t);
            }
        }
    }
    best.map(|s| line_col(text, s.start)).unwrap_or((1, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[storage]
path = "/var/lib/sealkeeper"

[listener]
address = "127.0.0.1:8200"
tls_disable = true

[[seal]]
type = "pkcs11"
name = "hsm-pair"
key_label = "sealkeeper-root"
mechanism = "0x1087"

  [[seal.hsm]]
  name = "hsm-a"
  lib = "/usr/lib/softhsm/libsofthsm2.so"
  token_label = "sealkeeper-a"
  pin_file = "/etc/sealkeeper/hsm-a.pin"

  [[seal.hsm]]
  name = "hsm-b"
  lib = "/usr/lib/softhsm/libsofthsm2.so"
  slot = 3
  pin_env = "HSM_B_PIN"
  timeout = "250ms"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/etc/sk.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.admin.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.admin.allowed_uids, vec![0]);
        assert_eq!(c.unseal.retry_max, Duration::from_secs(60));
        assert_eq!(c.seal[0].mechanism(), Mechanism::AesGcm);
        assert_eq!(c.seal[0].hsm[1].selector(), TokenSelector::Slot(3));
        assert_eq!(c.seal[0].hsm[1].timeout(), Duration::from_millis(250));
        assert!(matches!(c.seal[0].hsm[1].pin_source(), PinSource::Env(v) if v == "HSM_B_PIN"));
    }

    #[test]
    fn a_profile_fills_the_defaults_and_explicit_keys_win() {
        let text = GOOD.replacen(
            "  lib = \"/usr/lib/softhsm/libsofthsm2.so\"\n",
            "  profile = \"cloudhsm\"\n",
            1,
        );
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        let a = &c.seal[0].hsm[0];
        assert_eq!(
            a.lib(),
            PathBuf::from("/opt/cloudhsm/lib/libcloudhsm_pkcs11.so")
        );
        assert!(a.rw_session());
        assert_eq!(a.timeout(), Duration::from_secs(10));
        let text = text.replacen(
            "profile = \"cloudhsm\"",
            "profile = \"cloudhsm\"\n  rw_session = false\n  timeout = \"2s\"",
            1,
        );
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert!(!c.seal[0].hsm[0].rw_session());
        assert_eq!(c.seal[0].hsm[0].timeout(), Duration::from_secs(2));
        let e = err(&GOOD.replacen(
            "  lib = \"/usr/lib/softhsm/libsofthsm2.so\"\n",
            "  profile = \"hsm9000\"\n",
            1,
        ));
        assert!(
            e.contains("seal[0].hsm[0].profile: unknown HSM profile \"hsm9000\"")
                && e.contains("luna7"),
            "{e}"
        );
        let e = err(&GOOD.replacen("  lib = \"/usr/lib/softhsm/libsofthsm2.so\"\n", "", 1));
        assert!(e.contains("give lib (or a profile)"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("tls_disable = true", "tls_disable = true\ntls_dsable = 1");
        let e = err(&text);
        assert!(e.starts_with("/etc/sk.toml:8:"), "{e}");
        assert!(e.contains("tls_dsable"), "{e}");
    }

    #[test]
    fn validation_errors_name_line_and_key() {
        let text = GOOD.replace("slot = 3\n", "slot = 3\n  token_label = \"x\"\n");
        let e = err(&text);
        assert!(e.starts_with("/etc/sk.toml:21:"), "{e}");
        assert!(
            e.contains("seal[0].hsm[1]") && e.contains("exactly one of token_label"),
            "{e}"
        );

        let e = err(&GOOD.replace("\"0x1087\"", "\"CKM_DES\""));
        assert!(
            e.starts_with("/etc/sk.toml:13:") && e.contains("seal[0].mechanism"),
            "{e}"
        );

        let e = err(&GOOD.replace("type = \"pkcs11\"", "type = \"tpm\""));
        assert!(
            e.starts_with("/etc/sk.toml:10:") && e.contains("seal[0].type"),
            "{e}"
        );

        let e = err(&GOOD.replace("tls_disable = true", ""));
        assert!(e.contains("listener: tls_cert_file is required"), "{e}");

        let e = err(&GOOD.replace("name = \"hsm-b\"", "name = \"hsm-a\""));
        assert!(e.contains("seal[0].hsm[1].name: duplicate"), "{e}");

        let e = err(&GOOD.replace("\"250ms\"", "\"soon\""));
        assert!(e.starts_with("/etc/sk.toml:26:"), "{e}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = err("[storage]\npath = \n");
        assert!(e.starts_with("/etc/sk.toml:2:"), "{e}");
    }

    #[test]
    fn inline_pin_is_redacted_and_warned() {
        let text = GOOD.replace("pin_env = \"HSM_B_PIN\"", "pin = \"123456\"");
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert!(!format!("{c:?}").contains("123456"));
        assert!(c.warnings().iter().any(|w| w.contains("inline pin")));
    }
}
