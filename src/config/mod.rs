//! Configuration: a TOML file, parsed with serde (`deny_unknown_fields` everywhere) and validated.
//! Every error names the file, the line and the key.

pub mod cidr;
pub mod seal;
pub mod vault_import;

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;

use crate::located::{Problem, Seg, dotted, line_col, locate, problem};
pub use seal::SealSection;

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
    /// The `[[seal]]` sections, parsed on their own (`config::seal`): not a serde field.
    #[serde(skip)]
    pub seal: Vec<SealSection>,
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
    /// This node among the nodes that share a store.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// A separate listener for Prometheus scrapers that cannot hold a token.
    pub telemetry: Option<TelemetryConfig>,
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[telemetry]`: the metrics on a listener of their own (plain HTTP, no token): bind it to a
/// management address only. The public listener's `/v1/sys/metrics` needs a token either way.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where scrapers connect, e.g. "127.0.0.1:9102"; serves `GET /metrics` and
    /// `GET /v1/sys/metrics?format=prometheus`.
    pub address: SocketAddr,
}

/// `[cluster]`: this node among several that share an etcd store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name (the host name when unset): names its audit anchor and its entry in
    /// the cluster's node list. Letters, digits, `-`, `_` and `.`.
    pub node_name: Option<String>,
    /// `active-active` (every unsealed node is active) or `active-standby` (one leader, elected
    /// through an etcd lease; the others answer health checks as standbys).
    #[serde(default)]
    pub mode: ClusterMode,
    /// active-standby: the leader's lease; a standby takes over this long after the leader
    /// stopped renewing it.
    #[serde(default = "d_5s", with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_name: None,
            mode: ClusterMode::default(),
            lease_ttl: d_5s(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterMode {
    #[default]
    ActiveActive,
    ActiveStandby,
}

fn d_5s() -> Duration {
    Duration::from_secs(5)
}

/// Where the state lives: `type = "file"` (the default: one directory on this node) or
/// `type = "etcd"` (an etcd cluster shared by several nodes; feature `etcd`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default, rename = "type")]
    pub kind: StorageKind,
    /// file: the state directory.
    #[serde(default)]
    pub path: PathBuf,
    /// etcd: the members' client URLs (`https://host:2379`; `http://` only on loopback).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// etcd: every key is stored under this prefix (ends with `/`), so that one etcd cluster can
    /// hold several installations.
    #[serde(default = "d_prefix")]
    pub prefix: String,
    /// etcd: the CA bundle (PEM) the members' certificates are checked against.
    pub tls_ca_file: Option<PathBuf>,
    /// etcd: this node's client certificate (PEM), for members that require one.
    pub tls_cert_file: Option<PathBuf>,
    /// etcd: the client certificate's key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// etcd: how long one attempt (connect and call) on one member may take before the next
    /// member is tried.
    #[serde(default = "d_2s", with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// etcd: how long a read or write may take in all, over every member, before it fails.
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub request_timeout: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    File,
    Etcd,
}

