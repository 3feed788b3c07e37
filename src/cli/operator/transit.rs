//! `operator key`, `operator policy` and `operator token`: Transit administration over the admin
//! socket.

use super::*;

pub(super) async fn key_command(
    socket: &Path,
    mount: &str,
    cmd: KeyCommand,
) -> Result<i32, String> {
    match cmd {
        KeyCommand::Create { name } => {
            call(
                socket,
                Method::POST,
                &format!("/v1/{mount}/keys/{name}"),
                Some(serde_json::json!({})),
            )
            .await?;
            println!("Created key {name}.");
        }
        KeyCommand::Rotate { name } => {
            let v = call(
                socket,
                Method::POST,
                &format!("/v1/{mount}/keys/{name}/rotate"),
                None,
            )
            .await?;
            println!(
                "Rotated key {name}: latest version {}.",
                v["data"]["latest_version"]
            );
        }
        KeyCommand::List { format } => {
            let v = call(socket, Method::GET, &format!("/v1/{mount}/keys"), None).await?;
            if format == Format::Json {
                print_json(&v["data"])?;
            } else {
                for k in v["data"]["keys"].as_array().cloned().unwrap_or_default() {
                    println!("{}", k.as_str().unwrap_or(""));
                }
            }
        }
        KeyCommand::Show { name, format } => {
            let v = call(
                socket,
                Method::GET,
                &format!("/v1/{mount}/keys/{name}"),
                None,
            )
            .await?;
            print_value(format, &v["data"])?;
        }
        KeyCommand::Config {
            name,
            min_decryption_version,
            min_encryption_version,
            deletion_allowed,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(v) = min_decryption_version {
                body.insert("min_decryption_version".into(), v.into());
            }
            if let Some(v) = min_encryption_version {
                body.insert("min_encryption_version".into(), v.into());
            }
            if let Some(v) = deletion_allowed {
                body.insert("deletion_allowed".into(), v.into());
            }
            if body.is_empty() {
                return Err("nothing to change: give --min-decryption-version, --min-encryption-version or --deletion-allowed".into());
            }
            call(
                socket,
                Method::POST,
                &format!("/v1/{mount}/keys/{name}/config"),
                Some(Value::Object(body)),
            )
            .await?;
            println!("Configured key {name}.");
        }
        KeyCommand::Delete { name } => {
            call(
                socket,
                Method::DELETE,
                &format!("/v1/{mount}/keys/{name}"),
                None,
            )
            .await?;
            println!("Deleted key {name}.");
        }
    }
    Ok(0)
}

/// A policy file's rules, checked here so that a mistake is reported at its own line and column
/// (JSON when the file starts with `{`, else TOML).
fn read_rules(path: &Path, text: &str) -> Result<Vec<crate::transit::policy::Rule>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PolicyFile {
        #[serde(alias = "rule")]
        rules: Vec<crate::transit::policy::Rule>,
    }
    let file: PolicyFile = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| {
            let msg = e.to_string();
            // serde_json appends " at line L column C"; the location goes in front instead.
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            format!("{}:{}:{}: {msg}", path.display(), e.line(), e.column())
        })?
    } else {
        toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| crate::located::line_col(text, s.start))
                .unwrap_or((1, 1));
            format!("{}:{line}:{col}: {}", path.display(), e.message().trim())
        })?
    };
    if file.rules.is_empty() {
        return Err(format!(
            "{}: no rules ([[rules]] key = ... capabilities = [...])",
            path.display()
        ));
    }
    Ok(file.rules)
}

