//! The embedded default: the lease tables in a SQLite database on this host.
//!
//! Layout: `dlock_lease` holds one row per held lease (key, secret id, token,
//! who, expiry); `dlock_fence` holds the per-key fencing counter, bumped in
//! the same `BEGIN IMMEDIATE` transaction that inserts the lease, so tokens
//! strictly increase. Expired rows are deleted by the next acquirer. Times
//! are the client's clock in milliseconds (there is no server; every
//! process sharing the file is on this host).
//!
//! Shared locks (`--shared`) need no other table: a shared lease is a row
//! with `lim = 0` (an exclusive one has its `--limit`, 1 or more), and a
//! shared waiter's row in `dlock_waiter` has its id prefixed with `s:`, as
//! on the other SQL databases (see [`super`]). `dlock_queue` is the line
//! of waiters (fair queues), created the first time a statement misses it.
//!
//! Waking waiters: a `run` holder also keeps an exclusive `flock` on a small
//! per-key file beside the database; each waiter blocks on an exclusive
//! `flock` of that file. The kernel grants it to one waiter the moment the
//! holder releases or dies; that waiter keeps it while it tries the key and,
//! if it wins, while it holds the key. A hand-over is as prompt as
//! `flock(1)`'s, without polling and without waking every waiter.
//! Where nobody holds that file (the lock was taken by `dlock acquire`, or a
//! semaphore with `--limit` > 1), waiters fall back to a short bounded poll.
//! Shared `run` holders keep a *shared* `flock` on that file, and shared
//! waiters block on a shared `flock`: a writer waiting for readers wakes
//! when the last of them lets go, and every reader waiting for a writer
//! wakes at once when it lets go. A reader giving way to a waiting writer
//! while other readers hold gets its shared `flock` at once and polls.
//!
//! A `run` lease whose process is on this host and gone (SIGKILL, OOM, power
//! cut of a container) is broken at once instead of after its TTL
//! ([`Dialect::dead`]).
//!
//! The transaction, renewal, release, status and waiter rows are the
//! engine's ([`super`]); this dialect is the statements (with the client's
//! clock bound as [`Arg::NowMs`]), the connection (sqlx's own SQLite
//! driver, whose options `Any` cannot pass), the wake files and the
//! doctor's checks.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex as StdMutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::Mutex;

