//! The azurekeyvault seal against a local Key Vault (no emulator exists on these registries): a
//! small HTTPS server in this file that speaks the calls the SDKs make — the Entra ID token
//! endpoint, the 401 Bearer challenge, get key, wrapkey and unwrapkey with RSA-OAEP-256 (real RSA,
//! aws-lc-rs), a disabled key's 403, throttling's 429, access denied — served with a generated CA
//! and a leaf certificate signed by it, and tolerant of the double and trailing slashes the Rust
//! SDK sends. Its fidelity is checked by driving it with Microsoft's official Python SDK
//! (`azure-keyvault-keys`, `azure-identity`) too. Every request goes to 127.0.0.1.
#![cfg(feature = "azurekeyvault")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::*;
use serde_json::{Value, json};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT: &str = "sealkeeper-test-client";
const SECRET: &str = "sealkeeper-test-client-secret-value";
const TOKEN: &str = "fake-key-vault-access-token";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Normal,
    Throttle,
    Deny,
}

struct Version {
    id: String,
    enabled: bool,
    private: Arc<OaepPrivateDecryptingKey>,
    public: Arc<OaepPublicEncryptingKey>,
    n: Vec<u8>,
}

struct State {
    base: String,
    keys: BTreeMap<String, Vec<Version>>,
    mode: Mode,
    /// "METHOD path" of every request, as sent.
    log: Vec<String>,
}

struct FakeVault {
    port: u16,
    dir: tempfile::TempDir,
    state: Arc<Mutex<State>>,
    _thread: std::thread::JoinHandle<()>,
    stop: Arc<tokio::sync::Notify>,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    out.stdout
}

impl FakeVault {
    fn start() -> FakeVault {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=fake-key-vault-ca",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("leaf.key"),
            "-out",
            &p("leaf.csr"),
        ]);
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("leaf.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
            "-out",
            &p("leaf.crt"),
        ]);
        let port = free_port();
        let state = Arc::new(Mutex::new(State {
            base: format!("https://127.0.0.1:{port}"),
            keys: BTreeMap::new(),
            mode: Mode::Normal,
            log: Vec::new(),
        }));
        let stop = Arc::new(tokio::sync::Notify::new());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            let certs = std::fs::read(dir.path().join("leaf.crt")).unwrap();
            let key = std::fs::read(dir.path().join("leaf.key")).unwrap();
            std::thread::spawn(move || serve(port, certs, key, state, stop, ready_tx))
        };
        ready_rx.recv().unwrap();
        FakeVault {
            port,
            dir,
            state,
            _thread: thread,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A new RSA-2048 version of key `name`; returns its id.
    fn add_version(&self, name: &str) -> String {
        let n = self
            .state
            .lock()
            .unwrap()
            .keys
            .get(name)
            .map_or(0, Vec::len);
        let pem = self.dir.path().join(format!("{name}-{n}.pem"));
        let p = pem.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]);
        let der = openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", p, "-outform", "DER"]);
        let modulus = String::from_utf8(openssl(&["rsa", "-in", p, "-noout", "-modulus"])).unwrap();
        let n_bytes = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
        let key = PrivateDecryptingKey::from_pkcs8(&der).unwrap();
        let mut st = self.state.lock().unwrap();
        let version = format!("{:032x}", (n as u128 + 1) * 0x1234_5678_9abc_def1);
        let id = format!("{}/keys/{name}/{version}", st.base);
        let public = OaepPublicEncryptingKey::new(key.public_key()).unwrap();
        st.keys.entry(name.to_string()).or_default().push(Version {
            id: id.clone(),
            enabled: true,
            private: Arc::new(OaepPrivateDecryptingKey::new(key).unwrap()),
            public: Arc::new(public),
            n: n_bytes,
        });
        id
    }

    fn set_enabled(&self, name: &str, enabled: bool) {
        for v in self.state.lock().unwrap().keys.get_mut(name).unwrap() {
            v.enabled = enabled;
        }
    }

    fn set_mode(&self, m: Mode) {
        self.state.lock().unwrap().mode = m;
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

fn serve(
    port: u16,
    certs: Vec<u8>,
    key: Vec<u8>,
    state: Arc<Mutex<State>>,
    stop: Arc<tokio::sync::Notify>,
    ready: std::sync::mpsc::Sender<()>,
) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&certs)
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_slice(&key).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        ready.send(()).unwrap();
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => r.unwrap(),
                _ = stop.notified() => return,
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(req, &state).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
}

type Resp = hyper::Response<http_body_util::Full<hyper::body::Bytes>>;