fn d_prefix() -> String {
    "sealkeeper/".into()
}
fn d_2s() -> Duration {
    Duration::from_secs(2)
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

/// The audit file's rotation size when `audit.max_file_bytes` is unset: 256 MiB.
pub const DEFAULT_AUDIT_FILE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit log (JSON lines, hash-chained). Created with mode 0600.
    pub path: PathBuf,
    /// Rotate (rename to `<path>.<time>`) when the file reaches this size; the chain continues.
    /// Unset: [`DEFAULT_AUDIT_FILE_BYTES`]; 0: never (rotation left to logrotate and SIGHUP).
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

impl AuditConfig {
    /// The size at which the file is rotated, or None when it never is.
    pub fn rotate_at(&self) -> Option<u64> {
        match self.max_file_bytes {
            None => Some(DEFAULT_AUDIT_FILE_BYTES),
            Some(0) => None,
            Some(n) => Some(n),
        }
    }
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
        if let Some((i, s, at)) = cfg
            .seal
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.backend.inline_secret().map(|at| (i, s, at)))
            && let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            let (what, better) = if s.seal_type() == "pkcs11" {
                ("an inline PIN", "pin_file / pin_credential")
            } else {
                (
                    "an inline cloud secret",
                    "an instance or workload role, or a credentials file",
                )
            };
            let mut full = vec![
                crate::located::Seg::Key("seal"),
                crate::located::Seg::Index(i),
            ];
            full.extend(at);
            let (line, column) = crate::located::locate(&text, &full);
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key: KeyName(crate::located::dotted(&full)),
                message: format!(
                    "the config holds {what} but is readable by group or others (mode {:o}); \
                             chmod 0600 it, or better use {better}",
                    meta.permissions().mode() & 0o777
                ),
            });
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
            let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key: KeyName(key),
                message,
            }
        };
        // serde names no table in its errors: the table is found from the error's position.
        let toml_error = |e: toml::de::Error| {
            let table = e
                .span()
                .map(|s| crate::located::table_at(text, s.start))
                .unwrap_or_default();
            invalid(e.span(), table, e.message().trim().to_string())
        };
        let mut doc = DeTable::parse(text).map_err(toml_error)?;
        // The seal sections are parsed by their type (config::seal), the rest by serde.
        let seals = doc.get_mut().remove("seal");
        let mut cfg = Config::deserialize(toml::de::Deserializer::from(doc)).map_err(toml_error)?;
        cfg.seal = seal::parse_all(seals).map_err(|(i, e)| {
            let key = if !e.key.is_empty() {
                format!("seal[{i}].{}", e.key)
            } else {
                // A member's unknown key: name the member's table, seal[i].hsm[j].
                e.span
                    .clone()
                    .map(|s| crate::located::table_at(text, s.start))
                    .filter(|t| t.starts_with(&format!("seal[{i}]")))
                    .unwrap_or_else(|| format!("seal[{i}]"))
            };
            invalid(e.span, key, e.message)
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
        out.extend(self.storage.validate());
        if self.cluster.mode == ClusterMode::ActiveStandby && self.storage.kind != StorageKind::Etcd
        {
            out.push(problem(
                vec![Key("cluster"), Key("mode")],
                "active-standby needs a shared store: [storage] type = \"etcd\"",
            ));
        }
        if self.cluster.lease_ttl < Duration::from_secs(2)
            || self.cluster.lease_ttl.subsec_nanos() != 0
        {
            out.push(problem(
                vec![Key("cluster"), Key("lease_ttl")],
                "must be whole seconds, at least 2s (etcd leases count in seconds)",
            ));
        }
        if let Some(n) = &self.cluster.node_name
            && (n.contains('/') || crate::storage::validate_key(n).is_err())
        {
            out.push(problem(
                vec![Key("cluster"), Key("node_name")],
                "must be 1-200 of A-Z a-z 0-9 - _ . (not starting with a dot)",
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
            if let Err(e) = cidr::Cidr::parse(a) {
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
        out.extend(seal::validate(&self.seal, self.fips_mode));
        out
    }

    /// Warnings to log at every start (inline PINs, TLS disabled, unlocked memory).
    /// This node's name: `[cluster] node_name`, else the host name, else "sealkeeper".
    pub fn node_name(&self) -> String {
        self.cluster.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| {
                    h.trim()
                        .chars()
                        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                        .collect::<String>()
                })
                .filter(|h| !h.is_empty() && !h.starts_with('.'))
                .unwrap_or_else(|| "sealkeeper".into())
        })
    }

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
            w.extend(s.backend.warnings());
        }
        w.extend(self.storage.warnings());
        w
    }
}

