//! Loaded PKCS#11 modules, one per library path, shared by every member that uses it.
//!
//! A module can be initialized only once per process, so two members on the same library (an HA
//! pair of network HSMs behind one vendor client, or two SoftHSM tokens) share one context. When a
//! member finds the module's state gone (CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_REMOVED, a token
//! that vanished), it re-initializes the module: C_Finalize, then C_Initialize on next use. The
//! generation number tells the other members that their sessions belong to the old state.
//!
//! C_Finalize while another thread is inside the module is undefined behaviour (it crashed the
//! daemon under load), so every call into a module holds the module's **call gate** shared
//! ([`Module::enter`]), and re-initialisation and shutdown take it exclusively, waiting at most a
//! bound for the calls in flight to return. A call stuck in the module therefore never lets the
//! module be finalized under it: the re-initialisation is skipped (and retried by the next
//! recovery), and the stuck member is marked `hung` by its own timeout.

use crate::locks::MutexExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

use super::error::HsmError;

/// How long shutdown waits for calls in flight before finalizing anyway is refused.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct ModuleRegistry {
    modules: Mutex<HashMap<PathBuf, Arc<Module>>>,
}

impl ModuleRegistry {
    pub fn new() -> Arc<ModuleRegistry> {
        Arc::new(ModuleRegistry::default())
    }

    pub fn get(&self, path: &Path) -> Arc<Module> {
        let mut map = self.modules.lock_recover();
        map.entry(path.to_path_buf())
            .or_insert_with(|| {
                Arc::new(Module {
                    path: path.to_path_buf(),
                    state: Mutex::new(State::default()),
                    gate: Gate::default(),
                })
            })
            .clone()
    }

    /// C_Finalize on every loaded module (at shutdown, after the members closed their sessions).
    pub fn finalize_all(&self) {
        let map = self.modules.lock_recover();
        for m in map.values() {
            m.finalize();
        }
    }
}

#[derive(Default)]
struct State {
    ctx: Option<Pkcs11>,
    generation: u64,
}

/// A shared/exclusive gate with a bounded exclusive wait. A waiting exclusive holder stops new
/// shared entries (so a busy module cannot starve a recovery), and gives up after its timeout.
#[derive(Default)]
struct Gate {
    inner: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Calls now inside the module.
    calls: usize,
    /// An exclusive holder is waiting or holds the gate.
    exclusive: bool,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.inner.lock_recover()
    }

    fn enter(&self) {
        let mut g = self.lock();
        while g.exclusive {
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.calls += 1;
    }

    fn leave(&self) {
        let mut g = self.lock();
        g.calls = g.calls.saturating_sub(1);
        drop(g);
        self.changed.notify_all();
    }

    /// Waits on the condition while `busy` holds, until `deadline`; `Err` (with the guard back)
    /// when the deadline came first.
    fn wait_while<'a>(
        &self,
        mut g: MutexGuard<'a, GateState>,
        deadline: Instant,
        busy: impl Fn(&GateState) -> bool,
    ) -> Result<MutexGuard<'a, GateState>, MutexGuard<'a, GateState>> {
        while busy(&g) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(g);
            }
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(g)
    }

    /// Takes the gate exclusively once no call is inside, waiting at most `within`; false when
    /// calls were still inside at the deadline (the gate is then left as it was).
    fn exclusive(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        // Only one exclusive holder at a time; the second one waits its turn within the same bound.
        let Ok(mut g) = self.wait_while(self.lock(), deadline, |g| g.exclusive) else {
            return false;
        };
        g.exclusive = true;
        match self.wait_while(g, deadline, |g| g.calls > 0) {
            Ok(_) => true,
            Err(mut g) => {
                g.exclusive = false;
                drop(g);
                self.changed.notify_all();
                false
            }
        }
    }

    fn release_exclusive(&self) {
        let mut g = self.lock();
        g.exclusive = false;
        drop(g);
        self.changed.notify_all();
    }
}

