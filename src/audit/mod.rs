//! The audit trail: one JSON line per event, hash-chained, durable before the caller goes on, and
//! fail-closed (a request whose record cannot be made durable is refused).
//!
//! Every record carries `seq` (1, 2, ... across files) and `prev`, the SHA-256 of the previous
//! record's line (64 zeros before the first). A single writer task appends the records of every
//! waiting caller and then calls fdatasync once (group commit), so concurrent requests share a sync.
//! A failed write is truncated away, so the file never holds half a record; the next batch tries
//! again, reopening the file, and the chain continues where it stood. SIGHUP reopens the file (after
//! an external rotation); `max_file_bytes` rotates it by renaming. Either way the chain continues
//! into the next file.

pub mod anchor;
pub mod denials;
pub mod keys;
pub mod verify;

use crate::locks::MutexExt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit log {path}: {message}")]
    Io { path: String, message: String },
    #[error("audit log is not running")]
    Stopped,
}

impl AuditError {
    /// What failed, without the local path: for answers to clients.
    pub fn reason(&self) -> &str {
        match self {
            AuditError::Io { message, .. } => message,
            AuditError::Stopped => "the audit writer is not running",
        }
    }
}

/// Who caused an event.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client: Option<String>,
    /// The client address a trusted proxy named in `X-Forwarded-For`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_for: Option<String>,
}

/// One event. `fields` are added to the record as they are (never secrets: callers pass accessors,
/// key names and versions, error messages).
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub operation: String,
    pub outcome: &'static str,
    pub error: Option<String>,
    pub peer: Option<Peer>,
    pub fields: Map<String, Value>,
}

impl Event {
    pub fn new(kind: &'static str, operation: impl Into<String>, outcome: &'static str) -> Event {
        Event {
            kind,
            operation: operation.into(),
            outcome,
            error: None,
            peer: None,
            fields: Map::new(),
        }
    }

    /// Sets the error message (an empty one is left out).
    pub fn error(mut self, e: impl Into<String>) -> Event {
        let e = e.into();
        if !e.is_empty() {
            self.error = Some(e);
        }
        self
    }

    pub fn peer(mut self, p: Peer) -> Event {
        self.peer = Some(p);
        self
    }

    pub fn field(mut self, k: &str, v: impl Into<Value>) -> Event {
        self.fields.insert(k.into(), v.into());
        self
    }
}

enum Msg {
    Append(Box<Event>, oneshot::Sender<Result<(), AuditError>>),
    Reopen,
    /// The chain key (while unsealed) or None (sealed): records are MACed while it is held.
    SetKey(Option<Zeroizing<Vec<u8>>>),
}

/// The newest durable record: what the daemon anchors in its sealed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Anchor {
    pub seq: u64,
    /// SHA-256 (hex) of the record's line.
    pub line_hash: String,
    /// The record's `mac`: only a keyed record can be an anchor.
    pub mac: String,
}

/// A handle to the audit writer. Cloning is cheap; all clones feed one writer.
#[derive(Clone)]
pub struct Audit {
    tx: Option<mpsc::UnboundedSender<Msg>>,
    /// The newest keyed durable record, for the anchor.
    head: std::sync::Arc<std::sync::Mutex<Option<Anchor>>>,
    /// Signalled when the writer rotated the file (the anchor is then written at once).
    rotated: std::sync::Arc<tokio::sync::Notify>,
}

impl Audit {
    /// No audit trail configured: events are dropped (the daemon warns at every start).
    pub fn disabled() -> Audit {
        Audit {
            tx: None,
            head: Default::default(),
            rotated: Default::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Opens (or creates, mode 0600) the log, reads its last record to continue the chain, and
    /// starts the writer on a blocking thread.
    pub fn open(path: &Path, max_file_bytes: Option<u64>) -> Result<Audit, AuditError> {
        let mut w = Writer::open(path, max_file_bytes)?;
        let head = w.head.clone();
        let rotated = w.rotated.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while let Ok(m) = rx.try_recv() {
                        batch.push(m);
                    }
                    w.handle(batch);
                }
            })
            .map_err(|e| AuditError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(Audit {
            tx: Some(tx),
            head,
            rotated,
        })
    }