impl StorageConfig {
    fn validate(&self) -> Vec<Problem> {
        use Seg::Key;
        let mut out = Vec::new();
        let at = |k: &'static str| vec![Key("storage"), Key(k)];
        match self.kind {
            StorageKind::File => {
                if !self.path.is_absolute() {
                    out.push(problem(at("path"), "must be an absolute path"));
                }
                let etcd_only = [
                    ("endpoints", !self.endpoints.is_empty()),
                    ("prefix", self.prefix != d_prefix()),
                    ("tls_ca_file", self.tls_ca_file.is_some()),
                    ("tls_cert_file", self.tls_cert_file.is_some()),
                    ("tls_key_file", self.tls_key_file.is_some()),
                ];
                for (k, set) in etcd_only {
                    if set {
                        out.push(problem(
                            at(k),
                            "is an etcd setting; add type = \"etcd\" or remove it",
                        ));
                    }
                }
            }
            StorageKind::Etcd => {
                if self.path != PathBuf::new() {
                    out.push(problem(
                        at("path"),
                        "is a file storage setting; etcd storage keeps no local state directory",
                    ));
                }
                if self.endpoints.is_empty() {
                    out.push(problem(
                        at("endpoints"),
                        "is required: the etcd members' client URLs, e.g. [\"https://10.0.0.1:2379\"]",
                    ));
                }
                for e in &self.endpoints {
                    if let Err(why) = check_etcd_endpoint(e) {
                        out.push(problem(at("endpoints"), format!("{e:?}: {why}")));
                    }
                }
                let p = self.prefix.trim_end_matches('/');
                if !self.prefix.ends_with('/') || crate::storage::validate_key(p).is_err() {
                    out.push(problem(
                        at("prefix"),
                        "must be segments of A-Z a-z 0-9 - _ . ending with \"/\", e.g. \"sealkeeper/\"",
                    ));
                }
                if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
                    out.push(problem(
                        at("tls_cert_file"),
                        "tls_cert_file and tls_key_file are given together",
                    ));
                }
                let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
                if https && self.tls_ca_file.is_none() {
                    out.push(problem(
                        at("tls_ca_file"),
                        "is required with https:// endpoints: the CA bundle (PEM) that signed the etcd members' certificates",
                    ));
                }
                if !https && (self.tls_ca_file.is_some() || self.tls_cert_file.is_some()) {
                    out.push(problem(
                        at("endpoints"),
                        "TLS files are set but no endpoint is https://",
                    ));
                }
                if self.attempt_timeout.is_zero() || self.request_timeout < self.attempt_timeout {
                    out.push(problem(
                        at("request_timeout"),
                        "attempt_timeout must be above zero and request_timeout at least attempt_timeout",
                    ));
                }
                if !cfg!(feature = "etcd") {
                    out.push(problem(
                        at("type"),
                        "this sealkeeper was built without etcd storage; build it with `--features etcd`",
                    ));
                }
            }
        }
        out
    }

    fn warnings(&self) -> Vec<String> {
        if self.kind != StorageKind::Etcd {
            return Vec::new();
        }
        let mut w = Vec::new();
        if self.endpoints.iter().any(|e| e.starts_with("http://")) {
            w.push(
                "storage: an etcd endpoint is plain http:// (loopback only): anyone on this host can \
                 change the stored state; use https:// with client certificates in production"
                    .to_string(),
            );
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) && self.tls_cert_file.is_none()
        {
            w.push(
                "storage: no tls_cert_file: etcd members that do not require client certificates \
                 let anyone who reaches them change the stored state"
                    .to_string(),
            );
        }
        if self.endpoints.len() == 1 {
            w.push(
                "storage: one etcd endpoint: list every member, so that one member down does not stop \
                 writes"
                    .to_string(),
            );
        }
        w
    }
}