fn reply(status: u16, body: Value) -> Resp {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            body.to_string(),
        )))
        .unwrap()
}

fn kv_error(status: u16, code: &str, message: &str) -> Resp {
    reply(status, json!({"error": {"code": code, "message": message}}))
}

async fn handle(req: hyper::Request<hyper::body::Incoming>, state: &Mutex<State>) -> Resp {
    use http_body_util::BodyExt;
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut st = state.lock().unwrap();
    st.log.push(format!("{method} {raw_path}"));
    let base = st.base.clone();
    // Tolerant of the Rust SDK's "//wrapkey" and trailing slashes.
    let parts: Vec<&str> = raw_path.split('/').filter(|p| !p.is_empty()).collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", [tenant, "oauth2", "v2.0", "token"]) => {
            let form: BTreeMap<String, String> = url_form(&body);
            if *tenant != TENANT
                || form.get("client_id").map(String::as_str) != Some(CLIENT)
                || form.get("client_secret").map(String::as_str) != Some(SECRET)
            {
                return reply(
                    401,
                    json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
                );
            }
            reply(
                200,
                json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": TOKEN}),
            )
        }
        ("GET", [tenant, "v2.0", ".well-known", "openid-configuration"]) => reply(
            200,
            json!({
                "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
                "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
                "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
                "issuer": format!("{base}/{tenant}/v2.0"),
            }),
        ),
        (_, ["keys", name, rest @ ..]) => {
            if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
                return hyper::Response::builder()
                    .status(401)
                    .header(
                        "www-authenticate",
                        format!("Bearer authorization=\"{base}/{TENANT}\", resource=\"https://vault.azure.net\""),
                    )
                    .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
                        b"{\"error\":{\"code\":\"Unauthorized\",\"message\":\"AKV10000: Request is missing a Bearer or PoP token.\"}}",
                    )))
                    .unwrap();
            }
            match st.mode {
                Mode::Throttle => {
                    return hyper::Response::builder()
                        .status(429)
                        .header("retry-after", "1")
                        .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
                            b"{\"error\":{\"code\":\"Throttled\",\"message\":\"Request was not processed because too many requests were received.\"}}",
                        )))
                        .unwrap();
                }
                Mode::Deny => {
                    return kv_error(
                        403,
                        "Forbidden",
                        "Caller is not authorized to perform action on resource.",
                    );
                }
                Mode::Normal => {}
            }
            let Some(versions) = st.keys.get(*name) else {
                return kv_error(
                    404,
                    "KeyNotFound",
                    &format!("A key with (name/id) {name} was not found in this key vault."),
                );
            };
            let (version, op) = match rest {
                [] => (None, None),
                [op] if *op == "wrapkey" || *op == "unwrapkey" => (None, Some(*op)),
                [v] => (Some(*v), None),
                [v, op] => (Some(*v), Some(*op)),
                _ => return kv_error(400, "BadParameter", "bad path"),
            };
            let found = match version {
                None => versions.last(),
                Some(v) => versions.iter().find(|x| x.id.ends_with(&format!("/{v}"))),
            };
            let Some(ver) = found else {
                return kv_error(
                    404,
                    "KeyNotFound",
                    &format!(
                        "A key with (name/id) {name}/{} was not found in this key vault.",
                        version.unwrap_or("")
                    ),
                );
            };
            match (method.as_str(), op) {
                ("GET", None) => reply(
                    200,
                    json!({
                        "key": {"kid": ver.id, "kty": "RSA", "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
                                "n": B64URL.encode(&ver.n), "e": "AQAB"},
                        "attributes": {"enabled": ver.enabled, "created": 1_700_000_000, "updated": 1_700_000_000,
                                       "recoveryLevel": "Recoverable+Purgeable"}
                    }),
                ),
                ("POST", Some(op)) => {
                    if !ver.enabled {
                        let name = if op == "wrapkey" {
                            "wrapKey"
                        } else {
                            "unwrapKey"
                        };
                        return kv_error(
                            403,
                            "Forbidden",
                            &format!("Operation \"{name}\" is not allowed on a disabled key."),
                        );
                    }
                    let Ok(p) = serde_json::from_slice::<Value>(&body) else {
                        return kv_error(400, "BadParameter", "the request body is not JSON");
                    };
                    if p["alg"] != "RSA-OAEP-256" {
                        return kv_error(400, "BadParameter", "Invalid algorithm");
                    }
                    let Some(value) = p["value"]
                        .as_str()
                        .and_then(|v| B64URL.decode(v.trim_end_matches('=')).ok())
                    else {
                        return kv_error(400, "BadParameter", "Property value is required");
                    };
                    let result = if op == "wrapkey" {
                        let mut out = vec![0u8; ver.public.ciphertext_size()];
                        ver.public
                            .encrypt(&OAEP_SHA256_MGF1SHA256, &value, &mut out, None)
                            .map(|c| c.to_vec())
                            .ok()
                    } else {
                        let mut out = vec![0u8; ver.private.key_size_bytes()];
                        ver.private
                            .decrypt(&OAEP_SHA256_MGF1SHA256, &value, &mut out, None)
                            .map(|c| c.to_vec())
                            .ok()
                    };
                    match result {
                        Some(r) => reply(200, json!({"kid": ver.id, "value": B64URL.encode(r)})),
                        None => kv_error(400, "BadParameter", "Error occurred while decrypting."),
                    }
                }
                _ => kv_error(405, "MethodNotAllowed", "method not allowed"),
            }
        }
        _ => kv_error(404, "NotFound", "no such path"),
    }
}

