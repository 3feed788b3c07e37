//! Seal-set policy: the configured seals against the stored wrappings, and migration from one seal
//! to another with a quorum of the old seal's shares.

use super::types::NO_SEAL;
use super::*;

impl Core {
    /// The key that wrapped `blob`, as the seal `seal` names it.
    pub(super) fn key_name(&self, seal: &str, blob: &WrappedBlob) -> String {
        self.seals
            .iter()
            .find(|s| s.name == seal)
            .and_then(|s| s.auto())
            .map(|a| a.key_name(blob))
            .unwrap_or_else(|| blob.seal_type.clone())
    }

    /// The first enabled seal by priority (configuration validation guarantees one).
    pub(super) fn primary(&self) -> &SealEntry {
        self.seals
            .iter()
            .find(|s| !s.disabled)
            .or_else(|| self.seals.first())
            .unwrap_or(&NO_SEAL)
    }

    pub(super) fn enabled_autos(&self) -> impl Iterator<Item = (&SealEntry, &Arc<dyn Seal>)> {
        self.seals
            .iter()
            .filter(|s| !s.disabled)
            .filter_map(|s| s.auto().map(|a| (s, a)))
    }

    pub(super) fn shamir_enabled(&self) -> Option<&SealEntry> {
        self.seals
            .iter()
            .find(|s| !s.disabled && matches!(s.kind, SealKind::Shamir))
    }

