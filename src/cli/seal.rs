//! `sealkeeper seal probe`: checks each configured seal the way a restart would use it, without a
//! daemon and without touching stored state: each member's reachability and round-trip time, the
//! credentials found and where they came from, the key's state, and a wrap-then-unwrap of random
//! bytes (which needs the same permissions as wrapping and unwrapping the root key). Exits 1 when a
//! restart now would not unseal. Run it on each node before a rolling restart.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::Format;
use crate::config::Config;
use crate::core::SealKind;

#[derive(Debug, clap::Subcommand)]
pub enum SealCommand {
    /// Check every configured seal (or one) without touching stored state: members reachable,
    /// credentials found, key usable, a round trip of random bytes. Exits 1 when a restart now would
    /// not unseal (no enabled seal passed) or the configuration cannot be read.
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The daemon's configuration file.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/sealkeeper/sealkeeper.toml"
    )]
    config: PathBuf,
    /// Check only this seal (its `name`); the exit code is then about this seal alone.
    #[arg(long, value_name = "NAME")]
    seal: Option<String>,
    /// Output format: `table` for people, `json` for scripts (README, "JSON output").
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub fn run(cmd: SealCommand) -> Result<i32, String> {
    let SealCommand::Probe(args) = cmd;
    let cfg = Config::load(&args.config).map_err(|e| e.to_string())?;
    let (mut seals, _) = crate::app::build_seals(&cfg);
    seals.sort_by_key(|s| s.priority);
    if let Some(name) = &args.seal
        && !seals.iter().any(|s| &s.name == name)
    {
        let names: Vec<&str> = seals.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "no seal named {name:?} in {}; configured: {}",
            args.config.display(),
            names.join(", ")
        ));
    }
    let mut reports = Vec::new();
    let mut would_unseal = Vec::new();
    let mut any_auto = false;
    for s in seals
        .iter()
        .filter(|s| args.seal.as_ref().is_none_or(|n| n == &s.name))
    {
        let mut r = json!({
            "name": s.name,
            "type": s.seal_type(),
            "priority": s.priority,
            "disabled": s.disabled,
        });
        match &s.kind {
            SealKind::Shamir => {
                r["ok"] = json!(true);
                r["note"] = json!("unseals only with a quorum of unseal keys");
            }
            SealKind::Auto(seal) => {
                if !s.disabled {
                    any_auto = true;
                }
                seal.probe();
                let tests = seal.self_test();
                let health = seal.status();
                seal.shutdown();
                let ok = tests.iter().any(|t| t.ok);
                if ok && !s.disabled {
                    would_unseal.push(s.name.clone());
                }
                let members: Vec<Value> = health
                    .members
                    .iter()
                    .map(|m| {
                        let t = tests.iter().find(|t| t.member == m.name);
                        let mut v = serde_json::to_value(m).unwrap_or_default();
                        v["round_trip_ok"] = json!(t.is_some_and(|t| t.ok));
                        if let Some(t) = t {
                            v["round_trip_ms"] = json!(t.elapsed_ms);
                            if let Some(e) = &t.error {
                                v["round_trip_error"] = json!(e);
                            }
                        }
                        v
                    })
                    .collect();
                r["ok"] = json!(ok);
                r["members"] = json!(members);
                r["detail"] = json!(health.detail);
            }
        }
        reports.push(r);
    }
    let restart_unseals = !would_unseal.is_empty() || !any_auto;
    let doc = json!({
        "config": args.config.display().to_string(),
        "seals": reports,
        "restart_would_unseal": restart_unseals,
        "unseals_with": would_unseal.first(),
    });
    match args.format {
        Format::Json => super::operator::print_json(&doc)?,
        Format::Table => print_table(&doc),
    }
    Ok(if restart_unseals { 0 } else { 1 })
}

fn print_table(doc: &Value) {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    for s in doc["seals"].as_array().into_iter().flatten() {
        println!(
            "Seal {} ({}, priority {}{}): {}",
            text(&s["name"]),
            text(&s["type"]),
            text(&s["priority"]),
            if s["disabled"] == true {
                ", disabled"
            } else {
                ""
            },
            if s["ok"] == true { "ok" } else { "FAILED" }
        );
        if let Some(n) = s["note"].as_str() {
            println!("  {n}");
        }
        for (k, v) in s["detail"].as_object().into_iter().flatten() {
            println!("  {k:<18} {}", text(v));
        }
        for m in s["members"].as_array().into_iter().flatten() {
            let what = [&m["token"], &m["endpoint"], &m["key_state"]]
                .iter()
                .map(|v| text(v))
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "  {:<12} {:<15} round trip {} ({} ms) {}",
                text(&m["name"]),
                text(&m["state"]),
                if m["round_trip_ok"] == true {
                    "ok"
                } else {
                    "failed"
                },
                text(&m["round_trip_ms"]),
                what
            );
            for e in [&m["last_error"], &m["round_trip_error"]] {
                if let Some(e) = e.as_str() {
                    println!("  {:<12} {e}", "");
                }
            }
        }
    }
    if doc["restart_would_unseal"] == true {
        match doc["unseals_with"].as_str() {
            Some(s) => println!("A restart now would unseal with seal {s}."),
            None => println!("No automatic seal configured: a restart needs unseal keys."),
        }
    } else {
        println!(
            "A restart now would NOT unseal: no enabled seal passed. Fix it before restarting."
        );
    }
}