use super::{Ahead, Arg, BREAK_GRACE, Dialect, Local, Names, Plan, SqlBackend, Stmt, fnv64};
use crate::backend::kit;
use crate::backend::probe::{Check, Level};
use crate::backend::{LeaseKind, LockSpec, Owner};
use crate::error::{denied, unavailable, usage};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dlock_lease (
    ns          TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    token       INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    host_id     TEXT    NOT NULL,
    proc_start  INTEGER NOT NULL,
    lim         INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (ns, key, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dlock_fence (
    ns    TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    token INTEGER NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dlock_waiter (
    ns         TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (ns, key, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dlock_queue (
    ns         TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    ticket     INTEGER NOT NULL,
    owner      TEXT    NOT NULL,
    host       TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    host_id    TEXT    NOT NULL,
    proc_start INTEGER NOT NULL,
    lim        INTEGER NOT NULL,
    since      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (ns, key, id)
) WITHOUT ROWID;
";

/// The statements, on the layout above: times are milliseconds of the
/// client's clock, bound as `NowMs`; durations come in microseconds.
fn plan() -> Plan {
    use Arg::*;
    let s = Stmt::new;
    // The holder columns the engine reads, and those `dead` reads.
    let holders = "SELECT id, token, kind, owner, host, pid, host_id, proc_start, lim,
                          acquired_at * 1000 AS acquired_us, (expires_at - ?3) * 1000 AS left_us
                     FROM dlock_lease WHERE ns = ?1 AND key = ?2 AND expires_at > ?3
                    ORDER BY acquired_at";
    let (lease_live, key_now) = (&[Ns, Key, Id, NowMs], &[Ns, Key, NowMs]);
    // The leases and the line in one read; a waiter is a live process
    // (its `kind` is `run`'s, whatever it will hold).
    let line = "SELECT 'l' AS what, id, token, kind, owner, host, pid, host_id, proc_start, lim,
                       acquired_at * 1000 AS acquired_us, (expires_at - ?3) * 1000 AS left_us
                  FROM dlock_lease WHERE ns = ?1 AND key = ?2 AND expires_at > ?3
                UNION ALL
                SELECT 'q', id, ticket, 'run', owner, host, pid, host_id, proc_start, lim,
                       since * 1000, (expires_at - ?3) * 1000
                  FROM dlock_queue WHERE ns = ?1 AND key = ?2 AND expires_at > ?3";
    Plan {
        // The write lock at once: attempts queue on it, and no fence row is
        // needed.
        begin: Some("BEGIN IMMEDIATE"),
        fence: None,
        delete_expired: Some(s(
            "DELETE FROM dlock_lease WHERE ns = ?1 AND key = ?2 AND expires_at <= ?3".into(),
            key_now,
        )),
        holders: s(holders.into(), key_now),
        holders_locked: s(holders.into(), key_now),
        bump: Some(s(
            "INSERT INTO dlock_fence (ns, key, token) VALUES (?1, ?2, 1)
             ON CONFLICT (ns, key) DO UPDATE SET token = token + 1 RETURNING token"
                .into(),
            &[Ns, Key],
        )),
        insert: s(
            "INSERT INTO dlock_lease (ns, key, id, token, kind, owner, host, pid, host_id,
                                      proc_start, lim, acquired_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12 + ?13 / 1000)"
                .into(),
            &[
                Ns, Key, Id, Token, Kind, Owner, Host, Pid, HostId, ProcStart, Lim, NowMs, TtlUs,
            ],
        ),
        insert_leaving: None,
        break_lease: Some(s(
            format!(
                "UPDATE dlock_lease SET expires_at = ?4 + {}
                  WHERE ns = ?1 AND key = ?2 AND id = ?3",
                BREAK_GRACE.as_millis()
            ),
            lease_live,
        )),
        exclusive_waiters: s(
            "SELECT COUNT(*) FROM dlock_waiter
              WHERE ns = ?1 AND key = ?2 AND expires_at > ?3 AND id NOT LIKE ?4"
                .into(),
            &[Ns, Key, NowMs, Like],
        ),
        line: s(line.into(), key_now),
        line_locked: s(line.into(), key_now),
        enqueue: s(
            "INSERT INTO dlock_queue (ns, key, id, ticket, owner, host, pid, host_id, proc_start,
                                      lim, since, expires_at)
             SELECT ?1, ?2, ?3, coalesce(max(ticket), 0) + 1, ?4, ?5, ?6, ?7, ?8, ?9,
                    ?11, ?11 + ?10 / 1000
               FROM dlock_queue WHERE ns = ?1 AND key = ?2
             ON CONFLICT (ns, key, id) DO UPDATE
                SET ticket = excluded.ticket, lim = excluded.lim, since = excluded.since,
                    expires_at = excluded.expires_at"
                .into(),
            &[
                Ns, Key, Id, Owner, Host, Pid, HostId, ProcStart, Lim, LapseUs, NowMs,
            ],
        ),
        join: None,
        join_waiting: None,
        lapsed_queue: s(
            "DELETE FROM dlock_queue WHERE ns = ?1 AND key = ?2 AND expires_at <= ?3".into(),
            key_now,
        ),
        dequeue: s(
            "DELETE FROM dlock_queue WHERE ns = ?1 AND key = ?2 AND id = ?3".into(),
            &[Ns, Key, Id],
        ),
        renew_queue: s(
            "UPDATE dlock_queue SET expires_at = ?5 + ?1 / 1000
              WHERE ns = ?2 AND key = ?3 AND id = ?4"
                .into(),
            &[LapseUs, Ns, Key, Id, NowMs],
        ),
        foreign_writers: s(
            "SELECT COUNT(*) FROM dlock_waiter w
              WHERE w.ns = ?1 AND w.key = ?2 AND w.expires_at > ?3 AND w.id NOT LIKE ?4
                AND NOT EXISTS (SELECT 1 FROM dlock_queue q
                                 WHERE q.ns = w.ns AND q.key = w.key AND q.id = w.id)"
                .into(),
            &[Ns, Key, NowMs, Like],
        ),
        delete_waiter: s(
            "DELETE FROM dlock_waiter WHERE ns = ?1 AND key = ?2 AND id = ?3".into(),
            &[Ns, Key, Id],
        ),
        upsert_waiter: s(
            "INSERT INTO dlock_waiter (ns, key, id, expires_at) VALUES (?1, ?2, ?3, ?4 + ?5 / 1000)
             ON CONFLICT (ns, key, id) DO UPDATE SET expires_at = excluded.expires_at"
                .into(),
            &[Ns, Key, Id, NowMs, LapseUs],
        ),
        stale_waiters: s(
            "DELETE FROM dlock_waiter WHERE ns = ?1 AND key = ?2 AND expires_at < ?3 - 60000"
                .into(),
            key_now,
        ),
        renew: s(
            "UPDATE dlock_lease SET expires_at = ?4 + ?5 / 1000, kind = coalesce(?6, kind)
              WHERE ns = ?1 AND key = ?2 AND id = ?3 AND expires_at > ?4"
                .into(),
            &[Ns, Key, Id, NowMs, TtlUs, Kind],
        ),
        // Our row goes even when it has expired; whether it was live is
        // the answer.
        release: s(
            "DELETE FROM dlock_lease WHERE ns = ?1 AND key = ?2 AND id = ?3
             RETURNING expires_at > ?4"
                .into(),
            lease_live,
        ),
        release_waking: None,
        // `renew` marks a kept lease a handle's.
        disown: None,
        force: s(
            "DELETE FROM dlock_lease WHERE ns = ?1 AND key = ?2 AND expires_at > ?3".into(),
            key_now,
        ),
        held_keys: s(
            "SELECT DISTINCT key FROM dlock_lease WHERE ns = ?1 AND expires_at > ?2 ORDER BY key"
                .into(),
            &[Ns, NowMs],
        ),
        waiter_counts: s(
            "SELECT key, COUNT(*) FROM dlock_waiter WHERE ns = ?1 AND expires_at > ?2 GROUP BY key"
                .into(),
            &[Ns, NowMs],
        ),
        version: s("SELECT sqlite_version()".into(), &[]),
        clock_us: None,
        spelling: None,
    }
}

struct Sqlite {
    path: PathBuf,
    host_id: String,
    /// Exclusive flocks on the wake files of the keys we hold, by (ns, key).
    held: StdMutex<HashMap<PathBuf, File>>,
    /// In-flight waits on a wake file, so a long wait never piles up threads.
    waits: StdMutex<HashMap<PathBuf, Waiter>>,
    /// Wake files whose exclusive lock a waiting thread was just granted: the
    /// next attempt keeps it if it wins the key, so one release wakes one
    /// waiter, not all of them.
    granted: StdMutex<HashMap<PathBuf, File>>,
    /// Wake files of keys we hold whose lock a thread is still waiting for
    /// (a waiter had it for an instant when we took the key).
    pending: StdMutex<HashMap<PathBuf, Pending>>,
    /// The line, key by key (by wake file): the id of the waiter just ahead
    /// of us (none: we are first), and our own line file, locked while we
    /// are in line, which the waiter behind us blocks on. So a release
    /// wakes the first in line only (through the wake file), and the first
    /// in line taking the key wakes the next (through its line file), who
    /// then blocks on the wake file in turn: with fair queues, waking any
    /// other waiter would be for nothing.
    before: StdMutex<HashMap<PathBuf, Option<String>>>,
    mine: StdMutex<HashMap<PathBuf, (PathBuf, File)>>,
    poll: kit::PollBackoff,
}

/// `sqlite:PATH`, `sqlite://PATH` or `sqlite:///ABSOLUTE`.
fn parse_path(url: &str) -> Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite:")
        .or_else(|| url.strip_prefix("SQLITE:"))
        .unwrap_or(url);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let rest = rest.split('?').next().unwrap_or_default();
    if rest.is_empty() {
        return Err(usage(format!(
            "backend URL {url:?} names no database file: use sqlite:PATH"
        )));
    }
    if rest == ":memory:" {
        return Err(usage(
            "sqlite::memory: cannot be shared between processes; give a file path",
        ));
    }
    Ok(PathBuf::from(rest))
}

fn is_busy(e: &sqlx::Error) -> bool {
    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
    matches!(e, sqlx::Error::Database(d)
        if d.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6)))
}

