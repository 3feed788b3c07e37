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
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script for this command line to standard output.
    #[command(
        after_help = "Examples:\n  sealkeeper completions bash > /etc/bash_completion.d/sealkeeper\n  \
                      sealkeeper completions zsh > /usr/local/share/zsh/site-functions/_sealkeeper\n  \
                      sealkeeper completions fish > ~/.config/fish/completions/sealkeeper.fish"
    )]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (roff) for sealkeeper and each of its subcommands into a directory.
    Man {
        /// The directory to write sealkeeper.1, sealkeeper-operator.1, ... into (created if
        /// missing; existing pages are replaced).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of audit log files, given oldest first (rotated files, then the
    /// current one). Reports the first broken, missing, duplicated or reordered record with its
    /// file and line and exits 1; a clean chain exits 0 and prints the number of records.
    Verify {
        /// The audit log files, oldest first: the rotated files (FILE.<timestamp>, in timestamp
        /// order, e.g. `audit.log.*` as the shell sorts them), then the current one.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Read a Vault or OpenBao configuration (HCL) and print the equivalent Sealkeeper TOML: its
    /// seal "pkcs11", "awskms", "azurekeyvault" and "gcpckms" stanzas become [[seal]] sections,
    /// listener "tcp" the [listener] section, seal "transit" the [transit] mount. Warnings (on
    /// standard error) name every setting without an equivalent and every secret found inline,
    /// which is never copied.
    ImportVault {
        /// The Vault or OpenBao configuration file (HCL).
        #[arg(value_name = "FILE")]
        file: PathBuf,
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

/// Prints the Sealkeeper equivalent of a Vault configuration, and the warnings on stderr.
fn import_vault(file: &std::path::Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let r = crate::config::vault_import::import(&text)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    print!("{}", r.toml);
    for w in &r.warnings {
        eprintln!("Warning: {w}");
    }
    Ok(0)
}

/// Writes one man page per command and subcommand into `dir`.
fn write_man_pages(dir: &std::path::Path) -> Result<i32, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| format!("cannot write man pages into {}: {e}", dir.display()))?;
    let pages = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count();
    println!("wrote {pages} man pages into {}", dir.display());
    Ok(0)
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Server(args) => server::run(args),
        Command::Operator(args) => operator::run(args),
        Command::Hsm(cmd) => hsm::run(cmd),
        Command::Seal(cmd) => seal::run(cmd),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "sealkeeper", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => write_man_pages(&dir),
        Command::Config(ConfigCommand::ImportVault { file }) => import_vault(&file),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command, subcommand, option and positional argument says what it is for in `--help`
    /// (and therefore in the man pages and completions generated from the same definition).
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let cmd = <Cli as clap::CommandFactory>::command();
        let mut missing = Vec::new();
        walk(&cmd, "sealkeeper", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
