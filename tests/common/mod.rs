//! Test harness: every test gets its own SoftHSMv2 token pair (provisioned by the real
//! scripts/setup-softhsm.sh into a temp dir with its own SOFTHSM2_CONF), its own storage, admin
//! socket and loopback port, and runs the real `sealkeeper` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_sealkeeper");

pub fn module() -> String {
    std::env::var("TEST_PKCS11_MODULE").unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into())
}

/// A loopback port no other test of this process was given (ports are not reused between a
/// fixture's daemon restarts and another test's bind).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Whether something listens on 127.0.0.1:`port`. The ports tests use come from the ephemeral
/// range, so a connect to a port nobody listens on yet can pick that same port as its own source
/// and connect to itself (TCP simultaneous open): such a connection is not a listener.
pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port))
        .and_then(|s| Ok(s.local_addr()? != s.peer_addr()?))
        .unwrap_or(false)
}

/// Polls `check` until it gives a value, for at most `within`; then fails with `explain()`. The
/// one place tests wait on observable state (a file, a log line, a port, a process).
pub fn wait_for<T>(
    within: Duration,
    check: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    wait_for_every(Duration::from_millis(20), within, check, explain)
}

/// [`wait_for`], checking every `poll` (for checks that start a process).
pub fn wait_for_every<T>(
    poll: Duration,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("waited {within:?}: {}", explain());
        }
        std::thread::sleep(poll);
    }
}

