//! `sealkeeper operator ...`: clients of the admin socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{Format, SocketArgs};
use crate::config::{Config, DEFAULT_SOCKET};
use crate::core::Status;

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(subcommand)]
    pub command: OperatorCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum OperatorCommand {
    /// Initialize: generate and HSM-wrap the root key, and print the recovery key shares once.
    Init {
        /// Number of recovery key shares to split the recovery key into.
        #[arg(long, value_name = "N")]
        recovery_shares: u32,
        /// Number of shares needed to reconstruct the recovery key.
        #[arg(long, value_name = "T")]
        recovery_threshold: u32,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show state, seal type, each HSM member's health, and which member unsealed.
    Status {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Zeroize the root key now; the node answers 503 until `operator unseal` or a restart.
    Seal,
    /// Run the auto-unseal from the HSM now (no keys are typed). Also retries a member whose PIN was
    /// rejected before, once.
    Unseal {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
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

fn print_json(v: &Value) -> Result<(), String> {
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
            let body = serde_json::json!({
                "recovery_shares": recovery_shares,
                "recovery_threshold": recovery_threshold,
            });
            let v = call(socket, Method::PUT, "/v1/sys/init", Some(body)).await?;
            if format == Format::Json {
                print_json(&v)?;
            } else {
                let keys = v
                    .get("recovery_keys_base64")
                    .and_then(|k| k.as_array())
                    .cloned()
                    .unwrap_or_default();
                for (i, k) in keys.iter().enumerate() {
                    println!("Recovery Key {}: {}", i + 1, k.as_str().unwrap_or(""));
                }
                println!();
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
        OperatorCommand::Unseal { format } => {
            let v = call(
                socket,
                Method::PUT,
                "/v1/sys/unseal",
                Some(serde_json::json!({})),
            )
            .await?;
            if format == Format::Json {
                print_json(&v)?;
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

fn print_status(s: &Status) {
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
    println!(
        "Seal type        {} ({}, key {:?}, {})",
        s.seal_type, s.seal.name, s.seal.key_label, s.seal.mechanism
    );
    if let Some(by) = &s.unsealed_by {
        println!("Unsealed by      {by} ({})", ago(s.unsealed_since_unix));
    }
    if s.manually_sealed {
        println!("Sealed by        operator (run `sealkeeper operator unseal`)");
    }
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
    println!("HSM members");
    for m in &s.seal.members {
        println!(
            "  {:<12} {:<13} {} (checked {})",
            m.name,
            m.state,
            m.token,
            ago(m.last_checked_unix)
        );
        if let Some(e) = &m.last_error {
            println!("  {:<12} {}", "", e);
        }
    }
}
