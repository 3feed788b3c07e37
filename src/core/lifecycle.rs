//! The lifecycle of the keys while unsealed: keyring rotation, root key rotation, rewrap under a
//! changed seal key, and catching up seals that were down when the root key was (re)wrapped.

use super::*;
use crate::locks::RwLockExt;

impl Core {
    /// A new root key: the OS CSPRNG mixed with an HSM's generator through HKDF, so that neither a
    /// weak host RNG nor a weak HSM RNG alone determines it. Without a reachable HSM (Shamir seal),
    /// the OS CSPRNG alone.
    pub(super) async fn new_root_key(&self) -> Result<LockedBytes, CoreError> {
        let mut hsm_random = None;
        for (_, seal) in self.enabled_autos() {
            if let Ok(r) = Self::blocking(seal, |s| s.random(KEY_LEN)).await {
                hsm_random = Some(Zeroizing::new(r));
                break;
            }
        }
        let os_random = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        let salt = hsm_random.unwrap_or_else(|| Zeroizing::new(vec![0u8; KEY_LEN]));
        let mut root = self.locked(&[0u8; KEY_LEN])?;
        crypto::hkdf_sha256(
            &salt,
            &os_random,
            b"sealkeeper root key v1",
            root.as_mut_slice(),
        )?;
        Ok(root)
    }

    /// Wraps `root` with every enabled auto seal that answers. Returns the wrappings and, for each
    /// seal that failed, its error.
    pub(super) async fn wrap_everywhere(
        &self,
        installation_id: &str,
        root: &LockedBytes,
        generation: u64,
        only: Option<&[String]>,
    ) -> (BTreeMap<String, SealWrapping>, Vec<(String, String)>) {
        let mut done = BTreeMap::new();
        let mut failed = Vec::new();
        let ctx = BlobContext {
            installation_id: installation_id.to_string(),
            purpose: ROOT_PURPOSE.into(),
        };
        for (entry, seal) in self.enabled_autos() {
            if only.is_some_and(|o| !o.contains(&entry.name)) {
                continue;
            }
            let plain = Zeroizing::new(root.as_slice().to_vec());
            let c = ctx.clone();
            let wrapped = Self::blocking(seal, move |s| {
                let blob = s.wrap(&c, &plain)?;
                let unreachable = s.verify_members(&c, &blob, &plain)?;
                Ok((blob, unreachable))
            })
            .await;
            match wrapped {
                Ok((blob, unreachable)) => {
                    for u in unreachable {
                        tracing::warn!(seal = %entry.name, "member could not check the new blob (it must hold the same key): {u}");
                    }
                    done.insert(entry.name.clone(), SealWrapping { generation, blob });
                }
                Err(e) => failed.push((entry.name.clone(), e.to_string())),
            }
        }
        (done, failed)
    }

    pub(super) fn record_rewrap(
        &self,
        operation: &str,
        done: &BTreeMap<String, SealWrapping>,
        failed: &[(String, String)],
    ) {
        let mut seals: Vec<RewrapEntry> = done
            .iter()
            .map(|(n, w)| RewrapEntry {
                seal: n.clone(),
                ok: true,
                key: Some(self.key_name(n, &w.blob)),
                error: None,
            })
            .collect();
        seals.extend(failed.iter().map(|(n, e)| RewrapEntry {
            seal: n.clone(),
            ok: false,
            key: None,
            error: Some(e.clone()),
        }));
        *self.rewrap.write_recover() = Some(RewrapReport {
            operation: operation.to_string(),
            is_running: false,
            processed: done.len() + failed.len(),
            succeeded: done.len(),
            failed: failed.len(),
            finished_unix: now_unix(),
            seals,
        });
    }

    /// Wraps the current root key with every enabled auto seal that lacks a current wrapping, and
    /// drops the wrappings of seals no longer configured. Runs after unseal and at each probe.
    pub async fn catch_up(&self) -> Result<Vec<String>, CoreError> {
        let _op = self.ops.lock().await;
        let Ok((init, keys)) = self.unsealed() else {
            return Ok(vec![]);
        };
        let (st, rev) = self.root_state().await?;
        if self.migration(&st).is_some() {
            return Ok(vec![]);
        }
        let missing: Vec<String> = self
            .enabled_autos()
            .filter(|(e, _)| !st.is_current(&e.name))
            .map(|(e, _)| e.name.clone())
            .collect();
        let gone: Vec<String> = st
            .wrappings
            .keys()
            .filter(|n| !self.seals.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        if missing.is_empty() && gone.is_empty() {
            return Ok(vec![]);
        }
        let root = keys.root();
        let (done, failed) = if missing.is_empty() {
            (BTreeMap::new(), vec![])
        } else {
            self.wrap_everywhere(&init.installation_id, &root, st.generation, Some(&missing))
                .await
        };
        if done.is_empty() && gone.is_empty() {
            return Ok(vec![]);
        }
        let mut next = st.clone();
        for n in &gone {
            next.wrappings.remove(n);
        }
        let wrapped: Vec<String> = done.keys().cloned().collect();
        next.wrappings.extend(done.clone());
        self.commit(&next, rev).await?;
        self.record_rewrap("catch-up", &done, &failed);
        for n in &wrapped {
            tracing::info!(seal = %n, "seal now holds a wrapping of the current root key");
        }
        for n in &gone {
            tracing::info!(seal = %n, "dropped the wrapping of a seal that is no longer configured");
        }
        self.emit(CoreEvent::CaughtUp {
            wrapped: wrapped.clone(),
            dropped: gone.clone(),
        });
        Ok(wrapped)
    }

    /// A new keyring term: new records use it, earlier terms still decrypt.
    pub async fn rotate(&self) -> Result<u32, CoreError> {
        let _op = self.ops.lock().await;
        let (init, keys) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let root = keys.root();
        let mut file = state::open_keyring(root.as_slice(), &init.installation_id, &st.keyring)
            .map_err(CoreError::StoredState)?;
        let term = file.terms.iter().map(|t| t.term).max().unwrap_or(0) + 1;
        let term_key = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        file.terms.push(KeyringTerm {
            term,
            key: B64.encode(&*term_key),
            created_unix: now_unix(),
        });
        let mut next = st.clone();
        next.keyring = state::seal_keyring(root.as_slice(), &init.installation_id, &file)?;
        let locked = Arc::new(self.locked(&term_key)?);
        fault::point("rotate:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rotate", e))?;
        fault::point("rotate:after-commit");
        keys.add_term(term, locked);
        tracing::info!(term, "keyring rotated; new records use the new term");
        self.emit(CoreEvent::Rotated { term });
        Ok(term)
    }