/// Open (and create) the database at `url`'s path, with its tables.
pub async fn connect(url: &str, timeout: Duration) -> Result<SqlBackend<Local>> {
    let path = parse_path(url)?;
    // Only the default location's directories are created (in config):
    // a mistyped directory would otherwise be a private lock that
    // excludes nothing. No retry can create it: said at once.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(denied(format!(
            "cannot open SQLite database {}: the directory {} does not exist; dlock creates \
             only the default location's directories, so that a mistyped path does not \
             become a private lock that excludes nothing: create it, or fix the path",
            path.display(),
            dir.display()
        )));
    }
    files::prepare(&path)?;
    // As sqlx's options put them: WAL; no foreign keys (none are declared).
    // A process that opens the file alone replays the WAL (about 2 us a
    // page), and a checkpoint costs three fsyncs (a few ms on a VM's disk);
    // a run writes 3 pages. At 16 pages one run in five paid for a
    // checkpoint; at 64, one in twenty, and the replay stays short; it is
    // made after a release, not by the commit that takes a key
    // (`Direct::checkpoint_if_due`). WAL +
    // NORMAL: a commit is durable against a crash of dlock, not against
    // power loss, which a lock does not need to survive.
    const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = OFF; \
                           PRAGMA synchronous = NORMAL;";
    let fail = |e: &dyn std::fmt::Display| {
        unavailable(format!(
            "cannot open SQLite database {}: {e}",
            path.display()
        ))
    };
    // Opening races with other processes switching a new file to WAL or
    // replaying its WAL, which SQLite answers with SQLITE_BUSY at once
    // rather than through the busy handler: retry within the timeout.
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let conn = loop {
        // The tables are created when a statement first misses one.
        // On this thread: a local file's open and pragmas take microseconds
        // (a statement blocks it as long).
        match super::direct::Direct::open(&path, PRAGMAS, SCHEMA, timeout) {
            Ok(c) => break c,
            Err(e) if is_busy(&e) && Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(fail(&e)),
        }
    };
    let shown = format!("sqlite:{}", path.display());
    let d = Sqlite {
        path,
        host_id: crate::host::host_id(),
        held: StdMutex::new(HashMap::new()),
        waits: StdMutex::new(HashMap::new()),
        granted: StdMutex::new(HashMap::new()),
        pending: StdMutex::new(HashMap::new()),
        before: StdMutex::new(HashMap::new()),
        mine: StdMutex::new(HashMap::new()),
        poll: kit::PollBackoff::default(),
    };
    let t = Names {
        fair: true,
        lease: "dlock_lease".into(),
        fence: "dlock_fence".into(),
        waiter: "dlock_waiter".into(),
        queue: "dlock_queue".into(),
        prefix: "dlock".into(),
    };
    let link = Local(Mutex::new(conn));
    let mut b = SqlBackend::new(shown, link, timeout, t, plan(), Box::new(d));
    b.waiter_table = true;
    b.queue_table = true;
    Ok(b)
}

