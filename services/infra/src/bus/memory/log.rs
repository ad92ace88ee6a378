//! The durable log of the embedded bus: one SQLite file written by one task.
//!
//! Every change goes through [`LogWriter`]'s channel, in the order the bus
//! made it (appends are queued under the bus lock when their offsets are
//! assigned, commits when they are applied), so the file is always a prefix
//! of that history. The writer takes everything queued and writes it in one
//! transaction (group commit), then answers every request of the batch.
//!
//! WAL with `synchronous=NORMAL`: a committed transaction survives the
//! process being killed (`kill -9`), since the WAL is in the OS page cache;
//! only a power loss or OS crash can lose the last transactions, and never
//! corrupts the file.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::state::Entry;
use crate::bus::BusError;

/// Requests taken into one transaction at most.
const MAX_BATCH: usize = 1024;

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS bus_topics (
        topic TEXT PRIMARY KEY NOT NULL,
        partitions INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bus_records (
        topic TEXT NOT NULL,
        part INTEGER NOT NULL,
        off INTEGER NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        headers BLOB NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (topic, part, off)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS bus_offsets (
        grp TEXT NOT NULL,
        topic TEXT NOT NULL,
        part INTEGER NOT NULL,
        next INTEGER NOT NULL,
        PRIMARY KEY (grp, topic, part)) WITHOUT ROWID",
];

/// One change to the log.
#[derive(Debug)]
pub(super) enum LogOp {
    Topic {
        topic: String,
        partitions: u32,
    },
    Append {
        topic: String,
        partition: u32,
        offset: u64,
        entry: Entry,
    },
    /// A group's committed offset (only ever raised).
    Offset {
        group: String,
        topic: String,
        partition: u32,
        next: u64,
    },
    /// Deletes the records below `below`.
    Trim {
        topic: String,
        partition: u32,
        below: u64,
    },
}

/// Runs in the writer task right after the transaction, with its outcome.
pub(super) type AfterWrite = Box<dyn FnOnce(Result<(), &str>) + Send + Sync>;

pub(super) struct LogRequest {
    pub ops: Vec<LogOp>,
    pub after: Option<AfterWrite>,
    pub done: oneshot::Sender<Result<(), String>>,
}

enum Msg {
    Write(LogRequest),
    Close(oneshot::Sender<()>),
}

/// The sending side of the writer task.
#[derive(Debug, Clone)]
pub(super) struct LogWriter {
    tx: mpsc::UnboundedSender<Msg>,
}

impl LogWriter {
    /// Queues a request; the caller awaits `done`. When the writer is gone
    /// (the bus was closed), runs its `after` with the failure and says so.
    pub fn send(&self, request: LogRequest) -> Result<(), BusError> {
        match self.tx.send(Msg::Write(request)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(msg)) => {
                if let Msg::Write(LogRequest { after: Some(after), .. }) = msg {
                    // Callers hold the bus state lock here and `after` takes
                    // it too: run it on its own thread, once the lock is free,
                    // instead of deadlocking this one.
                    std::thread::spawn(move || after(Err("bus log closed")));
                }
                Err(BusError::Closed)
            }
        }
    }

    /// Writes what is queued, closes the file and stops the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn storage(context: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Storage(format!("{context}: {e}"))
}

/// Opens (creating if needed) the log file.
pub(super) async fn open(path: &Path) -> Result<SqliteConnection, BusError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| storage("creating the bus log directory", e))?;
    }
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| storage("opening the bus log", e))?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut conn).await.map_err(|e| storage("creating the bus log schema", e))?;
    }
    Ok(conn)
}

/// Starts the writer task on `conn`.
pub(super) fn spawn_writer(conn: SqliteConnection) -> LogWriter {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run_writer(conn, rx));
    LogWriter { tx }
}

