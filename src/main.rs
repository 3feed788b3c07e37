use clap::Parser;

/// Freed memory is wiped: see `sealkeeper::secret::WipingAllocator`.
#[global_allocator]
static ALLOCATOR: sealkeeper::secret::WipingAllocator = sealkeeper::secret::WipingAllocator;

fn main() {
    let cli = sealkeeper::cli::Cli::parse();
    std::process::exit(sealkeeper::cli::run(cli));
}
