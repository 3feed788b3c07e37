//! Init, once: a new root key wrapped by every enabled seal that answers, the keyring under it, the
//! shares handed out, and the seal state and init record stored in one transaction.

use super::*;
use crate::locks::RwLockExt;

impl Core {
    /// Initializes: a new root key wrapped by every enabled seal, a keyring, and the shares
    /// (recovery keys for auto seals, unseal keys for a Shamir seal) returned once.
    pub async fn init(&self, shares: u32, threshold: u32) -> Result<InitResponse, CoreError> {
        let _op = self.ops.lock().await;
        // A store shared with other nodes may have been initialized by one of them.
        let _ = self.refresh_init_locked().await;
        if self.is_initialized() {
            return Err(CoreError::AlreadyInitialized);
        }
        recovery::check_parameters(shares, threshold)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        self.self_tests_passed().await?;
        let started = Instant::now();
        let installation_id = hex::encode(crypto::random_vec(16)?);
        let root = self.new_root_key().await?;

        let shamir = self.shamir_enabled().map(|s| s.name.clone());
        let (wrappings, failed) = self.wrap_everywhere(&installation_id, &root, 1, None).await;
        if shamir.is_none() && wrappings.is_empty() {
            return Err(nothing_wrapped("the root key", &failed));
        }
        let mut warnings: Vec<String> = failed
            .iter()
            .map(|(n, e)| {
                format!("seal {n} could not wrap the root key (it is wrapped as soon as it answers): {e}")
            })
            .collect();
        fault::point("init:after-wrap");

        let term_key = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        let keyring = KeyringFile {
            format: 1,
            terms: vec![KeyringTerm {
                term: 1,
                key: B64.encode(&*term_key),
                created_unix: now_unix(),
            }],
        };

        // The split key: the Shamir seal's key-encryption key, or the recovery key.
        let split_key = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        let split = recovery::split(&split_key, shares, threshold, &installation_id)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        let role = if shamir.is_some() {
            ShareRole::Unseal
        } else {
            ShareRole::Recovery
        };
        let fallback = self.enabled_autos().any(|(e, _)| e.fallback);
        let shares_wrapping = if shamir.is_some() || fallback {
            Some(state::wrap_with_shares_key(
                &split_key,
                root.as_slice(),
                &installation_id,
                1,
            )?)
        } else {
            None
        };
        if fallback {
            warnings.push(
                "recovery_keys_fallback is on: a quorum of these recovery keys can unseal this installation \
                 when every HSM is unreachable; guard them as you would the root key"
                    .into(),
            );
        }
        let st = RootState {
            format: ROOT_STATE_FORMAT,
            generation: 1,
            root_check: state::root_check(root.as_slice(), &installation_id),
            keyring: state::seal_keyring(root.as_slice(), &installation_id, &keyring)?,
            shares: SharesState {
                role,
                shares,
                threshold,
                verifier: recovery::verifier(&split_key, &installation_id),
                shamir_seal: shamir.clone(),
                wrapping: shares_wrapping,
                pending: None,
            },
            wrappings,
        };
        let init = InitRecord {
            format: INIT_FORMAT,
            installation_id: installation_id.clone(),
            created_unix: now_unix(),
        };

        // Persist the seal state and the init record in one transaction: a crash or a failed write
        // leaves the node uninitialized with nothing stored, and a new init can run.
        fault::point("init:before-root-state");
        let init_json =
            serde_json::to_vec_pretty(&init).map_err(|e| CoreError::Internal(e.to_string()))?;
        fault::point("init:before-init-record");
        fault::hold("init:before-init-record");
        let stored = self
            .storage
            .txn(vec![
                Op::put(ROOT_STATE_KEY, st.to_json(), Expect::Any),
                Op::put(INIT_KEY, init_json, Expect::Absent),
            ])
            .await;
        if let Err(StorageError::Conflict { .. }) = stored {
            // Another node sharing the store initialized it first: its root key stands, this one
            // is dropped, and this node unseals with the stored state.
            tracing::info!("init: another node initialized the shared store first");
            let _ = self.refresh_init_locked().await;
            return Err(CoreError::AlreadyInitialized);
        }
        stored?;
        *self.stored.write_recover() = Some(st.clone());
        fault::point("init:after-init-record");

        let keys = Arc::new(UnsealedKeys::from_shared(
            root,
            vec![(1, Arc::new(self.locked(&term_key)?))],
        ));
        let (transit, audit_keys) = self.open_keyed_state(&keys).await?;
        // The seal an unseal would use now: the first by priority that wrapped it.
        let by = self
            .enabled_autos()
            .find_map(|(e, _)| st.wrappings.get(&e.name).map(|w| (&e.name, w)))
            .map(|(n, w)| UnsealedBy::new(n, &w.blob.wrapped_by))
            .or_else(|| shamir.as_ref().map(|s| UnsealedBy::new(s, "unseal-keys")))
            .unwrap_or_else(|| UnsealedBy::new("", ""));
        *self.state.write_recover() = State::Unsealed {
            init,
            keys,
            transit,
            audit_keys,
            by: by.clone(),
            since_unix: now_unix(),
        };
        *self.last_error.write_recover() = None;
        let wrapped_by: Vec<String> = st.wrappings.keys().cloned().collect();
        tracing::info!(
            seal_type = self.seal_type(),
            seals = %wrapped_by.join(","),
            shares = shares,
            threshold = threshold,
            role = role.noun(),
            duration_ms = started.elapsed().as_millis() as u64,
            "initialized; root key wrapped, shares handed out"
        );
        self.emit(CoreEvent::Initialized {
            seals: wrapped_by,
            member: by.member.clone(),
            share_role: role.noun(),
            shares,
            threshold,
            fallback,
        });
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let hex: Vec<String> = split.iter().map(|s| s.to_hex()).collect();
        let b64: Vec<String> = split.iter().map(|s| s.to_base64()).collect();
        Ok(match role {
            ShareRole::Unseal => InitResponse {
                keys: hex,
                keys_base64: b64,
                recovery_keys: vec![],
                recovery_keys_base64: vec![],
                recovery_shares: 0,
                recovery_threshold: 0,
                warnings,
            },
            ShareRole::Recovery => InitResponse {
                keys: vec![],
                keys_base64: vec![],
                recovery_keys: hex,
                recovery_keys_base64: b64,
                recovery_shares: shares,
                recovery_threshold: threshold,
                warnings,
            },
        })
    }
}
