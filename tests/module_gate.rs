//! A PKCS#11 module shared by two seals: one seal's recoveries (which re-initialize the module)
//! race continuous calls of the other seal's members. Before the module's call gate this killed
//! the process with SIGSEGV or SIGABRT (C_Finalize while another thread was inside the module).
//!
//! The race runs in a child process (this test binary again, selecting `hammer_child`), so that a
//! crash is seen as the child's death rather than taking the test harness down.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use sealkeeper::config::Config;
use sealkeeper::seal::Seal;
use sealkeeper::seal::pkcs11::{ModuleRegistry, Pkcs11Seal};
use sealkeeper::seal::registry::SealBackendConfig;

const ITERATIONS: &str = "150";

#[test]
fn recoveries_of_one_seal_never_finalize_the_module_under_another_seals_call() {
    let f = Fixture::two_seals();
    // The primary pair's tokens vanish: every call to its members recovers, and the second
    // recovery of each call finalizes and initializes the shared module again.
    let _a = f.remove_token("sealkeeper-a");
    let _b = f.remove_token("sealkeeper-b");
    for round in 0..3 {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hammer_child",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SK_HAMMER_CONFIG", f.config_path())
            .env("SK_HAMMER_ITERATIONS", ITERATIONS)
            .env("SOFTHSM2_CONF", f.softhsm_conf())
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let out_text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "round {round}: the process died (status {:?}, signal {:?}):\n{out_text}",
            out.status.code(),
            out.status.signal()
        );
        // The child really ran the race (and did not skip it for want of its environment).
        assert!(
            out_text.contains(&format!("hammer: {ITERATIONS} recoveries")),
            "{out_text}"
        );
        assert!(out_text.contains("secondary healthy: true"), "{out_text}");
    }
}

/// The child side, run only by the test above (ignored in a normal run).
#[test]
#[ignore = "the child process of recoveries_of_one_seal_never_finalize_the_module_under_another_seals_call"]
fn hammer_child() {
    let path = std::env::var("SK_HAMMER_CONFIG").expect("started by the race test");
    let iterations: usize = std::env::var("SK_HAMMER_ITERATIONS")
        .unwrap()
        .parse()
        .unwrap();
    let cfg = Config::load(std::path::Path::new(&path)).unwrap();
    let registry = ModuleRegistry::new();
    let seals: Vec<Arc<Pkcs11Seal>> = cfg
        .seal
        .iter()
        .map(|s| match &s.backend {
            SealBackendConfig::Pkcs11(c) => {
                Arc::new(Pkcs11Seal::from_config(&s.name, c, registry.clone(), false))
            }
            other => panic!("not a pkcs11 seal: {other:?}"),
        })
        .collect();
    let (primary, secondary) = (seals[0].clone(), seals[1].clone());
    let done = Arc::new(AtomicBool::new(false));
    let mut busy = Vec::new();
    // Two threads keep the secondary pair's members inside the module: probes (session info, key
    // lookup) and random generation.
    for kind in 0..2 {
        let s = secondary.clone();
        let done = done.clone();
        busy.push(std::thread::spawn(move || {
            let mut calls = 0u64;
            while !done.load(Ordering::SeqCst) {
                if kind == 0 {
                    s.probe();
                } else {
                    let _ = s.random(32);
                }
                calls += 1;
            }
            calls
        }));
    }
    for _ in 0..iterations {
        primary.probe();
        assert!(!primary.status().healthy);
    }
    done.store(true, Ordering::SeqCst);
    let calls: u64 = busy.into_iter().map(|t| t.join().unwrap()).sum();
    secondary.probe();
    println!("hammer: {iterations} recoveries, {calls} calls of the other seal");
    println!("secondary healthy: {}", secondary.status().healthy);
    primary.shutdown();
    secondary.shutdown();
}
