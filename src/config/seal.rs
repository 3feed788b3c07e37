//! The `[[seal]]` sections: the keys every seal has (`name`, `priority`, `disabled`,
//! `recovery_keys_fallback`), parsed here, and the rest of the section, parsed by the seal type's
//! own configuration (`seal::registry`). Each section is deserialized from the parsed document with
//! its spans, so an error inside a section names its line like any other.

use std::collections::HashSet;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::located::{Problem, SectionError, Seg, problem, valid_name};
use crate::seal::registry::{self, SealBackendConfig};

/// One `[[seal]]` section.
#[derive(Debug)]
pub struct SealSection {
    pub name: String,
    /// Lower is tried first at unseal; defaults to the entry's position in the file.
    pub priority: Option<u32>,
    /// A seal being migrated away from: it is only used by `operator unseal --migrate`.
    pub disabled: bool,
    /// Break-glass: when every auto seal is unreachable, a quorum of recovery keys may unseal.
    /// Only possible when it was on at init (the root key must be wrapped by the recovery key).
    pub recovery_keys_fallback: bool,
    /// Everything that depends on `type`.
    pub backend: SealBackendConfig,
}

impl SealSection {
    pub fn seal_type(&self) -> &'static str {
        self.backend.seal_type()
    }

    pub fn is_shamir(&self) -> bool {
        matches!(self.backend, SealBackendConfig::Shamir)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    name: String,
    priority: Option<u32>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    recovery_keys_fallback: bool,
}

const COMMON_KEYS: [&str; 4] = ["name", "priority", "disabled", "recovery_keys_fallback"];

/// Parses the `seal` array of the document (`None`: absent). Errors carry the section's index.
pub(super) fn parse_all(
    value: Option<Spanned<DeValue<'_>>>,
) -> Result<Vec<SealSection>, (usize, SectionError)> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        return Err((
            0,
            SectionError::at(span, "", "seal must be an array of tables ([[seal]])"),
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_one(item).map_err(|e| (i, e)))
        .collect()
}

fn parse_one(item: Spanned<DeValue<'_>>) -> Result<SealSection, SectionError> {
    let span = item.span();
    let DeValue::Table(mut table) = item.into_inner() else {
        return Err(SectionError::at(span, "", "must be a table ([[seal]])"));
    };
    let Some(ty) = table.remove("type") else {
        return Err(SectionError::at(
            span,
            "type",
            format!(
                "is required; supported: {}",
                quoted(registry::TYPES).join(", ")
            ),
        ));
    };
    let ty_span = ty.span();
    let DeValue::String(ty) = ty.into_inner() else {
        return Err(SectionError::at(ty_span, "type", "must be a string"));
    };
    let mut common = DeTable::new();
    for k in COMMON_KEYS {
        if let Some((key, v)) = table.remove_entry(k) {
            common.insert(key, v);
        }
    }
    let c = Common::deserialize(
        Spanned::new(span.clone(), DeValue::Table(common)).into_deserializer(),
    )?;
    let backend =
        registry::parse(&ty, Spanned::new(span, DeValue::Table(table))).ok_or_else(|| {
            let message = match registry::OPTIONAL_TYPES.iter().find(|(t, _)| *t == ty) {
                Some((_, feature)) => format!(
                    "this sealkeeper was built without the {ty:?} seal: build it with `--features {feature}` \
                     (or `--features cloud`); this build supports: {}",
                    quoted(registry::TYPES).join(", ")
                ),
                None => format!(
                    "unknown seal type {ty:?}; supported: {}",
                    quoted(registry::TYPES).join(", ")
                ),
            };
            SectionError::at(ty_span.clone(), "type", message)
        })??;
    Ok(SealSection {
        name: c.name,
        priority: c.priority,
        disabled: c.disabled,
        recovery_keys_fallback: c.recovery_keys_fallback,
        backend,
    })
}

fn quoted(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{n:?}")).collect()
}

/// Problems of the set of seals (at least one enabled, names and priorities unique, what may be
/// combined) and of each section (by its type).
pub(super) fn validate(seals: &[SealSection], fips_mode: bool) -> Vec<Problem> {
    use Seg::{Index, Key};
    let mut out = Vec::new();
    if seals.is_empty() {
        out.push(problem(
            vec![Key("seal")],
            "at least one [[seal]] is required",
        ));
    }
    let enabled: Vec<&SealSection> = seals.iter().filter(|s| !s.disabled).collect();
    if !seals.is_empty() && enabled.is_empty() {
        out.push(problem(
            vec![Key("seal")],
            "every [[seal]] is disabled; at least one must be enabled",
        ));
    }
    if enabled.iter().any(|s| s.is_shamir()) && enabled.len() > 1 {
        out.push(problem(
            vec![Key("seal")],
            "a shamir seal cannot be combined with other enabled seals (keep the old seal with \
             disabled = true while migrating)",
        ));
    }
    if seals.iter().filter(|s| s.disabled).count() > 1 {
        out.push(problem(
            vec![Key("seal")],
            "at most one seal may be disabled (the seal being migrated away from)",
        ));
    }
    let mut names = HashSet::new();
    let mut priorities = HashSet::new();
    for (i, s) in seals.iter().enumerate() {
        let section = [Key("seal"), Index(i)];
        let at = |k: &'static str| vec![Key("seal"), Index(i), Key(k)];
        if !valid_name(&s.name) {
            out.push(problem(
                at("name"),
                "must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
            ));
        } else if !names.insert(s.name.clone()) {
            out.push(problem(
                at("name"),
                format!("duplicate seal name {:?}", s.name),
            ));
        }
        if let Some(p) = s.priority
            && !priorities.insert(p)
        {
            out.push(problem(
                at("priority"),
                format!("another seal already has priority {p}"),
            ));
        }
        if s.is_shamir() && s.recovery_keys_fallback {
            out.push(problem(
                at("recovery_keys_fallback"),
                "does not apply to a shamir seal",
            ));
        }
        out.extend(
            s.backend
                .validate(fips_mode)
                .into_iter()
                .map(|p| p.under(&section)),
        );
    }
    out
}
