//! Share ceremonies: unseal keys (and recovery keys for the break-glass fallback and migration)
//! submitted one at a time, and the rekey of either set with its verification.

use super::*;
use crate::locks::MutexExt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Purpose {
    Unseal,
    Fallback,
    Migrate,
}

/// Shares submitted one at a time towards an unseal, a migration or a rekey.
pub(super) struct Progress<P> {
    pub(super) purpose: P,
    pub(super) nonce: String,
    pub(super) shares: Vec<Share>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct RekeyTarget {
    pub(super) shares: u32,
    pub(super) threshold: u32,
}

/// The share ceremonies of a node: unseal keys (or recovery keys for the fallback or a migration)
/// being submitted, a rekey collecting the current shares, and the verification of a rekey's new
/// shares. Sealing, and a finished or cancelled ceremony, clear them here.
#[derive(Default)]
pub(super) struct Ceremonies {
    pub(super) unseal: Option<Progress<Purpose>>,
    pub(super) rekey: Option<Progress<RekeyTarget>>,
    pub(super) verify: Vec<Share>,
}

impl Ceremonies {
    /// Forgets every share submitted so far.
    pub(super) fn clear(&mut self) {
        *self = Ceremonies::default();
    }
}

impl Core {
    pub(super) fn ceremonies(&self) -> std::sync::MutexGuard<'_, Ceremonies> {
        self.ceremonies.lock_recover()
    }

    /// Takes one share towards a Shamir unseal, a break-glass recovery-key unseal or a seal
    /// migration. `reset` clears the progress.
    pub async fn submit_unseal_key(
        &self,
        key: Option<&str>,
        reset: bool,
        migrate: bool,
    ) -> Result<(), CoreError> {
        let _op = self.ops.lock().await;
        if reset {
            self.ceremonies().unseal = None;
            if key.is_none() {
                return Ok(());
            }
        }
        let Some(key) = key else {
            return Err(CoreError::BadRequest("no key given".into()));
        };
        if !self.is_initialized() {
            return Err(CoreError::NotInitialized);
        }
        let (st, rev) = self.root_state().await?;
        let purpose = if migrate {
            if self.migration(&st).is_none() {
                return Err(CoreError::BadRequest(
                    "no seal migration is pending: the configuration has no disabled seal holding the root key \
                     next to an enabled seal that does not"
                        .into(),
                ));
            }
            Purpose::Migrate
        } else if let Some((old, new)) = self.migration(&st) {
            return Err(CoreError::BadRequest(format!(
                "a seal migration from {} to {} is pending: submit the {} with --migrate",
                old.name,
                new.name,
                st.shares.role.noun()
            )));
        } else if self.shamir_enabled().is_some() {
            Purpose::Unseal
        } else if self.enabled_autos().any(|(e, _)| e.fallback) {
            if st.shares.wrapping.is_none() {
                return Err(CoreError::BadRequest(
                    "recovery_keys_fallback was not on when this installation was initialized: the recovery keys \
                     cannot unseal it"
                        .into(),
                ));
            }
            if let Some((e, _)) = self.enabled_autos().find(|(_, s)| s.status().healthy) {
                return Err(CoreError::BadRequest(format!(
                    "seal {} is reachable: recovery keys unseal only when every auto seal is unreachable \
                     (run `sealkeeper operator unseal` without a key)",
                    e.name
                )));
            }
            Purpose::Fallback
        } else {
            return Err(CoreError::BadRequest(
                "this node unseals itself from its HSM; unseal keys are not used and recovery keys never unseal. \
                 To run the auto-unseal now: `sealkeeper operator unseal` without --key (over the API: \
                 PUT /v1/sys/unseal with an empty body)"
                    .into(),
            ));
        };
        let Some(init) = self.sealed_init(Attempt::Operator)? else {
            return Err(CoreError::BadRequest(
                "sealkeeper is already unsealed".into(),
            ));
        };
        let role = st.shares.role.noun();
        let share = parse_share(
            key,
            &init.installation_id,
            st.shares.threshold,
            &format!("this installation's {role}"),
        )?;
        let ready = {
            let mut ceremonies = self.ceremonies();
            let p = &mut ceremonies.unseal;
            if p.as_ref().is_some_and(|p| p.purpose != purpose) {
                *p = None;
            }
            let prog = p.get_or_insert_with(|| Progress {
                purpose,
                nonce: crypto::random_id(),
                shares: vec![],
            });
            let Some(ready) = collect_share(&mut prog.shares, share, st.shares.threshold)? else {
                return Ok(());
            };
            *p = None;
            ready
        };
        let split_key = recovery::combine(&ready)
            .map_err(|e| CoreError::BadRequest(format!("{e}; progress was reset")))?;
        if recovery::verify(&split_key, &init.installation_id, &st.shares.verifier).is_err() {
            self.emit(CoreEvent::SharesRejected {
                error: format!("the {role} do not reconstruct this installation's key"),
            });
            return Err(CoreError::BadRequest(format!(
                "the submitted {role} do not reconstruct this installation's key; progress was reset"
            )));
        }
        match purpose {
            Purpose::Unseal | Purpose::Fallback => {
                let w = st.shares.wrapping.as_ref().ok_or_else(|| {
                    CoreError::StoredState("the root key is not wrapped by the shares".into())
                })?;
                let root = w
                    .root_from_split_key(&split_key, &init.installation_id)
                    .map_err(CoreError::StoredState)?;
                let root = self.locked(&root)?;
                let by = if purpose == Purpose::Unseal {
                    UnsealedBy::new(
                        self.shamir_enabled().map_or("", |s| s.name.as_str()),
                        "unseal-keys",
                    )
                } else {
                    UnsealedBy::new("recovery-keys", "fallback")
                };
                self.activate(init, &st, root, by.clone()).await?;
                if purpose == Purpose::Fallback {
                    tracing::warn!(
                        "unsealed with recovery keys (recovery_keys_fallback): every auto seal was unreachable"
                    );
                }
                self.emit(CoreEvent::UnsealedWithShares {
                    member: by.to_string(),
                    method: if purpose == Purpose::Unseal {
                        "unseal-keys"
                    } else {
                        "recovery-keys-fallback"
                    },
                });
                Ok(())
            }
            Purpose::Migrate => self.migrate(init, st, rev, &split_key).await,
        }
    }

