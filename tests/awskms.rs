//! The awskms seal against a real AWS KMS emulator (moto's server, on a loopback port of its own
//! per test) and the real daemon: init and restart, the EncryptionContext binding, KMS away at
//! start and back, denied credentials (moto enforces IAM once INITIAL_NO_AUTH_ACTION_COUNT
//! requests have passed), region failover to a multi-Region replica, the awskms seal beside the
//! HSM pair, rewrap to a new key, and migration between pkcs11 and awskms.
//!
//! Every request goes to 127.0.0.1: the daemon and the test's own boto3 client get static test
//! credentials, `AWS_EC2_METADATA_DISABLED=true`, empty AWS config files and loopback endpoints.
#![cfg(feature = "awskms")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::Value;

struct Moto {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Moto {
    fn start() -> Moto {
        Moto::start_with(&[])
    }

    fn start_with(env: &[(&str, &str)]) -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut c = Command::new("moto_server");
        c.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("moto.log")).unwrap());
        quiet_aws_env(&mut c, dir.path());
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; scripts/test.sh installs it)");
        let mut m = Moto { port, child, dir };
        // Ready is an HTTP answer from moto itself, not only a port that accepts.
        wait_for(
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = m.child.try_wait() {
                    let log = std::fs::read_to_string(m.dir.path().join("moto.log"));
                    panic!("moto_server exited ({status}) before answering: {log:?}");
                }
                http_with(port, "GET", "/moto-api/", None, b"")
                    .is_ok_and(|r| r.status > 0)
                    .then_some(())
            },
            || "moto_server did not answer HTTP".into(),
        );
        m
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `code` with boto3 clients `kms` (in `region`) and `iam` against this server, as the
    /// access key `creds`; `code` sets `out`, printed as JSON.
    fn py_as(&self, creds: (&str, &str), region: &str, code: &str) -> Result<Value, String> {
        let script = format!(
            "import boto3, json, base64\n\
             kw = dict(endpoint_url='{url}', aws_access_key_id='{ak}', aws_secret_access_key='{sk}')\n\
             kms = boto3.client('kms', region_name='{region}', **kw)\n\
             iam = boto3.client('iam', region_name='us-east-1', **kw)\n\
             out = None\n\
             {code}\n\
             print(json.dumps(out, default=str))\n",
            url = self.url(),
            ak = creds.0,
            sk = creds.1,
        );
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new("python3");
        c.arg("-c").arg(script);
        quiet_aws_env(&mut c, dir.path());
        let out = c.output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    }

    fn py(&self, region: &str, code: &str) -> Value {
        self.py_as(("testing", "testing"), region, code)
            .unwrap_or_else(|e| panic!("boto3 failed: {e}"))
    }

    /// A new symmetric key in `region`; returns its ARN.
    fn create_key(&self, region: &str) -> String {
        self.py(
            region,
            "out = kms.create_key(Description='sealkeeper test')['KeyMetadata']['Arn']",
        )
        .as_str()
        .unwrap()
        .to_string()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Static test credentials, no instance metadata, empty shared config files: nothing but the
/// loopback endpoints a test names is ever asked.
fn quiet_aws_env(c: &mut Command, dir: &std::path::Path) {
    for f in ["aws-config", "aws-credentials"] {
        std::fs::write(dir.join(f), "").unwrap();
    }
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_KMS")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_ROLE_ARN")
        .env_remove("AWSKMS_WRAPPER_KEY_ID")
        .env_remove("VAULT_AWSKMS_SEAL_KEY_ID")
        .env_remove("AWSKMS_ENDPOINT")
        .env_remove("AWS_KMS_ENDPOINT");
}

fn aws_seal(name: &str, key: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "[[seal]]\ntype = \"awskms\"\nname = \"{name}\"\nkms_key_id = \"{key}\"\nregion = \"us-east-1\"\n\
         endpoint = \"{endpoint}\"\ntimeout = \"3s\"\n{extra}\n"
    )
}

