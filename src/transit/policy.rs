//! Policies: which capabilities a token has on which keys.

use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "auth/policies/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Encrypt,
    Decrypt,
    Rewrap,
    Datakey,
    /// Key metadata (`GET <mount>/keys/<key>`).
    Read,
    /// `GET /v1/sys/metrics` (not per key: only in a rule for key `*`).
    Metrics,
}

impl Capability {
    pub fn parse(s: &str) -> Result<Capability, String> {
        match s.trim() {
            "encrypt" => Ok(Capability::Encrypt),
            "decrypt" => Ok(Capability::Decrypt),
            "rewrap" => Ok(Capability::Rewrap),
            "datakey" => Ok(Capability::Datakey),
            "read" => Ok(Capability::Read),
            "metrics" => Ok(Capability::Metrics),
            other => Err(format!(
                "unknown capability {other:?}: use encrypt, decrypt, rewrap, datakey, read, metrics"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A key name, or a prefix ending in `*` (`vault-*`), or `*` for every key.
    pub key: String,
    pub capabilities: Vec<Capability>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    #[serde(alias = "rule")]
    pub rules: Vec<Rule>,
}

impl Rule {
    fn matches(&self, key: &str) -> bool {
        match self.key.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => self.key == key,
        }
    }
}

impl Policy {
    pub fn allows(&self, key: &str, cap: Capability) -> bool {
        self.rules
            .iter()
            .any(|r| r.matches(key) && r.capabilities.contains(&cap))
    }

    pub fn validate(&self) -> Result<(), String> {
        if !super::valid_name(&self.name) {
            return Err(format!("invalid policy name {:?}", self.name));
        }
        if self.rules.is_empty() {
            return Err("a policy needs at least one rule".into());
        }
        for r in &self.rules {
            let base = r.key.strip_suffix('*').unwrap_or(&r.key);
            if r.key.is_empty()
                || base.contains('*')
                || (!base.is_empty() && !super::valid_name(base))
            {
                return Err(format!(
                    "invalid key pattern {:?}: a key name, a prefix ending in '*', or '*'",
                    r.key
                ));
            }
            if r.capabilities.is_empty() {
                return Err(format!("the rule for {:?} has no capabilities", r.key));
            }
            if r.key != "*" && r.capabilities.contains(&Capability::Metrics) {
                return Err(format!(
                    "the metrics capability is not per key: give it in a rule for key \"*\", not {:?}",
                    r.key
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str, caps: &[Capability]) -> Policy {
        Policy {
            name: "p".into(),
            rules: vec![Rule {
                key: key.into(),
                capabilities: caps.to_vec(),
            }],
        }
    }

    #[test]
    fn exact_prefix_and_wildcard_rules() {
        let exact = p("vault-prod", &[Capability::Encrypt]);
        assert!(exact.allows("vault-prod", Capability::Encrypt));
        assert!(!exact.allows("vault-prod", Capability::Decrypt));
        assert!(!exact.allows("vault-staging", Capability::Encrypt));
        assert!(!exact.allows("vault-prod2", Capability::Encrypt));
        let prefix = p("vault-*", &[Capability::Decrypt]);
        assert!(prefix.allows("vault-staging", Capability::Decrypt));
        assert!(!prefix.allows("other", Capability::Decrypt));
        assert!(p("*", &[Capability::Read]).allows("anything", Capability::Read));
    }

    #[test]
    fn metrics_is_granted_only_by_a_rule_for_every_key() {
        assert!(p("*", &[Capability::Metrics]).validate().is_ok());
        let e = p("vault-*", &[Capability::Metrics]).validate().unwrap_err();
        assert!(e.contains("not per key"), "{e}");
        assert!(!p("*", &[Capability::Encrypt]).allows("*", Capability::Metrics));
    }

    #[test]
    fn validation() {
        assert!(p("vault-prod", &[Capability::Encrypt]).validate().is_ok());
        assert!(p("a*b", &[Capability::Encrypt]).validate().is_err());
        assert!(p("", &[Capability::Encrypt]).validate().is_err());
        assert!(p("k", &[]).validate().is_err());
        assert!(Capability::parse("sign").is_err());
    }
}