#[async_trait]
impl Dialect<Local> for Sqlite {
    fn service(&self) -> &'static str {
        "SQLite"
    }

    fn product(&self, _version: &str) -> &'static str {
        "sqlite"
    }

    fn detail(&self) -> Option<String> {
        Some(self.path.display().to_string())
    }

    /// Its rows keep the owner's bare secret: liveness has columns here.
    fn row_id(&self, me: &Owner) -> String {
        me.id.clone()
    }

    /// A `run` holder on this host whose process is gone.
    fn dead(&self, r: &AnyRow) -> bool {
        let field = |c: &str| r.try_get::<String, _>(c).unwrap_or_default();
        let num = |c: &str| r.try_get::<i64, _>(c).unwrap_or_default();
        field("kind") == LeaseKind::Run.as_str()
            && field("host_id") == self.host_id
            && !crate::host::process_alive(num("pid") as u32, num("proc_start") as u64)
    }

    /// A `run` of one slot that can lock the key's wake file at once (as it
    /// will hold it while it holds the key) is first in line: nobody holds
    /// the key for a `run` or is taking it, so it needs no read before its
    /// transaction, and from its commit on, waiters already block on the
    /// file. When the file is locked, the read decides as before (its
    /// holder may be frozen with its lease expired, or a reader gone).
    fn first_in_line(&self, spec: &LockSpec, kind: LeaseKind) -> bool {
        if kind != LeaseKind::Run || !(spec.limit == 1 || spec.shared) {
            return false;
        }
        let path = self.wake_path(&spec.namespace, &spec.key);
        // A waiter with another ahead of it is not first: leave the wake
        // file to that one.
        if matches!(self.before.lock().unwrap().get(&path), Some(Some(_))) {
            return false;
        }
        if self.granted.lock().unwrap().contains_key(&path)
            || self.held.lock().unwrap().contains_key(&path)
        {
            return true;
        }
        let Ok(f) = self.open_wake(&spec.namespace, &spec.key) else {
            return false;
        };
        let op = if spec.shared {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        let first = flock(&f, op | libc::LOCK_NB).is_ok();
        if first {
            self.granted.lock().unwrap().insert(path, f);
        }
        first
    }

    async fn taken(&self, spec: &LockSpec, kind: LeaseKind) {
        self.poll.reset();
        if kind == LeaseKind::Run && (spec.limit == 1 || spec.shared) {
            self.hold_wake(spec).await;
        } else {
            self.missed(spec, 0, None).await;
        }
        // Holding the wake file now (a `run`), we wake the next in line,
        // who blocks on it until we let go.
        self.leave_line(&self.wake_path(&spec.namespace, &spec.key));
    }

    /// Not admitted: pass the wake-up on, and keep our place's line file.
    async fn missed(&self, spec: &LockSpec, _ahead: usize, place: Option<(&str, Option<&str>)>) {
        let path = self.wake_path(&spec.namespace, &spec.key);
        self.granted.lock().unwrap().remove(&path);
        let Some((me, before)) = place.filter(|_| Self::chained(spec)) else {
            self.before.lock().unwrap().remove(&path);
            return;
        };
        self.before
            .lock()
            .unwrap()
            .insert(path.clone(), before.map(str::to_string));
        if self.mine.lock().unwrap().contains_key(&path) {
            return;
        }
        let mine = Self::line_path(&path, me);
        // Exclusive while we are in line; a waiter behind us that holds it
        // shared for an instant makes us try again at the next attempt.
        if let Some(f) = self.lock_line(&mine) {
            self.mine.lock().unwrap().insert(path, (mine, f));
        }
    }

    async fn freed(&self, e: &SqlBackend<Local>, ns: &str, key: &str) {
        let path = self.wake_path(ns, key);
        self.leave_line(&path);
        self.held.lock().unwrap().remove(&path);
        if let Some(p) = self.pending.lock().unwrap().remove(&path) {
            p.abandoned.store(true, Ordering::SeqCst);
            drop(p.slot.lock().unwrap().take());
        }
        self.sweep_line(&path);
        // The next in line is awake: the WAL's checkpoint, if due, delays
        // nobody now.
        e.pool.0.lock().await.checkpoint_if_due();
    }

    async fn wait(&self, spec: &LockSpec, bound: Instant, ahead: Ahead<'_>) {
        if let Some(a) = ahead {
            a.await;
        }
        // The flock only tells about `run` holders of one slot.
        if spec.limit > 1 {
            return self.poll(bound).await;
        }
        // Behind another waiter: wait for it to go (its line file).
        let wake = self.wake_path(&spec.namespace, &spec.key);
        let before = self.before.lock().unwrap().get(&wake).cloned().flatten();
        let waited = match before.filter(|_| Self::chained(spec)) {
            Some(b) => {
                self.wait_file(Self::line_path(&wake, &b), libc::LOCK_SH, bound, false)
                    .await
            }
            None => self.wait_wake(spec, bound).await,
        };
        if let Err(e) = waited {
            tracing::debug!(key = spec.key, "{e:#}; polling");
            self.poll(bound).await;
        }
    }

    async fn doctor(&self, _e: &SqlBackend<Local>) -> Vec<Check> {
        let path = &self.path;
        let per_user = crate::config::default_sqlite_path().is_some_and(|d| d == *path);
        let scope = if per_user {
            format!(
                "this is your own default database ({}): it excludes your processes on this host \
                 only; another user's dlock uses another file and does not see these locks",
                path.display()
            )
        } else {
            format!(
                "the embedded backend excludes processes on this host that use {}; whoever may \
                 write that file may also break the locks in it",
                path.display()
            )
        };
        let mut out = vec![Check::new(Level::Info, "scope", scope).fix(
            "to lock across users, give them all one --backend sqlite:PATH they can write (any of \
             them can then break the others' locks); across machines, use a server backend \
             (redis://, zk://, postgres://, mysql://, etcd://)",
        )];
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        out.push(match filesystem_of(dir) {
            Some((name, true)) => Check::new(
                Level::Fail,
                "filesystem",
                format!(
                    "{} is on a network filesystem ({name}): SQLite's and flock's locks are not reliable there, and several hosts sharing the file do not exclude each other",
                    path.display()
                ),
            )
            .fix("keep the database on a local disk (the default under ~/.local/state), and use a server backend across hosts"),
            Some((name, false)) => Check::ok("filesystem", format!("{} is on a local filesystem ({name})", path.display())),
            None => Check::new(Level::Warn, "filesystem", format!("cannot tell the filesystem of {}", dir.display())),
        });
        out
    }
}
/// The filesystem type of `dir`, and whether it is a network filesystem.
fn filesystem_of(dir: &Path) -> Option<(&'static str, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the struct we pass from a NUL-terminated path.
    let magic = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        st.f_type as u64
    };
    Some(match magic {
        0x6969 => ("nfs", true),
        0xFF53_4D42 => ("cifs", true),
        0xFE53_4D42 => ("smb2", true),
        0x517B => ("smb", true),
        0x0102_1997 => ("9p", true),
        0x00C3_6400 => ("ceph", true),
        0x6573_5546 => ("fuse", true),
        0x0BD0_0BD0 => ("lustre", true),
        0x4750_4653 => ("gpfs", true),
        0xEF53 => ("ext4", false),
        0x5846_5342 => ("xfs", false),
        0x9123_683E => ("btrfs", false),
        0x0102_1994 => ("tmpfs", false),
        0x794C_7630 => ("overlayfs", false),
        0x2FC1_2FC1 => ("zfs", false),
        0xF2F5_2010 => ("f2fs", false),
        _ => ("other local", false),
    })
}

mod files;
mod wake;

use wake::{Pending, Waiter, flock};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("sqlite:/a/b.db").unwrap(),
            PathBuf::from("/a/b.db")
        );
        assert_eq!(
            parse_path("sqlite:///a/b.db").unwrap(),
            PathBuf::from("/a/b.db")
        );
        assert_eq!(
            parse_path("sqlite:rel.db").unwrap(),
            PathBuf::from("rel.db")
        );
        assert!(parse_path("sqlite:").is_err());
        assert!(parse_path("sqlite::memory:").is_err());
    }
}
