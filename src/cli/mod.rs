//! The command line: `server`, and the `operator` commands that talk to the admin socket.

pub mod hsm;
pub mod operator;
pub mod seal;
pub mod server;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "sealkeeper",
    version,
    about = "HSM-backed auto-unseal appliance for Vault and OpenBao clusters",
    long_about = "Sealkeeper keeps a root key wrapped by a PKCS#11 HSM pair, unseals itself from the HSM at every \
                  start, and serves Vault-compatible health and seal-status endpoints. It is administered only \
                  through its local admin socket, with the `operator` commands."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Server(server::ServerArgs),
    /// Administer a running daemon over its admin socket.
    Operator(operator::OperatorArgs),
    /// Work with audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Inspect HSMs (PKCS#11 modules) without a daemon.
    #[command(subcommand)]
    Hsm(hsm::HsmCommand),
    /// Check the configured seals (HSM pairs, cloud KMS) without a daemon, before a restart.
    #[command(subcommand)]
    Seal(seal::SealCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of audit log files, given oldest first (rotated files, then the
    /// current one). Reports the first broken, missing, duplicated or reordered record with its
    /// file and line and exits 1; a clean chain exits 0 and prints the number of records.
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Human-readable text.
    #[default]
    Table,
    /// Stable JSON (see the README's "JSON output" section).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Where an operator command finds the admin socket.
#[derive(Debug, clap::Args)]
pub struct SocketArgs {
    /// Admin socket path [default: $SEALKEEPER_SOCKET, else admin.socket from --config, else
    /// /run/sealkeeper/admin.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read the admin socket path from this config file.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Server(args) => server::run(args),
        Command::Operator(args) => operator::run(args),
        Command::Hsm(cmd) => hsm::run(cmd),
        Command::Seal(cmd) => seal::run(cmd),
        Command::Audit(AuditCommand::Verify { files }) => {
            match crate::audit::verify::verify_with(&files, &Default::default()) {
                Ok(r) => {
                    println!(
                        "ok: {} records, hash chain intact; {} keyed records whose MACs and the anchor \
                         only the unsealed daemon can check (`sealkeeper operator audit-verify`)",
                        r.records, r.keyed
                    );
                    Ok(0)
                }
                Err(e) => Err(e.to_string()),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let line = e.replace('\n', " ");
            eprintln!("Error: {line}");
            1
        }
    }
}