    pub(super) fn rekey_target_name(&self) -> &'static str {
        if self.shamir_enabled().is_some() {
            "unseal"
        } else {
            "recovery"
        }
    }

    pub fn rekey_status(&self) -> RekeyStatus {
        let stored = self.stored_state();
        let ceremonies = self.ceremonies();
        let p = &ceremonies.rekey;
        RekeyStatus {
            started: p.is_some(),
            nonce: p.as_ref().map(|p| p.nonce.clone()).unwrap_or_default(),
            t: stored.as_ref().map(|s| s.shares.threshold).unwrap_or(0),
            n: stored.as_ref().map(|s| s.shares.shares).unwrap_or(0),
            progress: p.as_ref().map(|p| p.shares.len()).unwrap_or(0),
            required: stored.as_ref().map(|s| s.shares.threshold).unwrap_or(0),
            new_shares: p.as_ref().map(|p| p.purpose.shares).unwrap_or(0),
            new_threshold: p.as_ref().map(|p| p.purpose.threshold).unwrap_or(0),
            complete: false,
            keys: vec![],
            keys_base64: vec![],
            target: self.rekey_target_name().into(),
            verification_required: stored.as_ref().is_some_and(|s| s.shares.pending.is_some()),
            verification_nonce: stored
                .as_ref()
                .and_then(|s| s.shares.pending.as_ref().map(|p| p.nonce.clone()))
                .unwrap_or_default(),
            verification_progress: ceremonies.verify.len(),
            verified: false,
        }
    }

    /// Starts a rekey of the shares (recovery keys, or a Shamir seal's unseal keys).
    pub async fn rekey_init(
        &self,
        target: &str,
        shares: u32,
        threshold: u32,
    ) -> Result<RekeyStatus, CoreError> {
        let _op = self.ops.lock().await;
        self.unsealed()?;
        if target != self.rekey_target_name() {
            return Err(CoreError::BadRequest(format!(
                "rekey target {target:?} does not apply: this installation's shares are {} (target {:?})",
                if self.shamir_enabled().is_some() {
                    "unseal keys"
                } else {
                    "recovery keys"
                },
                self.rekey_target_name()
            )));
        }
        recovery::check_parameters(shares, threshold)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        if self.root_state().await?.0.shares.pending.is_some() {
            return Err(CoreError::BadRequest(
                "new shares from an earlier rekey wait for verification (`operator rekey --verify`); \
                 verify them or cancel (`operator rekey --cancel`) first"
                    .into(),
            ));
        }
        {
            let mut ceremonies = self.ceremonies();
            let p = &mut ceremonies.rekey;
            if p.is_some() {
                return Err(CoreError::BadRequest(
                    "a rekey is already in progress; cancel it first (`operator rekey --cancel`)"
                        .into(),
                ));
            }
            *p = Some(Progress {
                purpose: RekeyTarget { shares, threshold },
                nonce: crypto::random_id(),
                shares: vec![],
            });
        }
        self.emit(CoreEvent::RekeyStarted {
            target: target.to_string(),
            shares,
            threshold,
        });
        Ok(self.rekey_status())
    }

    /// Cancels the rekey in progress, and discards new shares that wait for verification (the
    /// current shares stand).
    pub async fn rekey_cancel(&self) -> Result<(), CoreError> {
        let _op = self.ops.lock().await;
        self.ceremonies().rekey = None;
        self.ceremonies().verify.clear();
        if self.is_initialized() {
            let (st, rev) = self.root_state().await?;
            if st.shares.pending.is_some() {
                let mut next = st.clone();
                next.shares.pending = None;
                self.commit(&next, rev).await?;
            }
        }
        self.emit(CoreEvent::RekeyCancelled);
        Ok(())
    }

    /// Takes one current share towards the rekey started with `nonce`; returns the new shares once
    /// the quorum is complete.
    pub async fn rekey_update(&self, key: &str, nonce: &str) -> Result<RekeyStatus, CoreError> {
        let _op = self.ops.lock().await;
        let (init, _) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let id = init.installation_id.clone();
        let share = parse_share(
            key,
            &id,
            st.shares.threshold,
            &format!("the current {}", st.shares.role.noun()),
        )?;
        let (target, ready) = {
            let mut ceremonies = self.ceremonies();
            let p = &mut ceremonies.rekey;
            let Some(prog) = p.as_mut() else {
                return Err(CoreError::BadRequest(
                    "no rekey is in progress; start one with `operator rekey --init`".into(),
                ));
            };
            if prog.nonce != nonce {
                return Err(CoreError::BadRequest(format!(
                    "nonce {nonce:?} does not match the rekey in progress"
                )));
            }
            let Some(ready) = collect_share(&mut prog.shares, share, st.shares.threshold)? else {
                drop(ceremonies);
                return Ok(self.rekey_status());
            };
            (prog.purpose, ready)
        };
        let old_key = recovery::combine(&ready).map_err(|e| {
            CoreError::BadRequest(format!("{e}; the submitted keys were discarded"))
        })?;
        if recovery::verify(&old_key, &id, &st.shares.verifier).is_err() {
            self.audit_error(
                "rekey",
                &CoreError::BadRequest(
                    "the submitted keys do not reconstruct the current key".into(),
                ),
            );
            return Err(CoreError::BadRequest(format!(
                "the submitted {} do not reconstruct this installation's key; the submitted keys were discarded",
                st.shares.role.noun()
            )));
        }
        let new_key = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        let split = recovery::split(&new_key, target.shares, target.threshold, &id)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        let mut next = st.clone();
        next.shares.pending = Some(state::PendingShares {
            nonce: nonce.to_string(),
            shares: target.shares,
            threshold: target.threshold,
            verifier: recovery::verifier(&new_key, &id),
        });
        fault::point("rekey:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rekey", e))?;
        fault::point("rekey:after-commit");
        self.ceremonies().rekey = None;
        self.ceremonies().verify.clear();
        self.emit(CoreEvent::Rekeyed {
            target: self.rekey_target_name(),
            shares: target.shares,
            threshold: target.threshold,
        });
        tracing::info!(
            shares = target.shares,
            threshold = target.threshold,
            "rekey: new shares handed out; they take effect once a quorum of them is verified"
        );
        Ok(RekeyStatus {
            started: false,
            nonce: nonce.to_string(),
            t: st.shares.threshold,
            n: st.shares.shares,
            progress: 0,
            required: target.threshold,
            new_shares: target.shares,
            new_threshold: target.threshold,
            complete: true,
            keys: split.iter().map(|s| s.to_hex()).collect(),
            keys_base64: split.iter().map(|s| s.to_base64()).collect(),
            target: self.rekey_target_name().into(),
            verification_required: true,
            verification_nonce: nonce.to_string(),
            verification_progress: 0,
            verified: false,
        })
    }

    /// Takes one of the new shares of a rekey; once a quorum of them reconstructs the new key, the
    /// new shares replace the current ones.
    pub async fn rekey_verify(&self, key: &str, nonce: &str) -> Result<RekeyStatus, CoreError> {
        let _op = self.ops.lock().await;
        let (init, keys) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let id = init.installation_id.clone();
        let Some(pending) = st.shares.pending.clone() else {
            return Err(CoreError::BadRequest(
                "no new shares wait for verification".into(),
            ));
        };
        if pending.nonce != nonce {
            return Err(CoreError::BadRequest(format!(
                "nonce {nonce:?} does not match the rekey waiting for verification"
            )));
        }
        let share = parse_share(key, &id, pending.threshold, "the new shares")?;
        let ready = {
            let mut ceremonies = self.ceremonies();
            let p = &mut ceremonies.verify;
            let Some(ready) = collect_share(p, share, pending.threshold)? else {
                drop(ceremonies);
                return Ok(self.rekey_status());
            };
            ready
        };
        let new_key = recovery::combine(&ready).map_err(|e| {
            CoreError::BadRequest(format!("{e}; the submitted keys were discarded"))
        })?;
        if recovery::verify(&new_key, &id, &pending.verifier).is_err() {
            return Err(CoreError::BadRequest(
                "the submitted keys are not the new shares of this rekey; they were discarded"
                    .into(),
            ));
        }
        let mut next = st.clone();
        next.shares.shares = pending.shares;
        next.shares.threshold = pending.threshold;
        next.shares.verifier = pending.verifier.clone();
        next.shares.pending = None;
        if st.shares.wrapping.is_some() {
            let root = keys.root();
            next.shares.wrapping = Some(state::wrap_with_shares_key(
                &new_key,
                root.as_slice(),
                &id,
                st.generation,
            )?);
        }
        fault::point("rekey-verify:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rekey-verify", e))?;
        fault::point("rekey-verify:after-commit");
        self.emit(CoreEvent::RekeyVerified {
            shares: pending.shares,
            threshold: pending.threshold,
        });
        tracing::info!("rekey verified: the new shares replace the old ones");
        let mut status = self.rekey_status();
        status.verified = true;
        status.t = pending.threshold;
        status.n = pending.shares;
        Ok(status)
    }
}