/// Held for the duration of a call into the module; the module cannot be finalized meanwhile.
pub struct CallGuard<'a> {
    gate: &'a Gate,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

pub struct Module {
    path: PathBuf,
    state: Mutex<State>,
    gate: Gate,
}

impl Module {
    /// Enters the call gate: hold the guard while using any context or session of this module.
    pub fn enter(&self) -> CallGuard<'_> {
        self.gate.enter();
        CallGuard { gate: &self.gate }
    }

    /// The initialized context and its generation, loading and initializing the module if needed.
    /// The caller holds a [`CallGuard`] (the context is only valid while it does).
    pub fn context(&self, _guard: &CallGuard<'_>) -> Result<(Pkcs11, u64), HsmError> {
        let mut st = self.state.lock_recover();
        if let Some(ctx) = &st.ctx {
            return Ok((ctx.clone(), st.generation));
        }
        if !self.path.exists() {
            return Err(HsmError::new(
                super::error::ErrorKind::Library,
                format!("PKCS#11 module {} does not exist", self.path.display()),
            ));
        }
        let ctx = Pkcs11::new(&self.path).map_err(HsmError::from_cryptoki)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(HsmError::from_cryptoki(e)),
        }
        st.ctx = Some(ctx.clone());
        Ok((ctx, st.generation))
    }

    /// Finalizes the module if it is still at generation `seen`, once no other call is inside it
    /// (waiting at most `within`); the next `context()` initializes it again. Sessions of older
    /// generations must be forgotten, not closed. Returns false when the module was left alone
    /// because a call stayed inside it. The caller must not hold a [`CallGuard`].
    pub fn reinit(&self, seen: u64, within: Duration) -> bool {
        if self.generation() != seen {
            return true; // somebody else already did it
        }
        if !self.gate.exclusive(within) {
            tracing::warn!(
                module = %self.path.display(),
                "PKCS#11 module not re-initialized: another member's call is still inside it"
            );
            return false;
        }
        let mut st = self.state.lock_recover();
        if st.generation == seen {
            if let Some(ctx) = st.ctx.take() {
                let _ = ctx.finalize();
            }
            st.generation += 1;
            tracing::info!(module = %self.path.display(), generation = st.generation, "PKCS#11 module re-initialized");
        }
        drop(st);
        self.gate.release_exclusive();
        true
    }

    pub fn generation(&self) -> u64 {
        self.state.lock_recover().generation
    }

    fn finalize(&self) {
        if !self.gate.exclusive(SHUTDOWN_WAIT) {
            tracing::warn!(module = %self.path.display(), "PKCS#11 module not finalized at shutdown: a call is still inside it");
            return;
        }
        let mut st = self.state.lock_recover();
        if let Some(ctx) = st.ctx.take() {
            let _ = ctx.finalize();
            st.generation += 1;
        }
        drop(st);
        self.gate.release_exclusive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_waits_for_calls_and_gives_up_at_its_deadline() {
        let gate = Arc::new(Gate::default());
        gate.enter();
        // A call is inside: the exclusive wait gives up, and leaves the gate usable.
        assert!(!gate.exclusive(Duration::from_millis(30)));
        gate.enter();
        gate.leave();
        // Once the call leaves (on another thread), the exclusive holder gets in.
        let g2 = gate.clone();
        let t = std::thread::spawn(move || g2.exclusive(Duration::from_secs(10)));
        while !gate.lock().exclusive {
            std::thread::yield_now();
        }
        gate.leave();
        assert!(t.join().unwrap_or(false));
        gate.release_exclusive();
        // While held exclusively, a new call waits until it is released.
        assert!(gate.exclusive(Duration::from_secs(10)));
        let g3 = gate.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            g3.enter();
            let _ = tx.send(());
            g3.leave();
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        gate.release_exclusive();
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
        let _ = t.join();
    }
}
