//! The daemon: binds the listeners, builds the core, runs the background tasks, and shuts down
//! cleanly (keys zeroized, sessions closed, modules finalized, socket removed).

mod listeners;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Peer};
use crate::audit::{Audit, Event, Peer as AuditPeer};
use crate::config::{AdminConfig, Config};
use crate::http::audit_layer::{AuditCtx, ConnPeer};

use crate::core::{Core, CoreOptions, SealEntry, SealKind};
use crate::http::{self, tls};
use crate::seal::Seal;
use crate::seal::pkcs11::ModuleRegistry;
use crate::secret::{self, MemoryPolicy};
use crate::storage::{self, FileStorage, Storage};
pub use listeners::ConnLimits;
use listeners::{serve_admin, serve_public, serve_telemetry};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("{0}")]
    Startup(String),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Admin(#[from] admin::AdminSocketError),
    #[error("listener {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

pub struct Listeners {
    pub public: TcpListener,
    pub admin: UnixListener,
    /// `[telemetry] address`, when configured.
    pub telemetry: Option<TcpListener>,
}

/// Binds the public TCP listener and the admin socket named in the config.
pub async fn bind(cfg: &Config) -> Result<Listeners, ServerError> {
    let public = TcpListener::bind(cfg.listener.address)
        .await
        .map_err(|source| ServerError::Listen {
            addr: cfg.listener.address.to_string(),
            source,
        })?;
    let admin = admin::bind(&cfg.admin)?;
    let telemetry = match &cfg.telemetry {
        Some(t) => {
            Some(
                TcpListener::bind(t.address)
                    .await
                    .map_err(|source| ServerError::Listen {
                        addr: format!("{} ([telemetry] address)", t.address),
                        source,
                    })?,
            )
        }
        None => None,
    };
    Ok(Listeners {
        public,
        admin,
        telemetry,
    })
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    secret::harden_process()
        .map_err(|e| ServerError::Startup(format!("cannot disable core dumps: {e}")))?;
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    // The seals first: a PKCS#11 member loads its module on its own thread as soon as it exists
    // (the longest step of a start), while storage, TLS and the audit trail are opened here.
    let (seals, autos) = build_seals(&cfg);
    let opened = open_stores(&cfg).await;
    let (store, tls, audit) = match opened {
        Ok(o) => o,
        Err(e) => {
            for seal in &autos {
                seal.shutdown();
            }
            return Err(e);
        }
    };
    let log_health = cfg.audit.as_ref().is_some_and(|a| a.log_health);
    // Known-answer tests run on a blocking thread while storage, listeners and the unseal get
    // going; the core commits no unseal or init before they passed, and a failure stops the daemon.
    let (self_test_tx, self_tests) = tokio::sync::watch::channel(None);
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let audit = audit.clone();
        let fips_mode = cfg.fips_mode;
        // The first record of every run names the node whose trail it is (several nodes may
        // share a store, each with its own trail).
        let node = cfg.node_name();
        tokio::spawn(async move {
            let results = tokio::task::spawn_blocking(crate::crypto::self_tests)
                .await
                .unwrap_or_default();
            let failed: Vec<String> = results
                .iter()
                .filter(|t| !t.ok)
                .map(|t| t.name.clone())
                .collect();
            let failed = if results.is_empty() {
                vec!["self-test task".to_string()]
            } else {
                failed
            };
            audit.record_detached(
                Event::new(
                    "core",
                    "self-test",
                    if failed.is_empty() { "ok" } else { "error" },
                )
                .field("node", node)
                .field("fips_mode", fips_mode)
                .field("fips_module", crate::crypto::fips_module_active())
                .error(failed.join(", ")),
            );
            if failed.is_empty() {
                tracing::info!(
                    fips_mode,
                    fips_module = crate::crypto::fips_module_active(),
                    "cryptographic self-tests passed"
                );
            } else {
                tracing::error!(failed = %failed.join(", "), "cryptographic self-test failed: refusing to serve");
                let _ = fatal_tx.send(format!(
                    "cryptographic self-test failed ({}): refusing to serve",
                    failed.join(", ")
                ));
            }
            let _ = self_test_tx.send(Some(results));
        });
    }
    if seals.is_empty() {
        return Err(ServerError::Startup("no [[seal]] configured".into()));
    }
    let core = Core::new(
        CoreOptions {
            memory: if cfg.disable_mlock {
                MemoryPolicy::AllowUnlocked
            } else {
                MemoryPolicy::RequireLocked
            },
            cluster_name: cfg.cluster_name.clone(),
            retry_initial: cfg.unseal.retry_initial,
            retry_max: cfg.unseal.retry_max,
            probe_interval: cfg.unseal.probe_interval,
            fips_mode: cfg.fips_mode,
            node_name: cfg.node_name(),
            standby_lease: (cfg.cluster.mode == crate::config::ClusterMode::ActiveStandby)
                .then_some(cfg.cluster.lease_ttl),
            self_tests,
        },
        store,
        seals,
        audit.clone(),
    )
    .await;
    if let Err(e) = core.check_seal_config() {
        admin::unlink(&cfg.admin.socket);
        for seal in &autos {
            seal.shutdown();
        }
        return Err(ServerError::Startup(format!(
            "the seal configuration does not match the stored seal state: {e}"
        )));
    }
    let seal_names: Vec<String> = core
        .seals()
        .iter()
        .map(|s| {
            format!(
                "{}:{}{}",
                s.seal_type(),
                s.name,
                if s.disabled { " (disabled)" } else { "" }
            )
        })
        .collect();
    let members: Vec<String> = autos
        .iter()
        .flat_map(|s| s.status().members.into_iter().map(|m| m.name))
        .collect();
    tracing::info!(
        seal_type = core.seal_type(),
        seals = %seal_names.join(","),
        members = %members.join(","),
        listener = %listeners.public.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        admin_socket = %cfg.admin.socket.display(),
        initialized = core.is_initialized(),
        "sealkeeper started"
    );

    let nofile = match secret::raise_nofile_limit() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the descriptor limit (RLIMIT_NOFILE)");
            None
        }
    };
    let limits = ConnLimits::from_config(&cfg.listener, nofile);
    let denials = crate::audit::denials::Denials::new(
        audit.clone(),
        cfg.audit
            .as_ref()
            .map(|a| a.denial_summary_interval)
            .unwrap_or(Duration::from_secs(10)),
    );
    let trusted_proxies = cfg
        .listener
        .x_forwarded_for_authorized_addrs
        .iter()
        .filter_map(|a| crate::http::client::Cidr::parse(a).ok())
        .collect();

    core.subscribe(Arc::new(CountCeremonies));
    let mut tasks = JoinSet::new();
    tasks.spawn(core.clone().run_auto_unseal());
    tasks.spawn(core.clone().run_probe());
    tasks.spawn(core.clone().run_follow());
    if cfg.storage.kind == crate::config::StorageKind::Etcd {
        tasks.spawn(core.clone().run_registry(cfg.listener.address.to_string()));
        tasks.spawn(core.clone().run_election());
    }
    tasks.spawn(denials.clone().run());
    if let Some(a) = &cfg.audit {
        let c = core.clone();
        tasks.spawn(crate::audit::anchor::run(
            move || c.audit_keys(),
            audit.clone(),
            a.anchor_interval,
        ));
    }
    tasks.spawn(serve_public(
        listeners.public,
        tls,
        http::public::PublicApp::new(
            http::public::public_router(core.clone(), &cfg.transit),
            AuditCtx {
                audit: audit.clone(),
                core: core.clone(),
                kind: "request",
                log_health,
                denials: Some(denials.clone()),
            },
            http::public::PublicOptions {
                transit_prefix: format!("/v1/{}/", cfg.transit.mount.trim_matches('/')),
                trusted_proxies,
                throttle: Arc::new(crate::http::client::AuthThrottle::new(
                    cfg.listener.auth_failure_limit,
                    cfg.listener.auth_failure_window,
                )),
                body: http::BodyLimits {
                    max_bytes: cfg.transit.max_request_bytes,
                    read_timeout: cfg.listener.http_read_timeout,
                    budget: Arc::new(tokio::sync::Semaphore::new(
                        cfg.listener.max_inflight_request_bytes,
                    )),
                },
            },
        ),
        limits,
        denials.clone(),
    ));
    if let Some(l) = listeners.telemetry {
        tasks.spawn(serve_telemetry(l, core.clone()));
    }
    tasks.spawn(serve_admin(
        listeners.admin,
        cfg.admin.clone(),
        admin::router(
            core.clone(),
            &cfg.transit,
            AuditCtx {
                audit: audit.clone(),
                core: core.clone(),
                kind: "admin",
                log_health: true,
                denials: None,
            },
            admin::AuditTrail {
                audit: audit.clone(),
                path: cfg.audit.as_ref().map(|a| a.path.clone()),
            },
        ),
        audit.clone(),
        cfg.listener.http_read_header_timeout,
    ));
    tasks.spawn(reopen_on_sighup(audit.clone()));
    tasks.spawn(release_when_quiet());
    tasks.spawn(crate::systemd::run(core.clone()));
    core.wake();
    crate::systemd::ready(&core);

    let fatal = tokio::select! {
        _ = shutdown => None,
        Ok(message) = fatal_rx => Some(message),
    };
    crate::systemd::stopping();
    tracing::info!("shutting down: zeroizing keys, closing HSM sessions");
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    denials.flush();
    // The last anchor, while the keys are still here.
    crate::audit::anchor::anchor_once(core.audit_keys(), &audit, &mut None).await;
    core.zeroize();
    let _ = tokio::task::spawn_blocking(move || {
        for seal in autos {
            seal.shutdown();
        }
    })
    .await;
    admin::unlink(&cfg.admin.socket);
    tracing::info!("stopped");
    match fatal {
        Some(message) => Err(ServerError::Startup(message)),
        None => Ok(()),
    }
}