/// Starts the daemon with the quiet AWS environment (and `creds` as its environment credentials).
fn start(f: &Fixture, creds: (&str, &str)) -> Daemon {
    f.start_with(|c| {
        quiet_aws_env(c, f.dir.path());
        c.env("AWS_ACCESS_KEY_ID", creds.0)
            .env("AWS_SECRET_ACCESS_KEY", creds.1);
    })
}

/// A region (member) of a seal in `operator status`.
fn region<'a>(seal: &'a Value, name: &str) -> &'a Value {
    seal["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {seal:#}"))
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no member {name} in {seal:#}"))
}

fn seal_info<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["seals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no seal {name} in {status:#}"))
}

/// The awskms wrapping of the root key in the stored seal state.
fn stored_blob(f: &Fixture, seal: &str) -> Value {
    let (_, st) = f.read_state();
    fn find(v: &Value, seal: &str) -> Option<Value> {
        match v {
            Value::Object(m) => {
                if m.get("seal_type").and_then(Value::as_str) == Some("awskms")
                    && m.get("seal_name").and_then(Value::as_str) == Some(seal)
                {
                    return Some(v.clone());
                }
                m.values().find_map(|x| find(x, seal))
            }
            Value::Array(a) => a.iter().find_map(|x| find(x, seal)),
            Value::String(s) if s.starts_with('{') => serde_json::from_str::<Value>(s)
                .ok()
                .and_then(|x| find(&x, seal)),
            _ => None,
        }
    }
    find(&st, seal).unwrap_or_else(|| panic!("no awskms blob for {seal} in {st:#}"))
}

#[test]
fn init_and_restart_auto_unseal_and_the_blob_is_bound_to_its_context() {
    let moto = Moto::start();
    let arn = moto.create_key("us-east-1");
    let f = Fixture::new();
    f.set_seals(&aws_seal("aws", &arn, &moto.url(), ""));
    let mut d = start(&f, ("testing", "testing"));
    assert_eq!(d.health("").status, 501, "not initialized yet");
    d.init();
    d.wait_health(200, Duration::from_secs(10));
    let st = d.status_json();
    assert_eq!(st["unsealed_by_seal"], "aws", "{st:#}");
    let s = seal_info(&st, "aws");
    assert_eq!(s["type"], "awskms", "{st:#}");
    assert_eq!(s["wrapped_by_key"], arn.as_str(), "{st:#}");
    assert_eq!(s["wrapping_current"], true, "{st:#}");
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "cloud");
    d.stop();

    // Only KMS's ciphertext is stored, and KMS decrypts it only with the blob's context.
    let blob = stored_blob(&f, "aws");
    assert_eq!(blob["key_arn"], arn.as_str());
    assert_eq!(blob["wrapped_by"], "us-east-1");
    let ciphertext = blob["ciphertext"].as_str().unwrap();
    let aad = blob["aad"].as_str().unwrap();
    assert!(aad.contains("seal=awskms:aws"), "{aad}");
    let without = moto
        .py_as(
            ("testing", "testing"),
            "us-east-1",
            &format!("kms.decrypt(CiphertextBlob=base64.b64decode('{ciphertext}'))"),
        )
        .unwrap_err();
    assert!(without.contains("InvalidCiphertextException"), "{without}");
    let with = moto.py(
        "us-east-1",
        &format!(
            "out = len(kms.decrypt(CiphertextBlob=base64.b64decode('{ciphertext}'), \
             EncryptionContext={{'sealkeeper:aad': '{aad}'}})['Plaintext'])"
        ),
    );
    assert_eq!(with, 32, "a 256-bit root key");
    assert!(
        !std::fs::read_to_string(f.config_path())
            .unwrap()
            .contains("testing"),
        "no credentials in the config file"
    );

    // Every start unseals from KMS, with no operator.
    let d = start(&f, ("testing", "testing"));
    d.wait_health(200, Duration::from_secs(20));
    let st = d.status_json();
    assert_eq!(st["unsealed_by_seal"], "aws");
    assert_eq!(st["unsealed_by"], "us-east-1", "{st:#}");
    let s = seal_info(&st, "aws");
    assert_eq!(s["kms_key_id_from"], "config kms_key_id", "{st:#}");
    tp.assert_decrypts(&d, &ct, "cloud");

    // A stored ciphertext that was changed is refused by KMS: the node stays sealed and says so.
    drop(d);
    let (rev, mut state) = f.read_state();
    let mut raw = B64.decode(ciphertext).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let text = serde_json::to_string(&state)
        .unwrap()
        .replace(ciphertext, &B64.encode(&raw));
    state = serde_json::from_str(&text).unwrap();
    f.write_state(rev, &state);
    let d = start(&f, ("testing", "testing"));
    d.wait_unseal_attempts(1);
    assert_eq!(d.health("").status, 503);
    let e = d.last_unseal_error();
    assert!(e.contains("InvalidCiphertextException"), "{e}");
}