async fn run_writer(mut conn: SqliteConnection, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut closing = None;
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(request) => batch.push(request),
                Msg::Close(reply) => {
                    closing = Some(reply);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let result = write_batch(&mut conn, &batch).await.map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, requests = batch.len(), "bus log write failed");
            }
            for request in batch {
                if let Some(after) = request.after {
                    after(result.as_ref().map(|_| ()).map_err(String::as_str));
                }
                let _ = request.done.send(result.clone());
            }
        }
        if closing.is_some() {
            break;
        }
    }
    // Requests queued after the close are dropped: their senders see the
    // bus closed.
    rx.close();
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the bus log");
    }
    if let Some(reply) = closing {
        let _ = reply.send(());
    }
}

fn to_i64(v: u64) -> Result<i64, BusError> {
    i64::try_from(v).map_err(|_| BusError::Invalid(format!("offset {v} out of range")))
}

async fn write_batch(conn: &mut SqliteConnection, batch: &[LogRequest]) -> Result<(), BusError> {
    let mut tx = conn.begin().await.map_err(|e| storage("bus log begin", e))?;
    let mut appends: Vec<(&str, u32, u64, &Entry)> = Vec::new();
    for op in batch.iter().flat_map(|r| r.ops.iter()) {
        let query = match op {
            // Runs of appends go out as multi-row inserts (one round trip to
            // the connection thread per run, not per record), in order with
            // the other operations.
            LogOp::Append { topic, partition, offset, entry } => {
                appends.push((topic, *partition, *offset, entry));
                continue;
            }
            LogOp::Topic { topic, partitions } => {
                sqlx::query("INSERT OR IGNORE INTO bus_topics (topic, partitions) VALUES (?, ?)").bind(topic).bind(i64::from(*partitions))
            }
            LogOp::Offset { group, topic, partition, next } => sqlx::query(
                "INSERT INTO bus_offsets (grp, topic, part, next) VALUES (?, ?, ?, ?)
                 ON CONFLICT (grp, topic, part) DO UPDATE SET next = max(next, excluded.next)",
            )
            .bind(group)
            .bind(topic)
            .bind(i64::from(*partition))
            .bind(to_i64(*next)?),
            LogOp::Trim { topic, partition, below } => sqlx::query("DELETE FROM bus_records WHERE topic = ? AND part = ? AND off < ?")
                .bind(topic)
                .bind(i64::from(*partition))
                .bind(to_i64(*below)?),
        };
        insert_records(&mut tx, &mut appends).await?;
        query.execute(&mut *tx).await.map_err(|e| storage("bus log write", e))?;
    }
    insert_records(&mut tx, &mut appends).await?;
    tx.commit().await.map_err(|e| storage("bus log commit", e))
}

/// Records per insert statement: 7 bound values each, far below SQLite's
/// 32,766 variables.
const RECORD_ROWS: usize = 1000;

/// Writes the collected appends and empties the list.
async fn insert_records(conn: &mut SqliteConnection, appends: &mut Vec<(&str, u32, u64, &Entry)>) -> Result<(), BusError> {
    for chunk in appends.chunks(RECORD_ROWS) {
        let rows = chunk
            .iter()
            .map(|(topic, partition, offset, entry)| Ok((*topic, i64::from(*partition), to_i64(*offset)?, *entry)))
            .collect::<Result<Vec<_>, BusError>>()?;
        let mut q =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT OR REPLACE INTO bus_records (topic, part, off, key, value, headers, ts) ");
        q.push_values(rows, |mut row, (topic, partition, offset, entry)| {
            row.push_bind(topic)
                .push_bind(partition)
                .push_bind(offset)
                .push_bind(&entry.key[..])
                .push_bind(&entry.value[..])
                .push_bind(encode_headers(&entry.headers))
                .push_bind(entry.timestamp_ms);
        });
        q.build().persistent(false).execute(&mut *conn).await.map_err(|e| storage("bus log write", e))?;
    }
    appends.clear();
    Ok(())
}

