//! Loaded PKCS#11 modules, one per library path, shared by every member that uses it.
//!
//! A module can be initialized only once per process, so two members on the same library (an HA
//! pair of network HSMs behind one vendor client, or two SoftHSM tokens) share one context. When a
//! member finds the module's state gone (CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_REMOVED, a token
//! that vanished), it re-initializes the module: C_Finalize, then C_Initialize on next use. The
//! generation number tells the other members that their sessions belong to the old state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

use super::error::HsmError;

#[derive(Default)]
pub struct ModuleRegistry {
    modules: Mutex<HashMap<PathBuf, Arc<Module>>>,
}

impl ModuleRegistry {
    pub fn new() -> Arc<ModuleRegistry> {
        Arc::new(ModuleRegistry::default())
    }

    pub fn get(&self, path: &Path) -> Arc<Module> {
        let mut map = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(path.to_path_buf())
            .or_insert_with(|| {
                Arc::new(Module {
                    path: path.to_path_buf(),
                    state: Mutex::new(State::default()),
                })
            })
            .clone()
    }

    /// C_Finalize on every loaded module (at shutdown, after the members closed their sessions).
    pub fn finalize_all(&self) {
        let map = self.modules.lock().unwrap_or_else(|p| p.into_inner());
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

pub struct Module {
    path: PathBuf,
    state: Mutex<State>,
}

impl Module {
    /// The initialized context and its generation, loading and initializing the module if needed.
    pub fn context(&self) -> Result<(Pkcs11, u64), HsmError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Finalizes the module if it is still at generation `seen`; the next `context()` initializes it
    /// again. Sessions of older generations must be forgotten, not closed.
    pub fn reinit(&self, seen: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.generation != seen {
            return; // somebody else already did it
        }
        if let Some(ctx) = st.ctx.take() {
            let _ = ctx.finalize();
        }
        st.generation += 1;
        tracing::info!(module = %self.path.display(), generation = st.generation, "PKCS#11 module re-initialized");
    }

    pub fn generation(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    fn finalize(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ctx) = st.ctx.take() {
            let _ = ctx.finalize();
            st.generation += 1;
        }
    }
}
