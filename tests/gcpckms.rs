//! The gcpckms seal against drongo (a Cloud KMS REST emulator from PyPI, on a loopback port of its
//! own per test) and the real daemon: init and restart, the additionalAuthenticatedData binding,
//! Cloud KMS away at start and back, a missing crypto key, and the seal beside the HSM pair.
//! drongo has no key versions, disabled versions or IAM: those are unit tests of the seal
//! (`seal::gcpckms`). The endpoint is loopback, so the seal sends no credentials, and nothing
//! leaves 127.0.0.1 (GCE_METADATA_HOST points at a closed local port besides).
#![cfg(feature = "gcpckms")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::Value;

struct Drongo {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drongo {
    fn start() -> Drongo {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("drongo")
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("drongo.log")).unwrap())
            .spawn()
            .expect("drongo (pip install drongo google-crc32c; scripts/test.sh installs it)");
        let mut d = Drongo { port, child, dir };
        // Ready is an HTTP answer from drongo itself (its 404 for an unknown route), not only a
        // port that accepts.
        wait_for(
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = d.child.try_wait() {
                    panic!("drongo exited ({status}) before answering:\n{}", d.log());
                }
                d.try_call("GET", "drongo-ready", "").is_ok().then_some(())
            },
            || "drongo did not answer HTTP".into(),
        );
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("drongo.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP call with curl: (status, JSON body), or curl's own error when no answer came.
    fn try_call(&self, method: &str, path: &str, body: &str) -> Result<(u16, Value), String> {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-w",
                "\n%{http_code}",
                "-X",
                method,
                "-H",
                "content-type: application/json",
                "-d",
                body,
            ])
            .arg(format!("{}/v1/{path}", self.url()))
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "curl {method} {path}: {} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        Ok((
            code.parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{e}; drongo's log:\n{}", self.log()))
    }

    /// A key ring `r` and an ENCRYPT_DECRYPT crypto key `k` in projects/p/locations/global.
    fn create_key(&self) {
        let (c, v) = self.call(
            "POST",
            "projects/p/locations/global/keyRings?keyRingId=r",
            "{}",
        );
        assert_eq!(c, 200, "{v}");
        let (c, v) = self.call(
            "POST",
            "projects/p/locations/global/keyRings/r/cryptoKeys?cryptoKeyId=k",
            "{\"purpose\":\"ENCRYPT_DECRYPT\"}",
        );
        assert_eq!(c, 200, "{v}");
    }
}

impl Drop for Drongo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY: &str = "projects/p/locations/global/keyRings/r/cryptoKeys/k";

fn gcp_seal(endpoint: &str, extra: &str) -> String {
    format!(
        "[[seal]]\ntype = \"gcpckms\"\nname = \"gcp\"\nproject = \"p\"\nregion = \"global\"\nkey_ring = \"r\"\n\
         crypto_key = \"k\"\nendpoint = \"{endpoint}\"\ntimeout = \"3s\"\n{extra}\n"
    )
}

fn start(f: &Fixture) -> Daemon {
    f.start_with(|c| {
        for v in [
            "GOOGLE_CREDENTIALS",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_PROJECT",
            "GOOGLE_REGION",
            "VAULT_GCPCKMS_SEAL_KEY_RING",
            "VAULT_GCPCKMS_SEAL_CRYPTO_KEY",
        ] {
            c.env_remove(v);
        }
        c.env("GCE_METADATA_HOST", "127.0.0.1:9");
    })
}

fn seal_info<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["seals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no seal {name} in {status:#}"))
}

/// The gcpckms wrapping of the root key in the stored seal state.
fn stored_blob(f: &Fixture) -> Value {
    fn find(v: &Value) -> Option<Value> {
        match v {
            Value::Object(m) if m.get("seal_type").and_then(Value::as_str) == Some("gcpckms") => {
                Some(v.clone())
            }
            Value::Object(m) => m.values().find_map(find),
            Value::Array(a) => a.iter().find_map(find),
            Value::String(s) if s.starts_with('{') => {
                serde_json::from_str::<Value>(s).ok().and_then(|x| find(&x))
            }
            _ => None,
        }
    }
    let (_, st) = f.read_state();
    find(&st).unwrap_or_else(|| panic!("no gcpckms blob in {st:#}"))
}

