//! The command line: `server`, and the `operator` commands that talk to the admin socket.

pub mod operator;
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
