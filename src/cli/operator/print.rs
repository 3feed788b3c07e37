//! How `operator` commands print their answers as text (`--format json` prints the JSON as it is).

use super::*;

/// Prints the shares of `field` as "NOUN 1: ...", then an empty line.
pub(super) fn print_keys(v: &Value, field: &str, noun: &str) {
    for (i, k) in v[field]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        println!("{noun} {}: {}", i + 1, k.as_str().unwrap_or(""));
    }
    println!();
}

pub(super) fn print_rewrap(v: &Value) {
    println!(
        "{}: {} seal(s) wrapped, {} failed",
        v["operation"].as_str().unwrap_or(""),
        v["succeeded"],
        v["failed"]
    );
    for e in v["seals"].as_array().cloned().unwrap_or_default() {
        if e["ok"] == true {
            println!(
                "  {:<16} ok     key {}",
                e["seal"].as_str().unwrap_or(""),
                e["key"].as_str().unwrap_or("")
            );
        } else {
            println!(
                "  {:<16} failed {}",
                e["seal"].as_str().unwrap_or(""),
                e["error"].as_str().unwrap_or("")
            );
        }
    }
}

pub(super) fn print_status(s: &Status) {
    let ago = |t: Option<u64>| {
        t.map(|t| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(t);
            format!("{}s ago", now.saturating_sub(t))
        })
        .unwrap_or_else(|| "never".into())
    };
    println!("State            {}", s.state);
    println!("Initialized      {}", s.initialized);
    println!("Sealed           {}", s.sealed);
    // The seal's own detail (PKCS#11: key label and mechanism) after its name.
    let detail: Vec<String> = s
        .seal
        .detail
        .iter()
        .map(|(k, v)| match v {
            Value::String(t) => format!("{k} {t:?}"),
            other => format!("{k} {other}"),
        })
        .collect();
    println!(
        "Seal type        {} ({}{}{})",
        s.seal_type,
        s.seal.name,
        if detail.is_empty() { "" } else { ", " },
        detail.join(", ")
    );
    if let Some(by) = &s.unsealed_by {
        println!("Unsealed by      {by} ({})", ago(s.unsealed_since_unix));
    }
    if s.manually_sealed {
        println!("Sealed by        operator (run `sealkeeper operator unseal`)");
    }
    println!(
        "Restart safe     {} ({})",
        if s.restart_safe { "yes" } else { "NO" },
        s.restart.reason
    );
    if s.initialized {
        println!(
            "Recovery keys    {} of {}",
            s.recovery_threshold, s.recovery_shares
        );
    }
    println!("Memory locked    {}", s.memory_locked);
    if let Some(e) = &s.last_unseal_error {
        println!("Last error       {e} ({})", ago(s.last_unseal_attempt_unix));
    }
    if let Some(g) = s.root_generation {
        println!("Root generation  {g}");
    }
    if !s.keyring_terms.is_empty() {
        println!("Keyring terms    {:?}", s.keyring_terms);
    }
    if s.migration {
        println!("Migration        pending (submit keys with `operator unseal --migrate --key`)");
    }
    println!("Seals");
    for w in &s.seals {
        println!(
            "  {:<14} {:<7} priority {:<3} {:<9} {:<9} {}{}",
            w.name,
            w.seal_type,
            w.priority,
            if w.disabled { "disabled" } else { "enabled" },
            if w.healthy { "healthy" } else { "unhealthy" },
            if w.wrapping_current {
                "wraps the current root key"
            } else if w.wrapping_generation.is_some() {
                "wrapping is stale"
            } else {
                "no wrapping"
            },
            match (&w.wrapped_by_key, w.wrapped_by_configured_key) {
                (Some(k), Some(false)) =>
                    format!(" (key {k}, not the configured key: run `sealkeeper operator rewrap`)"),
                (Some(k), _) if w.seal_type == "pkcs11" => format!(" (HSM key {k})"),
                (Some(k), _) => format!(" (key {k})"),
                _ => String::new(),
            }
        );
        for (k, v) in w.detail.iter().filter(|(k, _)| k.ends_with("_from")) {
            println!("  {:<14} {k} {}", "", v.as_str().unwrap_or_default());
        }
    }
    // The first seal's members, then every other seal's (KMS regions, a second HSM pair).
    let mut groups = vec![("HSM members".to_string(), s.seal.members.clone())];
    for w in s
        .seals
        .iter()
        .filter(|w| w.name != s.seal.name && !w.members.is_empty())
    {
        groups.push((format!("Members of {}", w.name), w.members.clone()));
    }
    if let Some(c) = &s.cluster {
        match (c.mode.as_str(), &c.leader) {
            ("active-standby", Some(l)) => println!(
                "Cluster nodes (this node: {}; active-standby, leader {l})",
                c.node
            ),
            ("active-standby", None) => println!(
                "Cluster nodes (this node: {}; active-standby, no leader elected)",
                c.node
            ),
            _ => println!("Cluster nodes (this node: {})", c.node),
        }
        for n in &c.nodes {
            println!(
                "  {:<12} {:<15} {:<22} (seen {})",
                n.name,
                n.state,
                n.address,
                ago(Some(n.last_seen_unix))
            );
        }
        if let Some(e) = &c.error {
            println!("  registry not current: {e}");
        }
    }
    for (i, (title, members)) in groups.into_iter().enumerate() {
        let title = if i == 0 && s.seal.seal_type != "pkcs11" {
            format!("Members of {}", s.seal.name)
        } else {
            title
        };
        println!("{title}");
        for m in &members {
            let what = match m.detail_str("token") {
                "" => m.detail_str("endpoint").to_string(),
                t => t.to_string(),
            };
            println!(
                "  {:<12} {:<15} {} (checked {})",
                m.name,
                m.state,
                what,
                ago(m.last_checked_unix)
            );
            if let Some(e) = &m.last_error {
                println!("  {:<12} {}", "", e);
            }
        }
    }
}

pub(super) fn print_value(format: Format, v: &Value) -> Result<(), String> {
    if format == Format::Json {
        return print_json(v);
    }
    if let Some(obj) = v.as_object() {
        let width = obj.keys().map(|k| k.len()).max().unwrap_or(0);
        for (k, val) in obj {
            let shown = match val {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k:<width$}  {shown}");
        }
    } else {
        println!("{v}");
    }
    Ok(())
}