/// Drops the resident pages of the code and constants that serving does not run
/// (`secret::release_file_pages`) and returns the heap's free memory (`secret::trim_heap`). What
/// serving runs faults back in from the page cache.
fn release_memory() {
    match secret::release_file_pages() {
        Ok(kib) => {
            let heap_trimmed = secret::trim_heap();
            tracing::debug!(
                released_kib = kib,
                heap_trimmed,
                "released the resident pages of code not running"
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot read /proc/self/smaps; pages stay resident")
        }
    }
}

/// Inits and unseals so far. Each runs code that serving does not (the init's ceremony, the
/// unwrap; before the first one, the self-tests, the config parser, the module's initialisation
/// and login), released when things are quiet after it.
static CEREMONIES: AtomicU64 = AtomicU64::new(0);

struct CountCeremonies;

impl crate::core::Subscriber for CountCeremonies {
    fn on_event(&self, event: &crate::core::CoreEvent) {
        use crate::core::CoreEvent;
        if matches!(
            event,
            CoreEvent::Initialized { .. }
                | CoreEvent::Unsealed { .. }
                | CoreEvent::UnsealedWithShares { .. }
        ) {
            CEREMONIES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How often the daemon looks for quiet; quiet is one whole period without a transit request, an
/// init or an unseal.
const QUIET_CHECK: Duration = Duration::from_secs(5);

/// Releases memory once the daemon is quiet (see [`QUIET_CHECK`]) after start-up, or after an
/// init, an unseal or transit traffic: an appliance serves in bursts (a Vault cluster's restarts)
/// and is idle between them. What start-up or a burst brought in (code pages, the heap its
/// connections grew) is returned then, once per burst. Health checks and probes do not count as
/// activity: they run little code, and would otherwise bring it back after every release.
async fn release_when_quiet() {
    let metrics = crate::metrics::get();
    let activity = || metrics.transit_requests_total() + CEREMONIES.load(Ordering::Relaxed);
    let mut released_at = None;
    let mut last = activity();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + QUIET_CHECK, QUIET_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = activity();
        if now == last && released_at != Some(now) {
            released_at = Some(now);
            // On a blocking thread: no request waits for it.
            let _ = tokio::task::spawn_blocking(release_memory).await;
        }
        last = now;
    }
}

/// SIGHUP reopens the audit log (after an external rotation such as logrotate's).
async fn reopen_on_sighup(audit: Audit) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; the audit log cannot be reopened");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reopening the audit log");
        audit.reopen();
    }
}

