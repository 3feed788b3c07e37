//! The audit trail: one JSON line per event, hash-chained, durable before the caller goes on, and
//! fail-closed (a request whose record cannot be made durable is refused).
//!
//! Every record carries `seq` (1, 2, ... across files) and `prev`, the SHA-256 of the previous
//! record's line (64 zeros before the first). Callers render their record's body on their own
//! thread; one writer thread numbers and chains what is queued and appends it in one write. One
//! fdatasync at a time covers everything written before it (group commit): the writer runs it
//! itself when nothing else is queued, else the syncer thread does while the writer writes the next
//! batch (pipelined).
//! A caller's answer waits until its record is durable. A failed write is truncated away, so the
//! file never holds half a record; a failed sync takes back everything written since the last
//! durable record, and the chain continues from that record. SIGHUP reopens the file (after
//! an external rotation); `max_file_bytes` rotates it by renaming. Either way the chain continues
//! into the next file.

pub mod anchor;
pub mod denials;
pub mod keys;
pub mod verify;

use crate::locks::MutexExt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

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

/// One event. `fields` are added to the record as they are, in order (never secrets: callers pass
/// accessors, key names and versions, error messages); their names are fixed strings.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub operation: String,
    pub outcome: &'static str,
    pub error: Option<String>,
    pub peer: Option<Peer>,
    pub fields: Vec<(&'static str, Value)>,
}

impl Event {
    pub fn new(kind: &'static str, operation: impl Into<String>, outcome: &'static str) -> Event {
        Event {
            kind,
            operation: operation.into(),
            outcome,
            error: None,
            peer: None,
            fields: Vec::with_capacity(8),
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

    /// Adds a field; a second one of the same name replaces the first.
    pub fn field(mut self, k: &'static str, v: impl Into<Value>) -> Event {
        let v = v.into();
        match self.fields.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => self.fields.push((k, v)),
        }
        self
    }
}

type Ack = oneshot::Sender<Result<(), AuditError>>;

enum Msg {
    /// A record's body, rendered by the caller: everything between `{"seq":N,` and `,"prev":`.
    Append(String, Ack),
    Reopen,
    /// The chain key (while unsealed) or None (sealed): records are MACed while it is held.
    SetKey(Option<std::sync::Arc<crate::crypto::HmacKey>>),
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
    /// The writer's state, for a record written on the caller's thread when nothing is queued.
    shared: Option<std::sync::Arc<Shared>>,
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
            shared: None,
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
        let w = Writer::open(path, max_file_bytes)?;
        let head = w.head.clone();
        let rotated = w.rotated.clone();
        let shared = std::sync::Arc::new(Shared {
            state: std::sync::Mutex::new(w),
            written: std::sync::Condvar::new(),
            queued: std::sync::atomic::AtomicUsize::new(0),
        });
        let handle = shared.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let spawn_err = |e: io::Error| AuditError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let syncer = shared.clone();
        std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || syncer.run_syncer())
            .map_err(spawn_err)?;
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while let Ok(m) = rx.try_recv() {
                        batch.push(m);
                    }
                    let n = batch.len();
                    let queued = shared.append(batch);
                    // Written (in order): a record now may be written by its own caller.
                    shared
                        .queued
                        .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
                    if queued {
                        if rx.is_empty() {
                            // Nothing else is waiting: sync here unless the syncer is busy (it
                            // then takes this batch next), saving a hand-off to it.
                            shared.sync_here_if_idle();
                        } else {
                            // More is waiting: the syncer syncs this batch while this thread
                            // writes the next one.
                            shared.written.notify_one();
                        }
                    }
                }
                shared.state.lock_recover().closed = true;
                shared.written.notify_one();
            })
            .map_err(spawn_err)?;
        Ok(Audit {
            tx: Some(tx),
            shared: Some(handle),
            head,
            rotated,
        })
    }

    /// Gives the writer the chain key (at unseal) or takes it away (at seal). Records sent before
    /// this call are written before the change.
    pub fn set_chain_key(&self, key: Option<std::sync::Arc<crate::crypto::HmacKey>>) {
        self.send(Msg::SetKey(key));
    }

    /// Queues a message for the writer, counted until the writer has taken it.
    fn send(&self, m: Msg) -> bool {
        let (Some(tx), Some(sh)) = (&self.tx, &self.shared) else {
            return false;
        };
        sh.queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if tx.send(m).is_err() {
            sh.queued.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return false;
        }
        true
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
        let Some(sh) = &self.shared else {
            return Ok(());
        };
        let (ack, done) = oneshot::channel();
        let body = render_body(&event);
        if sh.idle() && on_multi_thread_runtime() {
            // Nothing is queued or being synced: write and sync this record on this thread,
            // which saves two thread hand-offs (to the writer, and back) per record when requests
            // come one at a time. Everything sent before it has been written already.
            tokio::task::block_in_place(|| {
                if sh.append(vec![Msg::Append(body, ack)]) {
                    sh.sync_here_if_idle();
                }
            });
        } else if !self.send(Msg::Append(body, ack)) {
            return Err(AuditError::Stopped);
        }
        done.await.map_err(|_| AuditError::Stopped)?
    }

    /// Records without waiting (background events such as automatic unseal attempts); a failure is
    /// logged.
    pub fn record_detached(&self, event: Event) {
        if self.tx.is_none() {
            return;
        }
        // Sent now (so it keeps its place before a later key change); only the wait is detached.
        let (ack, done) = oneshot::channel();
        if !self.send(Msg::Append(render_body(&event), ack)) {
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
        self.send(Msg::Reopen);
    }
}

