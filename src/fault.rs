//! Fault injection for the crash-safety tests: debug builds stop at a named step of a multi-step
//! operation when `SEALKEEPER_FAULT` names it, after writing the step's name to
//! `SEALKEEPER_FAULT_FILE`, and wait there to be killed (SIGKILL from the test). Release builds
//! ignore both variables.

use std::time::Duration;

/// Whether the operation `step` should fail now: debug builds, when `SEALKEEPER_FAULT_FAIL` names
/// it and the file `SEALKEEPER_FAULT_FAIL_WHILE` exists (a test creates and removes it to start and
/// end the failure). Release builds never fail here.
pub fn failing(step: &str) -> bool {
    if !cfg!(debug_assertions) {
        return false;
    }
    if std::env::var("SEALKEEPER_FAULT_FAIL").ok().as_deref() != Some(step) {
        return false;
    }
    std::env::var_os("SEALKEEPER_FAULT_FAIL_WHILE")
        .is_some_and(|p| std::path::Path::new(&p).exists())
}

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

/// Holds the operation at `step`: debug builds, when `SEALKEEPER_FAULT_HOLD` names it, write the
/// step's name to `SEALKEEPER_FAULT_FILE` and wait while the file `SEALKEEPER_FAULT_HOLD_WHILE`
/// exists, then go on (a test orders two nodes' operations with it). Release builds never hold.
pub fn hold(step: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    if std::env::var("SEALKEEPER_FAULT_HOLD").ok().as_deref() != Some(step) {
        return;
    }
    let Some(while_file) = std::env::var_os("SEALKEEPER_FAULT_HOLD_WHILE") else {
        return;
    };
    tracing::warn!(step, "fault injection: holding at this step");
    if let Ok(path) = std::env::var("SEALKEEPER_FAULT_FILE") {
        let _ = std::fs::write(path, step);
    }
    while std::path::Path::new(&while_file).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
}