/// Topics in the log with their partition counts (bad rows are skipped).
pub(super) async fn load_topics(conn: &mut SqliteConnection) -> Result<Vec<(String, u32)>, BusError> {
    let rows = sqlx::query("SELECT topic, partitions FROM bus_topics ORDER BY topic")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| storage("reading bus topics", e))?;
    let mut out = Vec::new();
    for row in rows {
        let topic = row.try_get::<String, _>(0);
        let partitions =
            row.try_get::<i64, _>(1).ok().and_then(|p| u32::try_from(p).ok()).filter(|p| (1..=super::MAX_PARTITIONS).contains(p));
        match (topic, partitions) {
            (Ok(topic), Some(partitions)) if !topic.is_empty() => out.push((topic, partitions)),
            _ => tracing::warn!("skipping a corrupt row of bus_topics"),
        }
    }
    Ok(out)
}

/// Committed offsets: (group, topic, partition, next) (bad rows are skipped).
pub(super) async fn load_offsets(conn: &mut SqliteConnection) -> Result<Vec<(String, String, u32, u64)>, BusError> {
    let rows = sqlx::query("SELECT grp, topic, part, next FROM bus_offsets")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| storage("reading bus offsets", e))?;
    let mut out = Vec::new();
    for row in rows {
        let group = row.try_get::<String, _>(0).ok();
        let topic = row.try_get::<String, _>(1).ok();
        let part = row.try_get::<i64, _>(2).ok().and_then(|p| u32::try_from(p).ok());
        let next = row.try_get::<i64, _>(3).ok().and_then(|n| u64::try_from(n).ok());
        match (group, topic, part, next) {
            (Some(g), Some(t), Some(p), Some(n)) => out.push((g, t, p, n)),
            _ => tracing::warn!("skipping a corrupt row of bus_offsets"),
        }
    }
    Ok(out)
}

/// The records of one partition from offset `from` on, in offset order. A
/// row whose offset is unreadable is skipped; one whose content is
/// unreadable comes back as `None` (a lost record), both with a warning.
pub(super) async fn load_records(
    conn: &mut SqliteConnection,
    topic: &str,
    partition: u32,
    from: u64,
) -> Result<Vec<(u64, Option<Entry>)>, BusError> {
    let rows = sqlx::query("SELECT off, key, value, headers, ts FROM bus_records WHERE topic = ? AND part = ? AND off >= ? ORDER BY off")
        .bind(topic)
        .bind(i64::from(partition))
        .bind(to_i64(from)?)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| storage("reading bus records", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(offset) = row.try_get::<i64, _>(0).ok().and_then(|o| u64::try_from(o).ok()) else {
            tracing::warn!(topic, partition, "skipping a bus record with a corrupt offset");
            continue;
        };
        let entry = (|| {
            Some(Entry {
                key: Bytes::from(row.try_get::<Vec<u8>, _>(1).ok()?),
                value: Bytes::from(row.try_get::<Vec<u8>, _>(2).ok()?),
                headers: decode_headers(&row.try_get::<Vec<u8>, _>(3).ok()?)?,
                timestamp_ms: row.try_get::<i64, _>(4).ok()?,
            })
        })();
        if entry.is_none() {
            tracing::warn!(topic, partition, offset, "bus record unreadable in the log; it is skipped");
        }
        out.push((offset, entry));
    }
    Ok(out)
}

/// Headers as `count, (name_len, name, value_len, value)*`, lengths as u32 LE.
pub(super) fn encode_headers(headers: &[(String, Bytes)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The inverse of [`encode_headers`]; `None` for anything malformed.
pub(super) fn decode_headers(mut buf: &[u8]) -> Option<Vec<(String, Bytes)>> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if buf.len() < n {
            return None;
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Some(head)
    }
    fn len(buf: &mut &[u8]) -> Option<usize> {
        let bytes: [u8; 4] = take(buf, 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    }
    let count = len(&mut buf)?;
    // Each header takes at least 8 bytes: refuse counts the buffer cannot hold.
    if count > buf.len() / 8 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let n = len(&mut buf)?;
        let name = std::str::from_utf8(take(&mut buf, n)?).ok()?.to_owned();
        let n = len(&mut buf)?;
        let value = Bytes::copy_from_slice(take(&mut buf, n)?);
        out.push((name, value));
    }
    buf.is_empty().then_some(out)
}