    /// Gives the writer the chain key (at unseal) or takes it away (at seal). Records sent before
    /// this call are written before the change.
    pub fn set_chain_key(&self, key: Option<Zeroizing<Vec<u8>>>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::SetKey(key));
        }
    }

    /// Completes when the writer has rotated the file.
    pub async fn rotated(&self) {
        self.rotated.notified().await;
    }

    /// The newest keyed record made durable, if any since start.
    pub fn head(&self) -> Option<Anchor> {
        self.head.lock_recover().clone()
    }

    /// Appends `event` and waits until it is durable.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        let Some(tx) = &self.tx else { return Ok(()) };
        let (ack, done) = oneshot::channel();
        tx.send(Msg::Append(Box::new(event), ack))
            .map_err(|_| AuditError::Stopped)?;
        done.await.map_err(|_| AuditError::Stopped)?
    }

    /// Records without waiting (background events such as automatic unseal attempts); a failure is
    /// logged.
    pub fn record_detached(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        // Sent now (so it keeps its place before a later key change); only the wait is detached.
        let (ack, done) = oneshot::channel();
        if tx.send(Msg::Append(Box::new(event), ack)).is_err() {
            tracing::error!("audit record could not be written: the writer is not running");
            return;
        }
        tokio::spawn(async move {
            match done.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "audit record could not be written"),
                Err(_) => tracing::error!("audit record could not be written: the writer stopped"),
            }
        });
    }

    /// Reopens the file (SIGHUP, after an external rotation).
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Reopen);
        }
    }
}

struct Writer {
    path: PathBuf,
    file: Option<File>,
    seq: u64,
    prev: String,
    size: u64,
    max_file_bytes: Option<u64>,
    key: Option<Zeroizing<Vec<u8>>>,
    head: std::sync::Arc<std::sync::Mutex<Option<Anchor>>>,
    rotated: std::sync::Arc<tokio::sync::Notify>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
}

/// (last seq, hash of last line) of an existing log, or None when it has no record.
fn tail_of(path: &Path) -> Result<Option<(u64, String)>, AuditError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut last = None;
    for line in io::BufReader::new(f).lines() {
        let line = line.map_err(|e| io_err(path, e))?;
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    let Some(line) = last else { return Ok(None) };
    let v: Value = serde_json::from_str(&line).map_err(|e| {
        io_err(
            path,
            format!("its last record is not valid JSON ({e}); run `sealkeeper audit verify`"),
        )
    })?;
    let seq = v["seq"]
        .as_u64()
        .ok_or_else(|| io_err(path, "its last record has no seq"))?;
    Ok(Some((
        seq,
        hex::encode(crate::crypto::sha256(line.as_bytes())),
    )))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

impl Writer {
    fn open(path: &Path, max_file_bytes: Option<u64>) -> Result<Writer, AuditError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(path, e))?;
        }
        // Continue the chain of the current file, or of the newest rotated file.
        let (seq, prev) = match tail_of(path)? {
            Some(t) => t,
            None => newest_rotated(path)
                .map(|p| tail_of(&p))
                .transpose()?
                .flatten()
                .unwrap_or((0, GENESIS.into())),
        };
        let file = open_file(path).map_err(|e| io_err(path, e))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Writer {
            path: path.to_path_buf(),
            file: Some(file),
            seq,
            prev,
            size,
            max_file_bytes,
            key: None,
            head: Default::default(),
            rotated: Default::default(),
        })
    }

    fn handle(&mut self, batch: Vec<Msg>) {
        let mut acks = Vec::new();
        let mut lines = Vec::new();
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        let mut head = None;
        for m in batch {
            match m {
                Msg::Reopen => self.file = None,
                // Takes effect for the records after it in this batch.
                Msg::SetKey(k) => self.key = k,
                Msg::Append(ev, ack) => {
                    seq += 1;
                    let mut line = render(&ev, seq, &prev);
                    if let Some(k) = &self.key {
                        let (keyed, mac) = add_mac(&line, k);
                        line = keyed;
                        prev = hex::encode(crate::crypto::sha256(line.as_bytes()));
                        head = Some(Anchor {
                            seq,
                            line_hash: prev.clone(),
                            mac,
                        });
                    } else {
                        prev = hex::encode(crate::crypto::sha256(line.as_bytes()));
                    }
                    lines.push(line);
                    acks.push(ack);
                }
            }
        }
        if acks.is_empty() {
            return;
        }
        let result = self.write(&lines);
        if result.is_ok() {
            self.seq = seq;
            self.prev = prev;
            if head.is_some() {
                *self.head.lock_recover() = head;
            }
        } else if let Err(e) = &result {
            tracing::error!(error = %e, "audit log write failed: refusing the requests of this batch");
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }

    fn write(&mut self, lines: &[String]) -> Result<(), AuditError> {
        if let Some(max) = self.max_file_bytes
            && self.size >= max
        {
            self.rotate()?;
        }
        if self.file.is_none() {
            let f = open_file(&self.path).map_err(|e| io_err(&self.path, e))?;
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(f);
        }
        let Some(f) = self.file.as_mut() else {
            return Err(io_err(&self.path, "not open"));
        };
        let mut buf = Vec::new();
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        let start = f.seek(SeekFrom::End(0)).unwrap_or(self.size);
        let written = f.write_all(&buf).and_then(|_| f.sync_data());
        match written {
            Ok(()) => {
                self.size = start + buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Never leave half a record: cut the file back, and reopen next time.
                let _ = f.set_len(start);
                let _ = f.sync_data();
                self.file = None;
                Err(io_err(&self.path, e))
            }
        }
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let stamp = humantime::format_rfc3339_micros(std::time::SystemTime::now())
            .to_string()
            .replace(':', "");
        let target = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        std::fs::rename(&self.path, &target).map_err(|e| io_err(&self.path, e))?;
        self.file = None;
        self.size = 0;
        self.rotated.notify_one();
        Ok(())
    }
}