/// The writer's and the syncer's state, behind one lock (held for a write, never for a sync).
struct Writer {
    path: PathBuf,
    file: Option<std::sync::Arc<File>>,
    /// The chain's head as written (including what is not yet durable).
    seq: u64,
    prev: String,
    /// The chain's head as durable: where a failed sync takes the chain back to.
    durable_seq: u64,
    durable_prev: String,
    size: u64,
    max_file_bytes: Option<u64>,
    key: Option<std::sync::Arc<crate::crypto::HmacKey>>,
    /// Written, not yet synced, oldest first.
    pending: Vec<Written>,
    /// A sync is in flight (on either thread): at most one at a time, so acknowledgements go out
    /// in the order the records were written.
    syncing: bool,
    closed: bool,
    head: std::sync::Arc<std::sync::Mutex<Option<Anchor>>>,
    rotated: std::sync::Arc<tokio::sync::Notify>,
}

/// One write: where it went, and whom to answer once it is durable.
struct Written {
    file: std::sync::Arc<File>,
    start: u64,
    seq: u64,
    prev: String,
    head: Option<Anchor>,
    acks: Vec<Ack>,
    /// Bytes written (for the metrics).
    bytes: usize,
}

struct Shared {
    state: std::sync::Mutex<Writer>,
    /// Signalled when something was written (or the writer stopped).
    written: std::sync::Condvar,
    /// Messages sent to the writer and not yet written by it.
    queued: std::sync::atomic::AtomicUsize,
}

/// `block_in_place` needs the multi-threaded runtime (the daemon's); elsewhere records go through
/// the writer thread.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

impl Shared {
    /// Nothing queued for the writer, nothing written and waiting for a sync, no sync running.
    fn idle(&self) -> bool {
        if self.queued.load(std::sync::atomic::Ordering::SeqCst) != 0 {
            return false;
        }
        match self.state.try_lock() {
            Ok(w) => !w.closed && !w.syncing && w.pending.is_empty(),
            Err(_) => false,
        }
    }

