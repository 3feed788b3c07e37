//! `sealkeeper operator ...`: clients of the admin socket.

mod print;
mod transit;

use print::{print_keys, print_rewrap, print_status, print_value};
use transit::{key_command, policy_command, token_command};

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{Format, SocketArgs};
use crate::api::Status;
use crate::config::{Config, DEFAULT_SOCKET};

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(subcommand)]
    pub command: OperatorCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum OperatorCommand {
    /// Initialize: generate the root key, wrap it with every enabled seal, and print the shares
    /// once: recovery keys with an HSM seal, unseal keys with a shamir seal.
    Init {
        /// Number of shares (recovery keys, or a shamir seal's unseal keys).
        #[arg(long, value_name = "N", visible_alias = "key-shares")]
        recovery_shares: u32,
        /// Number of shares needed to reconstruct the key.
        #[arg(long, value_name = "T", visible_alias = "key-threshold")]
        recovery_threshold: u32,
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show state, seal type, each HSM member's health, and which member unsealed.
    Status {
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Zeroize the root key now; the node answers 503 until `operator unseal` or a restart.
    Seal,
    /// Without --key: run the auto-unseal from the HSM now (also retries a member whose PIN was
    /// rejected before, once). With --key: submit one unseal key (shamir seal), one recovery key
    /// (recovery_keys_fallback, when every HSM is unreachable) or, with --migrate, one key of the
    /// seal being migrated away from.
    Unseal {
        /// The share (hex or base64); without a value, or "-", it is read from a prompt without
        /// echo (or from standard input when that is not a terminal).
        #[arg(long, value_name = "SHARE", num_args = 0..=1, default_missing_value = "-")]
        key: Option<String>,
        /// Discard the shares submitted so far.
        #[arg(long)]
        reset: bool,
        /// The share is for a seal migration (the disabled seal's unseal or recovery keys).
        #[arg(long)]
        migrate: bool,
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Add a keyring term: new stored records use it; earlier terms still decrypt. No downtime.
    Rotate,
    /// Generate a new root key, wrap it with every seal that answers and re-encrypt the keyring
    /// under it. Transit ciphertexts do not change.
    RotateRoot {
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Would this node unseal if it restarted now? Unwraps the stored root key through the
    /// running daemon's seals, as a restart would (then zeroizes it), and exits 0 only when one
    /// succeeded; else prints why and exits 1. Run it before every restart or rolling upgrade.
    /// (It checks the running configuration; `sealkeeper seal probe --config F` checks a changed
    /// file without a daemon.)
    Preflight {
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Re-wrap the root key under each seal's configured HSM key (after a key_label change, with
    /// the old key still in the HSM).
    Rewrap {
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Replace the recovery keys (or a shamir seal's unseal keys), authorized by a quorum of the
    /// current ones. Start with --key-shares/--key-threshold (prints a nonce), then submit each
    /// current key with --nonce and --key; the last one prints the new shares, once. They take
    /// effect when a quorum of them was submitted back with --verify --nonce --key; until then the
    /// current shares stand.
    Rekey {
        /// "recovery" (HSM seals) or "unseal" (shamir seal).
        #[arg(long, default_value = "recovery")]
        target: String,
        /// Start a rekey producing N new shares.
        #[arg(long, value_name = "N", requires = "key_threshold")]
        key_shares: Option<u32>,
        /// ... any T of which reconstruct the new key.
        #[arg(long, value_name = "T", requires = "key_shares")]
        key_threshold: Option<u32>,
        /// The nonce printed when the rekey started.
        #[arg(long, requires = "key")]
        nonce: Option<String>,
        /// One current share (hex or base64); without a value, or "-", read without echo.
        #[arg(long, value_name = "SHARE", num_args = 0..=1, default_missing_value = "-", requires = "nonce")]
        key: Option<String>,
        /// Submit one of the new shares (with --nonce and --key) to verify them.
        #[arg(long, requires = "key")]
        verify: bool,
        /// Cancel the rekey in progress, or discard new shares waiting for verification.
        #[arg(long, conflicts_with_all = ["key_shares", "key"])]
        cancel: bool,
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Manage Transit keys (create, rotate, list, show, config, delete).
    Key {
        /// Mount path of the Transit API ([transit] mount in the daemon's config).
        #[arg(long, default_value = "transit", global = true)]
        mount: String,
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage policies: which keys a token may use, and how.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Create, list and revoke client tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the audit trail's `hmac-sha256:` of a value (a client token, ...), to find it in the
    /// trail. The value is read from standard input when VALUE is "-".
    AuditHash {
        /// The value to hash, or "-" to read it from standard input (keeps it out of the shell
        /// history and the process list).
        value: String,
    },
    /// Have the unsealed daemon verify the audit trail: the hash chain, every record's MAC under
    /// the chain key, and the anchor kept in the sealed state (which shows records cut off the
    /// end or an edited last record). Without FILE: the whole configured trail, oldest first.
    AuditVerify {
        /// Files of the configured audit trail, oldest first (rotated files, then the current).
        files: Vec<std::path::PathBuf>,
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create a key (aes256-gcm96).
    Create {
        /// The key's name, as Vault's seal stanza names it (`key_name`).
        name: String,
    },
    /// Add a new version; new encryptions use it, older versions still decrypt.
    Rotate {
        /// The key to rotate.
        name: String,
    },
    /// List key names.
    List {
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show a key's metadata (versions, minimum versions).
    Show {
        /// The key to show.
        name: String,
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Change a key's settings.
    Config {
        /// The key to change.
        name: String,
        /// Refuse to decrypt ciphertexts of older versions.
        #[arg(long, value_name = "N")]
        min_decryption_version: Option<u32>,
        /// Refuse to encrypt with older versions (0: the latest).
        #[arg(long, value_name = "N")]
        min_encryption_version: Option<u32>,
        /// Allow (or forbid again) `operator key delete`.
        #[arg(long, value_name = "BOOL")]
        deletion_allowed: Option<bool>,
    },
    /// Delete a key and every version of it. Refused unless the key's deletion_allowed was set with
    /// `operator key config NAME --deletion-allowed true`; ciphertexts under it are lost.
    Delete {
        /// The key to delete.
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Write a policy: one rule from --key and --capabilities, or rules from a TOML/JSON file
    /// (`[[rules]] key = "vault-prod" capabilities = ["encrypt", "decrypt"]`).
    Write {
        /// The policy's name (what `token create --policy` refers to); an existing policy of
        /// that name is replaced.
        name: String,
        /// Key name, a prefix ending in '*', or '*'.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        key: Option<String>,
        /// Comma-separated: encrypt, decrypt, rewrap, datakey, read.
        #[arg(long, value_delimiter = ',', requires = "key")]
        capabilities: Vec<String>,
        /// A TOML or JSON file with the rules.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// List policy names.
    List,
    /// Show a policy's rules.
    Show {
        /// The policy to show.
        name: String,
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Delete a policy.
    Delete {
        /// The policy to delete.
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once. Without --period or --ttl the token is periodic with a
    /// period of 768h: it never expires while it is renewed (Vault's seal client renews it).
    Create {
        /// A policy the token gets (repeatable, or comma-separated).
        #[arg(long = "policy", value_delimiter = ',', required = true)]
        policies: Vec<String>,
        /// Periodic token: each renewal resets its TTL to this (e.g. 768h).
        #[arg(long)]
        period: Option<String>,
        /// Non-periodic token lifetime (e.g. 24h).
        #[arg(long, conflicts_with = "period")]
        ttl: Option<String>,
        /// A name for the token shown in `token list` and recorded in the audit trail (e.g. the
        /// Vault cluster it is for) [default: "token"].
        #[arg(long, value_name = "NAME")]
        display_name: Option<String>,
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List tokens by accessor (never the tokens themselves).
    List {
        /// Output format: `table` for people, `json` for scripts (README, "JSON output").
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Revoke a token by its accessor; it gets 403 at once.
    Revoke {
        /// The token's accessor, as `token create` and `token list` print it.
        accessor: String,
    },
}

/// The socket: --socket, else $SEALKEEPER_SOCKET, else admin.socket in --config, else the default.
pub fn resolve_socket(args: &SocketArgs) -> Result<PathBuf, String> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    if let Some(s) = std::env::var_os("SEALKEEPER_SOCKET").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(s));
    }
    if let Some(c) = &args.config {
        return Config::load(c)
            .map(|cfg| cfg.admin.socket)
            .map_err(|e| e.to_string());
    }
    Ok(PathBuf::from(DEFAULT_SOCKET))
}

/// One request over the admin socket; returns (status, JSON body or Null).
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot connect to the admin socket {}: {e}",
            socket.display()
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin socket {}: {e}", socket.display()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("admin socket {}: {e}", socket.display()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    Ok((status, json))
}

fn api_error(status: u16, body: &Value) -> String {
    let msgs: Vec<String> = body
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if msgs.is_empty() {
        format!("the daemon answered HTTP {status}")
    } else {
        msgs.join("; ")
    }
}

async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let (status, json) = request(socket, method, path, body).await?;
    if (200..300).contains(&status) {
        Ok(json)
    } else {
        Err(api_error(status, &json))
    }
}

pub(crate) fn print_json(v: &Value) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

pub fn run(args: OperatorArgs) -> Result<i32, String> {
    let socket = resolve_socket(&args.socket)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run_command(&socket, args.command))
}

async fn run_command(socket: &Path, cmd: OperatorCommand) -> Result<i32, String> {
    match cmd {
        OperatorCommand::Init {
            recovery_shares,
            recovery_threshold,
            format,
        } => {
            let status = call(socket, Method::GET, "/v1/sys/seal-status", None).await?;
            let shamir = status["type"] == "shamir";
            let body = if shamir {
                serde_json::json!({
                    "secret_shares": recovery_shares,
                    "secret_threshold": recovery_threshold,
                })
            } else {
                serde_json::json!({
                    "recovery_shares": recovery_shares,
                    "recovery_threshold": recovery_threshold,
                })
            };
            let v = call(socket, Method::PUT, "/v1/sys/init", Some(body)).await?;
            if format == Format::Json {
                print_json(&v)?;
            } else if shamir {
                print_keys(&v, "keys_base64", "Unseal Key");
                println!(
                    "Sealkeeper initialized with {recovery_shares} unseal key shares and a key threshold of \
                     {recovery_threshold}. With a shamir seal, every start leaves the node sealed until \
                     {recovery_threshold} of these keys are given with `sealkeeper operator unseal --key`."
                );
                println!();
                println!(
                    "Store the unseal keys apart from each other and safely: they are shown only now."
                );
            } else {
                print_keys(&v, "recovery_keys_base64", "Recovery Key");
                println!(
                    "Sealkeeper initialized with {recovery_shares} recovery key shares and a recovery key threshold of \
                     {recovery_threshold}. The root key is wrapped by the HSM; this node unseals itself from the HSM \
                     at every start."
                );
                println!();
                println!(
                    "Store the recovery keys apart from each other and safely: they are shown only now. They \
                     authorize recovery operations (seal migration, rekey); they never unseal."
                );
                if let Some(w) = v.get("warnings").and_then(|w| w.as_array()) {
                    for w in w {
                        eprintln!("Warning: {}", w.as_str().unwrap_or(""));
                    }
                }
            }
            Ok(0)
        }
        OperatorCommand::Status { format } => {
            let v = call(socket, Method::GET, "/v1/sys/hsm-status", None).await?;
            if format == Format::Json {
                print_json(&v)?;
            } else {
                let s: Status = serde_json::from_value(v)
                    .map_err(|e| format!("unexpected status answer: {e}"))?;
                print_status(&s);
            }
            Ok(0)
        }
        OperatorCommand::Seal => {
            call(socket, Method::PUT, "/v1/sys/seal", None).await?;
            println!(
                "Sealed: the root key was zeroized. Run `sealkeeper operator unseal` to unseal again."
            );
            Ok(0)
        }
        OperatorCommand::Rotate => {
            let v = call(socket, Method::PUT, "/v1/sys/rotate", None).await?;
            println!(
                "Keyring rotated: new records use term {}; earlier terms still decrypt.",
                v["term"]
            );
            Ok(0)
        }
        OperatorCommand::RotateRoot { format } => {
            let v = call(socket, Method::PUT, "/v1/sys/rotate-root", None).await?;
            if format == Format::Json {
                print_json(&v)?;
            } else {
                print_rewrap(&v);
            }
            Ok(0)
        }
        OperatorCommand::Preflight { format } => {
            let v = call(socket, Method::PUT, "/v1/sys/preflight", None).await?;
            let r: crate::api::RestartSafety = serde_json::from_value(v.clone())
                .map_err(|e| format!("unexpected preflight answer: {e}"))?;
            if format == Format::Json {
                print_json(&v)?;
            } else if r.safe {
                println!("Restart safe: {}", r.reason);
            } else {
                println!("Restart NOT safe: {}", r.reason);
            }
            Ok(if r.safe { 0 } else { 1 })
        }
        OperatorCommand::Rewrap { format } => {
            let v = call(socket, Method::PUT, "/v1/sys/sealwrap/rewrap", None).await?;
            if format == Format::Json {
                print_json(&v)?;
            } else {
                print_rewrap(&v);
            }
            Ok(if v["failed"].as_u64().unwrap_or(0) > 0 {
                1
            } else {
                0
            })
        }
        OperatorCommand::Rekey {
            target,
            key_shares,
            key_threshold,
            nonce,
            key,
            verify,
            cancel,
            format,
        } => {
            rekey_command(
                socket,
                &target,
                key_shares,
                key_threshold,
                nonce,
                key,
                verify,
                cancel,
                format,
            )
            .await
        }
        OperatorCommand::Key { mount, command } => {
            key_command(socket, mount.trim_matches('/'), command).await
        }
        OperatorCommand::Policy { command } => policy_command(socket, command).await,
        OperatorCommand::Token { command } => token_command(socket, command).await,
        OperatorCommand::AuditVerify { files, format } => {
            let files: Vec<String> = files
                .iter()
                .map(|f| {
                    std::path::absolute(f)
                        .unwrap_or_else(|_| f.clone())
                        .display()
                        .to_string()
                })
                .collect();
            let v = call(
                socket,
                Method::PUT,
                "/v1/sys/audit/verify",
                Some(serde_json::json!({ "files": files })),
            )
            .await?;
            match format {
                Format::Json => print_json(&v)?,
                Format::Table => {
                    let anchor = match v["anchor_seq"].as_u64() {
                        Some(a) => format!(
                            "anchor at seq {a} intact ({} records after it)",
                            v["after_anchor"].as_u64().unwrap_or(0)
                        ),
                        None => "no anchor yet".to_string(),
                    };
                    println!(
                        "ok: {} records, {} keyed, MACs verified, hash chain intact, {anchor}",
                        v["records"].as_u64().unwrap_or(0),
                        v["keyed"].as_u64().unwrap_or(0)
                    );
                }
            }
            Ok(0)
        }
        OperatorCommand::AuditHash { value } => {
            let value = if value == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| e.to_string())?;
                s.trim_end_matches(['\r', '\n']).to_string()
            } else {
                value
            };
            let v = call(
                socket,
                Method::PUT,
                "/v1/sys/audit-hash",
                Some(serde_json::json!({ "input": value })),
            )
            .await?;
            println!("{}", v["hash"].as_str().unwrap_or(""));
            Ok(0)
        }
        OperatorCommand::Unseal {
            key,
            reset,
            migrate,
            format,
        } => {
            let key = match key {
                Some(k) => Some(read_share(&k, "Unseal key (will be hidden): ")?),
                None => None,
            };
            let submitting = key.is_some() || reset || migrate;
            if migrate && key.is_none() {
                return Err("--migrate needs --key".into());
            }
            let mut body = serde_json::json!({ "reset": reset, "migrate": migrate });
            if let Some(k) = &key {
                body["key"] = serde_json::json!(k.as_str());
            }
            let v = call(socket, Method::PUT, "/v1/sys/unseal", Some(body)).await?;
            if format == Format::Json {
                print_json(&v)?;
            } else if submitting {
                if v["sealed"] == false {
                    println!("Unsealed.");
                } else if reset && key.is_none() {
                    println!("Unseal progress reset.");
                } else {
                    println!(
                        "Key accepted. Unseal progress: {} of {}{} (nonce {}).",
                        v["progress"],
                        v["t"],
                        if v["migration"] == true {
                            ", seal migration"
                        } else {
                            ""
                        },
                        v["nonce"].as_str().unwrap_or("")
                    );
                }
            } else {
                let st = call(socket, Method::GET, "/v1/sys/hsm-status", None).await?;
                let by = st
                    .get("unsealed_by")
                    .and_then(|b| b.as_str())
                    .unwrap_or("?");
                println!("Unsealed from the HSM (member {by}).");
            }
            Ok(0)
        }
    }
}

/// A share given on the command line, or "-": read from a prompt without echo, or from standard
/// input when it is not a terminal.
fn read_share(given: &str, prompt: &str) -> Result<zeroize::Zeroizing<String>, String> {
    if given != "-" {
        return Ok(zeroize::Zeroizing::new(given.to_string()));
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        rpassword::prompt_password(prompt)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| format!("cannot read the key: {e}"))
    } else {
        let mut s = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut s)
            .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
        Ok(zeroize::Zeroizing::new(s.trim().to_string()))
    }
}

#[allow(clippy::too_many_arguments)]
async fn rekey_command(
    socket: &Path,
    target: &str,
    key_shares: Option<u32>,
    key_threshold: Option<u32>,
    nonce: Option<String>,
    key: Option<String>,
    verify: bool,
    cancel: bool,
    format: Format,
) -> Result<i32, String> {
    let base = match target {
        "recovery" => "/v1/sys/rekey-recovery-key",
        "unseal" => "/v1/sys/rekey",
        other => {
            return Err(format!(
                "unknown rekey target {other:?}: use \"recovery\" or \"unseal\""
            ));
        }
    };
    let v = if cancel {
        call(socket, Method::DELETE, &format!("{base}/init"), None).await?;
        println!("Rekey cancelled.");
        return Ok(0);
    } else if let (Some(n), Some(t)) = (key_shares, key_threshold) {
        call(
            socket,
            Method::PUT,
            &format!("{base}/init"),
            Some(
                serde_json::json!({ "secret_shares": n, "secret_threshold": t, "target": target }),
            ),
        )
        .await?
    } else if let (Some(nonce), Some(key)) = (nonce, key) {
        let key = read_share(
            &key,
            if verify {
                "New key (will be hidden): "
            } else {
                "Current key (will be hidden): "
            },
        )?;
        call(
            socket,
            Method::PUT,
            &format!("{base}/{}", if verify { "verify" } else { "update" }),
            Some(serde_json::json!({ "key": key.as_str(), "nonce": nonce })),
        )
        .await?
    } else {
        call(socket, Method::GET, &format!("{base}/init"), None).await?
    };
    if format == Format::Json {
        print_json(&v)?;
        return Ok(0);
    }
    if v["complete"] == true {
        let noun = if target == "recovery" {
            "Recovery Key"
        } else {
            "Unseal Key"
        };
        print_keys(&v, "keys_base64", noun);
        println!(
            "New shares: {} keys, threshold {}. They are shown only now. They take effect once {} of \
             them were submitted back with `sealkeeper operator rekey --verify --nonce {} --key`; until \
             then the current shares stand.",
            v["new_shares"],
            v["new_threshold"],
            v["new_threshold"],
            v["verification_nonce"].as_str().unwrap_or("")
        );
    } else if v["verified"] == true {
        println!(
            "Rekey verified: the new shares ({} of {}) replace the old ones, which no longer work.",
            v["t"], v["n"]
        );
    } else if v["verification_required"] == true {
        println!(
            "New shares wait for verification: nonce {}, {} submitted.",
            v["verification_nonce"].as_str().unwrap_or(""),
            v["verification_progress"]
        );
    } else if v["started"] == true {
        println!(
            "Rekey in progress: nonce {}, {} of {} current keys submitted; new split {} of {}.",
            v["nonce"].as_str().unwrap_or(""),
            v["progress"],
            v["required"],
            v["new_threshold"],
            v["new_shares"]
        );
    } else {
        println!("No rekey in progress.");
    }
    Ok(0)
}