/// The store the configuration names (the embedded file store today; a clustered store is one more
/// variant here).
pub async fn open_storage(
    cfg: &crate::config::StorageConfig,
) -> Result<Arc<dyn Storage>, ServerError> {
    use crate::config::StorageKind;
    match cfg.kind {
        StorageKind::File => {
            storage::check_directory_permissions(&cfg.path).map_err(ServerError::Startup)?;
            Ok(Arc::new(FileStorage::open(&cfg.path)?))
        }
        #[cfg(feature = "etcd")]
        StorageKind::Etcd => {
            let o = storage::etcd::EtcdOptions {
                endpoints: cfg.endpoints.clone(),
                prefix: cfg.prefix.clone(),
                tls_ca_file: cfg.tls_ca_file.clone(),
                tls_cert_file: cfg.tls_cert_file.clone(),
                tls_key_file: cfg.tls_key_file.clone(),
                attempt_timeout: cfg.attempt_timeout,
                request_timeout: cfg.request_timeout,
            };
            Ok(Arc::new(storage::etcd::EtcdStorage::open(&o).await?))
        }
        #[cfg(not(feature = "etcd"))]
        StorageKind::Etcd => Err(ServerError::Startup(
            "storage: this sealkeeper was built without etcd storage (`--features etcd`)".into(),
        )),
    }
}