    /// Numbers, chains and writes a batch of messages, and queues it to be synced. Returns whether
    /// something was queued.
    fn append(&self, batch: Vec<Msg>) -> bool {
        let mut w = self.state.lock_recover();
        let mut acks = Vec::new();
        let mut buf = Vec::new();
        let (mut seq, mut prev) = (w.seq, w.prev.clone());
        let mut head = None;
        for m in batch {
            match m {
                Msg::Reopen => w.file = None,
                // Takes effect for the records after it in this batch.
                Msg::SetKey(k) => w.key = k,
                Msg::Append(body, ack) => {
                    seq += 1;
                    let mut line = chain_line(seq, &body, &prev);
                    if let Some(k) = &w.key {
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
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                    acks.push(ack);
                }
            }
        }
        if acks.is_empty() {
            return false;
        }
        match w.write(&buf) {
            Ok((file, start)) => {
                w.seq = seq;
                w.prev = prev.clone();
                w.pending.push(Written {
                    file,
                    start,
                    seq,
                    prev,
                    head,
                    acks,
                    bytes: buf.len(),
                });
                true
            }
            Err(e) => {
                drop(w);
                crate::metrics::get().audit_sync(std::time::Duration::ZERO, acks.len(), 0, false);
                tracing::error!(error = %e, "audit log write failed: refusing the requests of this batch");
                for ack in acks {
                    let _ = ack.send(Err(e.clone()));
                }
                false
            }
        }
    }

    /// Syncs what is queued on the calling thread, unless a sync is already in flight.
    fn sync_here_if_idle(&self) {
        let w = self.state.lock_recover();
        if !w.syncing && !w.pending.is_empty() {
            self.sync_pending(w);
        }
    }

    /// Syncs what was written, as often as there is something and no sync is in flight, and
    /// answers its callers.
    fn run_syncer(&self) {
        loop {
            let mut w = self.state.lock_recover();
            while (w.pending.is_empty() || w.syncing) && !w.closed {
                w = self
                    .written
                    .wait(w)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if w.pending.is_empty() {
                return;
            }
            if !w.syncing {
                self.sync_pending(w);
            }
        }
    }

    /// Takes everything queued, syncs it without the lock, and answers its callers: durable, or
    /// refused and taken back (with everything written since, newest first) when the sync fails.
    fn sync_pending(&self, mut w: std::sync::MutexGuard<'_, Writer>) {
        w.syncing = true;
        let batch = std::mem::take(&mut w.pending);
        drop(w);
        let started = std::time::Instant::now();
        let mut synced: Vec<&std::sync::Arc<File>> = Vec::new();
        let mut result = Ok(());
        for b in &batch {
            if !synced.iter().any(|f| std::sync::Arc::ptr_eq(f, &b.file)) {
                synced.push(&b.file);
                result = result.and_then(|()| sync(&b.file));
            }
        }
        crate::metrics::get().audit_sync(
            started.elapsed(),
            batch.iter().map(|b| b.acks.len()).sum(),
            batch.iter().map(|b| b.bytes).sum(),
            result.is_ok(),
        );
        let mut w = self.state.lock_recover();
        w.syncing = false;
        match result {
            Ok(()) => {
                if let Some(last) = batch.last() {
                    w.durable_seq = last.seq;
                    w.durable_prev.clone_from(&last.prev);
                }
                if let Some(h) = batch.iter().rev().find_map(|b| b.head.clone()) {
                    *w.head.lock_recover() = Some(h);
                }
                let more = !w.pending.is_empty();
                drop(w);
                if more {
                    // Written while this sync ran, by the writer: the syncer takes it.
                    self.written.notify_one();
                }
                for ack in batch.into_iter().flat_map(|b| b.acks) {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing written since the last durable record is known to be on disk: take it
                // all back (the batches written meanwhile chain onto it), newest first.
                let later = std::mem::take(&mut w.pending);
                let all: Vec<Written> = batch.into_iter().chain(later).collect();
                for b in all.iter().rev() {
                    let _ = b.file.set_len(b.start);
                    let _ = b.file.sync_data();
                }
                w.seq = w.durable_seq;
                w.prev = w.durable_prev.clone();
                w.file = None;
                let e = io_err(&w.path, e);
                drop(w);
                tracing::error!(error = %e, "audit log sync failed: refusing the requests written since the last durable record");
                for ack in all.into_iter().flat_map(|b| b.acks) {
                    let _ = ack.send(Err(e.clone()));
                }
            }
        }
    }
}

/// fdatasync, or an injected failure (debug builds, for the tests).
fn sync(f: &File) -> io::Result<()> {
    if crate::fault::failing("audit:sync") {
        return Err(io::Error::other("injected sync failure (audit:sync)"));
    }
    f.sync_data()
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

/// The last non-blank line of `f` (without its newline), read backwards from the end in chunks:
/// start-up does not depend on the log's size.
fn last_line(f: &mut File) -> io::Result<Option<Vec<u8>>> {
    const CHUNK: u64 = 64 * 1024;
    /// A record longer than this is not one the writer made.
    const MAX_LINE: usize = 64 * 1024 * 1024;
    let mut end = f.seek(SeekFrom::End(0))?;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let start = end.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        // The last non-blank line, when its start is in what has been read.
        let mut line_end = tail.len();
        while let Some(nl) = tail[..line_end].iter().rposition(|&b| b == b'\n') {
            if tail[nl + 1..line_end].iter().all(u8::is_ascii_whitespace) {
                line_end = nl;
                continue;
            }
            return Ok(Some(strip_cr(&tail[nl + 1..line_end])));
        }
        if start == 0 {
            let first = &tail[..line_end];
            return Ok((!first.iter().all(u8::is_ascii_whitespace)).then(|| strip_cr(first)));
        }
        if tail.len() > MAX_LINE {
            return Err(io::Error::other(format!(
                "its last record is longer than {MAX_LINE} bytes"
            )));
        }
        end = start;
    }
}

fn strip_cr(line: &[u8]) -> Vec<u8> {
    line.strip_suffix(b"\r").unwrap_or(line).to_vec()
}

/// (last seq, hash of last line) of an existing log, or None when it has no record.
fn tail_of(path: &Path) -> Result<Option<(u64, String)>, AuditError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let Some(line) = last_line(&mut f).map_err(|e| io_err(path, e))? else {
        return Ok(None);
    };
    let v: Value = serde_json::from_slice(&line).map_err(|e| {
        io_err(
            path,
            format!("its last record is not valid JSON ({e}); run `sealkeeper audit verify`"),
        )
    })?;
    let seq = v["seq"]
        .as_u64()
        .ok_or_else(|| io_err(path, "its last record has no seq"))?;
    Ok(Some((seq, hex::encode(crate::crypto::sha256(&line)))))
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
            file: Some(std::sync::Arc::new(file)),
            seq,
            durable_seq: seq,
            durable_prev: prev.clone(),
            prev,
            size,
            max_file_bytes,
            key: None,
            pending: Vec::new(),
            syncing: false,
            closed: false,
            head: Default::default(),
            rotated: Default::default(),
        })
    }

    /// Appends `buf` (whole lines); returns the file and where the write started. A failed write
    /// is cut back, and the file is reopened next time.
    fn write(&mut self, buf: &[u8]) -> Result<(std::sync::Arc<File>, u64), AuditError> {
        if let Some(max) = self.max_file_bytes
            && self.size >= max
        {
            self.rotate()?;
        }
        if self.file.is_none() {
            let f = open_file(&self.path).map_err(|e| io_err(&self.path, e))?;
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(std::sync::Arc::new(f));
        }
        let Some(f) = self.file.clone() else {
            return Err(io_err(&self.path, "not open"));
        };
        let start = (&*f).seek(SeekFrom::End(0)).unwrap_or(self.size);
        match (&*f).write_all(buf) {
            Ok(()) => {
                self.size = start + buf.len() as u64;
                Ok((f, start))
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

/// A record's body: `time`, `type`, `operation`, `outcome`, `error`, `peer`, then the event's
/// fields in their order, serialized straight from the event (no intermediate tree), without the
/// braces. The writer puts `seq` before it and `prev` (and `mac`) after it. A field named like one
/// of the record's own keys is left out.
fn render_body(ev: &Event) -> String {
    struct Fields<'a>(&'a [(&'static str, Value)]);
    impl Serialize for Fields<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            const OWN: [&str; 9] = [
                "seq",
                "time",
                "type",
                "operation",
                "outcome",
                "error",
                "peer",
                "prev",
                "mac",
            ];
            let mut m = s.serialize_map(None)?;
            for (k, v) in self.0.iter().filter(|(k, _)| !OWN.contains(k)) {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }
    #[derive(Serialize)]
    struct Body<'a> {
        time: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        operation: &'a str,
        outcome: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<&'a Peer>,
        #[serde(flatten)]
        fields: Fields<'a>,
    }
    let time = now_rfc3339();
    let body = Body {
        time: &time,
        kind: ev.kind,
        operation: &ev.operation,
        outcome: ev.outcome,
        error: ev.error.as_deref(),
        peer: ev.peer.as_ref(),
        fields: Fields(&ev.fields),
    };
    let mut out = Vec::with_capacity(256 + ev.operation.len());
    if serde_json::to_writer(&mut out, &body).is_err() {
        // Serializing strings and numbers cannot fail; keep the record regardless.
        out = format!("{{\"time\":\"{time}\",\"type\":\"unrenderable\"}}").into_bytes();
    }
    // Without the braces, in place.
    if out.first() == Some(&b'{') && out.last() == Some(&b'}') {
        out.pop();
        out.remove(0);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A whole record's line (before its `mac`), as the writer makes it.
#[cfg(test)]
pub(crate) fn render(ev: &Event, seq: u64, prev: &str) -> String {
    chain_line(seq, &render_body(ev), prev)
}

/// The record's line (before its `mac`): `{"seq":N,<body>,"prev":"<hash>"}`.
fn chain_line(seq: u64, body: &str, prev: &str) -> String {
    let mut line = String::with_capacity(body.len() + prev.len() + 40);
    line.push_str("{\"seq\":");
    line.push_str(&seq.to_string());
    line.push(',');
    line.push_str(body);
    line.push_str(",\"prev\":\"");
    line.push_str(prev);
    line.push_str("\"}");
    line
}

/// The suffix a keyed record ends with: `,"mac":"<64 hex>"}`.
const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;

/// Appends `"mac"`, the HMAC-SHA256 under the chain key of the line as rendered without it (which
/// includes `prev`, the hash of the previous line: so the MAC covers the whole chain before it).
pub(crate) fn add_mac(line: &str, key: &crate::crypto::HmacKey) -> (String, String) {
    let mac = hex::encode(key.sign(line.as_bytes()));
    let body = line.strip_suffix('}').unwrap_or(line);
    let mut keyed = String::with_capacity(body.len() + MAC_SUFFIX_LEN);
    keyed.push_str(body);
    keyed.push_str(",\"mac\":\"");
    keyed.push_str(&mac);
    keyed.push_str("\"}");
    (keyed, mac)
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
pub(crate) fn mac_ok(key: &crate::crypto::HmacKey, content: &str, mac: &str) -> bool {
    hex::decode(mac)
        .ok()
        .and_then(|m| <[u8; 32]>::try_from(m).ok())
        .is_some_and(|m| key.verify(content.as_bytes(), &m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_of(content: &[u8]) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, content).unwrap();
        last_line(&mut File::open(&p).unwrap()).unwrap()
    }

    #[test]
    fn the_last_line_is_found_from_the_end_whatever_the_size() {
        assert_eq!(last_of(b""), None);
        assert_eq!(last_of(b"\n \n"), None);
        assert_eq!(last_of(b"{\"seq\":1}"), Some(b"{\"seq\":1}".to_vec()));
        assert_eq!(last_of(b"a\nb\n\n  \n"), Some(b"b".to_vec()));
        assert_eq!(last_of(b"a\r\nb\r\n"), Some(b"b".to_vec()));
        // Lines that straddle the 64 KiB chunks, and a last line longer than a chunk.
        let mut big = Vec::new();
        for i in 0..5000 {
            big.extend_from_slice(
                format!("{{\"seq\":{i},\"pad\":\"{}\"}}\n", "x".repeat(97)).as_bytes(),
            );
        }
        let want = format!("{{\"seq\":4999,\"pad\":\"{}\"}}", "x".repeat(97));
        assert_eq!(last_of(&big), Some(want.into_bytes()));
        let long = "y".repeat(200_000);
        big.extend_from_slice(long.as_bytes());
        big.extend_from_slice(b"\n\n");
        assert_eq!(last_of(&big), Some(long.into_bytes()));
    }
}
