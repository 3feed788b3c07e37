//! `sealkeeper audit verify FILE...`: checks the hash chain across files given in order.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::GENESIS;

/// `file:line: message`, or `file: message` when no line is concerned (a file that cannot be
/// opened).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}{}: {message}", if *line == 0 { String::new() } else { format!(":{line}") })]
pub struct VerifyError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub records: u64,
    /// Records that carry a `mac` (written while the daemon was unsealed).
    pub keyed: u64,
    /// Whether each `mac` was checked (only the unsealed daemon holds the key).
    pub macs_checked: bool,
    /// The anchored record (seq) that was found intact, when an anchor was given.
    pub anchor_seq: Option<u64>,
    /// Records after the anchor: not yet covered by it.
    pub after_anchor: u64,
}

/// What to check the records against, beyond their hash chain.
#[derive(Default)]
pub struct Keys<'a> {
    /// The chain key: every `mac` must verify under it.
    pub chain_key: Option<&'a crate::crypto::HmacKey>,
    /// The daemon's anchors (the stored one, this run's newest keyed record): each record they
    /// name must be present and unchanged.
    pub anchors: &'a [super::Anchor],
}

/// Verifies the files as one chain (hash links only); returns the number of records.
pub fn verify(files: &[PathBuf]) -> Result<u64, VerifyError> {
    verify_with(files, &Keys::default()).map(|r| r.records)
}

/// Verifies the files as one chain, with the chain key's MACs and the anchor when given.
pub fn verify_with(files: &[PathBuf], keys: &Keys<'_>) -> Result<Report, VerifyError> {
    let mut st = Chain::default();
    let mut report = Report {
        macs_checked: keys.chain_key.is_some(),
        ..Report::default()
    };
    for path in files {
        verify_file(path, keys, &mut st, &mut report)?;
    }
    for a in keys.anchors {
        if st.seq.is_none_or(|s| s < a.seq) {
            let (file, line) = st.last.clone().unwrap_or_default();
            return Err(VerifyError {
                file,
                line,
                message: format!(
                    "the anchored record seq {} is not in these files: records were cut off or removed",
                    a.seq
                ),
            });
        }
    }
    if let Some(a) = report.anchor_seq {
        report.after_anchor = st.seq.map_or(0, |s| s.saturating_sub(a));
    }
    Ok(report)
}

#[derive(Default)]
struct Chain {
    /// Hash of the previous record's line.
    hash: Option<String>,
    seq: Option<u64>,
    /// (file, line) of the previous record.
    last: Option<(String, usize)>,
}