/// Storage, the TLS configuration and the audit trail, opened in that order.
async fn open_stores(
    cfg: &Config,
) -> Result<(Arc<dyn Storage>, Option<TlsAcceptor>, Audit), ServerError> {
    let store = open_storage(&cfg.storage).await?;
    let tls = if cfg.listener.tls_disable {
        None
    } else {
        match (&cfg.listener.tls_cert_file, &cfg.listener.tls_key_file) {
            (Some(c), Some(k)) => Some(TlsAcceptor::from(tls::server_config(
                c,
                k,
                cfg.listener.tls_client_ca_file.as_deref(),
                cfg.listener.tls_require_and_verify_client_cert,
                cfg.fips_mode,
            )?)),
            _ => {
                return Err(ServerError::Startup(
                    "listener: TLS certificate and key are required".into(),
                ));
            }
        }
    };

    let audit = match &cfg.audit {
        Some(a) => Audit::open(&a.path, a.rotate_at())
            .map_err(|e| ServerError::Startup(format!("cannot open the audit log: {e}")))?,
        None => Audit::disabled(),
    };
    Ok((store, tls, audit))
}

/// The configured seals as the core sees them, by the registry of seal types, and the auto seals
/// among them (to probe and shut down).
pub fn build_seals(cfg: &Config) -> (Vec<SealEntry>, Vec<Arc<dyn Seal>>) {
    let build = crate::seal::registry::BuildContext {
        pkcs11_modules: ModuleRegistry::new(),
        fips_mode: cfg.fips_mode,
    };
    let mut seals = Vec::new();
    let mut autos: Vec<Arc<dyn Seal>> = Vec::new();
    for (i, s) in cfg.seal.iter().enumerate() {
        let kind = match s.backend.build(&s.name, &build) {
            Some(seal) => {
                autos.push(seal.clone());
                SealKind::Auto(seal)
            }
            None => SealKind::Shamir,
        };
        seals.push(SealEntry {
            name: s.name.clone(),
            priority: s.priority.unwrap_or(i as u32),
            disabled: s.disabled,
            fallback: s.recovery_keys_fallback,
            kind,
        });
    }
    (seals, autos)
}
