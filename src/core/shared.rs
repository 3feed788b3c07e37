//! Following a store that other nodes share (etcd): the init record another node wrote, the seal
//! state another node changed (a new keyring term, a new root key), and a store that could not be
//! read at start. On a store of this node alone (the file store) the same code sees only this
//! node's own changes, which it already has, and does nothing.

use super::*;
use crate::locks::RwLockExt;
use crate::storage::WatchEvent;
use std::sync::atomic::Ordering;

impl Core {
    /// Reads the init record again while this node has none: the store was unreachable at start,
    /// or another node initialized the shared store since. Returns whether the node is now
    /// initialized (and the auto-unseal loop woken).
    pub(super) async fn refresh_init(&self) -> Result<bool, CoreError> {
        let _op = self.ops.lock().await;
        self.refresh_init_locked().await
    }

    /// [`Core::refresh_init`], for a caller that holds `ops`.
    pub(super) async fn refresh_init_locked(&self) -> Result<bool, CoreError> {
        let wanted = match &*self.state.read_recover() {
            State::Uninitialized => true,
            State::Sealed { init: None, .. } => self.init_unread.load(Ordering::Relaxed),
            _ => false,
        };
        if !wanted {
            return Ok(false);
        }
        let read = match self.storage.get(INIT_KEY).await {
            Err(e @ StorageError::Unavailable { .. }) => {
                *self.last_error.write_recover() = Some((e.to_string(), now_unix()));
                return Err(e.into());
            }
            read => read,
        };
        self.init_unread.store(false, Ordering::Relaxed);
        let (state, error) = state_from_init(read);
        let initialized = !matches!(state, State::Uninitialized);
        {
            let mut current = self.state.write_recover();
            if matches!(
                *current,
                State::Uninitialized | State::Sealed { init: None, .. }
            ) {
                *current = state;
            }
        }
        *self.last_error.write_recover() = error;
        if initialized {
            tracing::info!("the store holds an init record: this node is initialized and unseals");
            let _ = self.root_state().await;
            self.wake.notify_one();
        }
        Ok(initialized)
    }

    /// Applies a seal state that another node changed, while unsealed: keyring terms this node
    /// does not hold are opened and added (and the transit records re-read, so that records
    /// under a new term are applied), and a new root key is unwrapped through this node's own
    /// seals. Nothing changes on failure (the node keeps serving); the next probe round retries.
    pub(super) async fn follow_root_state(&self) -> Result<(), CoreError> {
        let _op = self.ops.lock().await;
        let Ok((init, keys)) = self.unsealed() else {
            // Sealed: the next unseal reads the state afresh. Refresh what status shows.
            let _ = self.root_state().await;
            return Ok(());
        };
        let result = async {
            let (st, _) = self.root_state().await?;
            let id = &init.installation_id;
            if !state::root_matches(keys.root().as_slice(), id, &st.root_check) {
                let (root, by) = self.unwrap_root(&init, &st, Attempt::Automatic).await?;
                keys.replace_root(root);
                tracing::info!(seal = %by.seal, member = %by.member, generation = st.generation,
                    "the root key was rotated by another node; unwrapped the new one");
            }
            let known = keys.terms();
            let mut added = Vec::new();
            for (term, key) in self.keyring_terms(keys.root().as_slice(), &init, &st)? {
                if !known.contains(&term) {
                    keys.add_term(term, key);
                    added.push(term);
                }
            }
            if !added.is_empty() {
                tracing::info!(terms = ?added, "keyring terms added by another node");
                if let Some(t) = self.transit() {
                    t.resync().await;
                }
            }
            Ok(())
        }
        .await;
        self.root_behind.store(result.is_err(), Ordering::Relaxed);
        result
    }

    /// Follows the store's `core/` records for as long as the core exists.
    pub async fn run_follow(self: Arc<Self>) {
        let mut feed = self.storage.watch("core/");
        loop {
            let event = feed.next().await;
            let (init, root) = match &event {
                WatchEvent::Change(c) => (c.key == INIT_KEY, c.key == ROOT_STATE_KEY),
                WatchEvent::Resync => (true, true),
                WatchEvent::Closed => return,
            };
            if init && let Err(e) = self.refresh_init().await {
                tracing::debug!(error = %e, "could not read the init record");
            }
            if root && let Err(e) = self.follow_root_state().await {
                tracing::warn!(error = %e, "could not apply the seal state another node changed; retrying at the next probe");
            }
        }
    }
}

