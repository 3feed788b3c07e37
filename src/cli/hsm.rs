//! `sealkeeper hsm probe`: what a PKCS#11 module offers, and whether a key can do the configured
//! mechanism, without a daemon and without touching stored state.

use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use serde_json::{Value, json};

use super::Format;
use crate::seal::pkcs11::{MemberSpec, check_member};
use crate::seal::pkcs11::{PinSource, TokenSelector, parse_mechanism};

#[derive(Debug, clap::Subcommand)]
pub enum HsmCommand {
    /// List slots, tokens and mechanisms of a module; with --pin-file and --key-label, also log in,
    /// find the key and do a round trip with the mechanism. Exits 1 when a requested check fails.
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// An RFC 7512 PKCS#11 URI: the token (token=, serial= or slot-id=), the key (object=,
    /// id=), the module (module-path=) and the PIN file (pin-source=file:...), as p11-kit,
    /// OpenSSL and GnuTLS take them; the other options override its parts.
    #[arg(long, value_name = "URI")]
    uri: Option<String>,
    /// An HSM profile (hsm-profiles/) giving the module path.
    #[arg(long, required_unless_present_any = ["lib", "uri"], conflicts_with = "lib")]
    profile: Option<String>,
    /// The PKCS#11 module.
    #[arg(long, value_name = "PATH")]
    lib: Option<PathBuf>,
    /// Select the token by its label (CKA_LABEL of the token); needed for the key check.
    #[arg(long, value_name = "LABEL", conflicts_with_all = ["slot", "serial"])]
    token_label: Option<String>,
    /// Select the token by slot id (slot ids can move; prefer --token-label or --serial).
    #[arg(long, value_name = "N", conflicts_with = "serial")]
    slot: Option<u64>,
    /// Select the token by its serial number.
    #[arg(long, value_name = "SERIAL")]
    serial: Option<String>,
    /// File holding the user PIN (needed for the key check).
    #[arg(long, value_name = "PATH", requires = "key_label")]
    pin_file: Option<PathBuf>,
    /// CKA_LABEL of the key to check with a round trip (needs --pin-file and a token selector).
    #[arg(long, value_name = "LABEL", requires = "pin_file")]
    key_label: Option<String>,
    /// CKA_ID of the key, in hex.
    #[arg(long, value_name = "HEX")]
    key_id: Option<String>,
    /// CKM_AES_GCM (0x1087) or CKM_RSA_PKCS_OAEP (0x0009).
    #[arg(long, default_value = "CKM_AES_GCM")]
    mechanism: String,
    /// The OAEP hash with CKM_RSA_PKCS_OAEP: sha1, sha256 (default), sha384 or sha512.
    #[arg(long, value_name = "HASH")]
    rsa_oaep_hash: Option<String>,
    /// Output format: `table` for people, `json` for scripts (README, "JSON output").
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

fn ck(what: &str, e: cryptoki::error::Error) -> String {
    format!(
        "{what}: {}",
        crate::seal::pkcs11::HsmError::from_cryptoki(e)
    )
}

fn list(lib: &PathBuf) -> Result<Vec<Value>, String> {
    if !lib.exists() {
        return Err(format!("PKCS#11 module {} does not exist", lib.display()));
    }
    let ctx = Pkcs11::new(lib).map_err(|e| ck("loading the module", e))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| ck("C_Initialize", e))?;
    let mut out = Vec::new();
    for slot in ctx.get_all_slots().map_err(|e| ck("C_GetSlotList", e))? {
        let mut v = json!({ "slot": slot.id() });
        if let Ok(info) = ctx.get_slot_info(slot) {
            v["description"] = json!(info.slot_description().trim_end());
            v["token_present"] = json!(info.token_present());
        }
        if let Ok(t) = ctx.get_token_info(slot) {
            v["token"] = json!({
                "label": t.label().trim_end(),
                "serial": t.serial_number().trim_end(),
                "manufacturer": t.manufacturer_id().trim_end(),
                "model": t.model().trim_end(),
                "initialized": t.token_initialized(),
            });
            let mechs: Vec<String> = ctx
                .get_mechanism_list(slot)
                .map(|l| l.iter().map(|m| m.to_string()).collect())
                .unwrap_or_default();
            v["mechanisms"] = json!(mechs);
        }
        out.push(v);
    }
    let _ = ctx.finalize();
    Ok(out)
}

fn matches(slot: &Value, sel: &TokenSelector) -> bool {
    match sel {
        TokenSelector::Label(l) => slot["token"]["label"] == l.as_str(),
        TokenSelector::Serial(s) => slot["token"]["serial"] == s.as_str(),
        TokenSelector::Slot(n) => slot["slot"] == *n,
    }
}

/// The options with what `--uri` names filled in where an option was not given.
fn with_uri(mut a: ProbeArgs) -> Result<ProbeArgs, String> {
    let Some(text) = &a.uri else { return Ok(a) };
    let u = crate::seal::pkcs11::uri::Pkcs11Uri::parse(text).map_err(|e| format!("--uri: {e}"))?;
    if a.lib.is_none() {
        a.lib = u.module_path;
    }
    if a.token_label.is_none() && a.slot.is_none() && a.serial.is_none() {
        a.token_label = u.token;
        a.slot = u.slot_id;
        a.serial = u.serial;
    }
    a.pin_file = a.pin_file.or(u.pin_file);
    a.key_label = a.key_label.or(u.object);
    a.key_id = a.key_id.or(u.id.map(hex::encode));
    if u.object_type.as_deref() == Some("private-key") && a.mechanism == "CKM_AES_GCM" {
        a.mechanism = "CKM_RSA_PKCS_OAEP".into();
    }
    Ok(a)
}

