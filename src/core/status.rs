//! Status documents: what `operator status`, `sys/seal-status` and the health answers are built from.

use super::*;
use crate::locks::RwLockExt;

impl Core {
    pub fn status(&self) -> Status {
        let primary = self.primary();
        let seal = match &primary.kind {
            SealKind::Auto(s) => s.status(),
            SealKind::Shamir => SealHealth {
                name: primary.name.clone(),
                seal_type: "shamir".into(),
                healthy: true,
                members: vec![],
                detail: Default::default(),
            },
        };
        let stored = if self.is_initialized() {
            self.stored_state()
        } else {
            None
        };
        let mut seals = Vec::new();
        let mut missing = Vec::new();
        for s in &self.seals {
            let (healthy, since) = seal_health(s);
            let mut info = SealInfo {
                name: s.name.clone(),
                seal_type: s.seal_type().to_string(),
                priority: s.priority,
                disabled: s.disabled,
                healthy,
                unhealthy_since_unix: since,
                recovery_keys_fallback: s.fallback,
                wrapping_current: false,
                wrapping_generation: None,
                wrapped_by_key: None,
                wrapped_by_configured_key: None,
                wrapped_by_member: None,
                members: Vec::new(),
                detail: Default::default(),
            };
            if let SealKind::Auto(a) = &s.kind {
                let h = a.status();
                info.members = h.members;
                info.detail = h.detail;
            }
            if let Some(st) = &stored {
                match &s.kind {
                    SealKind::Auto(a) => {
                        if let Some(w) = st.wrappings.get(&s.name) {
                            info.wrapping_current = w.generation == st.generation;
                            info.wrapping_generation = Some(w.generation);
                            info.wrapped_by_key = Some(a.key_name(&w.blob));
                            info.wrapped_by_configured_key = Some(a.key_matches(&w.blob));
                            info.wrapped_by_member = Some(w.blob.wrapped_by.clone());
                        }
                    }
                    SealKind::Shamir => {
                        if let Some(w) = &st.shares.wrapping
                            && st.shares.role == ShareRole::Unseal
                        {
                            info.wrapping_current = w.generation == st.generation;
                            info.wrapping_generation = Some(w.generation);
                        }
                    }
                }
                if !s.disabled && !info.wrapping_current {
                    missing.push(s.name.clone());
                }
            }
            seals.push(info);
        }
        let migration = stored
            .as_ref()
            .is_some_and(|st| self.migration(st).is_some());
        let last = self.last_error.read_recover().clone();
        let st = self.state.read_recover();
        let state = st.name();
        let (initialized, sealed, by, since, manual, init, terms) = match &*st {
            State::Uninitialized => (false, true, None, None, false, None, vec![]),
            State::Sealed { init, manual } => {
                (true, true, None, None, *manual, init.as_ref(), vec![])
            }
            State::Unsealed {
                init,
                by,
                since_unix,
                keys,
                ..
            } => (
                true,
                false,
                Some(by.clone()),
                Some(*since_unix),
                false,
                Some(init),
                keys.terms(),
            ),
        };
        Status {
            state: state.to_string(),
            initialized,
            sealed,
            seal_type: primary.seal_type().to_string(),
            seal,
            seals,
            seals_missing_wrapping: missing,
            root_generation: stored.as_ref().map(|s| s.generation),
            keyring_terms: terms,
            migration,
            unsealed_by: by.as_ref().map(|b| b.member.clone()),
            unsealed_by_seal: by.as_ref().map(|b| b.seal.clone()),
            unsealed_since_unix: since,
            manually_sealed: manual,
            last_unseal_error: last.as_ref().map(|l| l.0.clone()),
            last_unseal_attempt_unix: last.as_ref().map(|l| l.1),
            unseal_attempts: self
                .unseal_attempts
                .load(std::sync::atomic::Ordering::Relaxed),
            probe_rounds: self.probe_rounds.load(std::sync::atomic::Ordering::Relaxed),
            installation_id: init.map(|i| i.installation_id.clone()),
            recovery_shares: stored.as_ref().map(|s| s.shares.shares).unwrap_or(0),
            recovery_threshold: stored.as_ref().map(|s| s.shares.threshold).unwrap_or(0),
            memory_locked: *self.memory_locked.read_recover(),
            dumpable: crate::secret::is_dumpable(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            fips_mode: self.opts.fips_mode,
            fips_module: crate::crypto::fips_module_active(),
            self_tests: self.opts.self_tests.borrow().clone().unwrap_or_default(),
            hsm_self_tests: self.hsm_self_tests.read_recover().clone(),
            cluster: self.cluster.read_recover().clone(),
        }
    }

    /// Share submission progress, for `seal-status`.
    pub fn share_progress(&self) -> ShareProgress {
        let stored = if self.is_initialized() {
            self.stored_state()
        } else {
            None
        };
        let ceremonies = self.ceremonies();
        let p = &ceremonies.unseal;
        ShareProgress {
            progress: p.as_ref().map(|p| p.shares.len()).unwrap_or(0),
            nonce: p.as_ref().map(|p| p.nonce.clone()).unwrap_or_default(),
            migration: stored
                .as_ref()
                .is_some_and(|st| self.migration(st).is_some()),
            shamir: self.shamir_enabled().is_some(),
            threshold: stored.as_ref().map(|s| s.shares.threshold).unwrap_or(0),
            shares: stored.as_ref().map(|s| s.shares.shares).unwrap_or(0),
        }
    }

    /// Health of every enabled seal, for `/v1/sys/seal-backend-status` (no storage access: load
    /// balancers may poll it).
    pub fn seal_backend_status(&self) -> Vec<(String, bool, Option<u64>)> {
        self.seals
            .iter()
            .filter(|s| !s.disabled)
            .map(|s| {
                let (healthy, since) = seal_health(s);
                (s.name.clone(), healthy, since)
            })
            .collect()
    }

    pub fn rewrap_report(&self) -> Option<RewrapReport> {
        self.rewrap.read_recover().clone()
    }
}

/// A seal's health, and since when it is unhealthy (the latest member to go down): a Shamir seal
/// is always available.
pub(super) fn seal_health(s: &SealEntry) -> (bool, Option<u64>) {
    match &s.kind {
        SealKind::Auto(a) => {
            let st = a.status();
            let since = st
                .members
                .iter()
                .filter_map(|m| m.unhealthy_since_unix)
                .max();
            (st.healthy, if st.healthy { None } else { since })
        }
        SealKind::Shamir => (true, None),
    }
}