#[test]
fn init_restart_and_the_ciphertext_is_bound_to_its_aad() {
    let kms = Drongo::start();
    kms.create_key();
    let f = Fixture::new();
    f.set_seals(&gcp_seal(&kms.url(), ""));
    let mut d = start(&f);
    d.init();
    let st = d.status_json();
    assert_eq!(st["unsealed_by_seal"], "gcp", "{st:#}");
    let s = seal_info(&st, "gcp");
    assert_eq!(
        s["wrapped_by_key"],
        format!("{KEY}/cryptoKeyVersions/1"),
        "{st:#}"
    );
    assert_eq!(
        s["credentials_from"],
        "none (a local emulator on a loopback endpoint)"
    );
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "gcp");
    d.stop();

    // Cloud KMS decrypts the stored ciphertext only with the blob's associated data.
    let blob = stored_blob(&f);
    assert_eq!(blob["key_version"], format!("{KEY}/cryptoKeyVersions/1"));
    let val = blob["ciphertext"].as_str().unwrap().to_string();
    let aad = blob["aad"].as_str().unwrap().to_string();
    assert!(aad.ends_with("seal=gcpckms:gcp"), "{aad}");
    let body = |aad: &str| {
        format!(
            "{{\"ciphertext\":\"{val}\",\"additionalAuthenticatedData\":\"{}\"}}",
            B64.encode(aad)
        )
    };
    let (code, _) = kms.call(
        "POST",
        &format!("{KEY}:decrypt"),
        &body("sealkeeper/v1/other"),
    );
    assert_eq!(code, 400, "another AAD is refused");
    let (code, out) = kms.call("POST", &format!("{KEY}:decrypt"), &body(&aad));
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        B64.decode(out["plaintext"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );

    let d = start(&f);
    d.wait_health(200, Duration::from_secs(20));
    assert_eq!(d.status_json()["unsealed_by_seal"], "gcp");
    tp.assert_decrypts(&d, &ct, "gcp");

    // seal probe: the crypto key found, a round trip, exit 0; with the key gone, exit 1.
    let probe = || {
        f.seal_probe_json(|c| {
            c.env("GCE_METADATA_HOST", "127.0.0.1:9");
        })
    };
    let (code, v) = probe();
    assert_eq!(code, 0, "{v:#}");
    let m = &v["seals"][0]["members"][0];
    assert_eq!(m["round_trip_ok"], true, "{v:#}");
    assert_eq!(
        m["primary_version"],
        format!("{KEY}/cryptoKeyVersions/1"),
        "{v:#}"
    );
    drop(d);
    drop(kms);
    let (code, v) = probe();
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["restart_would_unseal"], false);
}

#[test]
fn cloud_kms_away_at_start_leaves_the_node_sealed_until_it_returns() {
    let kms = Drongo::start();
    kms.create_key();
    let mut relay = Relay::start(kms.port);
    let f = Fixture::new();
    f.set_seals(&gcp_seal(&format!("http://127.0.0.1:{}", relay.port), ""));
    let mut d = start(&f);
    d.init();
    d.stop();
    relay.down();
    let d = start(&f);
    let st = d.wait_unseal_attempts(3);
    assert_eq!(d.health("").status, 503, "{st:#}");
    assert_eq!(
        seal_info(&st, "gcp")["members"][0]["healthy"],
        false,
        "{st:#}"
    );
    relay.up();
    d.wait_health(200, Duration::from_secs(30));
}

#[test]
fn a_missing_crypto_key_needs_an_operator_and_beside_the_pair_the_pair_unseals() {
    let kms = Drongo::start();
    kms.create_key();
    let f = Fixture::new();
    let pair = f.hsm_pair("priority = 1");
    f.set_seals(&format!("{pair}{}", gcp_seal(&kms.url(), "priority = 2")));
    let mut d = start(&f);
    d.init();
    assert_eq!(seal_info(&d.status_json(), "gcp")["wrapping_current"], true);
    d.stop();
    // The pair away: Cloud KMS unseals.
    let a = f.remove_token("sealkeeper-a");
    let b = f.remove_token("sealkeeper-b");
    let mut d = start(&f);
    d.wait_health(200, Duration::from_secs(20));
    assert_eq!(d.status_json()["unsealed_by_seal"], "gcp");
    d.stop();
    f.restore_token(&a);
    f.restore_token(&b);
    // The crypto key is gone (a fresh emulator): the seal is key_unavailable, the pair unseals.
    drop(kms);
    let kms = Drongo::start();
    f.set_seals(&format!("{pair}{}", gcp_seal(&kms.url(), "priority = 2")));
    let d = start(&f);
    d.wait_health(200, Duration::from_secs(20));
    let st = d.wait_status("the crypto key missing", Duration::from_secs(30), |s| {
        seal_info(s, "gcp")["members"][0]["state"] == "key_unavailable"
    });
    let e = seal_info(&st, "gcp")["members"][0]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        e.contains("check project, region, key_ring, crypto_key"),
        "{e}"
    );
}

#[test]
fn migration_from_the_hsm_pair_to_cloud_kms_and_back() {
    let kms = Drongo::start();
    kms.create_key();
    let f = Fixture::new();
    let gcp = gcp_seal(&kms.url(), "");
    f.migrate_from_the_pair_and_back(&gcp, "gcp", || start(&f), || drop(kms));
}
