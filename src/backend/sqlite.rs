//! The embedded default: a lease table in a SQLite database on this host.
//!
//! Layout: `dlock_lease` holds one row per held lease (key, secret id, token,
//! who, expiry); `dlock_fence` holds the per-key fencing counter, bumped in
//! the same `BEGIN IMMEDIATE` transaction that inserts the lease, so tokens
//! strictly increase. Expired rows are deleted by the next acquirer.
//!
//! Shared locks (`--shared`) need no other table: a shared lease is a row
//! with `lim = 0` (an exclusive one has its `--limit`, 1 or more), and a
//! shared waiter's row in `dlock_waiter` has its id prefixed with `s:`. The
//! admission rule is [`kit::admits`]: a shared request enters when no live
//! lease is exclusive and no exclusive waiter row is live, so once a writer
//! waits, later readers wait behind it; an exclusive request reads only the
//! leases, as before.
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
//! cut of a container) is broken at once instead of after its TTL.
//!
//! The steps are those of the SQL engine ([`super::sql`]), whose pieces for
//! the lease and waiter rows, admission and status this module uses; the
//! transaction is its own, over sqlx's SQLite driver rather than `Any`
//! (see there for what differs).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{Mutex, watch};

use super::kit;
use super::sql::{
    SHARED_WAITER_LIKE, WAITER_LAPSE, WaiterRows, ahead, fnv64, key_status, lease_holder, lim_of,
    waiters_of,
};
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Poll, Renewal,
};
use crate::backend::probe::{Check, Level};
use crate::error::{unavailable, usage};

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
";

const LEASE_COLUMNS: &str =
    "id, token, kind, owner, host, pid, host_id, proc_start, lim, acquired_at, expires_at";

/// The shortest and longest pause of the fallback poll.
/// How soon the lease of a holder found dead on this host is broken.
const BREAK_GRACE: Duration = Duration::from_millis(100);

pub struct SqliteBackend {
    path: PathBuf,
    conn: Mutex<SqliteConnection>,
    host_id: String,
    /// Exclusive flocks on the wake files of the keys we hold, by (ns, key).
    held: StdMutex<HashMap<PathBuf, File>>,
    /// In-flight waits on a wake file, so a long wait never piles up threads.
    waits: StdMutex<HashMap<PathBuf, Waiter>>,
    /// Wake files whose exclusive lock a waiting thread was just granted: the
    /// next attempt keeps it if it wins the key, so one release wakes one
    /// waiter, not all of them.
    granted: StdMutex<HashMap<PathBuf, File>>,
    poll: kit::PollBackoff,
    /// Our rows in dlock_waiter, for `status` and for readers to give way.
    waiting: WaiterRows,
}

/// A thread blocked in `flock(LOCK_EX)` on a wake file.
struct Waiter {
    done: watch::Receiver<bool>,
    /// The file, exclusively locked, once the lock was granted.
    slot: Arc<StdMutex<Option<File>>>,
    /// Set when nobody wants the grant any more: the thread unlocks at once.
    abandoned: Arc<AtomicBool>,
}

struct Row_ {
    id: String,
    kind: String,
    host_id: String,
    proc_start: u64,
    /// The `lim` column: the `--limit` it was taken with, 0 if shared.
    lim: i64,
    expires_at: i64,
    holder: Holder,
}