fn url_form(body: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The daemon's environment: the fake's CA trusted through `tls_ca_file`, Entra ID at the fake,
/// no managed identity endpoint, no Azure variables from the host.
fn azure_env(c: &mut Command, vault: &FakeVault) {
    for v in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_ENVIRONMENT",
        "AZURE_AD_RESOURCE",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "VAULT_AZUREKEYVAULT_VAULT_NAME",
        "VAULT_AZUREKEYVAULT_KEY_NAME",
        "AZUREKEYVAULT_WRAPPER_VAULT_NAME",
        "AZUREKEYVAULT_WRAPPER_KEY_NAME",
    ] {
        c.env_remove(v);
    }
    c.env("AZURE_AUTHORITY_HOST", vault.url());
}

fn azure_seal(vault: &FakeVault, extra: &str) -> String {
    format!(
        "[[seal]]\ntype = \"azurekeyvault\"\nname = \"azure\"\nendpoint = \"{}\"\nkey_name = \"unseal\"\n\
         tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\ntls_ca_file = \"{}\"\ntimeout = \"3s\"\n{extra}\n",
        vault.url(),
        vault.ca().display()
    )
}

fn start(f: &Fixture, vault: &FakeVault, secret: &str) -> Daemon {
    f.start_with(|c| {
        azure_env(c, vault);
        c.env("AZURE_CLIENT_SECRET", secret);
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

fn vault_member(st: &Value) -> Value {
    seal_info(st, "azure")["members"][0].clone()
}

#[test]
fn init_restart_and_the_envelope_is_bound_and_unwrapped_by_the_vault() {
    let vault = FakeVault::start();
    let kid = vault.add_version("unseal");
    let f = Fixture::new();
    f.set_seals(&azure_seal(&vault, ""));
    let mut d = start(&f, &vault, SECRET);
    d.init();
    let st = d.status_json();
    assert_eq!(st["unsealed_by_seal"], "azure", "{st:#}");
    let s = seal_info(&st, "azure");
    assert_eq!(s["type"], "azurekeyvault");
    assert_eq!(s["wrapped_by_key"], kid.as_str(), "{st:#}");
    assert_eq!(s["wrapped_by_configured_key"], true);
    assert_eq!(
        s["credentials_from"],
        format!("client secret (env AZURE_CLIENT_SECRET) of client {CLIENT}")
    );
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "azure");
    d.stop();
    // The SDK answered the challenge, got a token from the authority, and wrapped with the latest
    // version (the path without a version, as the Rust SDK sends it).
    let log = vault.requests();
    assert!(
        log.iter()
            .any(|r| r == &format!("POST /{TENANT}/oauth2/v2.0/token")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|r| r.starts_with("POST /keys/unseal//wrapkey")
                || r.starts_with("POST /keys/unseal/wrapkey")),
        "{log:?}"
    );
    let state = std::fs::read_to_string(f.state_path()).unwrap();
    assert!(state.contains(&kid), "the blob records the key version");

    let d = start(&f, &vault, SECRET);
    d.wait_health(200, Duration::from_secs(20));
    assert_eq!(d.status_json()["unsealed_by_seal"], "azure");
    tp.assert_decrypts(&d, &ct, "azure");
    let unwraps: Vec<String> = vault
        .requests()
        .into_iter()
        .filter(|r| r.contains("unwrapkey"))
        .collect();
    let version = kid.rsplit('/').next().unwrap();
    assert!(
        unwraps.iter().any(|r| r.contains(version)),
        "unwrapped with the recorded version: {unwraps:?}"
    );
    assert!(!d.log().contains(SECRET), "the client secret was logged");
}

#[test]
fn a_rotated_key_keeps_old_blobs_and_rewrap_moves_to_the_latest_version() {
    let vault = FakeVault::start();
    let v1 = vault.add_version("unseal");
    let f = Fixture::new();
    f.set_seals(&azure_seal(&vault, ""));
    let mut d = start(&f, &vault, SECRET);
    d.init();
    d.stop();
    let v2 = vault.add_version("unseal");
    let d = start(&f, &vault, SECRET);
    d.wait_health(200, Duration::from_secs(20));
    let st = d.wait_status("the new version seen", Duration::from_secs(20), |s| {
        seal_info(s, "azure")["wrapped_by_configured_key"] == false
    });
    assert_eq!(seal_info(&st, "azure")["wrapped_by_key"], v1.as_str());
    let out = d.operator_ok(&["rewrap"]);
    assert!(out.contains(&v2), "{out}");
    let st = d.status_json();
    assert_eq!(
        seal_info(&st, "azure")["wrapped_by_key"],
        v2.as_str(),
        "{st:#}"
    );
    assert_eq!(seal_info(&st, "azure")["wrapped_by_configured_key"], true);
}

#[test]
fn denied_disabled_throttled_and_away_are_told_apart() {
    let vault = FakeVault::start();
    vault.add_version("unseal");
    let f = Fixture::new();
    f.set_seals(&azure_seal(&vault, "denied_retry = \"1h\""));
    let mut d = start(&f, &vault, SECRET);
    d.init();
    d.stop();

    // A wrong client secret: no token, denied, not asked again by the retries.
    let mut d = start(&f, &vault, "not-the-secret");
    let st = d.wait_unseal_attempts(3);
    assert_eq!(d.health("").status, 503);
    let m = vault_member(&st);
    assert_eq!(m["state"], "denied", "{st:#}");
    let tokens = vault
        .requests()
        .iter()
        .filter(|r| r.contains("oauth2"))
        .count();
    d.wait_unseal_attempts(5);
    assert_eq!(
        vault
            .requests()
            .iter()
            .filter(|r| r.contains("oauth2"))
            .count(),
        tokens,
        "asked again"
    );
    d.stop();

    // The identity lacks the key permissions: 403, denied, with what to grant.
    vault.set_mode(Mode::Deny);
    let mut d = start(&f, &vault, SECRET);
    let st = d.wait_unseal_attempts(2);
    assert_eq!(vault_member(&st)["state"], "denied", "{st:#}");
    let e = d.last_unseal_error();
    assert!(e.contains("wrapKey and unwrapKey"), "{e}");
    d.stop();

    // The key is disabled: key_unavailable, with how to enable it.
    vault.set_mode(Mode::Normal);
    vault.set_enabled("unseal", false);
    let mut d = start(&f, &vault, SECRET);
    let st = d.wait_unseal_attempts(2);
    assert_eq!(vault_member(&st)["state"], "key_unavailable", "{st:#}");
    assert!(
        d.last_unseal_error().contains("--enabled true"),
        "{}",
        d.last_unseal_error()
    );
    d.stop();

    // Throttled: retried (not held), and it unseals once the vault answers again.
    vault.set_enabled("unseal", true);
    vault.set_mode(Mode::Throttle);
    let d = start(&f, &vault, SECRET);
    let st = d.wait_unseal_attempts(2);
    assert_eq!(vault_member(&st)["state"], "throttled", "{st:#}");
    vault.set_mode(Mode::Normal);
    d.wait_health(200, Duration::from_secs(20));
    drop(d);

    // Away at start: the vault (and Entra ID) behind a relay that is down. Sealed and retrying,
    // not crashed; it unseals when the vault returns.
    let mut relay = Relay::start(vault.port);
    let via = format!("https://127.0.0.1:{}", relay.port);
    f.set_seals(&azure_seal(&vault, "").replace(&vault.url(), &via));
    relay.down();
    let d = f.start_with(|c| {
        azure_env(c, &vault);
        c.env("AZURE_CLIENT_SECRET", SECRET)
            .env("AZURE_AUTHORITY_HOST", &via);
    });
    let st = d.wait_unseal_attempts(3);
    assert_eq!(d.health("").status, 503);
    assert_eq!(vault_member(&st)["healthy"], false, "{st:#}");
    assert!(
        d.last_unseal_error().contains("cannot reach"),
        "{}",
        d.last_unseal_error()
    );
    relay.up();
    d.wait_health(200, Duration::from_secs(30));
}

#[test]
fn migration_from_the_hsm_pair_to_the_vault_and_back() {
    let vault = FakeVault::start();
    vault.add_version("unseal");
    let f = Fixture::new();
    let azure = azure_seal(&vault, "");
    f.migrate_from_the_pair_and_back(
        &azure,
        "azure",
        || start(&f, &vault, SECRET),
        || vault.set_mode(Mode::Deny),
    );
}
#[test]
fn the_local_key_vault_is_faithful_to_microsofts_python_sdk() {
    let vault = FakeVault::start();
    let kid = vault.add_version("unseal");
    let script = format!(
        "import base64, os\n\
         from azure.identity import ClientSecretCredential\n\
         from azure.keyvault.keys import KeyClient\n\
         from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm\n\
         cred = ClientSecretCredential('{TENANT}', '{CLIENT}', '{SECRET}', authority='{url}', \
           disable_instance_discovery=True, connection_verify='{ca}')\n\
         kc = KeyClient('{url}', cred, verify_challenge_resource=False, connection_verify='{ca}')\n\
         key = kc.get_key('unseal')\n\
         assert key.id == '{kid}', key.id\n\
         cc = CryptographyClient(key, cred, verify_challenge_resource=False, connection_verify='{ca}')\n\
         secret = os.urandom(32)\n\
         w = cc.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, secret)\n\
         u = cc.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, w.encrypted_key)\n\
         assert u.key == secret\n\
         print('ok', str(key.key_type).upper())\n",
        url = vault.url(),
        ca = vault.ca().display(),
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env_remove("AZURE_AUTHORITY_HOST")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.starts_with("ok ") && said.contains("RSA"), "{said}");
    let log = vault.requests();
    assert!(
        log.iter()
            .any(|r| r.starts_with("POST /keys/unseal/") && r.ends_with("/unwrapkey")),
        "{log:?}"
    );
}

#[test]
fn an_inline_client_secret_works_is_warned_about_and_never_shown_and_seal_probe_checks_the_vault() {
    let vault = FakeVault::start();
    vault.add_version("unseal");
    let f = Fixture::new();
    f.set_seals(&azure_seal(
        &vault,
        &format!("client_secret = \"{SECRET}\""),
    ));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut d = f.start_with(|c| azure_env(c, &vault));
    d.init();
    let st = d.status_json();
    assert_eq!(
        seal_info(&st, "azure")["credentials_from"],
        format!("client secret (config client_secret) of client {CLIENT}"),
        "{st:#}"
    );
    assert!(
        d.log()
            .contains("client_secret in the config file; this is discouraged"),
        "{}",
        d.log()
    );
    d.stop();
    for text in [
        d.log(),
        st.to_string(),
        std::fs::read_to_string(f.path("audit.log")).unwrap(),
    ] {
        assert!(
            !text.contains(SECRET),
            "the client secret was shown: {text}"
        );
    }

    let probe = || f.seal_probe_json(|c| azure_env(c, &vault));
    let (code, v) = probe();
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["seals"][0]["members"][0]["round_trip_ok"], true, "{v:#}");
    vault.set_enabled("unseal", false);
    let (code, v) = probe();
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(
        v["seals"][0]["members"][0]["state"], "key_unavailable",
        "{v:#}"
    );

    std::fs::set_permissions(f.config_path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = f.start_fails();
    assert!(
        e.contains("inline cloud secret but is readable by group or others"),
        "{e}"
    );
}

#[test]
fn beside_the_hsm_pair_the_vault_unseals_when_the_pair_is_away() {
    let vault = FakeVault::start();
    vault.add_version("unseal");
    let f = Fixture::new();
    let pair = f.hsm_pair("priority = 1");
    f.set_seals(&format!("{pair}{}", azure_seal(&vault, "priority = 2")));
    let mut d = start(&f, &vault, SECRET);
    d.init();
    let st = d.status_json();
    assert_eq!(st["unsealed_by_seal"], "hsm-pair", "{st:#}");
    assert_eq!(seal_info(&st, "azure")["wrapping_current"], true, "{st:#}");
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "pair and vault");
    d.stop();
    let _a = f.remove_token("sealkeeper-a");
    let _b = f.remove_token("sealkeeper-b");
    let d = start(&f, &vault, SECRET);
    d.wait_health(200, Duration::from_secs(20));
    assert_eq!(d.status_json()["unsealed_by_seal"], "azure");
    tp.assert_decrypts(&d, &ct, "pair and vault");
}
