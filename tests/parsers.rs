//! Property tests of every parser of outside input: whatever the bytes, a parser answers Ok or a
//! clear error and never panics. They run in CI; the cargo-fuzz targets in fuzz/ explore further.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use sealkeeper::config::Config;
use sealkeeper::core::state::{RootState, open_keyring};
use sealkeeper::keyring::UnsealedKeys;
use sealkeeper::recovery::Share;
use sealkeeper::seal::{BlobContext, WrappedBlob};
use sealkeeper::secret::{LockedBytes, MemoryPolicy};
use sealkeeper::storage::FileStorage;
use sealkeeper::transit::{Transit, parse_ciphertext};

const CONFIG: &str = r#"
[storage]
path = "/var/lib/sealkeeper"

[listener]
address = "127.0.0.1:8200"
tls_cert_file = "/etc/sealkeeper/tls/server.crt"
tls_key_file = "/etc/sealkeeper/tls/server.key"

[audit]
path = "/var/log/sealkeeper/audit.log"

[[seal]]
type = "pkcs11"
name = "hsm-pair"
key_label = "sealkeeper-root"
mechanism = "CKM_AES_GCM"

  [[seal.hsm]]
  name = "hsm-a"
  lib = "/usr/lib/softhsm/libsofthsm2.so"
  token_label = "sealkeeper-a"
  pin_file = "/etc/sealkeeper/hsm-a.pin"
"#;

