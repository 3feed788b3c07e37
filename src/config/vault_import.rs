//! `sealkeeper config import-vault`: a Vault or OpenBao configuration (HCL, parsed with the
//! `hcl-rs` crate) turned into the equivalent Sealkeeper TOML. Each `seal` stanza becomes a
//! `[[seal]]` section, `listener "tcp"` the `[listener]` section; every setting without an
//! equivalent, and every secret found inline (which is never copied), is a warning.

use std::fmt::Write as _;

use hcl::{Block, Body, Expression};

/// The TOML text and what the operator must look at.
#[derive(Debug, Default)]
pub struct Imported {
    pub toml: String,
    pub warnings: Vec<String>,
}

/// A setting's value, as far as the import needs to read it.
fn text(e: &Expression) -> Option<String> {
    match e {
        Expression::String(s) => Some(s.clone()),
        Expression::Number(n) => Some(n.to_string()),
        Expression::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Vault reads booleans from strings too (`tls_disable = "true"`, `"1"`).
fn boolean(e: &Expression) -> Option<bool> {
    match e {
        Expression::Bool(b) => Some(*b),
        Expression::Number(n) => n.as_u64().map(|v| v != 0),
        Expression::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

struct Stanza<'a> {
    /// How warnings name it: `seal "pkcs11"`.
    what: String,
    body: &'a Body,
    used: Vec<&'static str>,
    out: &'a mut Imported,
}

impl<'a> Stanza<'a> {
    fn new(block: &'a Block, out: &'a mut Imported) -> Stanza<'a> {
        let labels: Vec<String> = block
            .labels()
            .iter()
            .map(|l| format!("{:?}", l.as_str()))
            .collect();
        Stanza {
            what: format!("{} {}", block.identifier(), labels.join(" "))
                .trim()
                .to_string(),
            body: block.body(),
            used: Vec::new(),
            out,
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Expression> {
        self.used.push(key);
        self.body
            .attributes()
            .find(|a| a.key() == key)
            .map(|a| a.expr())
    }

    fn warn(&mut self, msg: String) {
        self.out.warnings.push(format!("{}: {msg}", self.what));
    }

    /// A text setting, or a warning when it is there but not text.
    fn text(&mut self, key: &'static str) -> Option<String> {
        let e = self.get(key)?;
        let t = text(e);
        if t.is_none() {
            self.warn(format!(
                "{key} is not a plain value (an expression or a block); not imported"
            ));
        }
        t
    }

    fn boolean(&mut self, key: &'static str) -> Option<bool> {
        let e = self.get(key)?;
        let b = boolean(e);
        if b.is_none() {
            self.warn(format!("{key} is not a boolean; not imported"));
        }
        b
    }

    /// An inline secret: never copied; the warning says where it goes instead.
    fn secret(&mut self, key: &'static str, instead: &str) {
        if self.get(key).is_some() {
            self.warn(format!(
                "{key} is written inline (a secret in the config file); it was NOT copied: {instead}"
            ));
        }
    }

    /// Settings Vault has that this stanza does not use.
    fn no_equivalent(&mut self, keys: &[(&'static str, &str)]) {
        for (k, why) in keys {
            if self.get(k).is_some() {
                self.warn(format!("{k} has no equivalent ({why}); not imported"));
            }
        }
    }

    /// Every attribute not read, and every nested block.
    fn finish(self) {
        let mut rest: Vec<String> = self
            .body
            .attributes()
            .filter(|a| !self.used.contains(&a.key()))
            .map(|a| a.key().to_string())
            .collect();
        rest.extend(
            self.body
                .blocks()
                .map(|b| format!("{} {{ }}", b.identifier())),
        );
        for k in rest {
            self.out.warnings.push(format!(
                "{}: {k} is not known to this importer; not imported",
                self.what
            ));
        }
    }
}

/// Reads a Vault/OpenBao configuration and writes the Sealkeeper equivalent.
pub fn import(hcl_text: &str) -> Result<Imported, String> {
    let body = hcl::parse(hcl_text).map_err(|e| format!("not a valid HCL file: {e}"))?;
    let mut out = Imported::default();
    let mut listener = String::new();
    let mut seals = String::new();
    let mut transit = String::new();
    let mut top = String::new();
    let mut seal_count = 0;
    let mut seals_of = std::collections::HashMap::new();
    for block in body.blocks() {
        let kind = block.labels().first().map(|l| l.as_str().to_string());
        match (block.identifier(), kind.as_deref()) {
            ("seal", Some(t @ ("pkcs11" | "awskms" | "azurekeyvault" | "gcpckms"))) => {
                seal_count += 1;
                let n = seals_of.entry(t.to_string()).or_insert(0);
                *n += 1;
                let n = *n;
                let mut s = Stanza::new(block, &mut out);
                seal_section(t, n, &mut s, &mut seals);
                s.finish();
            }
            ("seal", Some("transit")) => {
                let mut s = Stanza::new(block, &mut out);
                transit_stanza(&mut s, &mut transit);
                s.finish();
            }
            ("seal", other) => out.warnings.push(format!(
                "seal {:?}: this seal type has no equivalent; not imported",
                other.unwrap_or("")
            )),
            ("listener", Some("tcp")) if listener.is_empty() => {
                let mut s = Stanza::new(block, &mut out);
                listener_section(&mut s, &mut listener);
                s.finish();
            }
            ("listener", _) => out.warnings.push(format!(
                "listener {:?}: only the first tcp listener is imported (Sealkeeper has one public \
                 listener; it is administered on its own Unix socket)",
                kind.unwrap_or_default()
            )),
            ("storage", _) | ("ha_storage", _) => out.warnings.push(format!(
                "storage {:?}: Vault's data is not Sealkeeper's; [storage] below is this node's \
                 own state directory (or type = \"etcd\" for a cluster of appliances)",
                kind.unwrap_or_default()
            )),
            (other, _) => out
                .warnings
                .push(format!("{other} block: no equivalent; not imported")),
        }
    }
    for attr in body.attributes() {
        match attr.key() {
            "cluster_name" => {
                if let Some(v) = text(attr.expr()) {
                    let _ = writeln!(top, "cluster_name = {}", q(&v));
                }
            }
            "disable_mlock" => {
                if boolean(attr.expr()) == Some(true) {
                    out.warnings.push(
                        "disable_mlock = true: not imported; Sealkeeper keeps key material in \
                         locked memory (`disable_mlock` exists for development only)"
                            .into(),
                    );
                }
            }
            other => out
                .warnings
                .push(format!("{other}: no equivalent; not imported")),
        }
    }
    if seal_count == 0 {
        out.warnings.push(
            "no pkcs11, awskms, azurekeyvault or gcpckms seal stanza: add a [[seal]] section"
                .into(),
        );
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `sealkeeper config import-vault`. Review every line and every warning, then check\n\
         # it with `sealkeeper seal probe --config FILE` before starting the daemon."
    );
    t.push_str(&top);
    if !top.is_empty() {
        t.push('\n');
    }
    t.push_str("[storage]\npath = \"/var/lib/sealkeeper\"\n\n");
    if listener.is_empty() {
        listener = "[listener]\naddress = \"0.0.0.0:8200\"\ntls_cert_file = \"/etc/sealkeeper/tls/server.crt\"\ntls_key_file = \"/etc/sealkeeper/tls/server.key\"\n".into();
        out.warnings.push(
            "no listener \"tcp\" stanza: [listener] uses the defaults of a fresh install".into(),
        );
    }
    t.push_str(&listener);
    t.push_str(
        "\n[admin]\nsocket = \"/run/sealkeeper/admin.sock\"\nallowed_uids = [0]\n\n[audit]\npath = \"/var/log/sealkeeper/audit.log\"\n",
    );
    if !transit.is_empty() {
        t.push('\n');
        t.push_str(&transit);
    }
    t.push_str(&seals);
    out.toml = t;
    Ok(out)
}

fn seal_section(kind: &str, n: usize, s: &mut Stanza<'_>, out: &mut String) {
    let name = s.text("name").unwrap_or_else(|| {
        let base = match kind {
            "pkcs11" => "hsm-pair",
            "awskms" => "aws",
            "azurekeyvault" => "azure",
            _ => "gcp",
        };
        if n == 1 {
            base.to_string()
        } else {
            format!("{base}-{n}")
        }
    });
    let _ = writeln!(out, "\n[[seal]]\ntype = {}\nname = {}", q(kind), q(&name));
    if let Some(p) = s.text("priority") {
        match p.parse::<u32>() {
            Ok(p) => {
                let _ = writeln!(out, "priority = {p}");
            }
            Err(_) => s.warn(format!("priority {p:?} is not a number; not imported")),
        }
    }
    if let Some(d) = s.boolean("disabled") {
        let _ = writeln!(out, "disabled = {d}");
    }
    match kind {
        "pkcs11" => pkcs11(s, out),
        "awskms" => awskms(s, out),
        "azurekeyvault" => azure(s, out),
        _ => gcp(s, out),
    }
    if kind != "pkcs11" {
        s.warn(format!(
            "the {kind} seal is in builds with `--features {kind}` (the default build is HSM-only)"
        ));
    }
}

/// Copies the settings whose names are the same in both.
fn same(s: &mut Stanza<'_>, keys: &[&'static str], out: &mut String) {
    for k in keys {
        if let Some(v) = s.text(k) {
            let _ = writeln!(out, "{k} = {}", q(&v));
        }
    }
}

fn pkcs11(s: &mut Stanza<'_>, out: &mut String) {
    match s.text("key_label") {
        Some(l) => {
            let _ = writeln!(out, "key_label = {}", q(&l));
        }
        None => {
            let _ = writeln!(out, "key_label = \"CHANGE-ME\"");
            s.warn("no key_label (Vault's default_key_label or generate_key): set key_label to the HSM key's CKA_LABEL".into());
        }
    }
    if let Some(id) = s.text("key_id") {
        let hex = id
            .strip_prefix("0x")
            .or_else(|| id.strip_prefix("0X"))
            .unwrap_or(&id);
        if hex.is_empty() || ::hex::decode(hex).is_err() {
            s.warn(format!("key_id {id:?} is not hex; not imported"));
        } else {
            let _ = writeln!(out, "key_id = {}", q(&hex.to_ascii_lowercase()));
        }
    }
    if let Some(m) = s.text("mechanism") {
        // Vault writes mechanisms as numbers, in hex or decimal.
        let _ = writeln!(out, "mechanism = {}", q(&m));
    }
    if let Some(h) = s.text("rsa_oaep_hash") {
        let _ = writeln!(out, "rsa_oaep_hash = {}", q(&h));
    }
    s.no_equivalent(&[
        (
            "hmac_key_label",
            "the root key's integrity is AES-GCM's tag; no HMAC key",
        ),
        ("hmac_key_id", "no HMAC key"),
        ("hmac_mechanism", "no HMAC key"),
        ("default_key_label", "give the key in key_label"),
        ("default_hmac_key_label", "no HMAC key"),
        (
            "generate_key",
            "keys are created in the HSM by its own tools, never by the seal",
        ),
        (
            "max_parallel",
            "each member runs its calls on its own thread",
        ),
        (
            "disable_auto_reinit_on_error",
            "a lost session is always reopened",
        ),
    ]);
    let _ = writeln!(out, "\n  [[seal.hsm]]\n  name = \"hsm-a\"");
    match s.text("lib") {
        Some(l) => {
            let _ = writeln!(out, "  lib = {}", q(&l));
        }
        None => {
            let _ = writeln!(out, "  lib = \"CHANGE-ME\"");
            s.warn("no lib: set the member's PKCS#11 module (or a profile)".into());
        }
    }
    let label = s.text("token_label");
    let slot = s.text("slot");
    match (label, slot) {
        (Some(l), _) => {
            let _ = writeln!(out, "  token_label = {}", q(&l));
        }
        (None, Some(slot)) => match slot.trim().parse::<u64>() {
            Ok(n) => {
                let _ = writeln!(out, "  slot = {n}");
                s.warn(
                    "the token is chosen by slot number, which can move when tokens are added: \
                     prefer token_label or serial"
                        .into(),
                );
            }
            Err(_) => s.warn(format!("slot {slot:?} is not a number; not imported")),
        },
        (None, None) => {
            let _ = writeln!(out, "  token_label = \"CHANGE-ME\"");
            s.warn("no token_label or slot: choose the member's token".into());
        }
    }
    let _ = writeln!(out, "  pin_file = \"/etc/sealkeeper/hsm-a.pin\"");
    s.secret(
        "pin",
        "write the PIN into /etc/sealkeeper/hsm-a.pin (mode 0600), which pin_file names",
    );
    if s.boolean("force_rw_session") == Some(true) {
        let _ = writeln!(out, "  rw_session = true");
    }
    s.warn(
        "Vault's pkcs11 seal names one HSM; Sealkeeper serves from an HA pair: add the second \
         member ([[seal.hsm]] hsm-b, holding the same key)"
            .into(),
    );
}

fn awskms(s: &mut Stanza<'_>, out: &mut String) {
    same(
        s,
        &[
            "kms_key_id",
            "region",
            "endpoint",
            "access_key",
            "shared_creds_filename",
            "shared_creds_profile",
            "role_arn",
            "role_session_name",
            "web_identity_token_file",
        ],
        out,
    );
    s.secret(
        "secret_key",
        "give it as AWS_SECRET_ACCESS_KEY in the daemon's environment, or use an instance role or a \
         credentials file",
    );
    s.secret(
        "session_token",
        "give it as AWS_SESSION_TOKEN in the daemon's environment",
    );
}

fn azure(s: &mut Stanza<'_>, out: &mut String) {
    same(
        s,
        &[
            "tenant_id",
            "client_id",
            "environment",
            "resource",
            "vault_name",
            "key_name",
        ],
        out,
    );
    s.secret(
        "client_secret",
        "give it as AZURE_CLIENT_SECRET in the daemon's environment (e.g. a systemd credential)",
    );
}

fn gcp(s: &mut Stanza<'_>, out: &mut String) {
    same(
        s,
        &["project", "region", "key_ring", "crypto_key", "credentials"],
        out,
    );
}

fn listener_section(s: &mut Stanza<'_>, out: &mut String) {
    out.push_str("[listener]\n");
    let address = s.text("address").unwrap_or_else(|| "127.0.0.1:8200".into());
    if address.parse::<std::net::SocketAddr>().is_err() {
        s.warn(format!(
            "address {address:?} is not an IP address and port; give one (e.g. 0.0.0.0:8200)"
        ));
    }
    let _ = writeln!(out, "address = {}", q(&address));
    same(
        s,
        &["tls_cert_file", "tls_key_file", "tls_client_ca_file"],
        out,
    );
    if let Some(b) = s.boolean("tls_disable") {
        let _ = writeln!(out, "tls_disable = {b}");
    }
    if let Some(b) = s.boolean("tls_require_and_verify_client_cert") {
        let _ = writeln!(out, "tls_require_and_verify_client_cert = {b}");
    }
    if let Some(e) = s.get("x_forwarded_for_authorized_addrs") {
        let addrs: Vec<String> = match e {
            Expression::Array(a) => a.iter().filter_map(text).collect(),
            other => text(other)
                .map(|t| t.split(',').map(|a| a.trim().to_string()).collect())
                .unwrap_or_default(),
        };
        let list: Vec<String> = addrs.iter().map(|a| q(a)).collect();
        let _ = writeln!(
            out,
            "x_forwarded_for_authorized_addrs = [{}]",
            list.join(", ")
        );
    }
    s.no_equivalent(&[
        (
            "cluster_address",
            "Sealkeeper nodes share state through etcd, not request forwarding",
        ),
        ("tls_min_version", "TLS 1.2 and 1.3 only, always"),
        ("tls_max_version", "TLS 1.2 and 1.3 only, always"),
        (
            "tls_cipher_suites",
            "the suites are fixed (and FIPS-approved in fips_mode)",
        ),
        ("tls_prefer_server_cipher_suites", "the suites are fixed"),
        (
            "tls_disable_client_certs",
            "client certificates are asked for only with tls_client_ca_file",
        ),
        (
            "proxy_protocol_behavior",
            "use x_forwarded_for_authorized_addrs",
        ),
        (
            "x_forwarded_for_reject_not_authorized",
            "headers from other peers are ignored",
        ),
        (
            "x_forwarded_for_reject_not_present",
            "headers from other peers are ignored",
        ),
        (
            "x_forwarded_for_hop_skips",
            "the last address the authorized proxy appended is used",
        ),
        ("telemetry", "use [telemetry] address"),
        (
            "unauthenticated_metrics_access",
            "use [telemetry] address for scrapers without a token",
        ),
        ("max_request_size", "use [transit] max_request_bytes"),
        ("max_request_duration", "use listener.http_read_timeout"),
        (
            "http_idle_timeout",
            "give it as a duration in listener.http_idle_timeout",
        ),
        (
            "http_read_header_timeout",
            "give it in listener.http_read_header_timeout",
        ),
        ("http_read_timeout", "give it in listener.http_read_timeout"),
    ]);
}

fn transit_stanza(s: &mut Stanza<'_>, out: &mut String) {
    let mount = s
        .text("mount_path")
        .map(|m| m.trim_matches('/').to_string())
        .unwrap_or_else(|| "transit".into());
    let _ = writeln!(out, "[transit]\nmount = {}", q(&mount));
    let key = s.text("key_name").unwrap_or_else(|| "CHANGE-ME".into());
    s.warn(format!(
        "a Vault that unseals through a transit server: Sealkeeper can be that server. Create the \
         key with `sealkeeper operator key create {key}`, give Vault a token from `sealkeeper \
         operator token create`, and point the stanza's address at this Sealkeeper"
    ));
    s.secret(
        "token",
        "it is Vault's credential for the transit server; issue a new one with `sealkeeper operator \
         token create` and keep it in Vault's environment (VAULT_TOKEN)",
    );
    s.no_equivalent(&[
        ("address", "this is the transit server"),
        ("namespace", "no namespaces"),
        ("disable_renewal", "tokens are renewed by the client"),
        ("tls_ca_cert", "Vault's side of the connection"),
        ("tls_client_cert", "Vault's side of the connection"),
        ("tls_client_key", "Vault's side of the connection"),
        ("tls_server_name", "Vault's side of the connection"),
        ("tls_skip_verify", "Vault's side of the connection"),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pkcs11_stanza_with_slot_hex_key_id_and_numeric_mechanism() {
        let r = import(
            r#"
            seal "pkcs11" {
              lib            = "/usr/vault/lib/libCryptoki2_64.so"
              slot           = "2305843009213693953"
              pin            = "AAAA-BBBB-CCCC-DDDD"
              key_label      = "vault-hsm-key"
              key_id         = "0x1A2B"
              mechanism      = "0x1087"
              hmac_key_label = "vault-hsm-hmac-key"
              generate_key   = "true"
            }
            "#,
        )
        .unwrap();
        for line in [
            "type = \"pkcs11\"",
            "key_label = \"vault-hsm-key\"",
            "key_id = \"1a2b\"",
            "mechanism = \"0x1087\"",
            "slot = 2305843009213693953",
            "pin_file = \"/etc/sealkeeper/hsm-a.pin\"",
        ] {
            assert!(r.toml.contains(line), "{line} not in\n{}", r.toml);
        }
        assert!(!r.toml.contains("AAAA-BBBB"), "the PIN is never copied");
        let w = r.warnings.join("\n");
        assert!(!w.contains("AAAA-BBBB"), "nor echoed: {w}");
        for want in [
            "pin is written inline",
            "hmac_key_label has no equivalent",
            "generate_key has no equivalent",
            "slot number",
            "second member",
        ] {
            assert!(w.contains(want), "{want}: {w}");
        }
    }

    #[test]
    fn cloud_credentials_found_inline_are_named_and_never_copied() {
        let r = import(
            r#"
            seal "awskms" {
              region     = "us-east-1"
              access_key = "AKIAIOSFODNN7EXAMPLE"
              secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
              kms_key_id = "19ec80b0-dfdd-4d97-8164-c6examplekey"
              endpoint   = "https://vpce-0e1bb1852241f8cc6-pzi0do8n.kms.us-east-1.vpce.amazonaws.com"
            }
            seal "azurekeyvault" {
              tenant_id     = "46646709-b63e-4747-be42-516edeaf1e14"
              client_id     = "03dc33fc-16d9-4b77-8152-3ec568f8af6e"
              client_secret = "DUJDS3..."
              vault_name    = "hc-vault"
              key_name      = "vault-key"
            }
            seal "gcpckms" {
              credentials = "/usr/vault/vault-project-user-creds.json"
              project     = "vault-project"
              region      = "global"
              key_ring    = "vault-keyring"
              crypto_key  = "vault-key"
            }
            "#,
        )
        .unwrap();
        for secret in ["wJalrXUtnFEMI", "DUJDS3"] {
            assert!(!r.toml.contains(secret), "{secret}");
            assert!(!r.warnings.join("\n").contains(secret), "{secret}");
        }
        let w = r.warnings.join("\n");
        assert!(
            w.contains("seal \"awskms\": secret_key is written inline")
                && w.contains("AWS_SECRET_ACCESS_KEY"),
            "{w}"
        );
        assert!(
            w.contains("seal \"azurekeyvault\": client_secret is written inline")
                && w.contains("AZURE_CLIENT_SECRET"),
            "{w}"
        );
        assert!(w.contains("--features gcpckms"), "{w}");
        for line in [
            "name = \"aws\"",
            "access_key = \"AKIAIOSFODNN7EXAMPLE\"",
            "endpoint = \"https://vpce-0e1bb1852241f8cc6-pzi0do8n.kms.us-east-1.vpce.amazonaws.com\"",
            "name = \"azure\"",
            "vault_name = \"hc-vault\"",
            "credentials = \"/usr/vault/vault-project-user-creds.json\"",
        ] {
            assert!(r.toml.contains(line), "{line} not in\n{}", r.toml);
        }
    }

    #[test]
    fn bad_hcl_is_an_error() {
        let e = import("seal \"pkcs11\" {").unwrap_err();
        assert!(e.contains("not a valid HCL file"), "{e}");
    }
}
