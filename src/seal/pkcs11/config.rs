//! The `[[seal]]` section of `type = "pkcs11"`: the HSM key and the members that hold it, and its
//! validation. The common keys (`name`, `priority`, `disabled`, `recovery_keys_fallback`) are
//! parsed by `config::seal`; everything else of the section is here.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::uri::Pkcs11Uri;
use crate::located::{Problem, Seg, problem, valid_name};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    pub key_label: Option<String>,
    pub key_id: Option<String>,
    pub mechanism: Option<String>,
    pub rsa_oaep_hash: Option<String>,
    #[serde(default)]
    pub hsm: Vec<HsmConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    AesGcm,
    RsaOaep(OaepHash),
}

impl Mechanism {
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::AesGcm => "CKM_AES_GCM",
            Mechanism::RsaOaep(_) => "CKM_RSA_PKCS_OAEP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OaepHash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl OaepHash {
    pub fn name(&self) -> &'static str {
        match self {
            OaepHash::Sha1 => "sha1",
            OaepHash::Sha256 => "sha256",
            OaepHash::Sha384 => "sha384",
            OaepHash::Sha512 => "sha512",
        }
    }

    pub fn from_name(name: &str) -> Option<OaepHash> {
        match name {
            "sha1" => Some(OaepHash::Sha1),
            "sha256" => Some(OaepHash::Sha256),
            "sha384" => Some(OaepHash::Sha384),
            "sha512" => Some(OaepHash::Sha512),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    pub name: String,
    /// An RFC 7512 PKCS#11 URI naming the token (`token=`, `serial=` or `slot-id=`), optionally
    /// the key (`object=`, `id=`, `type=`), the module (`module-path=`) and the PIN file
    /// (`pin-source=file:`), instead of the separate keys.
    pub uri: Option<String>,
    /// An HSM profile (hsm-profiles/) whose defaults fill `lib`, `rw_session` and `timeout`.
    pub profile: Option<String>,
    pub lib: Option<PathBuf>,
    pub token_label: Option<String>,
    pub slot: Option<u64>,
    pub serial: Option<String>,
    pub pin_file: Option<PathBuf>,
    pub pin_env: Option<String>,
    pub pin_credential: Option<String>,
    /// Discouraged: a PIN written into the config file.
    pub pin: Option<SecretString>,
    /// A call to this member that takes longer marks it down (default 5s, or the profile's).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Open read-write sessions (some modules, e.g. CloudHSM, want them).
    #[serde(default)]
    pub rw_session: Option<bool>,
}

/// How a member's token is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Slot(u64),
    Serial(String),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "token label {l:?}"),
            TokenSelector::Slot(s) => write!(f, "slot {s}"),
            TokenSelector::Serial(s) => write!(f, "token serial {s:?}"),
        }
    }
}

