//! The server's embedded store: room history, direct-message history, offline boxes and
//! the members of private rooms, in one SQLite file (or in memory).
//!
//! [`Store`] is the synchronous store over one `rusqlite` connection; [`StoreHandle`] is
//! its async face for the tokio server: one writer thread owns the `Store`, takes the
//! requests from a channel, runs them in batches of one transaction each and answers
//! each request only after its batch is committed. A write answered `Ok` is therefore
//! committed.
//!
//! # Durability
//!
//! A file store runs in WAL mode with `synchronous=NORMAL`. A committed transaction is
//! in the WAL file, handed to the operating system, before its answer is sent, so it
//! survives the process being killed (`kill -9`, a panic, an abort) at any moment. It
//! may be lost if the machine itself loses power or the OS crashes before the WAL is
//! synced to the disk (at the next checkpoint); `synchronous=FULL` would cover that at
//! the price of one `fsync` per batch. A memory store ([`StorePath::Memory`]) keeps
//! nothing once it is dropped.
//!
//! # Schema
//!
//! Versioned by `PRAGMA user_version` and migrated when opened; a file written by a newer
//! version is refused with [`StoreError::NewerSchema`]. Version 1:
//!
//! - `rooms(room, last_mid, private)`: one row per room ever written to or flagged; the
//!   last message id handed out, so ids are never reused even after trimming.
//! - `room_messages(room, mid, ts_ms, sender, content, typeu, fp)`: at most
//!   [`StoreConfig::room_history`] newest per room.
//! - `room_members(room, user)`.
//! - `pairs(a, b, last_mid)` and `pair_messages(a, b, mid, ts_ms, sender, receiver,
//!   content, typeu, fp)` with `a <= b`: at most [`StoreConfig::pair_history`] newest per
//!   pair.
//! - `offline(mid, receiver, ts_ms, sender, content, typeu, fp)`: `mid` is an
//!   `AUTOINCREMENT` key, unique over the whole file's life.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

/// The schema version this build writes and reads (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// `MIGRATIONS[i]` takes a file from version `i` to version `i + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 0 -> 1
    "CREATE TABLE rooms (
        room     TEXT PRIMARY KEY NOT NULL,
        last_mid INTEGER NOT NULL DEFAULT 0,
        private  INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE room_messages (
        room    TEXT NOT NULL,
        mid     INTEGER NOT NULL,
        ts_ms   INTEGER NOT NULL,
        sender  TEXT NOT NULL,
        content TEXT NOT NULL,
        typeu   INTEGER NOT NULL,
        fp      TEXT,
        PRIMARY KEY (room, mid)
    ) WITHOUT ROWID;
    CREATE TABLE room_members (
        room TEXT NOT NULL,
        user TEXT NOT NULL,
        PRIMARY KEY (room, user)
    ) WITHOUT ROWID;
    CREATE TABLE pairs (
        a        TEXT NOT NULL,
        b        TEXT NOT NULL,
        last_mid INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (a, b)
    ) WITHOUT ROWID;
    CREATE TABLE pair_messages (
        a        TEXT NOT NULL,
        b        TEXT NOT NULL,
        mid      INTEGER NOT NULL,
        ts_ms    INTEGER NOT NULL,
        sender   TEXT NOT NULL,
        receiver TEXT NOT NULL,
        content  TEXT NOT NULL,
        typeu    INTEGER NOT NULL,
        fp       TEXT,
        PRIMARY KEY (a, b, mid)
    ) WITHOUT ROWID;
    CREATE TABLE offline (
        mid      INTEGER PRIMARY KEY AUTOINCREMENT,
        receiver TEXT NOT NULL,
        ts_ms    INTEGER NOT NULL,
        sender   TEXT NOT NULL,
        content  TEXT NOT NULL,
        typeu    INTEGER NOT NULL,
        fp       TEXT
    );
    CREATE INDEX offline_by_receiver ON offline (receiver, mid);
    CREATE INDEX offline_by_age ON offline (ts_ms);",
];

/// Most requests the writer thread runs in one transaction.
const MAX_BATCH: usize = 257;

/// How long a batch of writes nobody waits for (history kept beside a relay) may wait
/// for more before it is committed: one commit per linger instead of one per wake-up
/// keeps the writer from taking a core the relay needs. A write someone waits for
/// ends the wait at once.
const DETACHED_LINGER: Duration = Duration::from_millis(5);

/// A request queued for the writer thread, and whether a caller waits for its commit.
struct Queued {
    job: Job,
    awaited: bool,
}

/// How long a statement waits for a lock held by another connection to the same file
/// before failing with [`StoreError::Busy`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits of the store. All counts are numbers of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Messages kept per room, the newest ones (default 100). Older ones are deleted when
    /// a new one is appended. 0 keeps none (ids are still handed out).
    pub room_history: usize,
    /// Direct messages kept per pair of users, the newest ones (default 100).
    pub pair_history: usize,
    /// Unexpired offline messages one receiver may have waiting (default 1000); a push
    /// over it fails with [`StoreError::BoxFull`].
    pub offline_max: usize,
    /// Age after which an offline message is dropped undelivered (default 7 days).
    /// Measured from the message's `ts_ms` to the `now_ms` of the call, in milliseconds.
    pub offline_max_age: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            room_history: 100,
            pair_history: 100,
            offline_max: 1000,
            offline_max_age: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StorePath {
    /// In memory: nothing survives the store (for tests and examples).
    Memory,
    /// One SQLite file (plus its `-wal` and `-shm` files beside it while open), created
    /// when missing.
    File(PathBuf),
}

impl StorePath {
    /// Reads a command-line value: `"memory"` is [`StorePath::Memory`], anything else
    /// a file path.
    pub fn parse(s: &str) -> StorePath {
        if s == "memory" {
            StorePath::Memory
        } else {
            StorePath::File(PathBuf::from(s))
        }
    }
}

impl FromStr for StorePath {
    type Err = std::convert::Infallible;

    /// Same as [`StorePath::parse`]; never fails.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(StorePath::parse(s))
    }
}

impl fmt::Display for StorePath {
    /// `memory` or the file path, as [`StorePath::parse`] reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorePath::Memory => f.write_str("memory"),
            StorePath::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One stored message, as written and as read back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredMessage {
    /// The id the store gave it, from 1 on: strictly increasing per room for room
    /// messages and per pair for direct history (never reused, even after trimming),
    /// unique over the whole store for offline messages.
    pub mid: i64,
    /// Server time when it was stored, milliseconds since the Unix epoch (as given by
    /// the caller).
    pub ts_ms: i64,
    /// The sender's user id.
    pub from: String,
    /// The receiver: a user id, or the room's address (such as `#lobby`) for a room
    /// message.
    pub to: String,
    /// The message body, as sent.
    pub content: String,
    /// The application's message type (the frame's `typeu`).
    pub typeu: i32,
    /// The sender's fingerprint, if any.
    pub fp: Option<String>,
}

/// Why the store did not do what was asked. Clone, so one failure can answer a whole
/// batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The receiver's offline box already holds `max` unexpired messages.
    #[error("offline box of {user:?} is full ({max} messages)")]
    BoxFull {
        /// The receiver.
        user: String,
        /// [`StoreConfig::offline_max`].
        max: usize,
    },
    /// The disk (or the file's `max_page_count`) is full (`SQLITE_FULL`). Nothing of the
    /// failed request was written; writes work again once there is room.
    #[error("store is full (disk full)")]
    DiskFull,
    /// The file cannot be written (`SQLITE_READONLY`: read-only file or directory,
    /// `query_only`). Reads still work.
    #[error("store is read-only")]
    ReadOnly,
    /// Another connection (another process on the same file) held a lock for longer than
    /// the busy timeout (`SQLITE_BUSY`, `SQLITE_LOCKED`).
    #[error("store is busy (file locked by another connection)")]
    Busy,
    /// The file is not an SQLite database, or is damaged (`SQLITE_NOTADB`,
    /// `SQLITE_CORRUPT`).
    #[error("store file is not a database or is corrupt: {0}")]
    Corrupt(String),
    /// The file could not be opened, read or written (`SQLITE_CANTOPEN`,
    /// `SQLITE_IOERR`, `SQLITE_PERM`).
    #[error("store I/O error: {0}")]
    Io(String),
    /// The file was written by a newer version of the server (its `user_version` is
    /// `found`, this one knows up to `supported`); it is left untouched.
    #[error("store file has schema version {found}, this server supports up to {supported}")]
    NewerSchema {
        /// The file's `PRAGMA user_version`.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The request itself is wrong (for example a sender outside the pair).
    #[error("invalid store request: {0}")]
    InvalidArgument(String),
    /// The writer thread is gone; nothing more can be stored through this handle.
    #[error("store is closed")]
    Closed,
    /// Anything else, with SQLite's message.
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Maps a rusqlite error by its SQLite result code.
    fn from_sqlite(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::DiskFull,
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy,
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                StoreError::Corrupt(e.to_string())
            }
            Some(
                ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::PermissionDenied,
            ) => StoreError::Io(e.to_string()),
            _ => StoreError::Other(e.to_string()),
        }
    }
}

/// `.sql()?` turns a rusqlite result into a store result.
trait Sql<T> {
    fn sql(self) -> Result<T, StoreError>;
}