    pub(super) fn audit_error(&self, operation: &'static str, e: &CoreError) {
        self.emit(CoreEvent::OperationFailed {
            operation,
            error: e.to_string(),
        });
    }

    /// A new root key, wrapped by every seal that answers, the keyring re-encrypted under it.
    pub async fn rotate_root(&self) -> Result<RewrapReport, CoreError> {
        let _op = self.ops.lock().await;
        let (init, keys) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let id = init.installation_id.clone();
        let old_root = keys.root();
        let file = state::open_keyring(old_root.as_slice(), &id, &st.keyring)
            .map_err(CoreError::StoredState)?;
        let new_root = self.new_root_key().await?;
        let generation = st.generation + 1;
        let (done, failed) = self.wrap_everywhere(&id, &new_root, generation, None).await;
        let has_autos = self.enabled_autos().next().is_some();
        if has_autos && done.is_empty() {
            let e = nothing_wrapped("the new root key, so nothing was changed", &failed);
            self.audit_error("rotate-root", &e);
            return Err(e);
        }
        fault::point("rotate-root:after-wrap");
        let mut next = st.clone();
        next.generation = generation;
        next.root_check = state::root_check(new_root.as_slice(), &id);
        next.keyring = state::seal_keyring(new_root.as_slice(), &id, &file)?;
        next.wrappings.extend(done.clone());
        if let Some(w) = &st.shares.wrapping {
            let split_key = w
                .split_key_from_root(old_root.as_slice(), &id)
                .map_err(CoreError::StoredState)?;
            next.shares.wrapping = Some(state::wrap_with_shares_key(
                &split_key,
                new_root.as_slice(),
                &id,
                generation,
            )?);
        }
        fault::point("rotate-root:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rotate-root", e))?;
        fault::point("rotate-root:after-commit");
        keys.replace_root(new_root);
        self.record_rewrap("rotate-root", &done, &failed);
        for (n, e) in &failed {
            tracing::warn!(seal = %n, error = %e, "seal could not wrap the new root key; it is wrapped as soon as it answers");
        }
        tracing::info!(generation, "root key rotated");
        self.emit(CoreEvent::RootRotated {
            generation,
            wrapped: done.keys().cloned().collect(),
            pending: failed.iter().map(|(n, _)| n.clone()).collect(),
        });
        Ok(self.rewrap_report().unwrap_or_default())
    }

    /// Re-wraps the root key under each enabled auto seal's configured key (after a key_label
    /// change, with the old key still in the HSM).
    pub async fn rewrap(&self) -> Result<RewrapReport, CoreError> {
        let _op = self.ops.lock().await;
        let (init, keys) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let root = keys.root();
        let (done, failed) = self
            .wrap_everywhere(&init.installation_id, &root, st.generation, None)
            .await;
        self.record_rewrap("rewrap", &done, &failed);
        if done.is_empty() {
            let e = nothing_wrapped("the root key, so nothing was changed", &failed);
            self.audit_error("rewrap", &e);
            return Err(e);
        }
        let mut next = st.clone();
        next.wrappings.extend(done.clone());
        fault::point("rewrap:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rewrap", e))?;
        fault::point("rewrap:after-commit");
        let report = self.rewrap_report().unwrap_or_default();
        self.emit(CoreEvent::Rewrapped {
            wrapped: done
                .iter()
                .map(|(n, w)| format!("{n}={}", self.key_name(n, &w.blob)))
                .collect(),
            failed: failed.iter().map(|(n, _)| n.clone()).collect(),
        });
        Ok(report)
    }
}

/// The error of an operation that no seal could wrap for.
pub(super) fn nothing_wrapped(what: &str, failed: &[(String, String)]) -> CoreError {
    CoreError::Seals {
        message: format!(
            "no seal could wrap {what}: {}",
            failed
                .iter()
                .map(|(n, e)| named(n, e))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        permanent: false,
    }
}

/// One seal's failure in a list of several: prefixed with the seal's name unless the error
/// already starts with it.
pub(super) fn named(seal: &str, error: &dyn std::fmt::Display) -> String {
    let text = error.to_string();
    if text.starts_with(&format!("seal {seal:?}")) {
        text
    } else {
        format!("seal {seal:?}: {text}")
    }
}