    /// The seal being migrated from and the seal being migrated to, when a migration is pending:
    /// a disabled seal holds the root key and an enabled one does not.
    pub(super) fn migration<'a>(
        &'a self,
        st: &RootState,
    ) -> Option<(&'a SealEntry, &'a SealEntry)> {
        let holds = |s: &SealEntry| match s.kind {
            SealKind::Auto(_) => st.wrappings.contains_key(&s.name),
            SealKind::Shamir => {
                st.shares.role == ShareRole::Unseal
                    && st.shares.shamir_seal.as_deref() == Some(s.name.as_str())
                    && st.shares.wrapping.is_some()
            }
        };
        let old = self.seals.iter().find(|s| s.disabled && holds(s))?;
        let new = self.seals.iter().find(|s| !s.disabled && !holds(s))?;
        Some((old, new))
    }

    /// Checks the configured seals against the stored wrappings at start: at least one seal in
    /// common, and at most one seal added or removed.
    pub fn check_seal_config(&self) -> Result<(), String> {
        if !self.is_initialized() {
            return Ok(());
        }
        let Some(st) = self.stored_state() else {
            return Ok(()); // reported by the unseal attempt, with the node sealed
        };
        let mut stored: BTreeMap<String, String> = st
            .wrappings
            .iter()
            .map(|(n, w)| (n.clone(), w.blob.seal_type.clone()))
            .collect();
        if st.shares.role == ShareRole::Unseal
            && let Some(n) = &st.shares.shamir_seal
        {
            stored.insert(n.clone(), "shamir".into());
        }
        let fmt = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let stored_names: Vec<String> = stored.keys().cloned().collect();
        for s in &self.seals {
            if let Some(t) = stored.get(&s.name)
                && t != s.seal_type()
            {
                return Err(format!(
                    "seal {:?} is configured as type {}, but the stored wrapping of that name is by a {t} seal",
                    s.name,
                    s.seal_type()
                ));
            }
        }
        let common: Vec<String> = self
            .seals
            .iter()
            .filter(|s| stored.contains_key(&s.name))
            .map(|s| s.name.clone())
            .collect();
        if common.is_empty() {
            let configured: Vec<String> = self.seals.iter().map(|s| s.name.clone()).collect();
            return Err(format!(
                "none of the configured seals ({}) holds a wrapping of the root key, which is wrapped by: {}. \
                 Keep at least one of those seals in the configuration (with disabled = true to migrate away from it)",
                fmt(&configured),
                fmt(&stored_names)
            ));
        }
        let added: Vec<String> = self
            .seals
            .iter()
            .filter(|s| !stored.contains_key(&s.name) && !s.disabled)
            .map(|s| s.name.clone())
            .collect();
        let removed: Vec<String> = stored_names
            .iter()
            .filter(|n| !self.seals.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        if added.len() + removed.len() > 1 {
            return Err(format!(
                "only one seal may be added or removed at a time; this configuration adds {} and removes {} \
                 (the root key is wrapped by: {})",
                fmt(&added),
                fmt(&removed),
                fmt(&stored_names)
            ));
        }
        Ok(())
    }

    pub(super) async fn migrate(
        &self,
        init: InitRecord,
        st: RootState,
        rev: Revision,
        split_key: &[u8],
    ) -> Result<(), CoreError> {
        let Some((old, new)) = self.migration(&st) else {
            return Err(CoreError::BadRequest("no seal migration is pending".into()));
        };
        let id = init.installation_id.clone();
        let fail = |e: CoreError| {
            self.emit(CoreEvent::MigrationFailed {
                from: old.name.clone(),
                to: new.name.clone(),
                error: e.to_string(),
            });
            e
        };
        let root = match &old.kind {
            SealKind::Shamir => {
                let w = st.shares.wrapping.as_ref().ok_or_else(|| {
                    CoreError::StoredState("the root key is not wrapped by the unseal keys".into())
                })?;
                Zeroizing::new(
                    w.root_from_split_key(split_key, &id)
                        .map_err(CoreError::StoredState)?
                        .to_vec(),
                )
            }
            SealKind::Auto(seal) => {
                let w = st.wrappings.get(&old.name).ok_or_else(|| {
                    CoreError::StoredState(format!("seal {} holds no wrapping", old.name))
                })?;
                let blob = w.blob.clone();
                let ctx = BlobContext {
                    installation_id: id.clone(),
                    purpose: ROOT_PURPOSE.into(),
                };
                let u = Self::blocking(seal, move |s| s.unwrap(&ctx, &blob, Attempt::Operator))
                    .await
                    .map_err(|e| {
                        fail(CoreError::Seals {
                            message: format!(
                                "the old seal {} could not unwrap the root key, so the migration cannot run \
                                 (both seals must be reachable): {e}",
                                old.name
                            ),
                            permanent: false,
                        })
                    })?;
                u.plaintext
            }
        };
        if !state::root_matches(&root, &id, &st.root_check) {
            return Err(fail(CoreError::StoredState(format!(
                "the old seal {} does not hold the current root key",
                old.name
            ))));
        }
        let root = self.locked(&root)?;
        let mut next = st.clone();
        next.wrappings.remove(&old.name);
        match &new.kind {
            SealKind::Auto(_) => {
                let (mut done, failed) = self
                    .wrap_everywhere(
                        &id,
                        &root,
                        st.generation,
                        Some(std::slice::from_ref(&new.name)),
                    )
                    .await;
                let Some(w) = done.remove(&new.name) else {
                    let why = failed
                        .first()
                        .map(|(_, e)| e.clone())
                        .unwrap_or_else(|| "it did not answer".into());
                    return Err(fail(CoreError::Seals {
                        message: format!(
                            "the new seal {} could not wrap the root key, so the migration cannot run \
                             (both seals must be reachable): {why}",
                            new.name
                        ),
                        permanent: false,
                    }));
                };
                next.wrappings.insert(new.name.clone(), w);
                next.shares.role = ShareRole::Recovery;
                next.shares.shamir_seal = None;
                next.shares.wrapping = if new.fallback {
                    Some(state::wrap_with_shares_key(
                        split_key,
                        root.as_slice(),
                        &id,
                        st.generation,
                    )?)
                } else {
                    None
                };
            }
            SealKind::Shamir => {
                next.shares.role = ShareRole::Unseal;
                next.shares.shamir_seal = Some(new.name.clone());
                next.shares.wrapping = Some(state::wrap_with_shares_key(
                    split_key,
                    root.as_slice(),
                    &id,
                    st.generation,
                )?);
            }
        }
        fault::point("migrate:before-commit");
        self.commit(&next, rev).await.map_err(fail)?;
        fault::point("migrate:after-commit");
        let by = next
            .wrappings
            .get(&new.name)
            .map(|w| UnsealedBy::new(&new.name, &w.blob.wrapped_by))
            .unwrap_or_else(|| UnsealedBy::new(&new.name, "unseal-keys"));
        self.activate(init, &next, root, by).await?;
        tracing::info!(from = %old.name, to = %new.name, shares = next.shares.role.noun(), "seal migrated; the disabled seal can be removed from the configuration");
        self.emit(CoreEvent::Migrated {
            from: old.name.clone(),
            from_type: old.seal_type().to_string(),
            to: new.name.clone(),
            to_type: new.seal_type().to_string(),
            share_role: next.shares.role.noun(),
        });
        Ok(())
    }
}
