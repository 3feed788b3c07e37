//! The `sealkeeper` command line with the system allocator instead of the wiping one: a peer for
//! `scripts/bench.sh transit`, which reports what wiping freed memory costs. Not for deployment.
use clap::Parser;

fn main() {
    let cli = sealkeeper::cli::Cli::parse();
    std::process::exit(sealkeeper::cli::run(cli));
}
