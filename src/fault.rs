//! Fault injection for the crash-safety tests: debug builds stop at a named step of a multi-step
//! operation when `SEALKEEPER_FAULT` names it, after writing the step's name to
//! `SEALKEEPER_FAULT_FILE`, and wait there to be killed (SIGKILL from the test). Release builds
//! ignore both variables.

use std::time::Duration;

pub fn point(step: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    match std::env::var("SEALKEEPER_FAULT") {
        Ok(want) if want == step => {}
        _ => return,
    }
    tracing::warn!(step, "fault injection: stopping at this step until killed");
    if let Ok(path) = std::env::var("SEALKEEPER_FAULT_FILE") {
        let _ = std::fs::write(path, step);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
