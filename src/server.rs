//! The daemon: binds the listeners, builds the core, runs the background tasks, and shuts down
//! cleanly (keys zeroized, sessions closed, modules finalized, socket removed).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
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
use crate::seal::pkcs11::{ModuleRegistry, Pkcs11Seal};
use crate::secret::{self, MemoryPolicy};
use crate::storage::{self, FileStorage, Storage};

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
    Ok(Listeners { public, admin })
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
    storage::check_directory_permissions(&cfg.storage.path).map_err(ServerError::Startup)?;
    let store: Arc<dyn Storage> = Arc::new(FileStorage::open(&cfg.storage.path)?);
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
        Some(a) => Audit::open(&a.path, a.max_file_bytes)
            .map_err(|e| ServerError::Startup(format!("cannot open the audit log: {e}")))?,
        None => Audit::disabled(),
    };
    let log_health = cfg.audit.as_ref().is_some_and(|a| a.log_health);
    // Known-answer tests run on a blocking thread while storage, listeners and the unseal get
    // going; the core commits no unseal or init before they passed, and a failure stops the daemon.
    let (self_test_tx, self_tests) = tokio::sync::watch::channel(None);
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let audit = audit.clone();
        let fips_mode = cfg.fips_mode;
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
    let registry = ModuleRegistry::new();
    let mut seals = Vec::new();
    let mut autos: Vec<Arc<dyn Seal>> = Vec::new();
    for (i, s) in cfg.seal.iter().enumerate() {
        let kind = if s.is_shamir() {
            SealKind::Shamir
        } else {
            let seal: Arc<dyn Seal> =
                Arc::new(Pkcs11Seal::from_config(s, registry.clone(), cfg.fips_mode));
            autos.push(seal.clone());
            SealKind::Auto(seal)
        };
        seals.push(SealEntry {
            name: s.name.clone(),
            priority: s.priority.unwrap_or(i as u32),
            disabled: s.disabled,
            fallback: s.recovery_keys_fallback,
            kind,
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
            self_tests,
        },
        store,
        seals,
        audit.clone(),
    );
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

    let mut tasks = JoinSet::new();
    tasks.spawn(core.clone().run_auto_unseal());
    tasks.spawn(core.clone().run_probe());
    tasks.spawn(serve_public(
        listeners.public,
        tls,
        http::public_router(
            core.clone(),
            &cfg.transit,
            AuditCtx {
                audit: audit.clone(),
                core: core.clone(),
                kind: "request",
                log_health,
            },
        ),
    ));
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
            },
        ),
        audit.clone(),
    ));
    tasks.spawn(reopen_on_sighup(audit.clone()));
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

async fn serve_public(listener: TcpListener, tls: Option<TlsAcceptor>, router: Router) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the public listener");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let router = router.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let mut who = AuditPeer {
                address: Some(peer.to_string()),
                ..AuditPeer::default()
            };
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => {
                        who.tls_client = s
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| {
                                format!("sha256:{}", hex::encode(crate::crypto::sha256(c.as_ref())))
                            });
                        let service =
                            TowerToHyperService::new(router.layer(axum::Extension(ConnPeer(who))));
                        builder.serve_connection(TokioIo::new(s), service).await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    let service =
                        TowerToHyperService::new(router.layer(axum::Extension(ConnPeer(who))));
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn serve_admin(listener: UnixListener, cfg: AdminConfig, router: Router, audit: Audit) {
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the admin socket");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "admin connection refused: peer credentials unavailable");
                continue;
            }
        };
        let who = AuditPeer {
            uid: Some(peer.uid),
            gid: Some(peer.gid),
            pid: peer.pid,
            ..AuditPeer::default()
        };
        let router = if admin::allowed(&cfg, &peer) {
            router
                .clone()
                .layer(axum::Extension(peer))
                .layer(axum::Extension(ConnPeer(who)))
        } else {
            audit.record_detached(
                Event::new("admin", "connect", "denied")
                    .peer(who)
                    .error("peer not in admin.allowed_uids / admin.allowed_gids"),
            );
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                "admin connection refused: peer not in allowed_uids/allowed_gids"
            );
            admin::refusal_router(peer)
        };
        conns.spawn(async move {
            let service = TowerToHyperService::new(router);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}
