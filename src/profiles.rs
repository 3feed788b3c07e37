//! HSM vendor profiles (hsm-profiles/*.toml, built into the binary): the defaults that
//! `profile = "NAME"` fills into a `[[seal.hsm]]` entry.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

const SOURCES: &[(&str, &str)] = &[
    ("softhsm2", include_str!("../hsm-profiles/softhsm2.toml")),
    ("luna7", include_str!("../hsm-profiles/luna7.toml")),
    (
        "nshield-connect",
        include_str!("../hsm-profiles/nshield-connect.toml"),
    ),
    ("utimaco", include_str!("../hsm-profiles/utimaco.toml")),
    ("yubihsm2", include_str!("../hsm-profiles/yubihsm2.toml")),
    ("cloudhsm", include_str!("../hsm-profiles/cloudhsm.toml")),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub lib: PathBuf,
    pub rw_session: bool,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

pub fn names() -> Vec<&'static str> {
    SOURCES.iter().map(|(n, _)| *n).collect()
}

/// The profile called `name`.
pub fn get(name: &str) -> Option<Profile> {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, text)| toml::from_str(text).ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_profile_parses_and_is_named_as_its_file() {
        for n in super::names() {
            let p = super::get(n).unwrap_or_else(|| panic!("profile {n} does not parse"));
            assert_eq!(p.name, n);
            assert!(p.lib.is_absolute());
        }
        assert!(super::get("nope").is_none());
    }
}
