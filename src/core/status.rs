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
        let cluster = self.cluster.read_recover().clone();
        let restart = self.restart_from_probes(
            self.is_initialized(),
            stored.as_ref(),
            migration,
            cluster.as_ref().and_then(|c| c.error.as_deref()),
            &seals,
        );
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
            cluster,
            restart_safe: restart.safe,
            restart,
        }
    }

    /// How recent a member's last answer must be for `restart_safe`: three probe intervals (the
    /// probe loop answers once per interval), and never less than 10 s.
    pub fn restart_probe_bound(&self) -> std::time::Duration {
        (self.opts.probe_interval * 3).max(std::time::Duration::from_secs(10))
    }

    /// Would a restart unseal, judged from the members' last answers (no HSM or KMS call).
    fn restart_from_probes(
        &self,
        initialized: bool,
        stored: Option<&RootState>,
        migration: bool,
        store_error: Option<&str>,
        seals: &[SealInfo],
    ) -> RestartSafety {
        let within = self.restart_probe_bound().as_secs();
        let no = |reason: String| RestartSafety {
            safe: false,
            reason,
            relies_on: vec![],
            checked_by: "last-probe".into(),
            within_seconds: within,
        };
        if !initialized {
            return no(NOT_INITIALIZED.into());
        }
        let Some(st) = stored else {
            return no(
                "the seal state could not be read from storage, and a restart would read it first"
                    .into(),
            );
        };
        if migration {
            return no("a seal migration is pending: a restart needs a quorum of shares".into());
        }
        if let Some(e) = store_error {
            return no(format!(
                "the shared store does not answer ({e}): a restart would stay sealed until it does"
            ));
        }
        let now = now_unix();
        let mut relies_on = Vec::new();
        let mut down = Vec::new();
        let mut candidates = 0;
        for s in seals {
            if s.disabled || s.seal_type == "shamir" || !s.wrapping_current {
                continue;
            }
            candidates += 1;
            for m in &s.members {
                let fresh = m
                    .last_checked_unix
                    .is_some_and(|t| now.saturating_sub(t) <= within);
                if m.healthy && fresh {
                    relies_on.push(format!("{}/{}", s.name, m.name));
                } else if m.healthy {
                    down.push(format!(
                        "{}/{} has not answered for more than {within}s",
                        s.name, m.name
                    ));
                } else {
                    down.push(format!(
                        "{}/{} is down ({})",
                        s.name,
                        m.name,
                        m.last_error.as_deref().unwrap_or("no answer yet")
                    ));
                }
            }
        }
        // Seals that answer but could not unseal a restart, named so that nobody counts on them.
        let idle: Vec<String> = seals
            .iter()
            .filter(|s| s.healthy && (s.disabled || !s.wrapping_current) && s.seal_type != "shamir")
            .map(|s| {
                let why = if s.disabled {
                    "is disabled"
                } else {
                    "holds no current wrapping of the root key"
                };
                format!("seal {:?} answers but {why}", s.name)
            })
            .collect();
        if !relies_on.is_empty() {
            return RestartSafety {
                safe: true,
                reason: format!(
                    "a restart now would unseal: {} answered within the last {within}s",
                    relies_on.join(", ")
                ),
                relies_on,
                checked_by: "last-probe".into(),
                within_seconds: within,
            };
        }
        let mut reason = if candidates == 0 {
            if st.shares.role == ShareRole::Unseal {
                format!(
                    "no auto seal wraps the current root key: a restart needs {} of the {} unseal keys",
                    st.shares.threshold, st.shares.shares
                )
            } else {
                "no enabled seal holds a current wrapping of the root key".to_string()
            }
        } else {
            format!(
                "no seal that wraps the current root key answered in the last {within}s: {}",
                down.join("; ")
            )
        };
        if !idle.is_empty() {
            reason.push_str(&format!(" ({})", idle.join("; ")));
        }
        no(reason)
    }

    /// `operator preflight`: a trial unwrap of the stored root key through the same seals, in the
    /// same order, as a restart would use. Nothing is kept: the unwrapped key is zeroized at once.
    pub async fn preflight(&self) -> RestartSafety {
        let within = self.restart_probe_bound().as_secs();
        let answer = |safe: bool, reason: String, relies_on: Vec<String>| RestartSafety {
            safe,
            reason,
            relies_on,
            checked_by: "trial-unwrap".into(),
            within_seconds: within,
        };
        let init = match &*self.state.read_recover() {
            State::Uninitialized => {
                return answer(false, NOT_INITIALIZED.into(), vec![]);
            }
            State::Sealed { init, .. } => init.clone(),
            State::Unsealed { init, .. } => Some(init.clone()),
        };
        let Some(init) = init else {
            return answer(false, "the init record could not be read".into(), vec![]);
        };
        let st = match self.root_state().await {
            Ok((st, _)) => st,
            Err(e) => {
                return answer(
                    false,
                    format!("a restart could not read the seal state: {e}"),
                    vec![],
                );
            }
        };
        match self.unwrap_root(&init, &st, Attempt::Automatic).await {
            Ok((root, by)) => {
                drop(root);
                answer(
                    true,
                    format!(
                        "a restart now would unseal: seal {:?} (member {}) unwrapped the stored root key just now",
                        by.seal, by.member
                    ),
                    vec![format!("{}/{}", by.seal, by.member)],
                )
            }
            Err(e) => answer(
                false,
                format!("a restart now would stay sealed: {e}"),
                vec![],
            ),
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

/// Why a restart of an uninitialized node would not unseal (both restart answers give it).
const NOT_INITIALIZED: &str = "not initialized: a restart would come back uninitialized";

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