fn parse_row(r: &SqliteRow) -> Result<Row_> {
    let proc_start: i64 = r.try_get("proc_start")?;
    let expires_at: i64 = r.try_get("expires_at")?;
    let acquired_at = from_ms(r.try_get("acquired_at")?);
    let (holder, lim) = lease_holder(r, acquired_at, from_ms(expires_at))?;
    Ok(Row_ {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        host_id: r.try_get("host_id")?,
        proc_start: proc_start as u64,
        lim,
        expires_at,
        holder,
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
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

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl SqliteBackend {
    pub async fn connect(url: &str, timeout: Duration) -> Result<SqliteBackend> {
        let path = parse_path(url)?;
        // Only the default location's directories are created (in config):
        // a mistyped directory would otherwise be a private lock that
        // excludes nothing.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(unavailable(format!(
                "cannot open SQLite database {}: the directory {} does not exist; dlock creates \
                 only the default location's directories, so that a mistyped path does not \
                 become a private lock that excludes nothing: create it, or fix the path",
                path.display(),
                dir.display()
            )));
        }
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Keep the WAL short: a process that opens the file alone replays
            // it, and that replay is most of the cost of a short `dlock run`.
            .pragma("wal_autocheckpoint", "16")
            // WAL + NORMAL: a commit is durable against a crash of dlock,
            // not against power loss, which a lock does not need to survive.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(timeout)
            .foreign_keys(false);
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
            let attempt = async {
                let mut c = SqliteConnection::connect_with(&opts).await?;
                sqlx::raw_sql(SCHEMA).execute(&mut c).await?;
                Ok::<_, sqlx::Error>(c)
            };
            match tokio::time::timeout_at(deadline.into(), attempt).await {
                Err(_) => return Err(fail(&"timed out")),
                Ok(Ok(c)) => break c,
                Ok(Err(e)) if is_busy(&e) && Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Ok(Err(e)) => return Err(fail(&e)),
            }
        };
        Ok(SqliteBackend {
            path,
            conn: Mutex::new(conn),
            host_id: crate::host::host_id(),
            held: StdMutex::new(HashMap::new()),
            waits: StdMutex::new(HashMap::new()),
            granted: StdMutex::new(HashMap::new()),
            poll: kit::PollBackoff::default(),
            waiting: WaiterRows::default(),
        })
    }

    fn wake_path(&self, ns: &str, key: &str) -> PathBuf {
        let mut dir = self.path.clone().into_os_string();
        dir.push(".wait");
        Path::new(&dir).join(format!("{:016x}", fnv64(&[ns, key])))
    }

    fn open_wake(&self, ns: &str, key: &str) -> Result<File> {
        let p = self.wake_path(ns, key);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .with_context(|| format!("cannot open {}", p.display()))
    }

    /// Hold the exclusive lock on the key's wake file while we hold the key
    /// (with `--limit 1`), so the one waiter the kernel picks wakes when we
    /// let go (or die); a shared lock if we hold the key shared, so that a
    /// writer waiting wakes when the last reader lets go. If we were woken
    /// as a waiter, we hold it already (in the same mode).
    async fn hold_wake(&self, spec: &LockSpec) {
        let path = self.wake_path(&spec.namespace, &spec.key);
        if let Some(w) = self.waits.lock().unwrap().remove(&path) {
            w.abandoned.store(true, Ordering::SeqCst);
            if let Some(f) = w.slot.lock().unwrap().take() {
                drop(f);
            }
        }
        if let Some(f) = self.granted.lock().unwrap().remove(&path) {
            self.held.lock().unwrap().insert(path, f);
            return;
        }
        let Ok(f) = self.open_wake(&spec.namespace, &spec.key) else {
            return;
        };
        // A waiter holds the lock only for the instant it tries and fails.
        let op = if spec.shared {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        for _ in 0..200 {
            if flock(&f, op | libc::LOCK_NB).is_ok() {
                self.held.lock().unwrap().insert(path, f);
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tracing::debug!(
            key = spec.key,
            "could not take the wake file; waiters will poll"
        );
    }

    fn drop_wake(&self, ns: &str, key: &str) {
        let path = self.wake_path(ns, key);
        self.held.lock().unwrap().remove(&path);
    }

    async fn rows(&self, conn: &mut SqliteConnection, ns: &str, key: &str) -> Result<Vec<Row_>> {
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM dlock_lease WHERE ns = ?1 AND key = ?2 ORDER BY acquired_at"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ns)
            .bind(key)
            .fetch_all(conn)
            .await?
            .iter()
            .map(parse_row)
            .collect()
    }

    async fn conn(&self) -> Result<tokio::sync::MutexGuard<'_, SqliteConnection>> {
        Ok(self.conn.lock().await)
    }

    /// One attempt; when busy only because of dead holders whose leases are
    /// being broken, also when they will be gone.
    async fn try_once(&self, spec: &LockSpec, me: &Owner) -> Result<(Attempt, Option<Instant>)> {
        let granted_at = Instant::now();
        let mut conn = self.conn().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let (rows, expired): (Vec<_>, Vec<_>) = self
            .rows(&mut tx, &spec.namespace, &spec.key)
            .await?
            .into_iter()
            .partition(|r| r.expires_at > now);
        if !expired.is_empty() {
            sqlx::query("DELETE FROM dlock_lease WHERE ns = ?1 AND key = ?2 AND expires_at <= ?3")
                .bind(&spec.namespace)
                .bind(&spec.key)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let mode = spec.mode();
        // A shared request also gives way to the writers waiting.
        let writers: i64 = if spec.shared {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM dlock_waiter \
                 WHERE ns = ?1 AND key = ?2 AND expires_at > ?3 AND id NOT LIKE ?4",
            )
            .bind(&spec.namespace)
            .bind(&spec.key)
            .bind(now)
            .bind(SHARED_WAITER_LIKE)
            .fetch_one(&mut *tx)
            .await?
        } else {
            0
        };
        if !kit::admits(mode, &ahead(rows.iter().map(|r| r.lim), writers)) {
            // A `run` holder on this host whose process is gone: its lease
            // ends BREAK_GRACE from now instead of at its TTL. The grace lets
            // the dead holder's guard finish killing the job's process group.
            let soon = now + ms(BREAK_GRACE);
            let mut rows = rows;
            let mut dying = 0;
            let mut gone_at = now;
            for r in &mut rows {
                r.holder.dead = self.is_dead(r);
                if !r.holder.dead {
                    continue;
                }
                dying += 1;
                gone_at = gone_at.max(r.expires_at.min(soon));
                if r.expires_at > soon {
                    tracing::info!(
                        key = spec.key,
                        pid = r.holder.pid,
                        "the holder's process is gone: breaking its lease"
                    );
                    sqlx::query("UPDATE dlock_lease SET expires_at = ?1 WHERE ns = ?2 AND key = ?3 AND id = ?4")
                        .bind(soon)
                        .bind(&spec.namespace)
                        .bind(&spec.key)
                        .bind(&r.id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            // Lost the race: pass the wake-up on to the next waiter.
            self.granted
                .lock()
                .unwrap()
                .remove(&self.wake_path(&spec.namespace, &spec.key));
            // Busy only because of holders that are dead: say when they
            // will be gone, so the caller can try again then.
            let alive = ahead(
                rows.iter().filter(|r| !r.holder.dead).map(|r| r.lim),
                writers,
            );
            let free_at = (dying > 0 && kit::admits(mode, &alive))
                .then(|| Instant::now() + Duration::from_millis((gone_at - now).max(0) as u64 + 5));
            let holders = rows.into_iter().map(|r| r.holder).collect();
            return Ok((Attempt::Busy(holders), free_at));
        }
        let token: i64 = sqlx::query_scalar(
            "INSERT INTO dlock_fence (ns, key, token) VALUES (?1, ?2, 1) \
             ON CONFLICT (ns, key) DO UPDATE SET token = token + 1 RETURNING token",
        )
        .bind(&spec.namespace)
        .bind(&spec.key)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO dlock_lease (ns, key, id, token, kind, owner, host, pid, host_id, proc_start, lim, acquired_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .bind(&spec.namespace)
        .bind(&spec.key)
        .bind(&me.id)
        .bind(token)
        .bind(me.kind.as_str())
        .bind(&me.user)
        .bind(&me.host)
        .bind(i64::from(me.pid))
        .bind(&me.host_id)
        .bind(me.proc_start as i64)
        .bind(i64::from(lim_of(spec)))
        .bind(now)
        .bind(now.saturating_add(ms(spec.ttl)))
        .execute(&mut *tx)
        .await?;
        // No longer a waiter, in the same transaction.
        if let Some(id) = self.waiting.ours(spec) {
            sqlx::query("DELETE FROM dlock_waiter WHERE ns = ?1 AND key = ?2 AND id = ?3")
                .bind(&spec.namespace)
                .bind(&spec.key)
                .bind(id.as_ref())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        drop(conn);
        self.waiting.done(&spec.namespace, &spec.key);
        self.poll.reset();
        if me.kind == LeaseKind::Run && (spec.limit == 1 || spec.shared) {
            self.hold_wake(spec).await;
        } else {
            self.granted
                .lock()
                .unwrap()
                .remove(&self.wake_path(&spec.namespace, &spec.key));
        }
        let lease = Lease {
            namespace: spec.namespace.clone(),
            key: spec.key.clone(),
            token: token as u64,
            id: me.id.clone(),
            ttl: spec.ttl,
            granted_at,
            shared: spec.shared,
        };
        Ok((Attempt::Acquired(lease), None))
    }

    /// Extend our lease to `ttl` from now if it is still live (and mark it
    /// as of `kind`, if given); whether it was.
    async fn extend(&self, lease: &Lease, ttl: Duration, kind: Option<LeaseKind>) -> Result<bool> {
        let mut conn = self.conn().await?;
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE dlock_lease SET expires_at = ?1, kind = coalesce(?2, kind) \
             WHERE ns = ?3 AND key = ?4 AND id = ?5 AND expires_at > ?6",
        )
        .bind(now.saturating_add(ms(ttl)))
        .bind(kind.map(LeaseKind::as_str))
        .bind(&lease.namespace)
        .bind(&lease.key)
        .bind(&lease.id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A `run` holder on this host whose process is gone.
    fn is_dead(&self, r: &Row_) -> bool {
        r.kind == LeaseKind::Run.as_str()
            && r.host_id == self.host_id
            && !crate::host::process_alive(r.holder.pid.unwrap_or(0), r.proc_start)
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn poller(&self) -> Option<&dyn Poll> {
        Some(self)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        Ok(if self.extend(lease, ttl, None).await? {
            Renewal::Renewed
        } else {
            Renewal::Lost
        })
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let mut conn = self.conn().await?;
        let expires: Option<i64> = sqlx::query_scalar(
            "DELETE FROM dlock_lease WHERE ns = ?1 AND key = ?2 AND id = ?3 RETURNING expires_at",
        )
        .bind(&lease.namespace)
        .bind(&lease.key)
        .bind(&lease.id)
        .fetch_optional(&mut *conn)
        .await?;
        drop(conn);
        self.drop_wake(&lease.namespace, &lease.key);
        Ok(expires.is_some_and(|e| e > now_ms()))
    }

    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        // The lease outlives this process now: mark it so that nobody breaks
        // it early for its process being gone.
        let kept = self
            .extend(lease, remaining, Some(LeaseKind::Handle))
            .await?;
        self.drop_wake(&lease.namespace, &lease.key);
        Ok(kept)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let mut conn = self.conn().await?;
        let r =
            sqlx::query("DELETE FROM dlock_lease WHERE ns = ?1 AND key = ?2 AND expires_at > ?3")
                .bind(namespace)
                .bind(key)
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
        Ok(r.rows_affected())
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let mut conn = self.conn().await?;
        let now = now_ms();
        let sql = format!(
            "SELECT key, {LEASE_COLUMNS} FROM dlock_lease WHERE ns = ?1 AND expires_at > ?2 ORDER BY key, acquired_at"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(namespace)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT key, COUNT(*) FROM dlock_waiter WHERE ns = ?1 AND expires_at > ?2 GROUP BY key",
        )
        .bind(namespace)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        let counts = Some(counts);
        // The keys asked for (held or not), or every held key; in order.
        let mut by_key: std::collections::BTreeMap<String, Vec<Row_>> =
            keys.iter().map(|k| (k.clone(), Vec::new())).collect();
        for r in &rows {
            let key: String = r.try_get("key")?;
            if !keys.is_empty() && !by_key.contains_key(&key) {
                continue;
            }
            let mut row = parse_row(r)?;
            row.holder.dead = self.is_dead(&row);
            by_key.entry(key).or_default().push(row);
        }
        by_key
            .into_iter()
            .map(|(k, rows)| {
                let w = waiters_of(&counts, &k);
                key_status(k, &rows, w, |r| Ok((r.holder.clone(), r.lim)))
            })
            .collect()
    }

    async fn ping(&self) -> Result<PingInfo> {
        let mut conn = self.conn().await?;
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut *conn)
            .await?;
        Ok(PingInfo {
            kind: "sqlite",
            version,
            detail: self.path.display().to_string(),
        })
    }

    fn shares(&self) -> bool {
        true
    }

    async fn close(&self) {
        let (id, _, rows) = self.waiting.clear();
        if !rows.is_empty()
            && let Ok(mut conn) = self.conn().await
        {
            for (ns, key) in rows {
                let _ =
                    sqlx::query("DELETE FROM dlock_waiter WHERE ns = ?1 AND key = ?2 AND id = ?3")
                        .bind(&ns)
                        .bind(&key)
                        .bind(id.as_ref())
                        .execute(&mut *conn)
                        .await;
            }
        }
    }

    async fn doctor(&self, _ttl: Duration, _timeout: Duration) -> Vec<Check> {
        let per_user = crate::config::default_sqlite_path().is_some_and(|d| d == self.path);
        let scope = if per_user {
            format!(
                "this is your own default database ({}): it excludes your processes on this host \
                 only; another user's dlock uses another file and does not see these locks",
                self.path.display()
            )
        } else {
            format!(
                "the embedded backend excludes processes on this host that use {}; whoever may \
                 write that file may also break the locks in it",
                self.path.display()
            )
        };
        let mut out = vec![Check::new(Level::Info, "scope", scope).fix(
            "to lock across users, give them all one --backend sqlite:PATH they can write (any of \
             them can then break the others' locks); across machines, use a server backend \
             (redis://, zk://, postgres://, mysql://, etcd://)",
        )];
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        out.push(match filesystem_of(dir) {
            Some((name, true)) => Check::new(
                Level::Fail,
                "filesystem",
                format!(
                    "{} is on a network filesystem ({name}): SQLite's and flock's locks are not reliable there, and several hosts sharing the file do not exclude each other",
                    self.path.display()
                ),
            )
            .fix("keep the database on a local disk (the default under ~/.local/state), and use a server backend across hosts"),
            Some((name, false)) => Check::ok("filesystem", format!("{} is on a local filesystem ({name})", self.path.display())),
            None => Check::new(Level::Warn, "filesystem", format!("cannot tell the filesystem of {}", dir.display())),
        });
        out
    }
}

#[async_trait]
impl Poll for SqliteBackend {
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner) -> Result<Attempt> {
        // A dead holder's lease ends BREAK_GRACE after it is found dead; the
        // attempt that finds it waits that out and tries once more, so the
        // first contender after a crash gets the lock (`run -n` included).
        let mut retried = false;
        loop {
            match self.try_once(spec, me).await? {
                (Attempt::Busy(_), Some(free_at)) if !retried => {
                    retried = true;
                    tokio::time::sleep_until(free_at.into()).await;
                }
                (attempt, _) => return Ok(attempt),
            }
        }
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        // Counted as a waiter for `status`, and, if exclusive, seen by later
        // readers, who give way to it; best effort.
        if let Some(id) = self.waiting.due(spec) {
            let mut conn = self.conn().await?;
            let r = sqlx::query(
                "INSERT INTO dlock_waiter (ns, key, id, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (ns, key, id) DO UPDATE SET expires_at = excluded.expires_at",
            )
            .bind(&spec.namespace)
            .bind(&spec.key)
            .bind(id.as_ref())
            .bind(now_ms() + ms(WAITER_LAPSE))
            .execute(&mut *conn)
            .await;
            if r.is_ok() && self.waiting.written(&spec.namespace, &spec.key) {
                // Rows of waiters that died long ago: once per key and process.
                let _ = sqlx::query(
                    "DELETE FROM dlock_waiter WHERE ns = ?1 AND key = ?2 AND expires_at < ?3",
                )
                .bind(&spec.namespace)
                .bind(&spec.key)
                .bind(now_ms() - 60_000)
                .execute(&mut *conn)
                .await;
            }
        }
        // Never sleep past the moment the earliest lease could expire, nor
        // longer than a second: the flock only tells about `run` holders.
        let cap = Instant::now() + Duration::from_secs(1);
        let until = until.map_or(cap, |u| u.min(cap));
        if spec.limit > 1 {
            let p = self.poll.next();
            tokio::time::sleep_until(until.min(Instant::now() + p).into()).await;
            return Ok(());
        }
        let path = self.wake_path(&spec.namespace, &spec.key);
        let (mut done, slot) = {
            let mut waits = self.waits.lock().unwrap();
            match waits.get(&path) {
                Some(w) if !*w.done.borrow() => (w.done.clone(), w.slot.clone()),
                _ => {
                    let f = self.open_wake(&spec.namespace, &spec.key)?;
                    let (tx, done) = watch::channel(false);
                    let slot = Arc::new(StdMutex::new(None));
                    let abandoned = Arc::new(AtomicBool::new(false));
                    let (s2, a2) = (slot.clone(), abandoned.clone());
                    // A reader waits for a writer only: every reader waiting
                    // is let in together.
                    let op = if spec.shared {
                        libc::LOCK_SH
                    } else {
                        libc::LOCK_EX
                    };
                    std::thread::Builder::new()
                        .name("dlock-wake".into())
                        .spawn(move || {
                            // Granted when the holder lets go or dies; one
                            // writer at a time holds it.
                            let _ = flock(&f, op);
                            let mut slot = s2.lock().unwrap();
                            if !a2.load(Ordering::SeqCst) {
                                *slot = Some(f);
                            }
                            drop(slot);
                            let _ = tx.send(true);
                        })
                        .context("cannot start a waiting thread")?;
                    waits.insert(
                        path.clone(),
                        Waiter {
                            done: done.clone(),
                            slot: slot.clone(),
                            abandoned,
                        },
                    );
                    (done, slot)
                }
            }
        };
        let started = Instant::now();
        let woke = tokio::time::timeout_at(until.into(), done.wait_for(|d| *d))
            .await
            .is_ok();
        if woke {
            self.waits.lock().unwrap().remove(&path);
            if let Some(f) = slot.lock().unwrap().take() {
                self.granted.lock().unwrap().insert(path.clone(), f);
            }
            if started.elapsed() < Duration::from_millis(2) {
                // Nobody held the wake file: the holder is not a live `run`
                // (or is just taking it). Poll, backing off to 100 ms,
                // without keeping the file from that holder meanwhile.
                self.granted.lock().unwrap().remove(&path);
                let p = self.poll.next();
                tokio::time::sleep_until(until.min(Instant::now() + p).into()).await;
            } else {
                self.poll.reset();
            }
        }
        Ok(())
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