impl<T> Sql<T> for rusqlite::Result<T> {
    fn sql(self) -> Result<T, StoreError> {
        self.map_err(StoreError::from_sqlite)
    }
}

/// A count as an SQL integer, saturating.
fn count_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The unordered pair as its stored key (`a <= b`).
fn pair_key<'s>(a: &'s str, b: &'s str) -> (&'s str, &'s str) {
    if a <= b { (a, b) } else { (b, a) }
}

/// Newest `limit` of rows read newest-first with one extra: oldest-first, plus whether
/// more (older) rows matched.
fn page(mut rows: Vec<StoredMessage>, limit: usize) -> (Vec<StoredMessage>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    rows.reverse();
    (rows, more)
}

/// The synchronous store: one SQLite connection. Every write method is atomic on its
/// own (a savepoint), and joins the caller's transaction when one is open.
///
/// Methods take the server's timestamps from the caller (`ts_ms`, `now_ms`: milliseconds
/// since the Unix epoch), so tests can make up the time.
pub struct Store {
    conn: Connection,
    config: StoreConfig,
    /// Batches the writer thread committed (for tests).
    #[cfg(test)]
    batches: u64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.conn.path())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating when missing) and migrates the store.
    ///
    /// A file is put in WAL mode with `synchronous=NORMAL` (see the module docs on
    /// durability). Errors: [`StoreError::NewerSchema`] for a file of a newer version
    /// (left untouched), [`StoreError::Corrupt`] for a file that is not a database,
    /// [`StoreError::Io`] when it cannot be opened or created, [`StoreError::ReadOnly`]
    /// when it cannot be written, [`StoreError::Busy`] when another process holds it.
    pub fn open(path: &StorePath, config: StoreConfig) -> Result<Store, StoreError> {
        let conn = match path {
            StorePath::Memory => Connection::open_in_memory().sql()?,
            // No SQLITE_OPEN_URI: a path is a path, even one starting with `file:`.
            StorePath::File(p) => Connection::open_with_flags(
                p,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .sql()?,
        };
        conn.busy_timeout(BUSY_TIMEOUT).sql()?;
        conn.set_prepared_statement_cache_capacity(64);
        // Refuse a newer file before changing anything in it (journal mode included).
        check_version(user_version(&conn)?)?;
        if let StorePath::File(_) = path {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .sql()?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Other(format!(
                    "could not switch the store to WAL mode (journal_mode is {mode})"
                )));
            }
            conn.pragma_update(None, "synchronous", "NORMAL").sql()?;
        }
        let mut store = Store {
            conn,
            config,
            #[cfg(test)]
            batches: 0,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The limits it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Brings the schema to [`SCHEMA_VERSION`], in one immediate transaction.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .sql()?;
        // Again inside the lock: another process may have migrated meanwhile.
        let found = user_version(&tx)?;
        check_version(found)?;
        let from = usize::try_from(found).unwrap_or(0);
        for sql in MIGRATIONS.iter().skip(from) {
            tx.execute_batch(sql).sql()?;
        }
        if found != SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .sql()?;
        }
        tx.commit().sql()
    }

    /// Runs `f` atomically: inside a savepoint, rolled back to on error. Outside a
    /// transaction the savepoint is the transaction.
    fn atomic<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let outer = self.conn.is_autocommit();
        self.conn.execute_batch("SAVEPOINT store_op").sql()?;
        let result = f(&self.conn).and_then(|v| {
            self.conn.execute_batch("RELEASE store_op").sql()?;
            Ok(v)
        });
        if result.is_err() {
            // Fails harmlessly when SQLite already rolled the whole transaction back.
            let _ = self
                .conn
                .execute_batch("ROLLBACK TO store_op; RELEASE store_op");
            if outer && !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
        }
        result
    }

    /// Appends a message to `room` (an address such as `#lobby`) and returns it with its
    /// id, the room's last id + 1. Trims the room to its [`StoreConfig::room_history`]
    /// newest messages. `ts_ms` is the server time, milliseconds since the Unix epoch.
    pub fn append_room(
        &mut self,
        room: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> Result<StoredMessage, StoreError> {
        let keep = count_i64(self.config.room_history);
        self.atomic(|c| {
            let mid: i64 = c
                .prepare_cached(
                    "INSERT INTO rooms (room, last_mid) VALUES (?1, 1)
                     ON CONFLICT (room) DO UPDATE SET last_mid = rooms.last_mid + 1
                     RETURNING last_mid",
                )
                .sql()?
                .query_row(params![room], |r| r.get(0))
                .sql()?;
            c.prepare_cached(
                "INSERT INTO room_messages (room, mid, ts_ms, sender, content, typeu, fp)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .sql()?
            .execute(params![room, mid, ts_ms, from, content, typeu, fp])
            .sql()?;
            // Ids of a room are contiguous, so its newest `keep` are those above this.
            let cut = mid.saturating_sub(keep);
            if cut > 0 {
                c.prepare_cached("DELETE FROM room_messages WHERE room = ?1 AND mid <= ?2")
                    .sql()?
                    .execute(params![room, cut])
                    .sql()?;
            }
            Ok(StoredMessage {
                mid,
                ts_ms,
                from: from.to_owned(),
                to: room.to_owned(),
                content: content.to_owned(),
                typeu,
                fp: fp.map(str::to_owned),
            })
        })
    }

    /// A page of `room`'s kept history, oldest first.
    ///
    /// Of the messages with `after < mid < before` (a bound that is `None` does not
    /// apply), the newest `limit`. The flag says whether more matching messages older
    /// than the page exist, so paging back is `before = first mid of the page` until it
    /// is false, and catching up after a re-login is `after = last mid seen` (then paging
    /// back with `before` while the flag is true). An unknown room is empty.
    pub fn room_history(
        &self,
        room: &str,
        before: Option<i64>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT mid, ts_ms, sender, content, typeu, fp FROM room_messages
                 WHERE room = ?1 AND mid < ?2 AND mid > ?3
                 ORDER BY mid DESC LIMIT ?4",
            )
            .sql()?;
        let rows = stmt
            .query_map(
                params![
                    room,
                    before.unwrap_or(i64::MAX),
                    after.unwrap_or(i64::MIN),
                    count_i64(limit.saturating_add(1)),
                ],
                |r| {
                    Ok(StoredMessage {
                        mid: r.get(0)?,
                        ts_ms: r.get(1)?,
                        from: r.get(2)?,
                        to: room.to_owned(),
                        content: r.get(3)?,
                        typeu: r.get(4)?,
                        fp: r.get(5)?,
                    })
                },
            )
            .sql()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .sql()?;
        Ok(page(rows, limit))
    }

    /// The last id handed out in `room` (0 when it never had a message), whether or not
    /// that message is still kept.
    pub fn last_room_mid(&self, room: &str) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT last_mid FROM rooms WHERE room = ?1")
            .sql()?
            .query_row(params![room], |r| r.get(0))
            .optional()
            .sql()?
            .unwrap_or(0))
    }

    /// Appends a direct message between users `a` and `b` (in either order) to their
    /// history; `from` is one of them and `to` becomes the other. Ids count per pair,
    /// from 1; the pair is trimmed to its [`StoreConfig::pair_history`] newest.
    ///
    /// [`StoreError::InvalidArgument`] when `from` is neither `a` nor `b`.
    #[allow(clippy::too_many_arguments)]
    pub fn append_pair(
        &mut self,
        a: &str,
        b: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> Result<StoredMessage, StoreError> {
        let to = if from == a {
            b
        } else if from == b {
            a
        } else {
            return Err(StoreError::InvalidArgument(format!(
                "sender {from:?} is not in the pair ({a:?}, {b:?})"
            )));
        };
        let (ka, kb) = pair_key(a, b);
        let keep = count_i64(self.config.pair_history);
        self.atomic(|c| {
            let mid: i64 = c
                .prepare_cached(
                    "INSERT INTO pairs (a, b, last_mid) VALUES (?1, ?2, 1)
                     ON CONFLICT (a, b) DO UPDATE SET last_mid = pairs.last_mid + 1
                     RETURNING last_mid",
                )
                .sql()?
                .query_row(params![ka, kb], |r| r.get(0))
                .sql()?;
            c.prepare_cached(
                "INSERT INTO pair_messages
                 (a, b, mid, ts_ms, sender, receiver, content, typeu, fp)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .sql()?
            .execute(params![ka, kb, mid, ts_ms, from, to, content, typeu, fp])
            .sql()?;
            let cut = mid.saturating_sub(keep);
            if cut > 0 {
                c.prepare_cached("DELETE FROM pair_messages WHERE a = ?1 AND b = ?2 AND mid <= ?3")
                    .sql()?
                    .execute(params![ka, kb, cut])
                    .sql()?;
            }
            Ok(StoredMessage {
                mid,
                ts_ms,
                from: from.to_owned(),
                to: to.to_owned(),
                content: content.to_owned(),
                typeu,
                fp: fp.map(str::to_owned),
            })
        })
    }

    /// A page of the direct history between `a` and `b` (in either order), oldest
    /// first: the newest `limit` with `mid < before` (all when `None`), and whether older
    /// ones exist, as [`Store::room_history`].
    pub fn pair_history(
        &self,
        a: &str,
        b: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let (ka, kb) = pair_key(a, b);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT mid, ts_ms, sender, receiver, content, typeu, fp FROM pair_messages
                 WHERE a = ?1 AND b = ?2 AND mid < ?3
                 ORDER BY mid DESC LIMIT ?4",
            )
            .sql()?;
        let rows = stmt
            .query_map(
                params![
                    ka,
                    kb,
                    before.unwrap_or(i64::MAX),
                    count_i64(limit.saturating_add(1)),
                ],
                read_message,
            )
            .sql()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .sql()?;
        Ok(page(rows, limit))
    }

    /// Milliseconds of [`StoreConfig::offline_max_age`], saturating.
    fn max_age_ms(&self) -> i64 {
        i64::try_from(self.config.offline_max_age.as_millis()).unwrap_or(i64::MAX)
    }

    /// Stores a message for `to_user`, who is not online, and returns it with its id
    /// (unique in the store). `ts_ms` is the server time now; it also decides which of
    /// the box's messages have expired (those are deleted first).
    ///
    /// [`StoreError::BoxFull`] when the box already holds [`StoreConfig::offline_max`]
    /// unexpired messages; nothing is stored then.
    pub fn offline_push(
        &mut self,
        to_user: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> Result<StoredMessage, StoreError> {
        let cutoff = ts_ms.saturating_sub(self.max_age_ms());
        let max = self.config.offline_max;
        self.atomic(|c| {
            c.prepare_cached("DELETE FROM offline WHERE receiver = ?1 AND ts_ms < ?2")
                .sql()?
                .execute(params![to_user, cutoff])
                .sql()?;
            let held: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM offline WHERE receiver = ?1")
                .sql()?
                .query_row(params![to_user], |r| r.get(0))
                .sql()?;
            if held >= count_i64(max) {
                return Err(StoreError::BoxFull {
                    user: to_user.to_owned(),
                    max,
                });
            }
            let mid: i64 = c
                .prepare_cached(
                    "INSERT INTO offline (receiver, ts_ms, sender, content, typeu, fp)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING mid",
                )
                .sql()?
                .query_row(params![to_user, ts_ms, from, content, typeu, fp], |r| {
                    r.get(0)
                })
                .sql()?;
            Ok(StoredMessage {
                mid,
                ts_ms,
                from: from.to_owned(),
                to: to_user.to_owned(),
                content: content.to_owned(),
                typeu,
                fp: fp.map(str::to_owned),
            })
        })
    }

    /// Everything waiting for `user`, oldest first. Messages older than
    /// [`StoreConfig::offline_max_age`] at `now_ms` (milliseconds since the Unix epoch)
    /// are left out and deleted. The rest stay until [`Store::offline_remove`].
    pub fn offline_for(&self, user: &str, now_ms: i64) -> Result<Vec<StoredMessage>, StoreError> {
        let cutoff = now_ms.saturating_sub(self.max_age_ms());
        self.atomic(|c| {
            c.prepare_cached("DELETE FROM offline WHERE receiver = ?1 AND ts_ms < ?2")
                .sql()?
                .execute(params![user, cutoff])
                .sql()?;
            c.prepare_cached(
                "SELECT mid, ts_ms, sender, receiver, content, typeu, fp FROM offline
                 WHERE receiver = ?1 ORDER BY mid",
            )
            .sql()?
            .query_map(params![user], read_message)
            .sql()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .sql()
        })
    }

    /// Deletes offline message `mid` of `user` (once the receiver acknowledged it).
    /// False when there was no such message (already removed, expired, or another
    /// user's).
    pub fn offline_remove(&mut self, user: &str, mid: i64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM offline WHERE receiver = ?1 AND mid = ?2")
            .sql()?
            .execute(params![user, mid])
            .sql()?;
        Ok(n > 0)
    }

    /// Deletes every user's offline messages that are expired at `now_ms` (for boxes of
    /// users who never come back); returns how many. Call it now and then.
    pub fn offline_purge_expired(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        let cutoff = now_ms.saturating_sub(self.max_age_ms());
        self.conn
            .prepare_cached("DELETE FROM offline WHERE ts_ms < ?1")
            .sql()?
            .execute(params![cutoff])
            .sql()
    }

    /// Flags `room` private (or public again). The room's members are kept either way.
    pub fn set_private(&mut self, room: &str, private: bool) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO rooms (room, private) VALUES (?1, ?2)
                 ON CONFLICT (room) DO UPDATE SET private = excluded.private",
            )
            .sql()?
            .execute(params![room, private])
            .sql()?;
        Ok(())
    }

    /// Whether `room` is flagged private (false for an unknown room).
    pub fn is_private(&self, room: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT private FROM rooms WHERE room = ?1")
            .sql()?
            .query_row(params![room], |r| r.get::<_, bool>(0))
            .optional()
            .sql()?
            .unwrap_or(false))
    }

    /// Records `user` as a member of `room`; false when already one.
    pub fn add_member(&mut self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.atomic(|c| {
            c.prepare_cached("INSERT OR IGNORE INTO rooms (room) VALUES (?1)")
                .sql()?
                .execute(params![room])
                .sql()?;
            let n = c
                .prepare_cached("INSERT OR IGNORE INTO room_members (room, user) VALUES (?1, ?2)")
                .sql()?
                .execute(params![room, user])
                .sql()?;
            Ok(n > 0)
        })
    }

    /// Removes `user` from `room`'s members; false when not one.
    pub fn remove_member(&mut self, room: &str, user: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM room_members WHERE room = ?1 AND user = ?2")
            .sql()?
            .execute(params![room, user])
            .sql()?;
        Ok(n > 0)
    }

    /// `room`'s recorded members, sorted.
    pub fn members(&self, room: &str) -> Result<Vec<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT user FROM room_members WHERE room = ?1 ORDER BY user")
            .sql()?
            .query_map(params![room], |r| r.get(0))
            .sql()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .sql()
    }

    /// Every private room with its members, both sorted (for loading at start).
    pub fn private_rooms(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.room, m.user FROM rooms r
                 LEFT JOIN room_members m ON m.room = r.room
                 WHERE r.private != 0 ORDER BY r.room, m.user",
            )
            .sql()?;
        let mut rows = stmt.query([]).sql()?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        while let Some(row) = rows.next().sql()? {
            let room: String = row.get(0).sql()?;
            let user: Option<String> = row.get(1).sql()?;
            match out.last_mut() {
                Some((last, _)) if *last == room => {}
                _ => out.push((room, Vec::new())),
            }
            if let (Some(user), Some((_, members))) = (user, out.last_mut()) {
                members.push(user);
            }
        }
        Ok(out)
    }
}