/// An etcd client URL: `https://host:port`, or `http://` on a loopback address.
fn check_etcd_endpoint(e: &str) -> Result<(), String> {
    let (scheme, rest) = e
        .split_once("://")
        .ok_or("must be a URL: https://host:port")?;
    if scheme != "https" && scheme != "http" {
        return Err("the scheme must be https (or http on loopback)".into());
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err("must be https://host:port, with no path, query or user".into());
    }
    let (host, port) = rest.rsplit_once(':').ok_or("the port is missing")?;
    port.parse::<u16>()
        .map_err(|_| format!("port {port:?} is not a number"))?;
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    if scheme == "http" {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err("plain http is allowed only on loopback; use https".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::pkcs11::{Mechanism, PinSource, TokenSelector};
    use crate::seal::registry::SealBackendConfig;

    fn pkcs11(c: &Config) -> &crate::seal::pkcs11::Pkcs11Config {
        match &c.seal[0].backend {
            SealBackendConfig::Pkcs11(p) => p,
            other => panic!("{other:?}"),
        }
    }

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
        assert_eq!(pkcs11(&c).mechanism(), Mechanism::AesGcm);
        assert_eq!(pkcs11(&c).hsm[1].selector(), TokenSelector::Slot(3));
        assert_eq!(pkcs11(&c).hsm[1].timeout(), Duration::from_millis(250));
        assert!(matches!(pkcs11(&c).hsm[1].pin_source(), PinSource::Env(v) if v == "HSM_B_PIN"));
    }

    #[test]
    fn a_profile_fills_the_defaults_and_explicit_keys_win() {
        let text = GOOD.replacen(
            "  lib = \"/usr/lib/softhsm/libsofthsm2.so\"\n",
            "  profile = \"cloudhsm\"\n",
            1,
        );
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        let a = &pkcs11(&c).hsm[0];
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
        assert!(!pkcs11(&c).hsm[0].rw_session());
        assert_eq!(pkcs11(&c).hsm[0].timeout(), Duration::from_secs(2));
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
        assert!(e.contains("give lib (or a profile"), "{e}");
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

    fn etcd(storage: &str) -> String {
        GOOD.replace(
            "[storage]\npath = \"/var/lib/sealkeeper\"\n",
            &format!("[storage]\n{storage}\n"),
        )
    }

    #[test]
    fn etcd_storage_is_checked_and_warned_about() {
        let good = etcd(
            "type = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]\n\
             tls_ca_file = \"/etc/sealkeeper/etcd-ca.pem\"\ntls_cert_file = \"/etc/sealkeeper/etcd.pem\"\n\
             tls_key_file = \"/etc/sealkeeper/etcd.key\"",
        );
        let parsed = Config::parse(&good, Path::new("/etc/sk.toml"));
        if cfg!(feature = "etcd") {
            let c = parsed.unwrap();
            assert_eq!(c.storage.kind, StorageKind::Etcd);
            assert_eq!(c.storage.prefix, "sealkeeper/");
            assert_eq!(c.storage.attempt_timeout, Duration::from_secs(2));
            assert!(c.warnings().iter().all(|w| !w.starts_with("storage")));
        } else {
            let e = parsed.err().unwrap().to_string();
            assert!(e.contains("built without etcd storage"), "{e}");
        }
        for (storage, want) in [
            ("type = \"etcd\"", "endpoints: is required"),
            (
                "type = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\"]",
                "plain http is allowed only on loopback",
            ),
            (
                "type = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]",
                "must be a URL",
            ),
            (
                "type = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379/x\"]",
                "no path",
            ),
            (
                "type = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\"]",
                "tls_ca_file: is required",
            ),
            (
                "type = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"no-slash\"",
                "ending with",
            ),
            (
                "type = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\npath = \"/var/lib/x\"",
                "keeps no local state directory",
            ),
            (
                "type = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nattempt_timeout = \"0s\"",
                "attempt_timeout must be above zero",
            ),
            (
                "path = \"/var/lib/x\"\nendpoints = [\"http://127.0.0.1:2379\"]",
                "is an etcd setting",
            ),
            ("type = \"consul\"", "unknown variant"),
        ] {
            let e = err(&etcd(storage));
            assert!(e.contains(want), "{storage}: {e}");
            assert!(e.starts_with("/etc/sk.toml:"), "{e}");
        }
        if cfg!(feature = "etcd") {
            let c = Config::parse(
                &etcd("type = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]"),
                Path::new("/etc/sk.toml"),
            )
            .unwrap();
            let w = c.warnings().join("\n");
            assert!(
                w.contains("plain http://") && w.contains("one etcd endpoint"),
                "{w}"
            );
        }
        let e = err(&GOOD.replace("[listener]", "[cluster]\nnode_name = \"a/b\"\n\n[listener]"));
        assert!(e.contains("cluster.node_name"), "{e}");
        let e = err(&GOOD.replace(
            "[listener]",
            "[cluster]\nmode = \"active-standby\"\n\n[listener]",
        ));
        assert!(
            e.contains("cluster.mode: active-standby needs a shared store"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "[listener]",
            "[cluster]\nlease_ttl = \"1500ms\"\n\n[listener]",
        ));
        assert!(
            e.contains("cluster.lease_ttl: must be whole seconds"),
            "{e}"
        );
        let e = err(&GOOD.replace("[listener]", "[cluster]\nmode = \"primary\"\n\n[listener]"));
        assert!(e.contains("unknown variant"), "{e}");
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