#[test]
fn kms_away_at_start_leaves_the_node_sealed_and_retrying_until_it_returns() {
    let moto = Moto::start();
    let arn = moto.create_key("us-east-1");
    let mut relay = Relay::start(moto.port);
    let f = Fixture::new();
    f.set_seals(&aws_seal(
        "aws",
        &arn,
        &format!("http://127.0.0.1:{}", relay.port),
        "",
    ));
    let mut d = start(&f, ("testing", "testing"));
    d.init();
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "kept");

    // A running node keeps serving when KMS goes away; the probe shows the region down.
    relay.down();
    d.wait_status("the region down", Duration::from_secs(30), |s| {
        region(seal_info(s, "aws"), "us-east-1")["healthy"] == false
    });
    assert_eq!(d.health("").status, 200);
    tp.assert_decrypts(&d, &ct, "kept");
    d.stop();

    // A restart while it is away: sealed (503), alive, retrying.
    let d = start(&f, ("testing", "testing"));
    let st = d.wait_unseal_attempts(3);
    assert_eq!(d.health("").status, 503, "{st:#}");
    let e = d.last_unseal_error();
    assert!(e.contains("us-east-1") && e.contains("cannot reach"), "{e}");
    let m = region(seal_info(&st, "aws"), "us-east-1");
    assert_eq!(m["healthy"], false, "{st:#}");

    // It returns: the node unseals by itself.
    relay.up();
    d.wait_health(200, Duration::from_secs(30));
    tp.assert_decrypts(&d, &ct, "kept");
}

#[test]
fn denied_credentials_leave_the_node_sealed_and_are_not_asked_again_and_again() {
    // moto enforces IAM after the first 7 requests: the ones that set up the key and users below.
    let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "7")]);
    let keys = moto.py(
        "us-east-1",
        "arn = kms.create_key()['KeyMetadata']['Arn']\n\
         users = {}\n\
         for name, actions in [('admin', ['kms:*']), ('reader', ['kms:DescribeKey', 'kms:Encrypt'])]:\n\
         \x20   iam.create_user(UserName=name)\n\
         \x20   iam.put_user_policy(UserName=name, PolicyName='p', PolicyDocument=json.dumps({'Version': '2012-10-17', \
         'Statement': [{'Effect': 'Allow', 'Action': actions, 'Resource': '*'}]}))\n\
         \x20   k = iam.create_access_key(UserName=name)['AccessKey']\n\
         \x20   users[name] = [k['AccessKeyId'], k['SecretAccessKey']]\n\
         out = {'arn': arn, 'users': users}",
    );
    let arn = keys["arn"].as_str().unwrap();
    let cred = |u: &str| {
        (
            keys["users"][u][0].as_str().unwrap().to_string(),
            keys["users"][u][1].as_str().unwrap().to_string(),
        )
    };
    let (admin, reader) = (cred("admin"), cred("reader"));
    // IAM is enforced now: unknown credentials are refused.
    let refused = moto
        .py_as(
            ("testing", "testing"),
            "us-east-1",
            &format!("kms.describe_key(KeyId='{arn}')"),
        )
        .unwrap_err();
    assert!(
        refused.contains("UnrecognizedClientException")
            || refused.contains("InvalidClientTokenId")
            || refused.contains("403"),
        "{refused}"
    );

    let f = Fixture::new();
    f.set_seals(&aws_seal("aws", arn, &moto.url(), "denied_retry = \"1h\""));
    let mut d = start(&f, (&admin.0, &admin.1));
    d.init();
    d.stop();

    // Credentials without kms:Decrypt: sealed, the region marked denied with what to check, and
    // the automatic retries do not ask KMS again.
    let mut d = start(&f, (&reader.0, &reader.1));
    let st = d.wait_unseal_attempts(4);
    assert_eq!(d.health("").status, 503);
    let m = region(seal_info(&st, "aws"), "us-east-1").clone();
    assert_eq!(m["state"], "denied", "{st:#}");
    assert!(m["retry_after_unix"].is_u64(), "{m}");
    let e = d.last_unseal_error();
    assert!(e.contains("kms:Decrypt"), "{e}");
    let asked = |log: &str| {
        log.lines()
            .filter(|l| l.contains("unwrap failed in region") && !l.contains("not asked again"))
            .count()
    };
    assert_eq!(asked(&d.log()), 1, "KMS was asked once:\n{}", d.log());
    assert!(d.log().contains("not asked again"), "{}", d.log());
    // An operator's unseal asks at once.
    let out = d.operator(&["unseal"]);
    assert!(!out.status.success());
    assert_eq!(asked(&d.log()), 2, "{}", d.log());
    d.stop();

    // Credentials KMS does not know at all: denied too, and said so.
    let d = start(&f, ("AKIAUNKNOWNUNKNOWN00", "nope"));
    let st = d.wait_unseal_attempts(2);
    assert_eq!(d.health("").status, 503);
    assert_eq!(
        region(seal_info(&st, "aws"), "us-east-1")["state"],
        "denied",
        "{st:#}"
    );
    drop(d);

    // The right credentials again: it unseals.
    let d = start(&f, (&admin.0, &admin.1));
    d.wait_health(200, Duration::from_secs(20));
}

