//! `sealkeeper audit verify FILE...`: checks the hash chain across files given in order.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::GENESIS;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct VerifyError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Verifies the files as one chain; returns the number of records.
pub fn verify(files: &[PathBuf]) -> Result<u64, VerifyError> {
    let mut prev_hash: Option<String> = None;
    let mut prev_seq: Option<u64> = None;
    let mut count = 0;
    for path in files {
        verify_file(path, &mut prev_hash, &mut prev_seq, &mut count)?;
    }
    Ok(count)
}

fn verify_file(
    path: &Path,
    prev_hash: &mut Option<String>,
    prev_seq: &mut Option<u64>,
    count: &mut u64,
) -> Result<(), VerifyError> {
    let err = |line: usize, message: String| VerifyError {
        file: path.display().to_string(),
        line,
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| err(0, format!("cannot open: {e}")))?;
    for (i, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let n = i + 1;
        let raw = line.map_err(|e| err(n, format!("cannot read: {e}")))?;
        if raw.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(&raw)
            .map_err(|_| err(n, "not UTF-8: the record was damaged".into()))?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| err(n, format!("not a JSON record ({e}): damaged or truncated")))?;
        let seq = v["seq"]
            .as_u64()
            .ok_or_else(|| err(n, "record has no seq".into()))?;
        let prev = v["prev"]
            .as_str()
            .ok_or_else(|| err(n, "record has no prev hash".into()))?;
        match *prev_seq {
            Some(p) if seq == p => {
                return Err(err(
                    n,
                    format!("duplicated record: seq {seq} appears twice"),
                ));
            }
            Some(p) if seq < p => {
                return Err(err(
                    n,
                    format!("records out of order: seq {seq} after seq {p}"),
                ));
            }
            Some(p) if seq > p + 1 => {
                return Err(err(
                    n,
                    format!("missing records: seq {} to {} are absent", p + 1, seq - 1),
                ));
            }
            None if seq == 1 && prev != GENESIS => {
                return Err(err(n, "the first record does not start the chain".into()));
            }
            _ => {}
        }
        if let Some(h) = prev_hash.as_deref()
            && h != prev
        {
            return Err(err(
                n,
                format!("hash chain broken: the record before seq {seq} was modified"),
            ));
        }
        *prev_hash = Some(hex::encode(crate::crypto::sha256(&raw)));
        *prev_seq = Some(seq);
        *count += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Event, render};

    fn chain(n: u64) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let line = render(&Event::new("test", "op", "ok").field("i", seq), seq, &prev);
                prev = hex::encode(crate::crypto::sha256(line.as_bytes()));
                line
            })
            .collect()
    }

    fn check(lines: &[String]) -> Result<u64, VerifyError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        std::fs::write(
            &p,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        verify(&[p]).map_err(|e| VerifyError {
            file: String::new(),
            ..e
        })
    }

    #[test]
    fn intact_chain() {
        assert_eq!(check(&chain(5)), Ok(5));
    }

    #[test]
    fn each_kind_of_damage_names_the_line() {
        let good = chain(5);
        let mut modified = good.clone();
        modified[1] = modified[1].replace("\"op\"", "\"oq\"");
        assert_eq!(
            check(&modified).unwrap_err().line,
            3,
            "the next record's prev no longer matches"
        );
        let mut missing = good.clone();
        missing.remove(2);
        let e = check(&missing).unwrap_err();
        assert_eq!(
            (e.line, e.message.contains("missing records: seq 3 to 3")),
            (3, true),
            "{e}"
        );
        let mut dup = good.clone();
        dup.insert(3, good[2].clone());
        assert!(
            check(&dup)
                .unwrap_err()
                .message
                .contains("duplicated record")
        );
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert_eq!(
            check(&swapped).unwrap_err().line,
            2,
            "the first record out of place"
        );
        let mut back = good.clone();
        back.push(good[1].clone());
        let e = check(&back).unwrap_err();
        assert!(e.line == 6 && e.message.contains("out of order"), "{e}");
        let mut truncated = good.clone();
        truncated[4] = truncated[4][..20].to_string();
        assert_eq!(check(&truncated).unwrap_err().line, 5);
    }
}
