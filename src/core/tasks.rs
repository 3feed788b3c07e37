//! The background tasks: the auto-unseal loop (capped exponential backoff with jitter) and the
//! health probe with its catch-up, and the self-test gates that decide whether the node may serve.

use super::*;
use crate::locks::RwLockExt;

impl Core {
    pub(super) async fn hsm_self_test(
        &self,
        seal: &Arc<dyn Seal>,
        member: &str,
    ) -> Result<(), CoreError> {
        let s = seal.clone();
        let results = tokio::task::spawn_blocking(move || s.self_test())
            .await
            .map_err(|e| CoreError::Internal(format!("self-test task failed: {e}")))?;
        *self.hsm_self_tests.write_recover() = results.clone();
        for r in &results {
            self.emit(CoreEvent::HsmSelfTest {
                member: r.member.clone(),
                ok: r.ok,
                error: r.error.clone(),
            });
        }
        match results.iter().find(|r| r.member == member) {
            Some(r) if !r.ok => Err(CoreError::StoredState(format!(
                "fips_mode: the pairwise self-test failed on {}, which unwrapped the root key: {}",
                r.member,
                r.error.clone().unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }

    /// Waits for the start-up known-answer tests; nothing is unsealed or initialized before they
    /// passed.
    pub(super) async fn self_tests_passed(&self) -> Result<(), CoreError> {
        let mut rx = self.opts.self_tests.clone();
        let results = rx
            .wait_for(|r| r.is_some())
            .await
            .map_err(|_| CoreError::Internal("the self-tests did not run".into()))?
            .clone()
            .unwrap_or_default();
        let failed: Vec<&str> = results
            .iter()
            .filter(|t| !t.ok)
            .map(|t| t.name.as_str())
            .collect();
        if results.is_empty() || !failed.is_empty() {
            return Err(CoreError::Internal(format!(
                "cryptographic self-test failed ({}): refusing to serve",
                failed.join(", ")
            )));
        }
        Ok(())
    }

    pub(super) fn wants_auto_unseal(&self) -> bool {
        matches!(
            *self.state.read_recover(),
            State::Sealed {
                init: Some(_),
                manual: false
            }
        )
    }

    /// The auto-unseal loop: while sealed (and not sealed by an operator), try to unseal with capped
    /// exponential backoff and jitter.
    pub async fn run_auto_unseal(self: Arc<Self>) {
        let mut delay = self.opts.retry_initial;
        loop {
            if self.init_unread.load(std::sync::atomic::Ordering::Relaxed) {
                // The store did not answer at start: read the init record with the same backoff.
                if let Err(e) = self.refresh_init().await {
                    let wait = jitter(delay);
                    tracing::info!(error = %e, retry_in_ms = wait.as_millis() as u64, "the store is unreachable; still sealed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.wake.notified() => {}
                    }
                    delay = (delay * 2).min(self.opts.retry_max);
                }
                continue;
            }
            if !self.wants_auto_unseal() {
                delay = self.opts.retry_initial;
                self.wake.notified().await;
                continue;
            }
            match self.unseal(Attempt::Automatic).await {
                Ok(()) => delay = self.opts.retry_initial,
                Err(CoreError::NeedsShares(_)) => {
                    self.wake.notified().await;
                }
                Err(e) if e.is_permanent() => {
                    tracing::error!(error = %e, "auto-unseal stopped: this needs an operator (fix it, then run `sealkeeper operator unseal`)");
                    self.wake.notified().await;
                }
                Err(_) => {
                    let wait = jitter(delay);
                    tracing::info!(
                        retry_in_ms = wait.as_millis() as u64,
                        "still sealed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.wake.notified() => {}
                    }
                    delay = (delay * 2).min(self.opts.retry_max);
                }
            }
        }
    }

    /// Probes each HSM member at the configured interval, so status stays current while unsealed.
    pub async fn run_probe(self: Arc<Self>) {
        // The first probe runs a moment after start, so that it does not compete with the unseal
        // for the members, and still shows every member's health soon after a restart.
        let first = self
            .opts
            .probe_interval
            .min(std::time::Duration::from_secs(1));
        let start = tokio::time::Instant::now() + first;
        let mut interval = tokio::time::interval_at(start, self.opts.probe_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if !self.is_initialized() {
                // Another node sharing the store may have initialized it (the change feed is the
                // fast path; this catches a feed that missed it).
                let _ = self.refresh_init().await;
            }
            // The members are probed before init too, so that a missing token or a wrong PIN
            // shows in status at start rather than at `operator init`.
            if !self.is_sealed()
                && self.root_behind.load(std::sync::atomic::Ordering::Relaxed)
                && let Err(e) = self.follow_root_state().await
            {
                tracing::warn!(error = %e, "could not apply the seal state another node changed");
            }
            for (_, seal) in self.enabled_autos() {
                let seal = seal.clone();
                let _ = tokio::task::spawn_blocking(move || seal.probe()).await;
            }
            self.probe_rounds
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A seal that was down when the root key was (re)wrapped is wrapped once it answers.
            if !self.is_sealed()
                && let Ok((st, _)) = self.root_state().await
                && self
                    .enabled_autos()
                    .any(|(e, s)| s.status().healthy && !st.is_current(&e.name))
                && let Err(e) = self.catch_up().await
            {
                tracing::warn!(error = %e, "could not wrap the root key with a returning seal");
            }
        }
    }
}

/// A random wait between half and all of `d`.
pub(super) fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = crypto::fill_random(&mut b);
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    d.mul_f64(0.5 + 0.5 * frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_full() {
        for _ in 0..200 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(5) && j <= Duration::from_secs(10),
                "{j:?}"
            );
        }
    }
}
