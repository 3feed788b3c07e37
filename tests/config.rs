//! Bad configuration: the daemon refuses to start with one line naming the file, line and key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

fn start_fails(f: &Fixture) -> String {
    let e = f.start_fails();
    let last = e.trim().lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("Error: "), "{e}");
    last
}

fn line_of(f: &Fixture, needle: &str) -> usize {
    f.config().lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn unknown_key_names_the_line() {
    let f = Fixture::new();
    f.edit_config(|c| {
        c.replace(
            "key_label = \"sealkeeper-root\"",
            "key_label = \"sealkeeper-root\"\nkey_lable = \"typo\"",
        )
    });
    let e = start_fails(&f);
    let line = line_of(&f, "key_lable");
    assert!(e.contains(&format!("sealkeeper.toml:{line}:")), "{e}");
    assert!(e.contains("key_lable"), "{e}");
}

#[test]
fn invalid_value_names_the_line_and_key() {
    let f = Fixture::new();
    f.edit_config(|c| {
        c.replace(
            "mechanism = \"CKM_AES_GCM\"",
            "mechanism = \"CKM_DES3_CBC\"",
        )
    });
    let e = start_fails(&f);
    let line = line_of(&f, "CKM_DES3_CBC");
    assert!(
        e.contains(&format!("sealkeeper.toml:{line}:")) && e.contains("seal[0].mechanism"),
        "{e}"
    );
}

#[test]
fn two_pin_sources_name_the_member() {
    let f = Fixture::new();
    f.edit_config(|c| c.replacen("pin_file", "pin_env = \"X\"\n  pin_file", 1));
    let e = start_fails(&f);
    assert!(
        e.contains("seal[0].hsm[0]") && e.contains("exactly one of pin_file"),
        "{e}"
    );
}

#[test]
fn syntax_error_and_missing_file_are_clear() {
    let f = Fixture::new();
    f.edit_config(|c| c.replace("[listener]", "[listener"));
    let e = start_fails(&f);
    let line = line_of(&f, "[listener");
    assert!(e.contains(&format!("sealkeeper.toml:{line}:")), "{e}");

    let out = f
        .command()
        .args(["server", "--config", "/nonexistent/sk.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/sk.toml: cannot read config"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn inline_pin_warns_at_start_and_world_readable_inline_pin_is_refused() {
    let f = Fixture::new();
    let pin = f.pin("a");
    let path = f.path("hsm-a.pin");
    f.edit_config(|c| {
        c.replace(
            &format!("pin_file = \"{}\"", path.display()),
            &format!("pin = \"{pin}\""),
        )
    });
    let d = f.start();
    d.init();
    assert!(
        d.log()
            .contains("inline pin in the config file; this is discouraged"),
        "{}",
        d.log()
    );
    assert!(!d.log().contains(&pin), "the PIN itself was logged");
    drop(d);

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = start_fails(&f);
    assert!(
        e.contains("inline PIN but is readable by group or others"),
        "{e}"
    );
}

#[test]
fn bad_seal_lists_are_refused_with_the_seal_named() {
    let f = Fixture::new();
    let original = f.config();
    let pair = original[original.find("[[seal]]").unwrap()..].to_string();

    // The same seal name twice.
    f.edit_config(|c| format!("{c}\n{}", pair.replace("priority", "")));
    let e = start_fails(&f);
    assert!(
        e.contains("seal[1].name") && e.contains("duplicate seal name \"hsm-pair\""),
        "{e}"
    );

    // A shamir seal with HSM settings, or enabled next to an HSM seal.
    std::fs::write(f.config_path(), &original).unwrap();
    f.edit_config(|c| {
        format!(
            "{}\n[[seal]]\ntype = \"shamir\"\nname = \"keys\"\nkey_label = \"x\"\n",
            c.replace(
                "name = \"hsm-pair\"",
                "name = \"hsm-pair\"\ndisabled = true"
            )
        )
    });
    let e = start_fails(&f);
    assert!(
        e.contains("seal[1].key_label") && e.contains("does not apply to a shamir seal"),
        "{e}"
    );
    std::fs::write(f.config_path(), &original).unwrap();
    f.edit_config(|c| format!("{c}\n[[seal]]\ntype = \"shamir\"\nname = \"keys\"\n"));
    let e = start_fails(&f);
    assert!(
        e.contains("cannot be combined with other enabled seals"),
        "{e}"
    );

    // Every seal disabled.
    std::fs::write(f.config_path(), &original).unwrap();
    f.edit_config(|c| {
        c.replace(
            "name = \"hsm-pair\"",
            "name = \"hsm-pair\"\ndisabled = true",
        )
    });
    let e = start_fails(&f);
    assert!(e.contains("every [[seal]] is disabled"), "{e}");
}

#[test]
#[cfg(not(feature = "awskms"))]
fn a_cloud_seal_in_a_build_without_it_names_the_feature_to_build() {
    let f = Fixture::new();
    f.set_seals("[[seal]]\ntype = \"awskms\"\nname = \"aws\"\nkms_key_id = \"k\"\n");
    let e = start_fails(&f);
    assert!(
        e.contains("built without the \"awskms\" seal") && e.contains("--features awskms"),
        "{e}"
    );
}

/// The fixture's seal with each member named by one RFC 7512 URI instead of lib, token_label and
/// pin_file, and the key by the URIs' object= and id=.
fn uri_seal(f: &Fixture, extra: &str) -> String {
    let mut s = format!(
        "[[seal]]\ntype = \"pkcs11\"\nname = \"hsm-pair\"\nmechanism = \"0x1087\"\n{extra}\n"
    );
    for m in ["a", "b"] {
        // A space in a path is percent-encoded, as p11tool prints it.
        let pin = f.path(&format!("pin dir/hsm-{m}.pin"));
        std::fs::create_dir_all(pin.parent().unwrap()).unwrap();
        std::fs::copy(f.path(&format!("hsm-{m}.pin")), &pin).unwrap();
        s.push_str(&format!(
            "  [[seal.hsm]]\n  name = \"hsm-{m}\"\n  uri = \"pkcs11:token=sealkeeper-{m};object=sealkeeper-root;\
             type=secret-key;id=%01?module-path={}&pin-source=file:{}\"\n\n",
            module(),
            pin.display().to_string().replace(' ', "%20")
        ));
    }
    s
}

#[test]
fn members_named_by_pkcs11_uris_init_and_unseal() {
    let f = Fixture::new();
    f.set_seals(&uri_seal(&f, ""));
    let mut d = f.start();
    d.init();
    d.stop();
    let d = f.start();
    d.wait_health(200, std::time::Duration::from_secs(20));
    let st = d.status_json();
    assert_eq!(st["seal"]["key_label"], "sealkeeper-root");
    assert_eq!(
        member(&st, "hsm-a")["token"],
        "token label \"sealkeeper-a\""
    );
    assert_eq!(st["seals"][0]["wrapped_by_key"], "sealkeeper-root:01");
}

#[test]
fn pkcs11_uris_that_contradict_the_section_are_refused_at_their_line() {
    let f = Fixture::new();
    for (extra, edit, want) in [
        // object= against the section's key_label.
        (
            "key_label = \"other\"",
            None,
            "object=\"sealkeeper-root\" is not the seal's key \"other\"",
        ),
        ("key_id = \"02\"", None, "id=01 is not the seal's key id 02"),
        (
            "",
            Some(("type=secret-key", "type=private-key")),
            "type=private-key does not fit CKM_AES_GCM",
        ),
        (
            "",
            Some(("pkcs11:token", "pkcs11:manufacturer=SoftHSM;token")),
            "\"manufacturer\" is not supported",
        ),
        (
            "",
            Some(("&pin-source", "&pin-value=1234&pin-source")),
            "use pin-source=file",
        ),
        (
            "",
            Some(("  uri =", "  token_label = \"x\"\n  uri =")),
            "give exactly one of token_label",
        ),
        (
            "",
            Some(("  uri =", "  lib = \"/usr/lib/x.so\"\n  uri =")),
            "the module is given twice",
        ),
    ] {
        let mut seal = uri_seal(&f, extra);
        if let Some((from, to)) = edit {
            seal = seal.replacen(from, to, 1);
        }
        f.set_seals(&seal);
        let e = start_fails(&f);
        assert!(e.contains(want), "{want}: {e}");
        assert!(e.contains("seal[0]"), "{e}");
        assert!(!e.contains("1234"), "the refused PIN is not echoed: {e}");
    }
    // The location is the URI's own line.
    let seal = uri_seal(&f, "").replacen("type=secret-key", "type=cert", 1);
    f.set_seals(&seal);
    let e = start_fails(&f);
    let line = line_of(&f, "type=cert");
    assert!(
        e.contains(&format!("sealkeeper.toml:{line}:")) && e.contains("seal[0].hsm[0].uri"),
        "{e}"
    );
}

/// `sealkeeper config import-vault FILE` on `hcl`: (exit code, stdout, stderr).
fn import_vault(hcl: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vault.hcl");
    std::fs::write(&file, hcl).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "import-vault"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

#[test]
fn the_readmes_vault_stanzas_import_to_the_sealkeeper_sections_beside_them() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks: Vec<&str> = readme.split("```").collect();
    let mut checked = 0;
    for pair in blocks.windows(3) {
        let (Some(hcl), Some(toml)) = (
            pair[0].strip_prefix("hcl\n# Vault\n"),
            pair[2].strip_prefix("toml\n# Sealkeeper"),
        ) else {
            continue;
        };
        let (code, out, err) = import_vault(hcl);
        assert_eq!(code, 0, "{err}");
        for line in toml.lines().map(str::trim) {
            if line.starts_with('#') || !line.contains(" = ") {
                continue;
            }
            // The README's own comments after a value are not part of it.
            let setting = line.split(" #").next().unwrap().trim();
            let (key, value) = setting.split_once(" = ").unwrap();
            let found = out.lines().any(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, v)| k.trim() == key && v.trim() == value)
            });
            assert!(
                found,
                "{setting} (README) not in the import of\n{hcl}\n---\n{out}\n{err}"
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 3,
        "the README's awskms, azurekeyvault and gcpckms examples: {checked}"
    );
}

#[test]
fn a_whole_vault_config_imports_to_a_config_this_build_accepts() {
    let hcl = r#"
ui            = true
cluster_addr  = "https://10.0.0.11:8201"
api_addr      = "https://10.0.0.11:8200"
disable_mlock = true
cluster_name  = "prod-seal"

storage "raft" {
  path    = "/opt/vault/data"
  node_id = "vault-1"
}

listener "tcp" {
  address                          = "0.0.0.0:8200"
  tls_cert_file                    = "/opt/vault/tls/tls.crt"
  tls_key_file                     = "/opt/vault/tls/tls.key"
  tls_min_version                  = "tls12"
  x_forwarded_for_authorized_addrs = "10.0.0.5, 10.0.0.6"
}

seal "pkcs11" {
  lib            = "/usr/safenet/lunaclient/lib/libCryptoki2_64.so"
  slot           = "0"
  pin            = "vault:s3cr3t-hsm-pin"
  key_label      = "vault-hsm-key"
  key_id         = "0x0102"
  mechanism      = "0x1087"
  hmac_key_label = "vault-hsm-hmac-key"
}

seal "transit" {
  address    = "https://seal.example:8200"
  token      = "s.SoMeToKeN"
  key_name   = "vault-prod"
  mount_path = "seal-transit/"
}
"#;
    let (code, out, err) = import_vault(hcl);
    assert_eq!(code, 0, "{err}");
    for secret in ["s3cr3t-hsm-pin", "s.SoMeToKeN"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked"
        );
    }
    for line in [
        "cluster_name = \"prod-seal\"",
        "address = \"0.0.0.0:8200\"",
        "tls_cert_file = \"/opt/vault/tls/tls.crt\"",
        "x_forwarded_for_authorized_addrs = [\"10.0.0.5\", \"10.0.0.6\"]",
        "mount = \"seal-transit\"",
        "key_id = \"0102\"",
        "mechanism = \"0x1087\"",
        "  slot = 0",
    ] {
        assert!(out.contains(line), "{line} not in\n{out}");
    }
    for warning in [
        "seal \"pkcs11\": pin is written inline",
        "seal \"pkcs11\": hmac_key_label has no equivalent",
        "seal \"transit\": token is written inline",
        "sealkeeper operator key create vault-prod",
        "listener \"tcp\": tls_min_version has no equivalent",
        "storage \"raft\"",
        "disable_mlock = true: not imported",
        "ui: no equivalent",
        "api_addr: no equivalent",
    ] {
        assert!(
            err.contains(&format!("Warning: {warning}")) || err.contains(warning),
            "{warning} not in\n{err}"
        );
    }
    // The output is a configuration this build loads (the daemon's own parser and validation).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sealkeeper.toml");
    std::fs::write(&path, &out).unwrap();
    sealkeeper::config::Config::parse(&out, &path).unwrap_or_else(|e| panic!("{e}\n{out}"));

    let (code, _, err) = import_vault("seal \"pkcs11\" {");
    assert_eq!(code, 1);
    assert!(err.contains("not a valid HCL file"), "{err}");
}

#[test]
fn errors_name_the_table_and_the_line_of_what_is_wrong() {
    let f = Fixture::new();
    // An inline PIN on the second member of a group-readable config: its own line and index.
    let pin = f.pin("b");
    let path = f.path("hsm-b.pin");
    f.edit_config(|c| {
        c.replace(
            &format!("pin_file = \"{}\"", path.display()),
            &format!("pin = \"{pin}\""),
        )
    });
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.config_path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = start_fails(&f);
    let line = line_of(&f, "pin = ");
    assert!(
        e.contains(&format!(
            "sealkeeper.toml:{line}:3: seal[0].hsm[1].pin: the config holds an inline PIN"
        )),
        "{e}"
    );
    assert!(!e.contains(&pin), "{e}");
    std::fs::set_permissions(f.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();

    // An unknown key names its table.
    f.edit_config(|c| c.replacen("[listener]\n", "[listener]\nbogus = 1\n", 1));
    let e = start_fails(&f);
    let line = line_of(&f, "bogus");
    assert!(
        e.contains(&format!(
            "sealkeeper.toml:{line}:1: listener: unknown field `bogus`"
        )),
        "{e}"
    );
    f.edit_config(|c| c.replacen("bogus = 1\n", "", 1));
    // ... and in a member of a seal, the member's.
    f.edit_config(|c| {
        c.replacen(
            "  name = \"hsm-b\"\n",
            "  name = \"hsm-b\"\n  colour = \"x\"\n",
            1,
        )
    });
    let e = start_fails(&f);
    assert!(e.contains("seal[0].hsm[1]: unknown field `colour`"), "{e}");
}