/// Where a member's PIN comes from.
#[derive(Debug, Clone)]
pub enum PinSource {
    File(PathBuf),
    Env(String),
    Credential(String),
    Inline(SecretString),
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl HsmConfig {
    fn profile_defaults(&self) -> Option<crate::profiles::Profile> {
        self.profile.as_deref().and_then(crate::profiles::get)
    }

    /// The member's URI, parsed (a URI that does not parse is reported by `validate`).
    pub fn parsed_uri(&self) -> Option<Pkcs11Uri> {
        self.uri.as_deref().and_then(|u| Pkcs11Uri::parse(u).ok())
    }

    /// The module path: `lib`, else the URI's `module-path`, else the profile's.
    pub fn lib(&self) -> PathBuf {
        self.lib
            .clone()
            .or_else(|| self.parsed_uri().and_then(|u| u.module_path))
            .or_else(|| self.profile_defaults().map(|p| p.lib))
            .unwrap_or_default()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
            .or_else(|| self.profile_defaults().map(|p| p.timeout))
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    pub fn rw_session(&self) -> bool {
        self.rw_session
            .or_else(|| self.profile_defaults().map(|p| p.rw_session))
            .unwrap_or(false)
    }

    pub fn selector(&self) -> TokenSelector {
        let uri = self.parsed_uri().unwrap_or_default();
        if let Some(l) = self.token_label.as_ref().or(uri.token.as_ref()) {
            TokenSelector::Label(l.clone())
        } else if let Some(s) = self.slot.or(uri.slot_id) {
            TokenSelector::Slot(s)
        } else {
            TokenSelector::Serial(self.serial.clone().or(uri.serial).unwrap_or_default())
        }
    }

    pub fn pin_source(&self) -> PinSource {
        let uri_pin = self.parsed_uri().and_then(|u| u.pin_file);
        if let Some(p) = self.pin_file.as_ref().or(uri_pin.as_ref()) {
            PinSource::File(p.clone())
        } else if let Some(v) = &self.pin_env {
            PinSource::Env(v.clone())
        } else if let Some(c) = &self.pin_credential {
            PinSource::Credential(c.clone())
        } else {
            PinSource::Inline(
                self.pin
                    .clone()
                    .unwrap_or_else(|| SecretString::from(String::new())),
            )
        }
    }
}

impl Pkcs11Config {
    pub fn mechanism(&self) -> Mechanism {
        parse_mechanism(self.mechanism.as_deref(), self.rsa_oaep_hash.as_deref())
            .unwrap_or(Mechanism::AesGcm)
    }

    /// `key_label`, else the `object=` of the members' URIs (validated to agree).
    pub fn key_label(&self) -> Option<String> {
        self.key_label.clone().or_else(|| {
            self.hsm
                .iter()
                .find_map(|h| h.parsed_uri().and_then(|u| u.object))
        })
    }

    /// `key_id`, else the `id=` of the members' URIs.
    pub fn key_id_bytes(&self) -> Option<Vec<u8>> {
        match &self.key_id {
            Some(k) => hex::decode(k).ok(),
            None => self
                .hsm
                .iter()
                .find_map(|h| h.parsed_uri().and_then(|u| u.id)),
        }
    }

    /// What the members' URIs say about the key, against the section's own keys.
    fn uri_key_problems(&self, out: &mut Vec<Problem>) {
        use Seg::{Index, Key};
        let label = self.key_label();
        let id = self.key_id_bytes();
        let wanted = match self.mechanism() {
            Mechanism::AesGcm => "secret-key",
            Mechanism::RsaOaep(_) => "private-key",
        };
        for (j, h) in self.hsm.iter().enumerate() {
            let Some(u) = h.parsed_uri() else { continue };
            let at = vec![Key("hsm"), Index(j), Key("uri")];
            if let (Some(o), Some(l)) = (&u.object, &label)
                && o != l
            {
                out.push(problem(
                    at.clone(),
                    format!(
                        "object={o:?} is not the seal's key {l:?}: every member holds the same key                          (give it once, in key_label or in each URI)"
                    ),
                ));
            }
            if let (Some(i), Some(k)) = (&u.id, &id)
                && i != k
            {
                out.push(problem(
                    at.clone(),
                    format!(
                        "id={} is not the seal's key id {}",
                        hex::encode(i),
                        hex::encode(k)
                    ),
                ));
            }
            if let Some(t) = &u.object_type
                && t != wanted
            {
                out.push(problem(
                    at,
                    format!(
                        "type={t} does not fit {}: its key is a {wanted}",
                        self.mechanism().name()
                    ),
                ));
            }
        }
    }

    /// Where a member's PIN is written into the config file.
    pub fn inline_pin(&self) -> Option<Vec<Seg>> {
        self.hsm
            .iter()
            .position(|h| h.pin.is_some())
            .map(|j| vec![Seg::Key("hsm"), Seg::Index(j), Seg::Key("pin")])
    }

    pub fn warnings(&self) -> Vec<String> {
        self.hsm
            .iter()
            .filter(|h| h.pin.is_some())
            .map(|h| {
                format!(
                    "HSM member {:?} has an inline pin in the config file; this is discouraged: use pin_file, \
                     pin_env or pin_credential",
                    h.name
                )
            })
            .collect()
    }

    /// Problems of this section, at paths relative to the section.
    pub fn validate(&self, fips_mode: bool) -> Vec<Problem> {
        use Seg::{Index, Key};
        let mut out = Vec::new();
        let at = |k: &'static str| vec![Key(k)];
        match &self.key_label() {
            None => out.push(problem(
                vec![],
                "key_label is required for a pkcs11 seal (or object= in the members' URIs)",
            )),
            Some(k) if k.is_empty() => out.push(problem(at("key_label"), "must not be empty")),
            _ => {}
        }
        if let Some(id) = &self.key_id
            && (id.is_empty() || hex::decode(id).is_err())
        {
            out.push(problem(
                at("key_id"),
                "must be a non-empty hex string, e.g. \"01\"",
            ));
        }
        if fips_mode && self.mechanism() == Mechanism::RsaOaep(OaepHash::Sha1) {
            out.push(problem(
                at("rsa_oaep_hash"),
                "RSA-OAEP with SHA-1 is not approved in fips_mode (SoftHSM 2.6 only has SHA-1 OAEP): use sha256 or \
                 stronger, or CKM_AES_GCM",
            ));
        }
        if let Err(m) = parse_mechanism(self.mechanism.as_deref(), self.rsa_oaep_hash.as_deref()) {
            let k = if m.starts_with("rsa_oaep_hash") {
                "rsa_oaep_hash"
            } else {
                "mechanism"
            };
            out.push(problem(at(k), m));
        }
        if self.hsm.is_empty() {
            out.push(problem(
                vec![],
                "a pkcs11 seal needs at least one [[seal.hsm]] member",
            ));
        }
        let mut names = HashSet::new();
        for (j, h) in self.hsm.iter().enumerate() {
            let at = |k: &'static str| vec![Key("hsm"), Index(j), Key(k)];
            let table = vec![Key("hsm"), Index(j)];
            if !valid_name(&h.name) {
                out.push(problem(
                    at("name"),
                    "must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                ));
            } else if !names.insert(h.name.clone()) {
                out.push(problem(
                    at("name"),
                    format!("duplicate member name {:?}", h.name),
                ));
            }
            if let Some(name) = &h.profile
                && crate::profiles::get(name).is_none()
            {
                out.push(problem(
                    at("profile"),
                    format!(
                        "unknown HSM profile {name:?}; known: {}",
                        crate::profiles::names().join(", ")
                    ),
                ));
            }
            let uri = match h.uri.as_deref().map(Pkcs11Uri::parse) {
                Some(Err(e)) => {
                    out.push(problem(at("uri"), e));
                    Pkcs11Uri::default()
                }
                Some(Ok(u)) => u,
                None => Pkcs11Uri::default(),
            };
            match &h.lib {
                Some(lib) if !lib.is_absolute() => out.push(problem(
                    at("lib"),
                    "must be an absolute path to the PKCS#11 module",
                )),
                Some(_) if uri.module_path.is_some() => out.push(problem(
                    at("lib"),
                    "the module is given twice: in lib and in the URI's module-path",
                )),
                None if h.profile.is_none() && uri.module_path.is_none() => out.push(problem(
                    table.clone(),
                    "give lib (or a profile, or module-path in the URI)",
                )),
                _ => {}
            }
            let selectors = [
                h.token_label.is_some(),
                h.slot.is_some(),
                h.serial.is_some(),
                uri.token.is_some(),
                uri.slot_id.is_some(),
                uri.serial.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if selectors != 1 {
                out.push(problem(
                    table.clone(),
                    "give exactly one of token_label, slot, serial (or one of token=, slot-id=, \
                     serial= in the URI)",
                ));
            }
            let pins = [
                uri.pin_file.is_some(),
                h.pin_file.is_some(),
                h.pin_env.is_some(),
                h.pin_credential.is_some(),
                h.pin.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if pins != 1 {
                out.push(problem(
                    table.clone(),
                    "give exactly one of pin_file, pin_env, pin_credential, pin (or pin-source= in \
                     the URI)",
                ));
            }
            if let Some(c) = &h.pin_credential
                && (c.contains('/') || c.is_empty())
            {
                out.push(problem(
                    at("pin_credential"),
                    "must be a credential name, not a path",
                ));
            }
            if h.timeout() < Duration::from_millis(50) {
                out.push(problem(at("timeout"), "must be at least 50ms"));
            }
        }
        self.uri_key_problems(&mut out);
        out
    }
}

/// A mechanism as written in the config or on the command line (`hsm probe --mechanism`).
pub fn parse_mechanism(m: Option<&str>, hash: Option<&str>) -> Result<Mechanism, String> {
    let hash = match hash.map(|h| h.to_ascii_lowercase().replace('-', "")) {
        None => OaepHash::Sha256,
        Some(h) => OaepHash::from_name(&h).ok_or_else(|| {
            format!("rsa_oaep_hash {h:?} is not one of sha1, sha256, sha384, sha512")
        })?,
    };
    match m.map(|s| s.trim().to_ascii_uppercase()) {
        None => Ok(Mechanism::AesGcm),
        Some(s) if s == "CKM_AES_GCM" || s == "0X1087" || s == "4231" => Ok(Mechanism::AesGcm),
        Some(s) if s == "CKM_RSA_PKCS_OAEP" || s == "0X0009" || s == "0X9" || s == "9" => {
            Ok(Mechanism::RsaOaep(hash))
        }
        Some(s) => Err(format!(
            "mechanism {s:?} is not supported; use CKM_AES_GCM (0x1087) or CKM_RSA_PKCS_OAEP (0x0009)"
        )),
    }
}
