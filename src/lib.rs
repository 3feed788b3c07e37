//! Sealkeeper: an HSM-backed auto-unseal appliance for Vault and OpenBao clusters.
//!
//! The daemon keeps a 256-bit root key wrapped by a key that never leaves a PKCS#11 HSM, unseals
//! itself from the HSM (or its HA partner) at every start, holds the key only in locked memory, and
//! is administered only over a local Unix socket. See `docs/architecture.md`.

pub mod admin;
pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod crypto;
pub mod fault;
pub mod http;
pub mod keyring;
pub mod located;
pub mod locks;
pub mod metrics;
pub mod profiles;
pub mod recovery;
pub mod seal;
pub mod secret;
pub mod storage;
pub mod systemd;
pub mod transit;