/// Regions are tried in order, like the members of an HSM pair. In AWS the regions hold a
/// multi-Region key and its replicas; moto's replicas cannot decrypt (it answers
/// AccessDeniedException even in the replica's own region), so here an alias names a key in each
/// region, and the region that wraps is also the one that unwraps: the order, the fall-through at
/// wrap and at unwrap, and the health of the region that is away are what is checked.
#[test]
fn regions_are_tried_in_order_and_a_region_that_is_away_is_passed_over() {
    let moto = Moto::start();
    for r in ["us-east-1", "us-west-2"] {
        moto.py(
            r,
            "kms.create_alias(AliasName='alias/sealkeeper', TargetKeyId=kms.create_key()['KeyMetadata']['KeyId'])",
        );
    }
    let arn = "alias/sealkeeper";
    let mut relay = Relay::start(moto.port);
    let f = Fixture::new();
    f.set_seals(&format!(
        "[[seal]]\ntype = \"awskms\"\nname = \"aws\"\nkms_key_id = \"{arn}\"\n\
         regions = [\"us-east-1\", \"us-west-2\"]\ntimeout = \"3s\"\n\
         [seal.endpoints]\n\"us-east-1\" = \"http://127.0.0.1:{}\"\n\"us-west-2\" = \"{}\"\n",
        relay.port,
        moto.url()
    ));
    // The first region is away at init: the replica in the second wraps the root key.
    relay.down();
    let mut d = start(&f, ("testing", "testing"));
    d.init();
    let st = d.status_json();
    assert_eq!(st["unsealed_by"], "us-west-2", "{st:#}");
    let s = seal_info(&st, "aws");
    assert_eq!(s["wrapped_by_member"], "us-west-2", "{st:#}");
    assert_eq!(
        s["wrapped_by_configured_key"], true,
        "the replica is the configured key: {st:#}"
    );
    assert_eq!(region(s, "us-east-1")["healthy"], false, "{st:#}");
    let blob = stored_blob(&f, "aws");
    assert!(
        blob["key_arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:us-west-2:"),
        "{blob}"
    );
    d.stop();

    // A restart with the first region still away unseals from the second.
    let d = start(&f, ("testing", "testing"));
    d.wait_health(200, Duration::from_secs(20));
    let st = d.status_json();
    assert_eq!(st["unsealed_by"], "us-west-2", "{st:#}");
    // The first region returns: the probe shows it healthy again.
    relay.up();
    d.wait_status("us-east-1 healthy", Duration::from_secs(30), |s| {
        region(seal_info(s, "aws"), "us-east-1")["healthy"] == true
    });
}

