//! Every seal type, in one place: its configuration section, its validation and how it is built.
//! Adding a seal type is a folder under `seal/` and one arm in each match below.

use std::sync::Arc;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::DeValue;

use super::Seal;
use super::pkcs11::{ModuleRegistry, Pkcs11Config, Pkcs11Seal};
use crate::located::{Problem, SectionError};

/// The seal types, as `type = "..."` names them.
pub const TYPES: &[&str] = &[
    "pkcs11",
    "shamir",
    #[cfg(feature = "awskms")]
    "awskms",
    #[cfg(feature = "azurekeyvault")]
    "azurekeyvault",
    #[cfg(feature = "gcpckms")]
    "gcpckms",
];

/// Cloud seal types a build may leave out, and the cargo feature that adds each.
pub const OPTIONAL_TYPES: &[(&str, &str)] =
    &[("awskms", "awskms"), ("azurekeyvault", "azurekeyvault")];

/// The type-specific part of a `[[seal]]` section.
#[derive(Debug)]
pub enum SealBackendConfig {
    Pkcs11(Pkcs11Config),
    /// Unseal keys typed by operators: nothing to configure.
    Shamir,
    #[cfg(feature = "awskms")]
    AwsKms(Box<super::awskms::AwsKmsConfig>),
    #[cfg(feature = "azurekeyvault")]
    AzureKeyVault(Box<super::azurekeyvault::AzureKeyVaultConfig>),
    #[cfg(feature = "gcpckms")]
    GcpCkms(Box<super::gcpckms::GcpCkmsConfig>),
}

/// Parses the rest of a section (every key but `type` and the common ones) as `ty` says; `None`
/// for an unknown type.
pub fn parse(
    ty: &str,
    rest: Spanned<DeValue<'_>>,
) -> Option<Result<SealBackendConfig, SectionError>> {
    Some(match ty {
        "pkcs11" => Pkcs11Config::deserialize(rest.into_deserializer())
            .map(SealBackendConfig::Pkcs11)
            .map_err(SectionError::from),
        #[cfg(feature = "awskms")]
        "awskms" => super::awskms::AwsKmsConfig::deserialize(rest.into_deserializer())
            .map(|c| SealBackendConfig::AwsKms(Box::new(c)))
            .map_err(SectionError::from),
        #[cfg(feature = "azurekeyvault")]
        "azurekeyvault" => {
            super::azurekeyvault::AzureKeyVaultConfig::deserialize(rest.into_deserializer())
                .map(|c| SealBackendConfig::AzureKeyVault(Box::new(c)))
                .map_err(SectionError::from)
        }
        #[cfg(feature = "gcpckms")]
        "gcpckms" => super::gcpckms::GcpCkmsConfig::deserialize(rest.into_deserializer())
            .map(|c| SealBackendConfig::GcpCkms(Box::new(c)))
            .map_err(SectionError::from),
        "shamir" => match rest.into_inner() {
            DeValue::Table(t) => match t.iter().next() {
                Some((k, _)) => Err(SectionError::at(
                    k.span(),
                    k.get_ref(),
                    "does not apply to a shamir seal",
                )),
                None => Ok(SealBackendConfig::Shamir),
            },
            _ => Ok(SealBackendConfig::Shamir),
        },
        _ => return None,
    })
}

/// What the daemon needs to build seals: state that seals of one type share.
pub struct BuildContext {
    /// PKCS#11 modules are loaded once per process and shared by every member that uses them.
    pub pkcs11_modules: Arc<ModuleRegistry>,
    pub fips_mode: bool,
}

impl SealBackendConfig {
    pub fn seal_type(&self) -> &'static str {
        match self {
            SealBackendConfig::Pkcs11(_) => super::pkcs11::SEAL_TYPE,
            SealBackendConfig::Shamir => "shamir",
            #[cfg(feature = "awskms")]
            SealBackendConfig::AwsKms(_) => super::awskms::SEAL_TYPE,
            #[cfg(feature = "azurekeyvault")]
            SealBackendConfig::AzureKeyVault(_) => super::azurekeyvault::SEAL_TYPE,
            #[cfg(feature = "gcpckms")]
            SealBackendConfig::GcpCkms(_) => super::gcpckms::SEAL_TYPE,
        }
    }

    /// Problems of the section, at paths relative to it.
    pub fn validate(&self, fips_mode: bool) -> Vec<Problem> {
        match self {
            SealBackendConfig::Pkcs11(c) => c.validate(fips_mode),
            SealBackendConfig::Shamir => Vec::new(),
            #[cfg(feature = "awskms")]
            SealBackendConfig::AwsKms(c) => c.validate(&super::awskms::config::process_env),
            #[cfg(feature = "azurekeyvault")]
            SealBackendConfig::AzureKeyVault(c) => c.validate(&super::cloud::process_env),
            #[cfg(feature = "gcpckms")]
            SealBackendConfig::GcpCkms(c) => c.validate(&super::cloud::process_env),
        }
    }

    /// Warnings to log at every start.
    pub fn warnings(&self) -> Vec<String> {
        match self {
            SealBackendConfig::Pkcs11(c) => c.warnings(),
            SealBackendConfig::Shamir => Vec::new(),
            #[cfg(feature = "awskms")]
            SealBackendConfig::AwsKms(c) => c.warnings(),
            #[cfg(feature = "azurekeyvault")]
            SealBackendConfig::AzureKeyVault(c) => c.warnings(),
            #[cfg(feature = "gcpckms")]
            SealBackendConfig::GcpCkms(c) => c.warnings(),
        }
    }

    /// Where the section holds a secret, relative to the section (then the file must not be
    /// readable by others).
    pub fn inline_secret(&self) -> Option<Vec<crate::located::Seg>> {
        match self {
            SealBackendConfig::Pkcs11(c) => c.inline_pin(),
            SealBackendConfig::Shamir => None,
            #[cfg(feature = "awskms")]
            SealBackendConfig::AwsKms(c) => c.inline_secret(),
            #[cfg(feature = "azurekeyvault")]
            SealBackendConfig::AzureKeyVault(c) => c.inline_secret(),
            #[cfg(feature = "gcpckms")]
            SealBackendConfig::GcpCkms(c) => c.inline_secret(),
        }
    }

    /// The seal, for a type that wraps the root key itself; `None` for shamir.
    pub fn build(&self, name: &str, ctx: &BuildContext) -> Option<Arc<dyn Seal>> {
        match self {
            SealBackendConfig::Pkcs11(c) => Some(Arc::new(Pkcs11Seal::from_config(
                name,
                c,
                ctx.pkcs11_modules.clone(),
                ctx.fips_mode,
            ))),
            SealBackendConfig::Shamir => None,
            #[cfg(feature = "awskms")]
            SealBackendConfig::AwsKms(c) => Some(Arc::new(super::awskms::AwsKmsSeal::from_config(
                name,
                c,
                ctx.fips_mode,
            ))),
            #[cfg(feature = "azurekeyvault")]
            SealBackendConfig::AzureKeyVault(c) => Some(Arc::new(
                super::azurekeyvault::AzureKeyVaultSeal::from_config(name, c),
            )),
            #[cfg(feature = "gcpckms")]
            SealBackendConfig::GcpCkms(c) => {
                Some(Arc::new(super::gcpckms::GcpCkmsSeal::from_config(name, c)))
            }
        }
    }
}