/// The storage key of the seal state.
pub const STATE_KEY: &str = "core/seal/state";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Fixture {
    /// A fresh token pair and a config with TLS disabled and fast retries.
    pub fn new() -> Fixture {
        let f = Fixture::with_tls();
        f.edit_config(|c| {
            c.replace("tls_cert_file", "# tls_cert_file")
                .replace("tls_key_file", "# tls_key_file")
                .replace("[admin]", "tls_disable = true\n\n[admin]")
        });
        f
    }

    /// A fresh token pair and the config exactly as setup-softhsm.sh writes it (TLS on), with fast
    /// retries.
    pub fn with_tls() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("sk-test-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup-softhsm.sh");
        let out = Command::new("bash")
            .arg(script)
            .args([
                "--dir",
                dir.path().to_str().unwrap(),
                "--port",
                &port.to_string(),
                "--no-install",
            ])
            .env("SEALKEEPER_PKCS11_MODULE", module())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "setup-softhsm.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = Fixture { dir, port };
        for m in ["a", "b"] {
            std::fs::copy(
                f.path(&format!("hsm-{m}.pin")),
                f.path(&format!("orig-hsm-{m}.pin")),
            )
            .unwrap();
        }
        f.edit_config(|c| {
            c.replace("retry_initial = \"1s\"", "retry_initial = \"100ms\"")
                .replace("retry_max = \"60s\"", "retry_max = \"400ms\"")
                .replace("probe_interval = \"30s\"", "probe_interval = \"200ms\"")
        });
        f
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The user PIN of member `m` ("a" or "b") as the fixture currently has it.
    pub fn pin(&self, m: &str) -> String {
        std::fs::read_to_string(self.path(&format!("hsm-{m}.pin")))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("sealkeeper.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("admin.sock")
    }

    pub fn softhsm_conf(&self) -> PathBuf {
        self.path("softhsm2.conf")
    }

    pub fn config(&self) -> String {
        std::fs::read_to_string(self.config_path()).unwrap()
    }

    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let new = f(self.config());
        std::fs::write(self.config_path(), new).unwrap();
    }

    /// The token directory of the token with this label (SoftHSM keeps one directory per token).
    ///
    /// SoftHSM rewrites `token.object` in place (truncate, then write) while the daemon uses the
    /// token, so one read can catch it empty: look again until the label shows, within 5 s.
    pub fn token_dir(&self, label: &str) -> PathBuf {
        let tokens = self.path("tokens");
        wait_for(
            Duration::from_secs(5),
            || {
                std::fs::read_dir(&tokens)
                    .unwrap()
                    .map(|entry| entry.unwrap().path())
                    .find(|p| {
                        std::fs::read(p.join("token.object"))
                            .is_ok_and(|b| b.windows(label.len()).any(|w| w == label.as_bytes()))
                    })
            },
            || format!("no token directory for {label} in {}", tokens.display()),
        )
    }

    /// Moves a token out of SoftHSM's token directory (the HSM "disappears") and returns where it went.
    pub fn remove_token(&self, label: &str) -> PathBuf {
        let from = self.token_dir(label);
        let to = self.path(&format!("removed-{label}"));
        std::fs::rename(&from, &to).unwrap();
        to
    }

    pub fn restore_token(&self, parked: &Path) {
        let to = self.path("tokens").join(format!(
            "restored-{}",
            parked.file_name().unwrap().to_string_lossy()
        ));
        std::fs::rename(parked, to).unwrap();
    }

    /// The file of the stored seal state (every wrapping of the root key, the keyring, the
    /// shares' verifier), for the tests of the file store itself (damaged, truncated or copied
    /// files); other tests read and write it with [`Fixture::read_state`] / [`Fixture::write_state`].
    pub fn state_path(&self) -> PathBuf {
        self.path("data/data/core/seal/state")
    }

    /// The stored seal state's revision and JSON, read through the storage API (without the
    /// directory's lock: safe while a daemon runs, records are replaced by rename).
    pub fn read_state(&self) -> (u64, Value) {
        let rec = self.read_record(STATE_KEY).expect("a stored seal state");
        (rec.revision, serde_json::from_slice(&rec.value).unwrap())
    }

    /// A stored record, read through the storage API (see [`Fixture::read_state`]).
    pub fn read_record(&self, key: &str) -> Option<sealkeeper::storage::Record> {
        sealkeeper::storage::file::inspect(&self.path("data"), key).unwrap()
    }

    /// Replaces a stored record through the storage API, expecting it at `revision`; the daemon
    /// must be stopped.
    pub fn write_record(&self, key: &str, value: &[u8], revision: u64) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = sealkeeper::storage::FileStorage::open(&self.path("data")).unwrap();
        rt.block_on(sealkeeper::storage::Storage::put(
            &store,
            key,
            value,
            sealkeeper::storage::Expect::Revision(revision),
        ))
        .unwrap();
    }

    /// Replaces the stored seal state through the storage API, expecting it at `revision`. The
    /// daemon must be stopped (the store is locked while it runs).
    pub fn write_state(&self, revision: u64, state: &Value) {
        self.write_record(STATE_KEY, &serde_json::to_vec(state).unwrap(), revision);
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("SOFTHSM2_CONF", self.softhsm_conf())
            .env("SEALKEEPER_LOG", "info,sealkeeper=debug");
        c
    }

    /// Runs `sealkeeper server` with this fixture's config, expects it to refuse to start, and
    /// returns its stderr.
    pub fn start_fails(&self) -> String {
        let out = self
            .command()
            .arg("server")
            .arg("--config")
            .arg(self.config_path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "the daemon started");
        stderr(&out)
    }

    pub fn start(&self) -> Daemon {
        self.start_with(|_| {})
    }

    /// `sealkeeper seal probe --format json` on this fixture's config (no daemon), with `tweak`
    /// setting the environment; returns the exit code and the JSON report.
    pub fn seal_probe_json(&self, tweak: impl FnOnce(&mut Command)) -> (i32, Value) {
        let mut c = self.command();
        tweak(&mut c);
        let out = c
            .args(["seal", "probe", "--format", "json", "--config"])
            .arg(self.config_path())
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stderr(&out)));
        (out.status.code().unwrap(), v)
    }

    pub fn start_with(&self, tweak: impl FnOnce(&mut Command)) -> Daemon {
        let log_path = self.path(&format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = self.command();
        cmd.arg("server")
            .arg("--config")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log);
        tweak(&mut cmd);
        let child = cmd.spawn().unwrap();
        let d = Daemon {
            child: Some(child),
            port: self.port,
            socket: self.socket(),
            log_path,
            softhsm_conf: self.softhsm_conf(),
        };
        d.wait_listening();
        d
    }
}

pub struct Daemon {
    pub child: Option<Child>,
    pub port: u16,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    pub softhsm_conf: PathBuf,
}

pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A minimal HTTP/1.1 client for the plain-text listener used by most tests.
pub fn http(port: u16, method: &str, path: &str) -> std::io::Result<HttpResponse> {
    http_with(port, method, path, None, b"")
}

/// The same, with an optional X-Vault-Token and a body.
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("X-Vault-Token: {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: keep only the JSON object.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body,
    };
    Ok(HttpResponse { status, body })
}