#[test]
fn beside_the_hsm_pair_kms_unseals_when_the_pair_is_away_and_the_pair_is_rewrapped_on_return() {
    let moto = Moto::start();
    let arn = moto.create_key("us-east-1");
    let f = Fixture::new();
    let pair = f.hsm_pair("priority = 1");
    f.set_seals(&format!(
        "{pair}{}",
        aws_seal("aws", &arn, &moto.url(), "priority = 2")
    ));
    let mut d = start(&f, ("testing", "testing"));
    d.init();
    let st = d.status_json();
    assert_eq!(st["unsealed_by_seal"], "hsm-pair", "{st:#}");
    for s in ["hsm-pair", "aws"] {
        assert_eq!(seal_info(&st, s)["wrapping_current"], true, "{st:#}");
    }
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "both");
    d.stop();

    let a = f.remove_token("sealkeeper-a");
    let b = f.remove_token("sealkeeper-b");
    let d = start(&f, ("testing", "testing"));
    d.wait_health(200, Duration::from_secs(20));
    assert_eq!(d.status_json()["unsealed_by_seal"], "aws");
    // A new root key while the pair is away is wrapped by KMS only...
    d.operator(&["rotate-root"]);
    let st = d.status_json();
    assert_eq!(
        strings(&st["seals_missing_wrapping"]),
        vec!["hsm-pair"],
        "{st:#}"
    );
    // ...and by the pair when it returns, with no operator.
    f.restore_token(&a);
    f.restore_token(&b);
    d.wait_status("the pair wrapped again", Duration::from_secs(30), |s| {
        s["seals_missing_wrapping"]
            .as_array()
            .is_some_and(|m| m.is_empty())
    });
    tp.assert_decrypts(&d, &ct, "both");
}

#[test]
fn rewrap_moves_the_root_key_to_a_new_kms_key() {
    let moto = Moto::start();
    let old = moto.create_key("us-east-1");
    let new = moto.create_key("us-east-1");
    let f = Fixture::new();
    f.set_seals(&aws_seal("aws", &old, &moto.url(), ""));
    let mut d = start(&f, ("testing", "testing"));
    d.init();
    d.stop();

    // The configuration names a new key: the blob records the old one, which still unseals.
    f.set_seals(&aws_seal("aws", &new, &moto.url(), ""));
    let d = start(&f, ("testing", "testing"));
    d.wait_health(200, Duration::from_secs(20));
    let st = d.status_json();
    let s = seal_info(&st, "aws");
    assert_eq!(s["wrapped_by_key"], old.as_str(), "{st:#}");
    assert_eq!(s["wrapped_by_configured_key"], false, "{st:#}");
    let out = d.operator_ok(&["rewrap"]);
    assert!(out.contains(&new), "{out}");
    let st = d.status_json();
    let s = seal_info(&st, "aws");
    assert_eq!(s["wrapped_by_key"], new.as_str(), "{st:#}");
    assert_eq!(s["wrapped_by_configured_key"], true);
    assert_eq!(stored_blob(&f, "aws")["key_arn"], new.as_str());
}