fn verify_file(
    path: &Path,
    keys: &Keys<'_>,
    st: &mut Chain,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let file = path.display().to_string();
    let err = |line: usize, message: String| VerifyError {
        file: file.clone(),
        line,
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| VerifyError {
        file: file.clone(),
        line: 0,
        message: format!("cannot open: {e}"),
    })?;
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
        match st.seq {
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
        // A keyed record is checked on its own first: that names the changed record exactly.
        let keyed = super::split_mac(text);
        if let (Some(key), Some((content, mac))) = (keys.chain_key, &keyed)
            && !super::mac_ok(key, content, mac)
        {
            return Err(err(
                n,
                format!("record seq {seq} was modified: its MAC does not verify"),
            ));
        }
        if let Some(h) = st.hash.as_deref()
            && h != prev
        {
            // The previous record no longer hashes to this one's `prev`: it was changed (or this
            // record's `prev` was).
            let (pf, pl) = st.last.clone().unwrap_or_default();
            return Err(VerifyError {
                file: pf,
                line: pl,
                message: format!(
                    "record seq {} was modified: its hash no longer matches the prev of seq {seq}",
                    seq.saturating_sub(1)
                ),
            });
        }
        let hash = hex::encode(crate::crypto::sha256(&raw));
        for a in keys.anchors.iter().filter(|a| a.seq == seq) {
            let mac = keyed.as_ref().map(|k| k.1);
            if hash != a.line_hash || mac != Some(a.mac.as_str()) {
                return Err(err(
                    n,
                    format!("record seq {seq} does not match the daemon's anchor: it was changed"),
                ));
            }
            report.anchor_seq = report.anchor_seq.max(Some(seq));
        }
        if keyed.is_some() {
            report.keyed += 1;
        }
        st.hash = Some(hash);
        st.seq = Some(seq);
        st.last = Some((file.clone(), n));
        report.records += 1;
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
    fn a_missing_file_is_named_without_a_line() {
        let e = verify(&[PathBuf::from("/nonexistent/audit.log")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/audit.log: cannot open: "),
            "{e}"
        );
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
            2,
            "the modified record itself"
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

#[cfg(test)]
mod keyed_tests {
    use super::*;
    use crate::audit::{Anchor, Event, add_mac, render};

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn key() -> crate::crypto::HmacKey {
        crate::crypto::HmacKey::new(KEY, crate::secret::MemoryPolicy::AllowUnlocked).unwrap()
    }

    /// A keyed chain; returns the lines and an anchor on the last one.
    fn keyed_chain(n: u64) -> (Vec<String>, Anchor) {
        let mut prev = GENESIS.to_string();
        let mut anchor = None;
        let lines = (1..=n)
            .map(|seq| {
                let (line, mac) =
                    add_mac(&render(&Event::new("t", "op", "ok"), seq, &prev), &key());
                prev = hex::encode(crate::crypto::sha256(line.as_bytes()));
                anchor = Some(Anchor {
                    seq,
                    line_hash: prev.clone(),
                    mac,
                });
                line
            })
            .collect();
        (lines, anchor.unwrap_or_else(|| unreachable!()))
    }

    fn check(lines: &[String], anchor: Option<&Anchor>) -> Result<Report, VerifyError> {
        let anchors: Vec<Anchor> = anchor.into_iter().cloned().collect();
        let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let p = dir.path().join("audit.log");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&p, text).unwrap_or_else(|_| unreachable!());
        verify_with(
            &[p],
            &Keys {
                chain_key: Some(&key()),
                anchors: &anchors,
            },
        )
    }

    /// Rewrites record `i` and recomputes every later `prev` (what an attacker without the key
    /// can do), keeping the old MACs.
    fn rewrite(lines: &[String], i: usize, edit: impl Fn(&str) -> String) -> Vec<String> {
        let mut out: Vec<String> = lines.to_vec();
        out[i] = edit(&out[i]);
        for j in i + 1..out.len() {
            let h = hex::encode(crate::crypto::sha256(out[j - 1].as_bytes()));
            let v: Value = serde_json::from_str(&out[j]).unwrap_or(Value::Null);
            let old = v["prev"].as_str().unwrap_or("").to_string();
            out[j] = out[j].replace(&old, &h);
        }
        out
    }

    #[test]
    fn an_intact_keyed_chain_verifies_against_its_anchor() {
        let (lines, anchor) = keyed_chain(20);
        let r = check(&lines, Some(&anchor)).unwrap_or_default();
        assert_eq!((r.records, r.keyed, r.anchor_seq), (20, 20, Some(20)));
    }

    #[test]
    fn rewritten_truncated_or_edited_last_records_are_detected() {
        let (lines, anchor) = keyed_chain(20);
        // A middle record rewritten with the later prevs recomputed: unkeyed, this passes.
        let forged = rewrite(&lines, 9, |l| l.replace("\"op\"", "\"oq\""));
        let plain = {
            let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
            let p = dir.path().join("a.log");
            let text: String = forged.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(&p, text).unwrap_or_else(|_| unreachable!());
            verify(&[p])
        };
        assert_eq!(plain, Ok(20), "the unkeyed hash chain cannot see it");
        let e = check(&forged, Some(&anchor)).unwrap_err();
        assert_eq!(e.line, 10, "{e}");
        // The last 10 records cut off.
        let e = check(&lines[..10], Some(&anchor)).unwrap_err();
        assert!(
            e.message
                .contains("anchored record seq 20 is not in these files"),
            "{e}"
        );
        // The last record edited, its mac recomputed without the key (impossible) or kept.
        let mut last = lines.clone();
        last[19] = last[19].replace("\"ok\"", "\"no\"");
        assert_eq!(check(&last, Some(&anchor)).unwrap_err().line, 20);
        // The mac stripped from the last record.
        let mut stripped = lines.clone();
        stripped[19] = crate::audit::split_mac(&stripped[19])
            .map(|(c, _)| c)
            .unwrap_or_default();
        let e = check(&stripped, Some(&anchor)).unwrap_err();
        assert!(
            e.message.contains("does not match the daemon's anchor"),
            "{e}"
        );
    }
}