/// Parses a submitted share and checks that it belongs to a split with `threshold` (`what` names
/// those shares in the error).
pub(super) fn parse_share(
    key: &str,
    installation_id: &str,
    threshold: u32,
    what: &str,
) -> Result<Share, CoreError> {
    let share = Share::parse(key, installation_id)
        .map_err(|e| CoreError::BadRequest(format!("key rejected (it does not count): {e}")))?;
    if u32::from(share.threshold()) != threshold {
        return Err(CoreError::BadRequest(format!(
            "key rejected (it does not count): it belongs to a split with threshold {}, but {what} \
             have threshold {threshold}",
            share.threshold()
        )));
    }
    Ok(share)
}

/// Adds `share` to `collected` (a share given twice does not count twice); returns the shares,
/// leaving `collected` empty, once `threshold` of them are in.
pub(super) fn collect_share(
    collected: &mut Vec<Share>,
    share: Share,
    threshold: u32,
) -> Result<Option<Vec<Share>>, CoreError> {
    if collected.iter().any(|s| s.index() == share.index()) {
        return Err(CoreError::BadRequest(
            "this key was already submitted; it does not count twice".into(),
        ));
    }
    collected.push(share);
    if collected.len() < threshold as usize {
        return Ok(None);
    }
    Ok(Some(std::mem::take(collected)))
}
