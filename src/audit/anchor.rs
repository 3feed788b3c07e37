//! The audit trail's anchor: the daemon keeps the newest keyed record's seq, hash and MAC in its
//! sealed state (`audit/anchor`, encrypted under the keyring), every `anchor_interval`, at every
//! rotation of the file and at shutdown. A verification against the anchor (through the admin
//! socket, by the unsealed daemon) detects records cut off the end and an edited last record,
//! which no hash chain can show by itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::keys::AuditKeys;
use super::verify::{Keys, Report, VerifyError, verify_with};
use super::{Anchor, Audit};

/// Writes the newest keyed record as the anchor when it changed since `last` (`keys`: the trail's
/// keys, while unsealed).
pub async fn anchor_once(keys: Option<Arc<AuditKeys>>, audit: &Audit, last: &mut Option<Anchor>) {
    let (Some(head), Some(keys)) = (audit.head(), keys) else {
        return;
    };
    if last.as_ref() == Some(&head) {
        return;
    }
    let h = head.clone();
    match keys.store_anchor(&h).await {
        Ok(()) => *last = Some(head),
        Err(e) => tracing::warn!(error = %e, "the audit anchor could not be stored"),
    }
}

/// Anchors periodically and at every rotation, until aborted; `keys` gives the trail's keys while
/// unsealed.
pub async fn run(
    keys: impl Fn() -> Option<Arc<AuditKeys>> + Send + 'static,
    audit: Audit,
    every: Duration,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = audit.rotated() => {}
        }
        anchor_once(keys(), &audit, &mut last).await;
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    #[error("sealkeeper is sealed: the chain key and the anchor are only available unsealed")]
    Sealed,
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// Verifies files of the trail at `log` (default: all of them, oldest first) with the chain key,
/// against the anchors (the stored one and this run's newest keyed record). Only files
/// of that trail are read.
pub async fn check(
    keys: Option<Arc<AuditKeys>>,
    audit: &Audit,
    log: &Path,
    files: &[PathBuf],
) -> Result<Report, CheckError> {
    let transit = keys.ok_or(CheckError::Sealed)?;
    let stored = transit
        .anchor()
        .await
        .map_err(|e| CheckError::Refused(format!("the stored anchor cannot be read: {e}")))?;
    let anchors: Vec<Anchor> = stored.into_iter().chain(audit.head()).collect();
    let key = transit.chain_mac();
    drop(transit);
    let (log, files) = (log.to_path_buf(), files.to_vec());
    // Reading the files is blocking work.
    tokio::task::spawn_blocking(move || {
        let files = files_of_trail(&log, files)?;
        Ok(verify_with(
            &files,
            &Keys {
                chain_key: Some(&key),
                anchors: &anchors,
            },
        )?)
    })
    .await
    .map_err(|e| CheckError::Refused(format!("the verification task failed: {e}")))?
}

/// `files` (default: every file of the trail at `log`, oldest first), refused unless each is a
/// file of that trail.
fn files_of_trail(log: &Path, files: Vec<PathBuf>) -> Result<Vec<PathBuf>, CheckError> {
    let files = if files.is_empty() {
        super::trail_files(log)
    } else {
        files
    };
    let dir = log
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .ok_or_else(|| CheckError::Refused("the audit directory cannot be read".into()))?;
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for f in &files {
        let real = f
            .canonicalize()
            .map_err(|e| CheckError::Refused(format!("{}: {e}", f.display())))?;
        let ok = real.parent() == Some(dir.as_path())
            && real.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n == name || n.starts_with(&format!("{name}."))
            });
        if !ok {
            return Err(CheckError::Refused(format!(
                "{} is not a file of the audit trail {}",
                f.display(),
                log.display()
            )));
        }
    }
    Ok(files)
}