#[test]
fn migration_from_the_hsm_pair_to_kms_and_back() {
    let moto = Moto::start();
    let arn = moto.create_key("us-east-1");
    let f = Fixture::new();
    let aws = aws_seal("aws", &arn, &moto.url(), "");
    f.migrate_from_the_pair_and_back(
        &aws,
        "aws",
        || start(&f, ("testing", "testing")),
        || drop(moto),
    );
}
#[test]
fn inline_credentials_work_warn_and_never_show_and_a_readable_file_is_refused() {
    let moto = Moto::start();
    let arn = moto.create_key("us-east-1");
    let f = Fixture::new();
    let secret = "wJalrXUtnFEMI-sealkeeper-test-secret";
    f.set_seals(&aws_seal(
        "aws",
        &arn,
        &moto.url(),
        &format!("access_key = \"AKIASEALKEEPERTEST01\"\nsecret_key = \"{secret}\""),
    ));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    // No credentials in the environment: the file's are the ones used.
    let mut d = f.start_with(|c| {
        quiet_aws_env(c, f.dir.path());
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
    });
    d.init();
    let st = d.status_json();
    let s = seal_info(&st, "aws");
    assert_eq!(
        s["credentials_from"], "config access_key/secret_key",
        "{st:#}"
    );
    let table = d.operator_ok(&["status"]);
    assert!(
        table.contains("Members of aws") && table.contains("us-east-1"),
        "{table}"
    );
    assert!(
        d.log()
            .contains("secret_key in the config file; this is discouraged"),
        "{}",
        d.log()
    );
    d.stop();
    for text in [
        d.log(),
        st.to_string(),
        table,
        std::fs::read_to_string(f.path("audit.log")).unwrap(),
    ] {
        assert!(!text.contains(secret), "the secret key was shown: {text}");
    }

    std::fs::set_permissions(f.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = f.start_fails();
    assert!(
        e.contains("inline cloud secret but is readable by group or others"),
        "{e}"
    );
    assert!(!e.contains(secret), "{e}");
}

#[test]
fn a_bad_awskms_section_is_refused_with_the_line_and_what_is_wrong() {
    let f = Fixture::new();
    f.set_seals(
        "[[seal]]\ntype = \"awskms\"\nname = \"aws\"\nkms_key_id = \"k\"\nregion = \"us-east-1\"\n\
         endpoint = \"http://kms.example.com\"\n",
    );
    let e = f.start_fails();
    assert!(
        e.contains("plain http to a host that is not loopback"),
        "{e}"
    );
    f.set_seals(
        "[[seal]]\ntype = \"awskms\"\nname = \"aws\"\nregion = \"us-east-1\"\nkms_key = \"k\"\n",
    );
    let e = f.start_fails();
    assert!(e.contains("kms_key"), "{e}");
    // The key id may come from the environment, as in Vault.
    f.set_seals("[[seal]]\ntype = \"awskms\"\nname = \"aws\"\nregion = \"us-east-1\"\n");
    let e = f.start_fails();
    assert!(e.contains("kms_key_id is required"), "{e}");
}

#[test]
fn seal_probe_checks_kms_reports_where_values_came_from_and_fails_when_kms_is_away() {
    let moto = Moto::start();
    let arn = moto.create_key("us-east-1");
    let mut relay = Relay::start(moto.port);
    let f = Fixture::new();
    // The file names a key that does not exist; the environment's key id wins, as in Vault.
    f.set_seals(&aws_seal(
        "aws",
        "alias/not-this-one",
        &format!("http://127.0.0.1:{}", relay.port),
        "",
    ));
    let probe = || {
        f.seal_probe_json(|c| {
            quiet_aws_env(c, f.dir.path());
            c.env("AWSKMS_WRAPPER_KEY_ID", &arn);
        })
    };
    let (code, v) = probe();
    assert_eq!(code, 0, "{v:#}");
    let s = &v["seals"][0];
    assert_eq!(s["detail"]["kms_key_id"], arn.as_str(), "{v:#}");
    assert_eq!(
        s["detail"]["kms_key_id_from"], "env AWSKMS_WRAPPER_KEY_ID",
        "{v:#}"
    );
    assert!(
        s["detail"]["credentials_from"]
            .as_str()
            .unwrap()
            .starts_with("default chain"),
        "{v:#}"
    );
    let m = &s["members"][0];
    assert_eq!(
        (m["name"].as_str(), m["round_trip_ok"].as_bool()),
        (Some("us-east-1"), Some(true)),
        "{v:#}"
    );
    assert_eq!(m["key_state"], "Enabled", "{v:#}");

    relay.down();
    let (code, v) = probe();
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["restart_would_unseal"], false);
    let e = v["seals"][0]["members"][0]["round_trip_error"]
        .as_str()
        .unwrap();
    assert!(e.contains("cannot reach"), "{e}");
}