pub fn run(cmd: HsmCommand) -> Result<i32, String> {
    let HsmCommand::Probe(a) = cmd;
    let a = with_uri(a)?;
    if a.pin_file.is_some() != a.key_label.is_some() {
        return Err(if a.pin_file.is_some() {
            "a PIN file without a key to check: give --key-label (or object= in --uri)".into()
        } else {
            "a key to check without a PIN: give --pin-file (or pin-source= in --uri)".into()
        });
    }
    let lib = match (&a.lib, &a.profile) {
        (Some(l), _) => l.clone(),
        (None, Some(p)) => crate::profiles::get(p).map(|p| p.lib).ok_or_else(|| {
            format!(
                "unknown HSM profile {p:?}; known: {}",
                crate::profiles::names().join(", ")
            )
        })?,
        (None, None) => {
            return Err("give --profile or --lib (or module-path= in --uri)".into());
        }
    };
    let mechanism = parse_mechanism(Some(&a.mechanism), a.rsa_oaep_hash.as_deref())?;
    let slots = list(&lib)?;
    let selector = match (&a.token_label, a.slot, &a.serial) {
        (Some(l), _, _) => Some(TokenSelector::Label(l.clone())),
        (_, Some(n), _) => Some(TokenSelector::Slot(n)),
        (_, _, Some(s)) => Some(TokenSelector::Serial(s.clone())),
        _ => None,
    };
    let mut report = json!({ "lib": lib.display().to_string(), "slots": slots });
    let mut failure = None;
    if selector.is_none() && a.key_label.is_some() {
        // A key check was asked for; without a token there is nothing to check it on.
        failure = Some(
            "no key check ran: --key-label needs the token it is on: give --token-label, --slot or --serial (the tokens are listed above)"
                .to_string(),
        );
    }
    if let Some(sel) = &selector {
        match slots.iter().find(|s| matches(s, sel)) {
            None => failure = Some(format!("no token with {sel} in {}", lib.display())),
            Some(slot) => {
                let wanted = mechanism.name();
                let has = slot["mechanisms"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|x| x == wanted));
                report["selected"] = slot.clone();
                report["mechanism_supported"] = json!(has);
                if !has {
                    failure = Some(format!("the token with {sel} does not support {wanted}"));
                }
            }
        }
    }
    if failure.is_none()
        && let (Some(sel), Some(pin), Some(label)) = (&selector, &a.pin_file, &a.key_label)
    {
        let spec = MemberSpec {
            seal: "hsm-probe".into(),
            name: "probe".into(),
            lib: lib.clone(),
            selector: sel.clone(),
            pin: PinSource::File(pin.clone()),
            rw_session: a
                .profile
                .as_deref()
                .and_then(crate::profiles::get)
                .is_some_and(|p| p.rw_session),
            timeout: std::time::Duration::from_secs(30),
            key_label: label.clone(),
            key_id: a
                .key_id
                .as_deref()
                .map(|k| hex::decode(k).map_err(|_| format!("--key-id {k:?} is not hex")))
                .transpose()?,
            mechanism,
            fips_mode: false,
        };
        match check_member(spec) {
            Ok(msg) => report["key_check"] = json!({ "ok": true, "message": msg }),
            Err(e) => {
                report["key_check"] = json!({ "ok": false, "error": e.error.to_string() });
                failure = Some(if e.error.kind == crate::seal::pkcs11::ErrorKind::Pin {
                    // The daemon's advice (it stops logging in) does not fit a one-shot command.
                    format!(
                        "key check failed: {} (the PIN was rejected: check the PIN file; each try \
                         counts against the token's failed-login limit, so look at its counter \
                         before trying again)",
                        e.error.call()
                    )
                } else {
                    format!("key check failed: {}", e.error)
                });
            }
        }
    }
    if a.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!("Module {}", lib.display());
        for s in &slots {
            match s.get("token") {
                Some(t) => println!(
                    "  slot {:<12} token {:?} serial {} ({} {}), {} mechanisms",
                    s["slot"],
                    t["label"].as_str().unwrap_or(""),
                    t["serial"].as_str().unwrap_or(""),
                    t["manufacturer"].as_str().unwrap_or(""),
                    t["model"].as_str().unwrap_or(""),
                    s["mechanisms"].as_array().map(|m| m.len()).unwrap_or(0)
                ),
                None => println!("  slot {:<12} no token", s["slot"]),
            }
        }
        if let Some(sel) = &report.get("selected").and(selector.as_ref()) {
            println!(
                "Selected {sel}: {} {}",
                a.mechanism,
                if report["mechanism_supported"] == true {
                    "supported"
                } else {
                    "NOT supported"
                }
            );
        }
        if let Some(m) = report["key_check"]["message"].as_str() {
            println!("{m}");
        }
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(0),
    }
}
