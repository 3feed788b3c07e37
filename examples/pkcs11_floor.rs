//! The benchmark floor for `scripts/bench.sh startup`: the least a process must do to get the root
//! key back: load the PKCS#11 module, log in, find the key and decrypt one stored blob.
//!
//!   pkcs11_floor MODULE TOKEN_LABEL PIN_FILE KEY_LABEL BLOB_RECORD [--with-rng]
//!
//! `--with-rng` also draws one byte from AWS-LC's generator, whose one-time seeding (CPU jitter
//! entropy) any TLS server built on it pays before its first handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: any failure aborts the run

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use secrecy::SecretString;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (module, token, pin_file, key_label, blob) = (&a[1], &a[2], &a[3], &a[4], &a[5]);
    let record = std::fs::read(blob).unwrap();
    let state: serde_json::Value = serde_json::from_slice(&record[12..]).unwrap();
    let blob = &state["wrappings"]["hsm-pair"]["blob"];
    let mut iv = B64.decode(blob["iv"].as_str().unwrap()).unwrap();
    let ct = B64.decode(blob["ciphertext"].as_str().unwrap()).unwrap();
    let aad = blob["aad"].as_str().unwrap().as_bytes().to_vec();

    let ctx = Pkcs11::new(module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    let pin = std::fs::read_to_string(pin_file).unwrap();
    session
        .login(
            UserType::User,
            Some(&SecretString::from(pin.trim().to_string())),
        )
        .unwrap();
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(key_label.as_bytes().to_vec()),
        ])
        .unwrap()[0];
    let params = GcmParams::new(&mut iv, &aad, 128.into()).unwrap();
    let pt = session
        .decrypt(&Mechanism::AesGcm(params), key, &ct)
        .unwrap();
    assert_eq!(pt.len(), 32);
    drop(session);
    ctx.finalize().unwrap();
    if a.get(6).map(String::as_str) == Some("--with-rng") {
        let mut b = [0u8; 1];
        aws_lc_rs::rand::fill(&mut b).unwrap();
    }
}