/// A transit state on a file store, and the runtime that runs its change feed.
fn transit() -> ((tempfile::TempDir, tokio::runtime::Runtime), Arc<Transit>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FileStorage::open(dir.path()).unwrap());
    let keys = Arc::new(UnsealedKeys::new(
        LockedBytes::from_slice(&[1u8; 32], MemoryPolicy::AllowUnlocked).unwrap(),
        vec![(
            1,
            LockedBytes::from_slice(&[2u8; 32], MemoryPolicy::AllowUnlocked).unwrap(),
        )],
    ));
    let t = rt.block_on(async {
        let t = Transit::load(storage, keys, MemoryPolicy::AllowUnlocked)
            .await
            .unwrap();
        t.create_key("k").await.unwrap();
        t
    });
    ((dir, rt), t)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics(text in ".{0,400}") {
        let _ = Config::parse(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn config_with_a_damaged_byte_gives_a_located_error_or_parses(pos in 0usize..CONFIG.len(), byte in any::<u8>()) {
        let mut bytes = CONFIG.as_bytes().to_vec();
        bytes[pos] = byte;
        if let Ok(text) = String::from_utf8(bytes)
            && let Err(e) = Config::parse(&text, Path::new("fuzz.toml"))
        {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("fuzz.toml:"), "{}", msg);
            prop_assert!(e.line().is_some_and(|l| l >= 1 && l <= text.lines().count() + 1), "{}", msg);
        }
    }

    #[test]
    fn blob_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(blob) = WrappedBlob::from_json(&bytes) {
            let ctx = BlobContext { installation_id: "x".into(), purpose: "root-key".into() };
            let _ = blob.check(&ctx, "pkcs11", "hsm-pair");
        }
    }

    #[test]
    fn blob_json_with_arbitrary_fields(iv in ".{0,40}", ct in ".{0,80}", format in any::<u32>(), label in ".{0,20}") {
        let text = serde_json::json!({
            "format": format, "purpose": "root-key", "installation_id": "x", "seal_name": "hsm-pair",
            "seal_type": "pkcs11", "key_label": label, "mechanism": "CKM_AES_GCM", "iv": iv,
            "ciphertext": ct, "aad": "a", "wrapped_by": "hsm-a", "created_unix": 0
        }).to_string();
        let blob = WrappedBlob::from_json(text.as_bytes()).unwrap();
        let ctx = BlobContext { installation_id: "x".into(), purpose: "root-key".into() };
        prop_assert!(blob.check(&ctx, "pkcs11", "hsm-pair").is_err(), "the aad never matches");
    }

    #[test]
    fn seal_state_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        if let Ok(st) = RootState::from_json(&bytes) {
            let _ = st.is_current("hsm-pair");
            if let Some(w) = &st.shares.wrapping {
                let _ = w.root_from_split_key(&[0u8; 32], "x");
                let _ = w.split_key_from_root(&[0u8; 32], "x");
            }
            let _ = open_keyring(&[0u8; 32], "x", &st.keyring);
        }
    }

    #[test]
    fn seal_state_with_arbitrary_fields_is_refused_or_fails_closed(
        generation in any::<u64>(), keyring in ".{0,60}", root in ".{0,60}", key in ".{0,60}",
        format in 0u32..3, role in "(recovery|unseal|other)",
    ) {
        let text = serde_json::json!({
            "format": format, "generation": generation, "root_check": "00", "keyring": keyring,
            "shares": { "role": role, "shares": 3, "threshold": 2, "verifier": "00",
                        "wrapping": { "generation": generation, "root": root, "key": key } },
        }).to_string();
        if let Ok(st) = RootState::from_json(text.as_bytes()) {
            prop_assert_eq!(st.format, 1);
            let w = st.shares.wrapping.as_ref().unwrap();
            prop_assert!(w.root_from_split_key(&[7u8; 32], "x").is_err(), "no key opens random bytes");
            prop_assert!(open_keyring(&[7u8; 32], "x", &st.keyring).is_err());
        }
    }

    #[test]
    fn share_parser_never_panics(text in ".{0,120}") {
        let _ = Share::parse(&text, "installation");
    }

    #[test]
    fn ciphertext_parser_never_panics(text in "(vault:v[0-9]{0,3}:)?[A-Za-z0-9+/=:]{0,80}") {
        let _ = parse_ciphertext(&text);
    }

    #[test]
    fn audit_verify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        std::fs::write(&p, &bytes).unwrap();
        let _ = sealkeeper::audit::verify::verify(&[p]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Transit operations on arbitrary input: a clear error or a correct answer, never a panic.
    #[test]
    fn transit_operations_on_arbitrary_input(
        ct in "(vault:v[0-9]{1,2}:)?[A-Za-z0-9+/=]{0,80}",
        aad in proptest::collection::vec(any::<u8>(), 0..32),
        plaintext in proptest::collection::vec(any::<u8>(), 0..256),
        version in proptest::option::of(0u32..4),
    ) {
        let (_dir, t) = transit();
        let _ = t.decrypt("k", &ct, &aad);
        let _ = t.rewrap("k", &ct, &aad, version);
        match t.encrypt("k", &plaintext, &aad, version) {
            Ok((c, v)) => {
                let (back, v2) = t.decrypt("k", &c, &aad).unwrap();
                prop_assert_eq!(back.as_slice(), plaintext.as_slice());
                prop_assert_eq!(v, v2);
                if !aad.is_empty() {
                    prop_assert!(t.decrypt("k", &c, b"").is_err());
                }
            }
            Err(e) => prop_assert!(version.is_some_and(|v| v > 1), "{}", e),
        }
    }
}

fn json_like() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,120}",
        r#"\{"(plaintext|ciphertext|associated_data|key_version|batch_input|context|bits|input|key|rules)":("[A-Za-z0-9+/=:]{0,40}"|[0-9]{1,4}|\[\{"(plaintext|ciphertext)":"[A-Za-z0-9+/=:]{0,30}"\}\]|null|true)\}"#,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Transit and admin request bodies: a result or a clear error, never a panic.
    #[test]
    fn request_bodies_never_panic(body in json_like(), op in "(encrypt|decrypt|rewrap)") {
        let (_dir, t) = transit();
        // The route's own code: an answer with data, or a 4xx in the errors envelope.
        let (status, answer) = sealkeeper::http::transit::process_body(&t, &op, "k", body.as_bytes(), 1024);
        if status.is_success() {
            prop_assert!(answer["data"].is_object(), "{} {}", status, answer);
        } else {
            prop_assert!(status.is_client_error(), "{} {}", status, answer);
            // A batch answers each item; anything else uses the errors envelope.
            prop_assert!(
                answer["errors"][0].is_string() || answer["data"]["batch_results"].is_array(),
                "{} {}", status, answer
            );
        }
        for r in sealkeeper::admin::parse_bodies(body.as_bytes()) {
            if let Err(e) = r {
                prop_assert!(e.starts_with("invalid JSON body"), "{}", e);
            }
        }
    }
}