impl Daemon {
    fn wait_listening(&self) {
        // bind(2) creates the socket file before listen(2): readiness is a connection that is
        // accepted, on both listeners.
        wait_for(
            Duration::from_secs(20),
            || {
                (listening(self.port)
                    && std::os::unix::net::UnixStream::connect(&self.socket).is_ok())
                .then_some(())
            },
            || format!("daemon did not start listening; log:\n{}", self.log()),
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn health(&self, query: &str) -> HttpResponse {
        http(self.port, "GET", &format!("/v1/sys/health{query}")).unwrap()
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http(self.port, "GET", path).unwrap()
    }

    /// `PUT path` with a client token and a JSON body (plain-HTTP listener).
    pub fn put(&self, path: &str, token: &str, body: &Value) -> HttpResponse {
        http_with(
            self.port,
            "PUT",
            path,
            Some(token),
            body.to_string().as_bytes(),
        )
        .unwrap()
    }

    /// Waits until sys/health answers `code`.
    pub fn wait_health(&self, code: u16, within: Duration) {
        let last = std::cell::Cell::new(0);
        wait_for_every(
            Duration::from_millis(50),
            within,
            || {
                last.set(self.health("").status);
                (last.get() == code).then_some(())
            },
            || {
                format!(
                    "health stayed {}, expected {code}; log:\n{}",
                    last.get(),
                    self.log()
                )
            },
        );
    }

    pub fn operator(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("operator")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .output()
            .unwrap()
    }

    /// Runs an operator command that must succeed and returns its stdout.
    pub fn operator_ok(&self, args: &[&str]) -> String {
        let out = self.operator(args);
        assert!(
            out.status.success(),
            "operator {args:?} failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A raw request on the admin socket with curl, as an operator would send it.
    pub fn admin_curl(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&self.socket)
            .args(["-X", method]);
        if let Some(b) = body {
            c.args(["-d", b]);
        }
        let out = c.arg(format!("http://localhost{path}")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        HttpResponse {
            status: code.trim().parse().unwrap_or(0),
            body: body.to_string(),
        }
    }

    /// The status's `last_unseal_error` ("" when there is none).
    pub fn last_unseal_error(&self) -> String {
        self.status_json()["last_unseal_error"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// `operator ARGS --format json`, which must succeed, as JSON.
    pub fn operator_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--format", "json"]);
        let out = self.operator_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
    }

    /// `operator init` of a shamir seal (3 unseal keys, threshold 2); returns the keys (base64).
    pub fn init_shamir(&self) -> Vec<String> {
        let v = self.operator_json(&["init", "--key-shares", "3", "--key-threshold", "2"]);
        assert!(
            v["recovery_keys"].as_array().unwrap().is_empty(),
            "a shamir seal hands out unseal keys, not recovery keys: {v}"
        );
        strings(&v["keys_base64"])
    }

    pub fn status_json(&self) -> Value {
        let out = self.operator_ok(&["status", "--format", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out:?}"))
    }

    pub fn init(&self) -> Value {
        serde_json::from_str(&self.operator_ok(&[
            "init",
            "--recovery-shares",
            "3",
            "--recovery-threshold",
            "2",
            "--format",
            "json",
        ]))
        .unwrap()
    }

    /// `operator init` with one share, which must fail; returns its stderr.
    pub fn init_fails(&self) -> String {
        let out = self.operator(&[
            "init",
            "--recovery-shares",
            "1",
            "--recovery-threshold",
            "1",
        ]);
        assert!(!out.status.success(), "init succeeded");
        stderr(&out)
    }

    /// `operator token create --policy POLICY [EXTRA]`; returns the token.
    pub fn token(&self, policy: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--policy", policy, "--format", "json"];
        args.extend_from_slice(extra);
        let out: Value = serde_json::from_str(&self.operator_ok(&args)).unwrap();
        out["client_token"].as_str().unwrap().to_string()
    }

    /// A policy `policy` allowing `capabilities` (comma-separated) on `key`, and a token for it.
    pub fn policy_and_token(&self, policy: &str, key: &str, capabilities: &str) -> String {
        self.operator_ok(&[
            "policy",
            "write",
            policy,
            "--key",
            key,
            "--capabilities",
            capabilities,
        ]);
        self.token(policy, &[])
    }

    /// Waits until `pred` holds for `operator status --format json`.
    pub fn wait_status(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        wait_for_every(
            Duration::from_millis(50),
            within,
            || {
                let st = self.status_json();
                let hit = pred(&st).then(|| st.clone());
                *last.borrow_mut() = st;
                hit
            },
            || {
                format!(
                    "status never showed {what}; last: {:#}\nlog:\n{}",
                    last.borrow(),
                    self.log()
                )
            },
        )
    }

    /// Waits until the daemon has made at least `n` unseal attempts since it started (the first is
    /// made at start; automatic retries follow with backoff): what "it stays sealed" is checked
    /// after, instead of a fixed sleep.
    pub fn wait_unseal_attempts(&self, n: u64) -> Value {
        self.wait_status(
            &format!("{n} unseal attempts"),
            Duration::from_secs(30),
            |s| s["unseal_attempts"].as_u64().unwrap_or(0) >= n,
        )
    }

    /// Waits until `more` further health probe rounds have completed.
    pub fn wait_probe_rounds(&self, more: u64) -> Value {
        let now = self.status_json()["probe_rounds"].as_u64().unwrap_or(0);
        self.wait_status(
            &format!("{more} more probe rounds"),
            Duration::from_secs(30),
            |s| s["probe_rounds"].as_u64().unwrap_or(0) >= now + more,
        )
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe_free_kill(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not exit after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends a signal with kill(1): the tests need no unsafe code.
pub fn unsafe_free_kill(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn member<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["seal"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap()
}

/// This process's uid, as `admin.allowed_uids` names it.
pub fn current_uid() -> String {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

impl Fixture {
    fn run_tool(&self, program: &str, args: &[&str]) {
        let out = Command::new(program)
            .args(args)
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            stderr(&out)
        );
    }

    /// `pkcs11-tool --module M --token-label TOKEN --login --pin PIN ARGS` (the PIN of the member
    /// the token is named after).
    fn pkcs11_tool(&self, token: &str, args: &[&str]) {
        let pin = self.pin(token.trim_start_matches("sealkeeper-"));
        let module = module();
        let mut all = vec![
            "--module",
            &module,
            "--token-label",
            token,
            "--login",
            "--pin",
            &pin,
        ];
        all.extend_from_slice(args);
        self.run_tool("pkcs11-tool", &all);
    }

    /// Imports one new random AES-256 key (sensitive, non-extractable) into each of `tokens`, as
    /// an HA pair holds it.
    pub fn add_key(&self, tokens: &[&str], key_label: &str, key_id: &str) {
        let keyfile = self.path(&format!(".key-{key_label}"));
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut key)
            .unwrap();
        std::fs::write(&keyfile, key).unwrap();
        for t in tokens {
            self.pkcs11_tool(
                t,
                &[
                    "--write-object",
                    keyfile.to_str().unwrap(),
                    "--type",
                    "secrkey",
                    "--key-type",
                    "AES:32",
                    "--label",
                    key_label,
                    "--id",
                    key_id,
                    "--sensitive",
                    "--usage-decrypt",
                ],
            );
        }
        std::fs::remove_file(keyfile).unwrap();
    }

    /// Deletes a key from each of `tokens`.
    pub fn delete_key(&self, tokens: &[&str], key_label: &str) {
        for t in tokens {
            self.pkcs11_tool(
                t,
                &["--delete-object", "--type", "secrkey", "--label", key_label],
            );
        }
    }

    /// A second HA pair: tokens sealkeeper-c and sealkeeper-d (PINs in hsm-c.pin, hsm-d.pin)
    /// holding their own AES-256 key `key_label` (id 01), different from the first pair's.
    pub fn add_second_pair(&self, key_label: &str) {
        let so = std::fs::read_to_string(self.path("so.pin")).unwrap();
        for m in ["c", "d"] {
            let pin_path = self.path(&format!("hsm-{m}.pin"));
            std::fs::write(&pin_path, format!("{m}1234567890")).unwrap();
            std::fs::set_permissions(
                &pin_path,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            let label = format!("sealkeeper-{m}");
            let pin = self.pin(m);
            self.run_tool(
                "softhsm2-util",
                &[
                    "--init-token",
                    "--free",
                    "--label",
                    &label,
                    "--so-pin",
                    so.trim(),
                    "--pin",
                    &pin,
                ],
            );
        }
        self.add_key(&["sealkeeper-c", "sealkeeper-d"], key_label, "01");
    }

    /// A `[[seal]]` pkcs11 block for `tokens` (member name = token label without the prefix).
    pub fn pkcs11_seal(&self, name: &str, tokens: &[&str], key_label: &str, extra: &str) -> String {
        let mut s = format!(
            "[[seal]]\ntype = \"pkcs11\"\nname = \"{name}\"\nkey_label = \"{key_label}\"\nmechanism = \"CKM_AES_GCM\"\n{extra}\n"
        );
        for t in tokens {
            let m = t.trim_start_matches("sealkeeper-");
            s.push_str(&format!(
                "  [[seal.hsm]]\n  name = \"hsm-{m}\"\n  lib = \"{}\"\n  token_label = \"{t}\"\n  pin_file = \"{}\"\n\n",
                module(),
                self.path(&format!("hsm-{m}.pin")).display()
            ));
        }
        s
    }

    /// A client CA (`ca.crt`) and a client certificate it signed (`client.crt`, `client.key`), and
    /// the listener set to require and verify client certificates from that CA.
    pub fn require_client_certificates(&self) {
        fn openssl(args: &[&str]) {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
        }
        let p = |n: &str| self.path(n).to_str().unwrap().to_string();
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
            "/CN=clients-ca",
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
            "/CN=vault-node-1",
            "-keyout",
            &p("client.key"),
            "-out",
            &p("client.csr"),
        ]);
        std::fs::write(self.path("ext.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("client.csr"),
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
            &p("client.crt"),
        ]);
        self.edit_config(|c| {
            c.replace(
                "\n[admin]",
                &format!(
                    "tls_client_ca_file = \"{}\"\ntls_require_and_verify_client_cert = true\n\n[admin]",
                    p("ca.crt")
                ),
            )
        });
    }

    /// Two HA pairs on the same PKCS#11 module as two seals: `primary` (tokens a, b; key
    /// sealkeeper-root; priority 1) and `secondary` (tokens c, d; key second-root; priority 2).
    pub fn two_seals() -> Fixture {
        let f = Fixture::new();
        f.add_second_pair("second-root");
        let seals = format!(
            "{}{}",
            f.pkcs11_seal(
                "primary",
                &["sealkeeper-a", "sealkeeper-b"],
                "sealkeeper-root",
                "priority = 1"
            ),
            f.pkcs11_seal(
                "secondary",
                &["sealkeeper-c", "sealkeeper-d"],
                "second-root",
                "priority = 2"
            )
        );
        f.set_seals(&seals);
        f
    }

    /// The fixture's HSM pair (tokens a and b, key sealkeeper-root) as a seal named `hsm-pair`.
    pub fn hsm_pair(&self, extra: &str) -> String {
        self.pkcs11_seal(
            "hsm-pair",
            &["sealkeeper-a", "sealkeeper-b"],
            "sealkeeper-root",
            extra,
        )
    }

    /// Seal migration from the HSM pair to `other` (one `[[seal]]` section, named `other_name`)
    /// and back, as an operator does it: the old seal kept with `disabled = true`, a quorum of
    /// recovery keys with `unseal --migrate`, then the old seal removed. After each way the new
    /// seal alone unseals (the pair's tokens are away, or `away` has taken the other seal's service
    /// away) and a transit ciphertext made before still decrypts. `start` starts the daemon with
    /// the environment the other seal needs.
    pub fn migrate_from_the_pair_and_back(
        &self,
        other: &str,
        other_name: &str,
        start: impl Fn() -> Daemon,
        away: impl FnOnce(),
    ) {
        let pair = self.hsm_pair("");
        self.set_seals(&pair);
        let mut d = start();
        let recovery = strings(&d.init()["recovery_keys_base64"]);
        let mut tp = TransitProbe::new(&d);
        let ct = tp.encrypt(&d, "moving");
        d.stop();
        let migrate = |seals: String| {
            self.set_seals(&seals);
            let mut d = start();
            d.wait_unseal_attempts(1);
            assert_eq!(d.get("/v1/sys/seal-status").json()["migration"], true);
            for k in &recovery[..2] {
                d.operator_ok(&["unseal", "--migrate", "--key", k]);
            }
            d.wait_health(200, Duration::from_secs(10));
            d.stop();
        };

        migrate(format!("{}{other}", disabled(&pair)));
        self.set_seals(other);
        let a = self.remove_token("sealkeeper-a");
        let b = self.remove_token("sealkeeper-b");
        let mut d = start();
        d.wait_health(200, Duration::from_secs(20));
        assert_eq!(d.status_json()["unsealed_by_seal"], other_name);
        tp.assert_decrypts(&d, &ct, "moving");
        d.stop();
        self.restore_token(&a);
        self.restore_token(&b);

        migrate(format!("{pair}{}", disabled(other)));
        self.set_seals(&pair);
        away();
        let d = start();
        d.wait_health(200, Duration::from_secs(20));
        assert_eq!(d.status_json()["unsealed_by_seal"], "hsm-pair");
        tp.assert_decrypts(&d, &ct, "moving");
    }

    /// Replaces every `[[seal]]` entry of the config with `seals`.
    pub fn set_seals(&self, seals: &str) {
        self.edit_config(|c| {
            let head = c.split("[[seal]]").next().unwrap().to_string();
            format!("{head}{seals}")
        });
    }
}

/// One `[[seal]]` section marked as the seal being migrated away from.
pub fn disabled(seal: &str) -> String {
    assert!(
        seal.starts_with("[[seal]]\n"),
        "not one [[seal]] section: {seal}"
    );
    seal.replacen("[[seal]]\n", "[[seal]]\ndisabled = true\n", 1)
}

/// A transit key `k`, a policy for it and a token: the seal tests use it to show that nothing
/// encrypted before an operation is lost after it.
pub struct TransitProbe {
    pub token: String,
    /// (ciphertext, plaintext) of every encryption so far.
    pub made: Vec<(String, String)>,
}

impl TransitProbe {
    pub fn new(d: &Daemon) -> TransitProbe {
        d.operator_ok(&["key", "create", "k"]);
        TransitProbe {
            token: d.policy_and_token("p", "k", "encrypt,decrypt"),
            made: vec![],
        }
    }

    fn call(&self, d: &Daemon, op: &str, body: Value) -> Value {
        let r = http_with(
            d.port,
            "PUT",
            &format!("/v1/transit/{op}/k"),
            Some(&self.token),
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{op}: {}", r.body);
        r.json()
    }

    pub fn encrypt(&mut self, d: &Daemon, plaintext: &str) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext);
        let v = self.call(d, "encrypt", serde_json::json!({ "plaintext": b64 }));
        let ct = v["data"]["ciphertext"].as_str().unwrap().to_string();
        self.made.push((ct.clone(), plaintext.to_string()));
        ct
    }

    pub fn assert_decrypts(&self, d: &Daemon, ct: &str, plaintext: &str) {
        use base64::Engine;
        let v = self.call(d, "decrypt", serde_json::json!({ "ciphertext": ct }));
        assert_eq!(
            v["data"]["plaintext"],
            base64::engine::general_purpose::STANDARD.encode(plaintext),
            "{ct} decrypted to something else"
        );
    }

    /// Every ciphertext made so far decrypts; then one more is made.
    pub fn check(&mut self, d: &Daemon, step: &str) {
        for (ct, pt) in &self.made {
            self.assert_decrypts(d, ct, pt);
        }
        self.encrypt(d, &format!("after {step}"));
    }
}

/// A JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// A TCP relay on a loopback port to `target`, which a test can take down (the listener closes and
/// every relayed connection is cut) and bring back on the same port: a KMS region or endpoint that
/// goes away and returns.
pub struct Relay {
    pub port: u16,
    target: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// While set, what the target sends is read and dropped: requests still arrive and are acted
    /// on, their answers are lost.
    mute: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(target: u16) -> Relay {
        Relay::start_to(std::net::SocketAddr::from(([127, 0, 0, 1], target)))
    }

    /// A relay from a loopback port to any address (a member in a test's network namespace).
    pub fn start_to(target: std::net::SocketAddr) -> Relay {
        let mut r = Relay {
            port: free_port(),
            target,
            stop: Default::default(),
            mute: Default::default(),
            thread: None,
        };
        r.up();
        r
    }

    /// From now on the target's answers are dropped (`true`) or relayed again (`false`).
    pub fn mute_answers(&self, mute: bool) {
        self.mute.store(mute, std::sync::atomic::Ordering::SeqCst);
    }

    /// Accepts again on the relay's port.
    pub fn up(&mut self) {
        use std::sync::atomic::Ordering;
        assert!(self.thread.is_none(), "the relay is already up");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.stop = stop.clone();
        let target = self.target;
        let mute = self.mute.clone();
        self.thread = Some(std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            // `down` sets the flag, then connects once to wake this accept.
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                    continue;
                };
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                for (mut from, mut to, answers) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        false,
                    ),
                    (server, client, true),
                ] {
                    let mute = mute.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            if answers && mute.load(Ordering::SeqCst) {
                                continue;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
            for s in open {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }));
    }

    /// Closes the listener and cuts every relayed connection.
    pub fn down(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = TcpStream::connect(("127.0.0.1", self.port));
            t.join().unwrap();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.down();
    }
}