pub(super) async fn policy_command(socket: &Path, cmd: PolicyCommand) -> Result<i32, String> {
    match cmd {
        PolicyCommand::Write {
            name,
            key,
            capabilities,
            file,
        } => {
            let rules = match (key, file) {
                (Some(key), _) => {
                    for c in &capabilities {
                        crate::transit::Capability::parse(c)?;
                    }
                    if capabilities.is_empty() {
                        return Err("--capabilities is required with --key".into());
                    }
                    serde_json::json!([{ "key": key, "capabilities": capabilities }])
                }
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    let rules = read_rules(&path, &text)?;
                    serde_json::to_value(rules).map_err(|e| e.to_string())?
                }
                (None, None) => return Err("give --key and --capabilities, or --file".into()),
            };
            call(
                socket,
                Method::PUT,
                &format!("/v1/sys/policies/transit/{name}"),
                Some(serde_json::json!({ "rules": rules })),
            )
            .await?;
            println!("Wrote policy {name}.");
        }
        PolicyCommand::List => {
            let v = call(socket, Method::GET, "/v1/sys/policies/transit", None).await?;
            for p in v["data"]["policies"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                println!("{}", p.as_str().unwrap_or(""));
            }
        }
        PolicyCommand::Show { name, format } => {
            let v = call(
                socket,
                Method::GET,
                &format!("/v1/sys/policies/transit/{name}"),
                None,
            )
            .await?;
            if format == Format::Json {
                print_json(&v["data"])?;
            } else {
                for r in v["data"]["rules"].as_array().cloned().unwrap_or_default() {
                    println!("{}  {}", r["key"].as_str().unwrap_or(""), r["capabilities"]);
                }
            }
        }
        PolicyCommand::Delete { name } => {
            call(
                socket,
                Method::DELETE,
                &format!("/v1/sys/policies/transit/{name}"),
                None,
            )
            .await?;
            println!("Deleted policy {name}.");
        }
    }
    Ok(0)
}

pub(super) async fn token_command(socket: &Path, cmd: TokenCommand) -> Result<i32, String> {
    match cmd {
        TokenCommand::Create {
            policies,
            period,
            ttl,
            display_name,
            format,
        } => {
            let mut body = serde_json::json!({ "policies": policies });
            if let Some(p) = period {
                body["period"] = p.into();
            }
            if let Some(t) = ttl {
                body["ttl"] = t.into();
            }
            let shown_name = display_name.clone().unwrap_or_else(|| "token".into());
            if let Some(d) = display_name {
                body["display_name"] = d.into();
            }
            let v = call(socket, Method::POST, "/v1/auth/token/create", Some(body)).await?;
            let auth = &v["auth"];
            if format == Format::Json {
                print_json(auth)?;
            } else {
                println!(
                    "token             {}",
                    auth["client_token"].as_str().unwrap_or("")
                );
                println!(
                    "token_accessor    {}",
                    auth["accessor"].as_str().unwrap_or("")
                );
                println!("token_policies    {}", auth["policies"]);
                println!("token_display     {shown_name}");
                println!("token_period      {}", seconds(&auth["period"]));
                println!("token_duration    {}", seconds(&auth["lease_duration"]));
                println!("token_renewable   {}", auth["renewable"]);
                eprintln!("The token is shown only now; only a hash of it is stored.");
            }
        }
        TokenCommand::List { format } => {
            let v = call(socket, Method::GET, "/v1/auth/token/accessors", None).await?;
            if format == Format::Json {
                print_json(&v["data"]["tokens"])?;
            } else {
                println!(
                    "{:<26} {:<20} {:<24} {:<10} expires",
                    "accessor", "display_name", "policies", "period"
                );
                for t in v["data"]["tokens"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<26} {:<20} {:<24} {:<10} {}",
                        t["accessor"].as_str().unwrap_or(""),
                        t["display_name"].as_str().unwrap_or(""),
                        t["policies"].to_string(),
                        t["period"]
                            .as_u64()
                            .map(|p| format!("{p}s"))
                            .unwrap_or_else(|| "-".into()),
                        t["expire_time"].as_str().unwrap_or("never"),
                    );
                }
            }
        }
        TokenCommand::Revoke { accessor } => {
            call(
                socket,
                Method::POST,
                "/v1/auth/token/revoke-accessor",
                Some(serde_json::json!({ "accessor": accessor })),
            )
            .await?;
            println!("Revoked token {accessor}.");
        }
    }
    Ok(0)
}

/// A number of seconds as an operator writes it: `768h`, `90m`, `45s` (`0` stays `0`).
fn seconds(v: &Value) -> String {
    match v.as_u64() {
        Some(0) => "0".into(),
        Some(s) if s % 3600 == 0 => format!("{}h", s / 3600),
        Some(s) if s % 60 == 0 => format!("{}m", s / 60),
        Some(s) => format!("{s}s"),
        None => v.to_string(),
    }
}