/// Every file of the trail at `path`, oldest first: the rotated files, then the current one.
pub fn trail_files(path: &Path) -> Vec<PathBuf> {
    let mut files = rotated(path);
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// Rotated files are `<path>.<timestamp>`, sorted oldest first.
fn rotated(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Rotated files are `<path>.<timestamp>`; the newest sorts last.
fn newest_rotated(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    let name = path.file_name()?.to_string_lossy().into_owned();
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().starts_with(&format!("{name}.")))
                .unwrap_or(false)
        })
        .collect();
    found.sort();
    found.pop()
}

fn render(ev: &Event, seq: u64, prev: &str) -> String {
    let mut rec = Map::new();
    rec.insert("seq".into(), json!(seq));
    rec.insert("time".into(), json!(now_rfc3339()));
    rec.insert("type".into(), json!(ev.kind));
    rec.insert("operation".into(), json!(ev.operation));
    rec.insert("outcome".into(), json!(ev.outcome));
    if let Some(e) = &ev.error {
        rec.insert("error".into(), json!(e));
    }
    if let Some(p) = &ev.peer {
        rec.insert(
            "peer".into(),
            serde_json::to_value(p).unwrap_or(Value::Null),
        );
    }
    for (k, v) in &ev.fields {
        rec.insert(k.clone(), v.clone());
    }
    rec.insert("prev".into(), json!(prev));
    Value::Object(rec).to_string()
}

/// The suffix a keyed record ends with: `,"mac":"<64 hex>"}`.
const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;

/// Appends `"mac"`, the HMAC-SHA256 under the chain key of the line as rendered without it (which
/// includes `prev`, the hash of the previous line: so the MAC covers the whole chain before it).
fn add_mac(line: &str, key: &[u8]) -> (String, String) {
    let mac = hex::encode(crate::crypto::hmac_sha256(key, line.as_bytes()));
    let body = line.strip_suffix('}').unwrap_or(line);
    (format!("{body},\"mac\":\"{mac}\"}}"), mac)
}

/// A keyed line split into (the line as it was MACed, the mac); None for an unkeyed line.
pub(crate) fn split_mac(line: &str) -> Option<(String, &str)> {
    let cut = line.len().checked_sub(MAC_SUFFIX_LEN)?;
    let suffix = line.get(cut..)?;
    let mac = suffix.strip_prefix(",\"mac\":\"")?.strip_suffix("\"}")?;
    if mac.len() != 64 || !mac.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((format!("{}}}", &line[..cut]), mac))
}

/// Whether `mac` is the chain key's MAC of `content` (constant time).
pub(crate) fn mac_ok(key: &[u8], content: &str, mac: &str) -> bool {
    hex::decode(mac)
        .ok()
        .and_then(|m| <[u8; 32]>::try_from(m).ok())
        .is_some_and(|m| crate::crypto::hmac_sha256_verify(key, content.as_bytes(), &m))
}
