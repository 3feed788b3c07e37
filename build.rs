//! Sets SEALKEEPER_BUILD_DATE (seal-status's `build_date`, as Vault reports it): SOURCE_DATE_EPOCH
//! when the build sets it (reproducible builds), else the time of the checked-out commit, else now.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    if std::path::Path::new(".git/HEAD").exists() {
        println!("cargo:rerun-if-changed=.git/HEAD");
    }
    let from_env = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let from_git = || {
        let out = Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    let secs = from_env.or_else(from_git).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let date = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
    println!("cargo:rustc-env=SEALKEEPER_BUILD_DATE={date}");
}