/// How often a node writes its registry record and reads the others'.
pub const REGISTRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// A node's record disappears this long after its last write (its lease's TTL).
pub const REGISTRY_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl Core {
    /// The node registry of a shared store: every `REGISTRY_INTERVAL` this node writes
    /// `nodes/<name>` (its address, state and version) under a lease of `REGISTRY_TTL`, so that a
    /// dead node's record expires, and reads every node's record for status.
    pub async fn run_registry(self: Arc<Self>, address: String) {
        let name = self.opts.node_name.clone();
        let key = format!("nodes/{name}");
        let mut tick = tokio::time::interval(REGISTRY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = crate::api::NodeInfo {
                name: name.clone(),
                address: address.clone(),
                state: self.state.read_recover().name().into(),
                version: env!("CARGO_PKG_VERSION").into(),
                last_seen_unix: now_unix(),
            };
            let round = async {
                let json = serde_json::to_vec(&me).map_err(|e| e.to_string())?;
                self.storage
                    .put_leased(&key, &json, Expect::Any, REGISTRY_TTL)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut nodes = Vec::new();
                for e in self.storage.range("nodes/").await.map_err(|e| e.to_string())? {
                    match serde_json::from_slice::<crate::api::NodeInfo>(&e.value) {
                        Ok(n) => nodes.push(n),
                        Err(err) => tracing::warn!(key = %e.key, error = %err, "a node registry record is unreadable; skipped"),
                    }
                }
                Ok::<_, String>(nodes)
            }
            .await;
            let mode = if self.opts.standby_lease.is_some() {
                "active-standby"
            } else {
                "active-active"
            };
            let leader = self.leader.read_recover().clone();
            let mut view = self.cluster.write_recover();
            let previous = view.take().unwrap_or_default();
            *view = Some(match round {
                Ok(nodes) => crate::api::ClusterView {
                    node: name.clone(),
                    nodes,
                    read_unix: now_unix(),
                    error: None,
                    mode: mode.into(),
                    leader,
                },
                Err(e) => crate::api::ClusterView {
                    node: name.clone(),
                    error: Some(e),
                    mode: mode.into(),
                    leader,
                    ..previous
                },
            });
        }
    }
}

/// Where the leader of an active-standby cluster is recorded.
pub const LEADER_KEY: &str = "cluster/leader";

impl Core {
    /// Whether this node is a standby: active-standby mode and not the leader. Standbys answer
    /// `/v1/sys/health` with 429 (Vault's `standbycode`), so load balancers send traffic to the
    /// leader only.
    pub fn is_standby(&self) -> bool {
        self.opts.standby_lease.is_some() && !self.is_leader.load(Ordering::Relaxed)
    }

    /// The leader as this node last saw it (active-standby).
    pub fn leader(&self) -> Option<String> {
        self.leader.read_recover().clone()
    }

    /// active-standby: the leader election. An unsealed node without a leader record writes one
    /// under a lease of `lease_ttl` (expecting none: exactly one node wins); the leader renews it
    /// every third of the TTL, expecting its own revision. A leader that is sealed or finds the
    /// record held by another node steps down; a standby takes over once the record's lease
    /// expired (a dead leader: within the TTL and a third). A leader that cannot reach etcd keeps
    /// serving: without quorum nobody writes, so a second leader cannot diverge from it.
    pub async fn run_election(self: Arc<Self>) {
        let Some(ttl) = self.opts.standby_lease else {
            return;
        };
        let me = self.opts.node_name.clone();
        let mut held: Option<(Revision, tokio::time::Instant)> = None;
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_sealed() {
                if let Some((rev, _)) = held.take() {
                    let _ = self.storage.delete(LEADER_KEY, Expect::Revision(rev)).await;
                    self.step_down("sealed");
                }
                continue;
            }
            let expect = match held {
                Some((rev, _)) => Expect::Revision(rev),
                None => Expect::Absent,
            };
            match self
                .storage
                .put_leased(LEADER_KEY, me.as_bytes(), expect, ttl)
                .await
            {
                Ok(rev) => {
                    if held.is_none() {
                        tracing::info!(node = %me, "elected leader (active-standby)");
                    }
                    held = Some((rev, tokio::time::Instant::now()));
                    *self.leader.write_recover() = Some(me.clone());
                    self.is_leader.store(true, Ordering::Relaxed);
                }
                Err(StorageError::Conflict { .. }) => {
                    if held.take().is_some() {
                        self.step_down("another node holds the leader record");
                    }
                    if let Ok(Some(rec)) = self.storage.get(LEADER_KEY).await {
                        *self.leader.write_recover() =
                            Some(String::from_utf8_lossy(&rec.value).into_owned());
                    }
                }
                Err(e) => {
                    // etcd unreachable or without quorum: the leader keeps serving (a Vault
                    // restart needs only decrypt, and no node can write without quorum, so a
                    // second leader elected by a majority elsewhere cannot diverge from it); it
                    // renews, or finds itself replaced, when etcd answers again.
                    if let Some((_, renewed)) = held
                        && renewed.elapsed() >= ttl
                    {
                        tracing::warn!(error = %e, "cannot renew the leader record; still serving as leader until etcd answers");
                    }
                }
            }
        }
    }

    fn step_down(&self, why: &str) {
        if self.is_leader.swap(false, Ordering::Relaxed) {
            tracing::warn!(reason = why, "no longer the leader; standing by");
        }
        *self.leader.write_recover() = None;
    }
}
