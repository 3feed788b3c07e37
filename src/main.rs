use clap::Parser;

fn main() {
    let cli = sealkeeper::cli::Cli::parse();
    std::process::exit(sealkeeper::cli::run(cli));
}