/// A row of `mid, ts_ms, sender, receiver, content, typeu, fp`.
fn read_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        mid: r.get(0)?,
        ts_ms: r.get(1)?,
        from: r.get(2)?,
        to: r.get(3)?,
        content: r.get(4)?,
        typeu: r.get(5)?,
        fp: r.get(6)?,
    })
}

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .sql()
}

fn check_version(found: i64) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        })
    } else if found < 0 {
        Err(StoreError::Corrupt(format!(
            "negative schema version {found}"
        )))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The async face.

/// What a request left to do once its batch is settled: its own error (if it failed),
/// and the reply, which sends its result or, given an error, that error instead.
struct Done {
    error: Option<StoreError>,
    reply: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

/// One request for the writer thread.
type Job = Box<dyn FnOnce(&mut Store) -> Done + Send>;

struct Inner {
    tx: Sender<Queued>,
    /// Resolves (or errors) when the writer thread has ended and closed the store.
    exited: Mutex<Option<oneshot::Receiver<()>>>,
}

/// The async face of a [`Store`] for the tokio server: cheap to clone, `Send + Sync`.
///
/// One writer thread owns the store. Each method queues its request **when it is
/// called** (not when the future is first polled), so requests are run in the order of
/// the calls, and a request whose future is dropped still runs. The thread takes the
/// queued requests in batches (up to 257), runs a batch in one transaction, commits,
/// and only then answers; a write answered `Ok` is committed (see the module docs on
/// durability). A request that fails is rolled back alone and answered with its error;
/// if the commit fails (or SQLite had to roll the whole transaction back), every request
/// of that batch that had succeeded, reads included, is answered with that error
/// instead. The handle keeps working after errors: a later batch starts afresh.
///
/// Dropping the last handle lets the thread finish what is queued, close the store and
/// end; [`StoreHandle::close`] does that and waits for it. If the thread is gone, every
/// method answers [`StoreError::Closed`].
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreHandle")
            .field("queued", &self.inner.tx.len())
            .finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Opens the store on the calling thread (so errors are reported at once, as by
    /// [`Store::open`]; this blocks while the file is opened and migrated) and starts the
    /// writer thread that owns it from then on.
    pub fn open(path: &StorePath, config: StoreConfig) -> Result<StoreHandle, StoreError> {
        let store = Store::open(path, config)?;
        Self::spawn(store)
    }

    /// Starts the writer thread over an opened store.
    pub fn spawn(store: Store) -> Result<StoreHandle, StoreError> {
        let (tx, rx) = crossbeam_channel::unbounded::<Queued>();
        let (exited_tx, exited_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("im-store-writer".into())
            .spawn(move || {
                writer(store, rx);
                let _ = exited_tx.send(());
            })
            .map_err(|e| {
                StoreError::Other(format!("cannot start the store's writer thread: {e}"))
            })?;
        Ok(StoreHandle {
            inner: Arc::new(Inner {
                tx,
                exited: Mutex::new(Some(exited_rx)),
            }),
        })
    }

    /// Queues `f` for the writer thread without waiting for it: nothing is allocated
    /// for a reply. `on_error` runs on the writer thread when `f` or its batch's commit
    /// fails; `Closed` is reported at once when the thread is gone.
    fn call_detached<F, E>(&self, f: F, on_error: E)
    where
        F: FnOnce(&mut Store) -> Result<(), StoreError> + Send + 'static,
        E: FnOnce(StoreError) + Send + 'static,
    {
        let job: Job = Box::new(move |store: &mut Store| {
            let error = f(store).err();
            Done {
                error: error.clone(),
                reply: Box::new(move |instead: Option<StoreError>| {
                    if let Some(e) = instead.or(error) {
                        on_error(e);
                    }
                }),
            }
        });
        if let Err(e) = self.inner.tx.send(Queued {
            job,
            awaited: false,
        }) {
            // The job (and with it `on_error`) came back: nothing will run it.
            drop(e);
            tracing::warn!("store writer thread is gone");
        }
    }

    /// [`Store::append_pair`], queued without waiting for the commit: for history
    /// that must not hold a relay up. `on_error` hears of a failure (on the writer
    /// thread).
    #[allow(clippy::too_many_arguments)]
    pub fn append_pair_detached(
        &self,
        a: &str,
        b: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
        on_error: impl FnOnce(StoreError) + Send + 'static,
    ) {
        let (a, b, from, content) = (
            a.to_owned(),
            b.to_owned(),
            from.to_owned(),
            content.to_owned(),
        );
        let fp = fp.map(str::to_owned);
        self.call_detached(
            move |s| {
                s.append_pair(&a, &b, &from, &content, typeu, fp.as_deref(), ts_ms)
                    .map(drop)
            },
            on_error,
        );
    }

    /// Queues `f` for the writer thread; the future resolves with its result once its
    /// batch is committed.
    fn call<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |store: &mut Store| {
            let result = f(store);
            Done {
                error: result.as_ref().err().cloned(),
                reply: Box::new(move |instead: Option<StoreError>| {
                    let _ = tx.send(match instead {
                        Some(e) => Err(e),
                        None => result,
                    });
                }),
            }
        });
        let queued = self.inner.tx.send(Queued { job, awaited: true }).is_ok();
        async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            rx.await.unwrap_or(Err(StoreError::Closed))
        }
    }

    /// Resolves once everything queued before it is committed (or failed).
    pub fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static + use<> {
        self.call(|_| Ok(()))
    }

    /// Drops this handle. If it was the last one, waits until the writer thread has
    /// run everything queued, closed the store and ended. Returns at once when other
    /// clones are still alive.
    pub async fn close(self) {
        let Some(inner) = Arc::into_inner(self.inner) else {
            return;
        };
        let Inner { tx, exited } = inner;
        drop(tx);
        let exited = match exited.into_inner() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(exited) = exited {
            // An error means the thread ended without saying so (it panicked): ended too.
            let _ = exited.await;
        }
    }

    /// [`Store::append_room`], committed.
    pub fn append_room(
        &self,
        room: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> impl Future<Output = Result<StoredMessage, StoreError>> + Send + 'static + use<> {
        let (room, from, content) = (room.to_owned(), from.to_owned(), content.to_owned());
        let fp = fp.map(str::to_owned);
        self.call(move |s| s.append_room(&room, &from, &content, typeu, fp.as_deref(), ts_ms))
    }

    /// [`Store::room_history`].
    pub fn room_history(
        &self,
        room: &str,
        before: Option<i64>,
        after: Option<i64>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<StoredMessage>, bool), StoreError>> + Send + 'static + use<>
    {
        let room = room.to_owned();
        self.call(move |s| s.room_history(&room, before, after, limit))
    }

    /// [`Store::last_room_mid`].
    pub fn last_room_mid(
        &self,
        room: &str,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send + 'static + use<> {
        let room = room.to_owned();
        self.call(move |s| s.last_room_mid(&room))
    }

    /// [`Store::append_pair`], committed.
    #[allow(clippy::too_many_arguments)]
    pub fn append_pair(
        &self,
        a: &str,
        b: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> impl Future<Output = Result<StoredMessage, StoreError>> + Send + 'static + use<> {
        let (a, b, from, content) = (
            a.to_owned(),
            b.to_owned(),
            from.to_owned(),
            content.to_owned(),
        );
        let fp = fp.map(str::to_owned);
        self.call(move |s| s.append_pair(&a, &b, &from, &content, typeu, fp.as_deref(), ts_ms))
    }

    /// [`Store::pair_history`].
    pub fn pair_history(
        &self,
        a: &str,
        b: &str,
        before: Option<i64>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<StoredMessage>, bool), StoreError>> + Send + 'static + use<>
    {
        let (a, b) = (a.to_owned(), b.to_owned());
        self.call(move |s| s.pair_history(&a, &b, before, limit))
    }

    /// [`Store::offline_push`], committed: `Ok` is the "stored" the sender's ACK may
    /// report.
    pub fn offline_push(
        &self,
        to_user: &str,
        from: &str,
        content: &str,
        typeu: i32,
        fp: Option<&str>,
        ts_ms: i64,
    ) -> impl Future<Output = Result<StoredMessage, StoreError>> + Send + 'static + use<> {
        let (to_user, from, content) = (to_user.to_owned(), from.to_owned(), content.to_owned());
        let fp = fp.map(str::to_owned);
        self.call(move |s| s.offline_push(&to_user, &from, &content, typeu, fp.as_deref(), ts_ms))
    }

    /// [`Store::offline_for`].
    pub fn offline_for(
        &self,
        user: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + Send + 'static + use<> {
        let user = user.to_owned();
        self.call(move |s| s.offline_for(&user, now_ms))
    }

    /// [`Store::offline_remove`], committed.
    pub fn offline_remove(
        &self,
        user: &str,
        mid: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static + use<> {
        let user = user.to_owned();
        self.call(move |s| s.offline_remove(&user, mid))
    }

    /// [`Store::offline_purge_expired`], committed.
    pub fn offline_purge_expired(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send + 'static + use<> {
        self.call(move |s| s.offline_purge_expired(now_ms))
    }

    /// [`Store::set_private`], committed.
    pub fn set_private(
        &self,
        room: &str,
        private: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static + use<> {
        let room = room.to_owned();
        self.call(move |s| s.set_private(&room, private))
    }

    /// [`Store::is_private`].
    pub fn is_private(
        &self,
        room: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static + use<> {
        let room = room.to_owned();
        self.call(move |s| s.is_private(&room))
    }

    /// [`Store::add_member`], committed.
    pub fn add_member(
        &self,
        room: &str,
        user: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static + use<> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.call(move |s| s.add_member(&room, &user))
    }

    /// [`Store::remove_member`], committed.
    pub fn remove_member(
        &self,
        room: &str,
        user: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static + use<> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.call(move |s| s.remove_member(&room, &user))
    }

    /// [`Store::members`].
    pub fn members(
        &self,
        room: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send + 'static + use<> {
        let room = room.to_owned();
        self.call(move |s| s.members(&room))
    }

    /// [`Store::private_rooms`].
    pub fn private_rooms(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, Vec<String>)>, StoreError>> + Send + 'static + use<>
    {
        self.call(|s| s.private_rooms())
    }
}

/// The writer thread: batches until every handle is gone and the queue is empty. A
/// batch takes what is queued; when nobody waits for any of it, it lingers up to
/// [`DETACHED_LINGER`] for more.
fn writer(mut store: Store, rx: Receiver<Queued>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    // `recv` still yields what is queued after the last sender is dropped.
    while let Ok(first) = rx.recv() {
        let mut awaited = first.awaited;
        batch.push(first.job);
        let linger_until = std::time::Instant::now() + DETACHED_LINGER;
        while batch.len() < MAX_BATCH {
            let next = match rx.try_recv() {
                Ok(q) => q,
                Err(_) if awaited => break,
                Err(_) => match rx.recv_deadline(linger_until) {
                    Ok(q) => q,
                    Err(_) => break,
                },
            };
            awaited |= next.awaited;
            batch.push(next.job);
        }
        run_batch(&mut store, batch.drain(..));
    }
    // Dropping the store closes the connection (checkpointing the WAL).
}

/// Runs one batch in one transaction and answers every request after the commit.
fn run_batch(store: &mut Store, jobs: impl Iterator<Item = Job>) {
    // Each entry: the request's outcome and, when its success was undone, the error.
    let mut done: Vec<(Done, Option<StoreError>)> = Vec::with_capacity(MAX_BATCH);
    // If BEGIN fails the requests still run, each atomic and committed on its own.
    let mut open = store.conn.execute_batch("BEGIN").is_ok();
    // Index in `done` of the first request of the current transaction.
    let mut start = 0;
    for job in jobs {
        let outcome = job(store);
        if let Some(err) = &outcome.error
            && open
            && store.conn.is_autocommit()
        {
            // SQLite rolled the whole transaction back (possible for SQLITE_FULL,
            // SQLITE_IOERR, SQLITE_BUSY, SQLITE_NOMEM): the earlier successes are void.
            tracing::warn!(error = %err, "store transaction rolled back by SQLite");
            void(&mut done[start..], err);
            start = done.len() + 1;
            open = store.conn.execute_batch("BEGIN").is_ok();
        }
        done.push((outcome, None));
    }
    if open && let Err(e) = store.conn.execute_batch("COMMIT") {
        let err = StoreError::from_sqlite(e);
        tracing::warn!(error = %err, "store commit failed");
        if !store.conn.is_autocommit() {
            let _ = store.conn.execute_batch("ROLLBACK");
        }
        let from = start.min(done.len());
        void(&mut done[from..], &err);
    }
    #[cfg(test)]
    {
        store.batches += 1;
    }
    for (outcome, instead) in done {
        (outcome.reply)(instead);
    }
}

/// Marks the successes among `done` as failed with `err`.
fn void(done: &mut [(Done, Option<StoreError>)], err: &StoreError) {
    for (outcome, instead) in done {
        if outcome.error.is_none() {
            *instead = Some(err.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A store file in the temp dir, deleted (with its WAL files) when dropped.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new(tag: &str) -> TempDb {
            static N: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let name = format!(
                "bevy_im_store_{tag}_{}_{}_{nanos}.db",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let db = TempDb(std::env::temp_dir().join(name));
            db.remove();
            db
        }

        fn path(&self) -> StorePath {
            StorePath::File(self.0.clone())
        }

        fn remove(&self) {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            self.remove();
        }
    }

    fn config() -> StoreConfig {
        StoreConfig::default()
    }

    fn mem(config: StoreConfig) -> Store {
        Store::open(&StorePath::Memory, config).expect("open memory store")
    }

    fn mids(page: &[StoredMessage]) -> Vec<i64> {
        page.iter().map(|m| m.mid).collect()
    }

    fn post(store: &mut Store, room: &str, n: usize) -> Vec<i64> {
        (0..n)
            .map(|i| {
                store
                    .append_room(room, "u", &format!("m{i}"), 0, None, 1_000)
                    .expect("append")
                    .mid
            })
            .collect()
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync + Clone>() {}
        fn send<T: Send>() {}
        send_sync::<StoreHandle>();
        send::<Store>();
        send_sync::<StoreError>();
    }

    #[test]
    fn store_path_parse() {
        assert_eq!(StorePath::parse("memory"), StorePath::Memory);
        assert_eq!(
            StorePath::parse("im-server.db"),
            StorePath::File(PathBuf::from("im-server.db"))
        );
        assert_eq!("memory".parse::<StorePath>(), Ok(StorePath::Memory));
        assert_eq!(StorePath::parse("a/b.db").to_string(), "a/b.db");
        assert_eq!(StorePath::Memory.to_string(), "memory");
    }

    #[test]
    fn room_mids_increase_per_room_and_are_independent() {
        let mut s = mem(config());
        assert_eq!(s.last_room_mid("#a").unwrap(), 0);
        let a1 = s
            .append_room("#a", "alice", "hi", 7, Some("fp-1"), 100)
            .unwrap();
        let b1 = s.append_room("#b", "bob", "yo", 0, None, 101).unwrap();
        let a2 = s.append_room("#a", "bob", "hey", 0, None, 102).unwrap();
        let b2 = s.append_room("#b", "alice", "sup", 0, None, 103).unwrap();
        let a3 = s.append_room("#a", "carol", "o/", 0, None, 104).unwrap();
        assert_eq!((a1.mid, a2.mid, a3.mid), (1, 2, 3));
        assert_eq!((b1.mid, b2.mid), (1, 2));
        assert_eq!(s.last_room_mid("#a").unwrap(), 3);
        assert_eq!(s.last_room_mid("#b").unwrap(), 2);
        assert_eq!(s.last_room_mid("#c").unwrap(), 0);
        assert_eq!(
            a1,
            StoredMessage {
                mid: 1,
                ts_ms: 100,
                from: "alice".into(),
                to: "#a".into(),
                content: "hi".into(),
                typeu: 7,
                fp: Some("fp-1".into()),
            }
        );
        let (page, more) = s.room_history("#a", None, None, 10).unwrap();
        assert_eq!(page, vec![a1, a2, a3]);
        assert!(!more);
    }

    #[test]
    fn room_trim_keeps_newest_and_mids_continue() {
        let mut s = mem(StoreConfig {
            room_history: 5,
            ..config()
        });
        assert_eq!(post(&mut s, "#r", 12), (1..=12).collect::<Vec<_>>());
        let (page, more) = s.room_history("#r", None, None, 100).unwrap();
        assert_eq!(mids(&page), (8..=12).collect::<Vec<_>>());
        assert!(!more);
        assert_eq!(s.last_room_mid("#r").unwrap(), 12);
        assert_eq!(post(&mut s, "#r", 1), vec![13]);
        let (page, _) = s.room_history("#r", None, None, 100).unwrap();
        assert_eq!(mids(&page), (9..=13).collect::<Vec<_>>());
        // Paging before the oldest kept finds nothing.
        assert_eq!(
            s.room_history("#r", Some(9), None, 100).unwrap(),
            (vec![], false)
        );
    }

    #[test]
    fn room_history_zero_keeps_nothing_but_counts() {
        let mut s = mem(StoreConfig {
            room_history: 0,
            ..config()
        });
        assert_eq!(post(&mut s, "#r", 3), vec![1, 2, 3]);
        assert_eq!(
            s.room_history("#r", None, None, 10).unwrap(),
            (vec![], false)
        );
    }

    #[test]
    fn room_history_paging_before_walks_back_through_everything_kept() {
        let mut s = mem(StoreConfig {
            room_history: 50,
            ..config()
        });
        post(&mut s, "#r", 120);
        post(&mut s, "#other", 10);
        for limit in [1, 7, 10, 50, 51, 1000] {
            let mut seen = Vec::new();
            let mut before = None;
            let mut pages = 0;
            loop {
                let (page, more) = s.room_history("#r", before, None, limit).unwrap();
                pages += 1;
                assert!(page.len() <= limit);
                assert!(page.windows(2).all(|w| w[0].mid < w[1].mid), "oldest first");
                assert!(page.iter().all(|m| m.to == "#r"));
                let mut ids = mids(&page);
                ids.extend(seen);
                seen = ids;
                if !more {
                    break;
                }
                before = page.first().map(|m| m.mid);
            }
            assert_eq!(seen, (71..=120).collect::<Vec<_>>(), "limit {limit}");
            assert_eq!(pages, 50usize.div_ceil(limit), "limit {limit}");
        }
    }

    #[test]
    fn room_history_after_returns_just_the_missed_ones() {
        let mut s = mem(config());
        post(&mut s, "#r", 30);
        let (page, more) = s.room_history("#r", None, Some(25), 100).unwrap();
        assert_eq!(mids(&page), vec![26, 27, 28, 29, 30]);
        assert!(!more);
        // More missed than the limit: the newest, and `more` says older missed ones exist.
        let (page, more) = s.room_history("#r", None, Some(10), 5).unwrap();
        assert_eq!(mids(&page), vec![26, 27, 28, 29, 30]);
        assert!(more);
        let (page, more) = s.room_history("#r", Some(26), Some(10), 5).unwrap();
        assert_eq!(mids(&page), vec![21, 22, 23, 24, 25]);
        assert!(more);
        let (page, more) = s.room_history("#r", Some(16), Some(10), 5).unwrap();
        assert_eq!(mids(&page), vec![11, 12, 13, 14, 15]);
        assert!(!more);
        // Nothing missed.
        assert_eq!(
            s.room_history("#r", None, Some(30), 5).unwrap(),
            (vec![], false)
        );
        assert_eq!(
            s.room_history("#r", None, Some(99), 5).unwrap(),
            (vec![], false)
        );
    }

    #[test]
    fn room_history_odd_cursors_and_limits() {
        let mut s = mem(config());
        assert_eq!(
            s.room_history("#none", None, None, 10).unwrap(),
            (vec![], false)
        );
        post(&mut s, "#r", 3);
        assert_eq!(s.room_history("#r", None, None, 0).unwrap(), (vec![], true));
        assert_eq!(
            s.room_history("#r", Some(0), None, 10).unwrap(),
            (vec![], false)
        );
        assert_eq!(
            s.room_history("#r", Some(-5), None, 10).unwrap(),
            (vec![], false)
        );
        assert_eq!(
            s.room_history("#r", Some(i64::MIN), Some(i64::MAX), 10)
                .unwrap(),
            (vec![], false)
        );
        let (page, more) = s
            .room_history("#r", Some(i64::MAX), Some(i64::MIN), usize::MAX)
            .unwrap();
        assert_eq!(mids(&page), vec![1, 2, 3]);
        assert!(!more);
        assert_eq!(
            s.room_history("#r", Some(2), Some(2), 10).unwrap(),
            (vec![], false)
        );
    }

    #[test]
    fn pair_history_is_unordered_and_trimmed() {
        let mut s = mem(StoreConfig {
            pair_history: 3,
            ..config()
        });
        let m1 = s
            .append_pair("alice", "bob", "alice", "hi", 1, Some("f1"), 10)
            .unwrap();
        let m2 = s
            .append_pair("bob", "alice", "bob", "hey", 2, None, 11)
            .unwrap();
        let m3 = s
            .append_pair("bob", "alice", "alice", "ok", 0, None, 12)
            .unwrap();
        let c1 = s
            .append_pair("carol", "alice", "carol", "x", 0, None, 13)
            .unwrap();
        assert_eq!((m1.mid, m2.mid, m3.mid, c1.mid), (1, 2, 3, 1));
        assert_eq!((m1.from.as_str(), m1.to.as_str()), ("alice", "bob"));
        assert_eq!((m2.from.as_str(), m2.to.as_str()), ("bob", "alice"));
        assert_eq!((m3.from.as_str(), m3.to.as_str()), ("alice", "bob"));
        assert_eq!((c1.from.as_str(), c1.to.as_str()), ("carol", "alice"));
        let ab = s.pair_history("alice", "bob", None, 10).unwrap();
        assert_eq!(ab, s.pair_history("bob", "alice", None, 10).unwrap());
        assert_eq!(ab, (vec![m1, m2.clone(), m3.clone()], false));
        let m4 = s
            .append_pair("alice", "bob", "bob", "bye", 0, None, 14)
            .unwrap();
        assert_eq!(m4.mid, 4);
        let (page, more) = s.pair_history("bob", "alice", None, 10).unwrap();
        assert_eq!(mids(&page), vec![2, 3, 4]);
        assert!(!more);
        let (page, more) = s.pair_history("bob", "alice", None, 2).unwrap();
        assert_eq!(page, vec![m3, m4]);
        assert!(more);
        assert_eq!(
            s.pair_history("alice", "bob", Some(3), 2).unwrap(),
            (vec![m2], false)
        );
        assert_eq!(
            mids(&s.pair_history("alice", "carol", None, 10).unwrap().0),
            vec![1]
        );
        assert_eq!(
            s.pair_history("bob", "carol", None, 10).unwrap(),
            (vec![], false)
        );
        // A note to oneself is a pair too.
        let own = s
            .append_pair("dave", "dave", "dave", "memo", 0, None, 15)
            .unwrap();
        assert_eq!((own.mid, own.to.as_str()), (1, "dave"));
    }

    #[test]
    fn append_pair_refuses_a_sender_outside_the_pair() {
        let mut s = mem(config());
        let err = s
            .append_pair("alice", "bob", "mallory", "x", 0, None, 1)
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
        assert_eq!(
            s.pair_history("alice", "bob", None, 10).unwrap(),
            (vec![], false)
        );
    }

    #[test]
    fn offline_push_for_remove() {
        let mut s = mem(config());
        let b1 = s
            .offline_push("bob", "alice", "one", 0, Some("f1"), 1_000)
            .unwrap();
        let c1 = s
            .offline_push("carol", "alice", "c", 0, None, 1_001)
            .unwrap();
        let b2 = s
            .offline_push("bob", "carol", "two", 5, None, 1_002)
            .unwrap();
        let b3 = s
            .offline_push("bob", "alice", "three", 0, None, 1_003)
            .unwrap();
        let all = [b1.mid, c1.mid, b2.mid, b3.mid];
        assert!(
            all.windows(2).all(|w| w[0] < w[1]),
            "unique and increasing: {all:?}"
        );
        assert_eq!(
            (b2.from.as_str(), b2.to.as_str(), b2.typeu),
            ("carol", "bob", 5)
        );
        let box_ = s.offline_for("bob", 2_000).unwrap();
        assert_eq!(box_, vec![b1.clone(), b2.clone(), b3.clone()]);
        assert_eq!(s.offline_for("carol", 2_000).unwrap(), vec![c1.clone()]);
        assert_eq!(s.offline_for("nobody", 2_000).unwrap(), vec![]);
        // Reading does not remove.
        assert_eq!(s.offline_for("bob", 2_000).unwrap().len(), 3);
        assert!(s.offline_remove("bob", b2.mid).unwrap());
        assert!(!s.offline_remove("bob", b2.mid).unwrap());
        assert!(!s.offline_remove("bob", c1.mid).unwrap(), "carol's message");
        assert_eq!(s.offline_for("bob", 2_000).unwrap(), vec![b1, b3]);
        assert_eq!(s.offline_for("carol", 2_000).unwrap(), vec![c1]);
    }

    #[test]
    fn offline_box_full_at_the_cap() {
        let mut s = mem(StoreConfig {
            offline_max: 3,
            ..config()
        });
        let mut pushed = Vec::new();
        for i in 0..3 {
            pushed.push(
                s.offline_push("bob", "alice", &format!("m{i}"), 0, None, 10)
                    .unwrap(),
            );
        }
        let err = s
            .offline_push("bob", "alice", "over", 0, None, 11)
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::BoxFull {
                user: "bob".into(),
                max: 3
            }
        );
        assert_eq!(s.offline_for("bob", 20).unwrap(), pushed, "nothing stored");
        s.offline_push("carol", "alice", "fine", 0, None, 12)
            .unwrap();
        assert!(s.offline_remove("bob", pushed[0].mid).unwrap());
        let next = s
            .offline_push("bob", "alice", "room again", 0, None, 13)
            .unwrap();
        assert!(next.mid > pushed[2].mid);
        let mut s = mem(StoreConfig {
            offline_max: 0,
            ..config()
        });
        assert!(matches!(
            s.offline_push("bob", "alice", "x", 0, None, 1),
            Err(StoreError::BoxFull { max: 0, .. })
        ));
    }

    #[test]
    fn offline_expiry_by_age() {
        let mut s = mem(StoreConfig {
            offline_max: 2,
            offline_max_age: Duration::from_millis(1_000),
            ..config()
        });
        let old = s.offline_push("bob", "alice", "old", 0, None, 0).unwrap();
        let new = s.offline_push("bob", "alice", "new", 0, None, 500).unwrap();
        // Exactly max_age old is not expired yet.
        assert_eq!(
            s.offline_for("bob", 1_000).unwrap(),
            vec![old.clone(), new.clone()]
        );
        assert_eq!(s.offline_for("bob", 1_200).unwrap(), vec![new.clone()]);
        // The expired one was deleted, not just hidden.
        assert_eq!(s.offline_for("bob", 0).unwrap(), vec![new.clone()]);
        // Only unexpired messages count against the cap.
        s.offline_push("bob", "alice", "x", 0, None, 600).unwrap();
        assert!(matches!(
            s.offline_push("bob", "alice", "y", 0, None, 700),
            Err(StoreError::BoxFull { .. })
        ));
        let later = s
            .offline_push("bob", "alice", "later", 0, None, 1_550)
            .unwrap();
        assert_eq!(s.offline_for("bob", 1_550).unwrap().last(), Some(&later));
        // Purging drops every user's expired messages.
        s.offline_push("carol", "alice", "c", 0, None, 100).unwrap();
        s.offline_push("dave", "alice", "d", 0, None, 5_000)
            .unwrap();
        assert_eq!(s.offline_purge_expired(3_000).unwrap(), 3);
        assert_eq!(s.offline_for("bob", 0).unwrap(), vec![]);
        assert_eq!(s.offline_for("carol", 0).unwrap(), vec![]);
        assert_eq!(s.offline_for("dave", 5_000).unwrap().len(), 1);
    }

    #[test]
    fn private_rooms_and_members() {
        let mut s = mem(config());
        assert_eq!(s.private_rooms().unwrap(), vec![]);
        assert!(!s.is_private("#p").unwrap());
        s.set_private("#p", true).unwrap();
        assert!(s.is_private("#p").unwrap());
        assert!(s.add_member("#p", "zoe").unwrap());
        assert!(s.add_member("#p", "adam").unwrap());
        assert!(!s.add_member("#p", "adam").unwrap());
        s.add_member("#public", "adam").unwrap();
        s.set_private("#empty", true).unwrap();
        assert_eq!(s.members("#p").unwrap(), vec!["adam", "zoe"]);
        assert_eq!(s.members("#public").unwrap(), vec!["adam"]);
        assert_eq!(s.members("#nope").unwrap(), Vec::<String>::new());
        assert_eq!(
            s.private_rooms().unwrap(),
            vec![
                ("#empty".to_owned(), vec![]),
                ("#p".to_owned(), vec!["adam".to_owned(), "zoe".to_owned()]),
            ]
        );
        assert!(s.remove_member("#p", "zoe").unwrap());
        assert!(!s.remove_member("#p", "zoe").unwrap());
        s.set_private("#empty", false).unwrap();
        assert_eq!(
            s.private_rooms().unwrap(),
            vec![("#p".to_owned(), vec!["adam".to_owned()])]
        );
        // Flags and members do not disturb the room's ids.
        assert_eq!(post(&mut s, "#p", 2), vec![1, 2]);
        s.set_private("#p", true).unwrap();
        assert_eq!(s.last_room_mid("#p").unwrap(), 2);
    }

    #[test]
    fn everything_survives_a_reopen() {
        let db = TempDb::new("reopen");
        let cfg = StoreConfig {
            room_history: 10,
            ..config()
        };
        let (kept, offline_mid) = {
            let mut s = Store::open(&db.path(), cfg.clone()).unwrap();
            post(&mut s, "#lobby", 15);
            post(&mut s, "#team", 2);
            s.append_pair("alice", "bob", "alice", "dm", 0, Some("f"), 5)
                .unwrap();
            let o1 = s
                .offline_push("bob", "alice", "wait", 3, Some("fp"), 1_000)
                .unwrap();
            let o2 = s
                .offline_push("bob", "alice", "gone", 0, None, 1_001)
                .unwrap();
            assert!(s.offline_remove("bob", o2.mid).unwrap());
            s.set_private("#secret", true).unwrap();
            s.add_member("#secret", "alice").unwrap();
            s.add_member("#secret", "bob").unwrap();
            (
                s.room_history("#lobby", None, None, 100).unwrap().0,
                (o1, o2.mid),
            )
        };
        let mut s = Store::open(&db.path(), cfg).unwrap();
        assert_eq!(
            s.room_history("#lobby", None, None, 100).unwrap(),
            (kept, false)
        );
        assert_eq!(s.last_room_mid("#lobby").unwrap(), 15);
        assert_eq!(s.last_room_mid("#team").unwrap(), 2);
        assert_eq!(post(&mut s, "#lobby", 1), vec![16]);
        let (pair, _) = s.pair_history("bob", "alice", None, 10).unwrap();
        assert_eq!(mids(&pair), vec![1]);
        assert_eq!(
            s.append_pair("alice", "bob", "bob", "again", 0, None, 6)
                .unwrap()
                .mid,
            2
        );
        let (o1, removed_mid) = offline_mid;
        assert_eq!(s.offline_for("bob", 2_000).unwrap(), vec![o1]);
        // Offline ids are never reused, even the removed newest one's.
        let o3 = s
            .offline_push("bob", "alice", "new", 0, None, 2_000)
            .unwrap();
        assert!(o3.mid > removed_mid);
        assert_eq!(
            s.private_rooms().unwrap(),
            vec![(
                "#secret".to_owned(),
                vec!["alice".to_owned(), "bob".to_owned()]
            )]
        );
    }

    #[test]
    fn committed_writes_survive_a_connection_that_never_closes() {
        // As after kill -9: the connection is never closed, the WAL never checkpointed.
        let db = TempDb::new("leak");
        let mut s = Store::open(&db.path(), config()).unwrap();
        post(&mut s, "#r", 5);
        let o = s.offline_push("bob", "alice", "x", 0, None, 1).unwrap();
        std::mem::forget(s);
        let s = Store::open(&db.path(), config()).unwrap();
        assert_eq!(s.last_room_mid("#r").unwrap(), 5);
        assert_eq!(s.offline_for("bob", 1).unwrap(), vec![o]);
    }

    #[test]
    fn files_use_wal_and_reopen_migrated() {
        let db = TempDb::new("migrate");
        drop(Store::open(&db.path(), config()).unwrap());
        let s = Store::open(&db.path(), config()).unwrap();
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        assert_eq!(user_version(&s.conn).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let db = TempDb::new("newer");
        drop(Store::open(&db.path(), config()).unwrap());
        {
            let c = Connection::open(&db.0).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = Store::open(&db.path(), config()).unwrap_err();
        assert_eq!(
            err,
            StoreError::NewerSchema {
                found: 99,
                supported: SCHEMA_VERSION
            }
        );
        let c = Connection::open(&db.0).unwrap();
        assert_eq!(user_version(&c).unwrap(), 99);
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let db = TempDb::new("garbage");
        std::fs::write(&db.0, vec![b'x'; 4096]).unwrap();
        let err = Store::open(&db.path(), config()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        let missing = std::env::temp_dir()
            .join(format!("bevy_im_no_such_dir_{}", std::process::id()))
            .join("x.db");
        let err = Store::open(&StorePath::File(missing), config()).unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    }

    #[test]
    fn sqlite_codes_map_to_variants() {
        let code =
            |c| StoreError::from_sqlite(rusqlite::Error::SqliteFailure(ffi::Error::new(c), None));
        assert_eq!(code(ffi::SQLITE_FULL), StoreError::DiskFull);
        assert_eq!(code(ffi::SQLITE_READONLY), StoreError::ReadOnly);
        assert_eq!(code(ffi::SQLITE_READONLY_DBMOVED), StoreError::ReadOnly);
        assert_eq!(code(ffi::SQLITE_BUSY), StoreError::Busy);
        assert_eq!(code(ffi::SQLITE_LOCKED), StoreError::Busy);
        assert!(matches!(code(ffi::SQLITE_NOTADB), StoreError::Corrupt(_)));
        assert!(matches!(code(ffi::SQLITE_CORRUPT), StoreError::Corrupt(_)));
        assert!(matches!(code(ffi::SQLITE_IOERR_WRITE), StoreError::Io(_)));
        assert!(matches!(code(ffi::SQLITE_CANTOPEN), StoreError::Io(_)));
        assert!(matches!(code(ffi::SQLITE_CONSTRAINT), StoreError::Other(_)));
        assert!(matches!(
            StoreError::from_sqlite(rusqlite::Error::QueryReturnedNoRows),
            StoreError::Other(_)
        ));
    }

    /// Caps the file at its current size, so the next page it needs is refused.
    fn cap_pages(conn: &Connection, cap: bool) -> rusqlite::Result<()> {
        let n: i64 = if cap {
            conn.pragma_query_value(None, "page_count", |r| r.get(0))?
        } else {
            1_000_000_000
        };
        conn.pragma_update(None, "max_page_count", n)
    }

    #[test]
    fn a_full_disk_is_disk_full_and_recovers() {
        let db = TempDb::new("full");
        let mut s = Store::open(&db.path(), config()).unwrap();
        post(&mut s, "#r", 3);
        s.offline_push("bob", "alice", "x", 0, None, 1).unwrap();
        cap_pages(&s.conn, true).unwrap();
        let big = "x".repeat(64 * 1024);
        assert_eq!(
            s.append_room("#r", "u", &big, 0, None, 2).unwrap_err(),
            StoreError::DiskFull
        );
        assert_eq!(
            s.offline_push("bob", "alice", &big, 0, None, 2)
                .unwrap_err(),
            StoreError::DiskFull
        );
        // Reads still work, and the failed writes left nothing behind.
        assert_eq!(s.last_room_mid("#r").unwrap(), 3);
        assert_eq!(
            mids(&s.room_history("#r", None, None, 10).unwrap().0),
            vec![1, 2, 3]
        );
        assert_eq!(s.offline_for("bob", 1).unwrap().len(), 1);
        cap_pages(&s.conn, false).unwrap();
        assert_eq!(s.append_room("#r", "u", &big, 0, None, 3).unwrap().mid, 4);
    }

    #[tokio::test]
    async fn the_handle_reports_disk_full_and_keeps_working() {
        let db = TempDb::new("hfull");
        let h = StoreHandle::open(&db.path(), config()).unwrap();
        h.append_room("#r", "u", "small", 0, None, 1).await.unwrap();
        h.call(|s| cap_pages(&s.conn, true).sql()).await.unwrap();
        let big = "x".repeat(64 * 1024);
        // Queued together: the failing ones must not take the batch down with them.
        let f1 = h.append_room("#r", "u", &big, 0, None, 2);
        let f2 = h.last_room_mid("#r");
        let f3 = h.offline_push("bob", "alice", &big, 0, None, 2);
        let f4 = h.room_history("#r", None, None, 10);
        assert_eq!(f1.await, Err(StoreError::DiskFull));
        assert_eq!(f2.await, Ok(1));
        assert_eq!(f3.await, Err(StoreError::DiskFull));
        assert_eq!(mids(&f4.await.unwrap().0), vec![1]);
        h.call(|s| cap_pages(&s.conn, false).sql()).await.unwrap();
        assert_eq!(
            h.append_room("#r", "u", &big, 0, None, 3)
                .await
                .unwrap()
                .mid,
            2
        );
        h.close().await;
    }

    #[tokio::test]
    async fn the_handle_reports_read_only_and_keeps_working() {
        let db = TempDb::new("ro");
        let h = StoreHandle::open(&db.path(), config()).unwrap();
        h.append_room("#r", "u", "one", 0, None, 1).await.unwrap();
        h.call(|s| s.conn.pragma_update(None, "query_only", true).sql())
            .await
            .unwrap();
        assert_eq!(
            h.append_room("#r", "u", "two", 0, None, 2).await,
            Err(StoreError::ReadOnly)
        );
        assert_eq!(
            h.offline_push("bob", "alice", "x", 0, None, 2).await,
            Err(StoreError::ReadOnly)
        );
        assert_eq!(h.add_member("#p", "bob").await, Err(StoreError::ReadOnly));
        assert_eq!(h.last_room_mid("#r").await, Ok(1));
        assert_eq!(
            mids(&h.room_history("#r", None, None, 5).await.unwrap().0),
            vec![1]
        );
        h.call(|s| s.conn.pragma_update(None, "query_only", false).sql())
            .await
            .unwrap();
        assert_eq!(
            h.append_room("#r", "u", "two", 0, None, 3)
                .await
                .unwrap()
                .mid,
            2
        );
        h.close().await;
    }

    #[test]
    fn a_read_only_file_is_read_only() {
        // Root ignores file modes, so open the connection itself read-only.
        let db = TempDb::new("rofile");
        let mut s = Store::open(&db.path(), config()).unwrap();
        post(&mut s, "#r", 2);
        drop(s);
        let conn = Connection::open_with_flags(&db.0, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut s = Store {
            conn,
            config: config(),
            batches: 0,
        };
        assert_eq!(s.last_room_mid("#r").unwrap(), 2);
        assert_eq!(
            s.append_room("#r", "u", "x", 0, None, 1).unwrap_err(),
            StoreError::ReadOnly
        );
        assert_eq!(s.set_private("#r", true).unwrap_err(), StoreError::ReadOnly);
        assert_eq!(s.last_room_mid("#r").unwrap(), 2);
    }

    /// Stops the writer thread until the returned sender is dropped or sent to.
    fn gate(h: &StoreHandle) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        drop(h.call(move |_| {
            let _ = rx.recv();
            Ok(())
        }));
        tx
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_handle_batches_a_thousand_concurrent_appends() {
        let h = StoreHandle::open(
            &StorePath::Memory,
            StoreConfig {
                room_history: 2_000,
                ..config()
            },
        )
        .unwrap();
        let open = gate(&h);
        // Each call queues its request at once; the futures then wait on 1,000 tasks.
        let tasks: Vec<_> = (0..1_000)
            .map(|i| h.append_room("#r", &format!("u{i}"), &format!("m{i}"), 0, None, i))
            .map(tokio::spawn)
            .collect();
        drop(open);
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap().unwrap());
        }
        let mut ids = mids(&got);
        ids.sort_unstable();
        assert_eq!(ids, (1..=1_000).collect::<Vec<_>>(), "distinct, no gaps");
        // The history holds them in id order, each as sent.
        let (page, more) = h.room_history("#r", None, None, 5_000).await.unwrap();
        assert!(!more);
        got.sort_by_key(|m| m.mid);
        assert_eq!(page, got);
        // One batch for the gate, then at most 257 per batch.
        let batches = h.call(|s| Ok(s.batches)).await.unwrap();
        assert!(batches <= 1 + 4 + 1, "{batches} batches");

        // Requests from one task are stored in call order, even awaited later.
        let futs: Vec<_> = (0..100)
            .map(|i| h.append_room("#order", "u", &i.to_string(), 0, None, i))
            .collect();
        let mut last = 0;
        for (i, f) in futs.into_iter().enumerate() {
            let m = f.await.unwrap();
            assert_eq!(m.content, i.to_string());
            assert!(m.mid > last);
            last = m.mid;
        }
        h.close().await;
    }

    #[tokio::test]
    async fn flush_waits_for_everything_queued_before_it() {
        let h = StoreHandle::open(&StorePath::Memory, config()).unwrap();
        let open = gate(&h);
        let writes: Vec<_> = (0..50)
            .map(|i| h.offline_push("bob", "alice", &i.to_string(), 0, None, 1))
            .collect();
        let flushed = h.flush();
        drop(open);
        flushed.await.unwrap();
        // Committed before the flush answered: a read sees every write.
        assert_eq!(h.offline_for("bob", 1).await.unwrap().len(), 50);
        for w in writes {
            w.await.unwrap();
        }
        h.flush().await.unwrap();
    }

    #[tokio::test]
    async fn dropping_the_last_handle_finishes_the_queue_and_ends_the_thread() {
        let db = TempDb::new("drop");
        let h = StoreHandle::open(&db.path(), config()).unwrap();
        let exited = h.inner.exited.lock().unwrap().take().unwrap();
        let open = gate(&h);
        let other = h.clone();
        for i in 0..300 {
            // The futures are dropped at once: the writes still happen.
            drop(h.append_room("#r", "u", &i.to_string(), 0, None, i));
        }
        drop(h);
        drop(other);
        drop(open);
        tokio::time::timeout(Duration::from_secs(10), exited)
            .await
            .expect("writer thread ended")
            .expect("ended normally");
        let s = Store::open(&db.path(), config()).unwrap();
        assert_eq!(s.last_room_mid("#r").unwrap(), 300);
        assert_eq!(
            mids(&s.room_history("#r", None, None, 1).unwrap().0),
            vec![300]
        );
    }

    #[tokio::test]
    async fn close_waits_for_the_last_handle_only() {
        let db = TempDb::new("close");
        let h = StoreHandle::open(&db.path(), config()).unwrap();
        let other = h.clone();
        let open = gate(&h);
        for i in 0..20 {
            drop(h.offline_push("bob", "alice", &i.to_string(), 0, None, 1));
        }
        // Another handle is alive: returns at once, though the writer is stopped.
        tokio::time::timeout(Duration::from_secs(5), h.close())
            .await
            .expect("close of a clone returns at once");
        drop(open);
        other.close().await;
        let s = Store::open(&db.path(), config()).unwrap();
        assert_eq!(s.offline_for("bob", 1).unwrap().len(), 20);
    }

    #[tokio::test]
    async fn a_dead_writer_answers_closed() {
        let h = StoreHandle::open(&StorePath::Memory, config()).unwrap();
        let queued = h.last_room_mid("#r");
        let boom = h.call(|_| -> Result<(), StoreError> {
            std::panic::resume_unwind(Box::new("writer dies"))
        });
        assert_eq!(boom.await, Err(StoreError::Closed));
        assert_eq!(
            queued.await,
            Err(StoreError::Closed),
            "same batch, never answered"
        );
        assert_eq!(
            h.append_room("#r", "u", "x", 0, None, 1).await,
            Err(StoreError::Closed)
        );
        assert_eq!(h.flush().await, Err(StoreError::Closed));
        h.close().await;
    }

    #[tokio::test]
    async fn a_transaction_rolled_back_by_sqlite_voids_the_batch_before_it() {
        let h = StoreHandle::open(&StorePath::Memory, config()).unwrap();
        let open = gate(&h);
        let before = h.append_room("#r", "u", "lost", 0, None, 1);
        let failing = h.call(|s| -> Result<(), StoreError> {
            // What SQLite does on some SQLITE_FULL / SQLITE_IOERR: the whole transaction.
            s.conn.execute_batch("ROLLBACK").sql()?;
            Err(StoreError::DiskFull)
        });
        let after = h.append_room("#r", "u", "kept", 0, None, 2);
        drop(open);
        assert_eq!(before.await, Err(StoreError::DiskFull));
        assert_eq!(failing.await, Err(StoreError::DiskFull));
        let kept = after.await.unwrap();
        assert_eq!((kept.mid, kept.content.as_str()), (1, "kept"));
        let (page, _) = h.room_history("#r", None, None, 10).await.unwrap();
        assert_eq!(page, vec![kept]);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_request_of_the_batch() {
        let store = mem(config());
        // A deferred foreign key makes COMMIT itself fail.
        store
            .conn
            .execute_batch(
                "PRAGMA foreign_keys = ON;
                 CREATE TABLE parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
            )
            .unwrap();
        let h = StoreHandle::spawn(store).unwrap();
        let open = gate(&h);
        let write = h.append_room("#r", "u", "x", 0, None, 1);
        let read = h.last_room_mid("#r");
        let poison = h.call(|s| {
            s.conn
                .execute("INSERT INTO child (p) VALUES (42)", [])
                .sql()?;
            Ok(())
        });
        drop(open);
        assert!(matches!(write.await, Err(StoreError::Other(_))));
        assert!(matches!(read.await, Err(StoreError::Other(_))));
        assert!(matches!(poison.await, Err(StoreError::Other(_))));
        // Nothing of it was kept, and the next batch works.
        let m = h.append_room("#r", "u", "y", 0, None, 2).await.unwrap();
        assert_eq!(m.mid, 1);
    }

    const CRASH_ENV: &str = "BEVY_IM_STORE_CRASH_DB";

    /// The child of `acked_writes_survive_kill_9`: writes and reports each ACK until
    /// it is killed.
    #[test]
    #[ignore = "run by acked_writes_survive_kill_9 as a child process"]
    fn crash_child() {
        let Some(path) = std::env::var_os(CRASH_ENV) else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let h = StoreHandle::open(&StorePath::File(path.into()), config()).unwrap();
            for i in 0..i64::MAX {
                let room = h.append_room("#r", "u", &i.to_string(), 0, None, i);
                let off = h.offline_push("bob", "alice", &i.to_string(), 0, None, 1_000);
                let (room, off) = (room.await.unwrap(), off.await.unwrap());
                println!("acked {} {}", room.mid, off.mid);
            }
        });
    }

    #[test]
    fn acked_writes_survive_kill_9() {
        let db = TempDb::new("kill9");
        let exe = std::env::current_exe().unwrap();
        let mut child = std::process::Command::new(exe)
            .args([
                "server::store::tests::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_ENV, &db.0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("acked ") {
                let (r, o) = rest.split_once(' ').unwrap();
                acked.push((r.parse::<i64>().unwrap(), o.parse::<i64>().unwrap()));
                if acked.len() == 300 {
                    child.kill().unwrap(); // SIGKILL, mid-write
                    break;
                }
            }
        }
        child.wait().unwrap();
        assert_eq!(acked.len(), 300, "the child wrote");
        let s = Store::open(&db.path(), config()).unwrap();
        let (last_room, _) = acked[acked.len() - 1];
        assert!(s.last_room_mid("#r").unwrap() >= last_room);
        let (page, _) = s.room_history("#r", None, None, 100).unwrap();
        assert!(page.iter().any(|m| m.mid == last_room));
        let offline: std::collections::HashSet<i64> = s
            .offline_for("bob", 1_000)
            .unwrap()
            .iter()
            .map(|m| m.mid)
            .collect();
        for (_, o) in &acked {
            assert!(offline.contains(o), "acked offline message {o} lost");
        }
    }
}
