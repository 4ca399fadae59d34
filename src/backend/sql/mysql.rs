//! MySQL's and MariaDB's dialect: `lkey` is the key column (`key` is
//! reserved), expiry is against `UTC_TIMESTAMP(6)`, and the token is bumped
//! with `LAST_INSERT_ID(token + 1)` in a statement of its own.
//!
//! Waiting uses a server-side wait instead of a poll: a `run` holder keeps
//! `GET_LOCK(name)` for as long as it holds the key (on the connection it
//! waited on, if it had one, or else on the engine's, so that an
//! uncontended run opens one connection); a waiter blocks in
//! `GET_LOCK(name, timeout)` on its own connection, which the server grants
//! the moment the holder releases it or its connection dies. Where nobody
//! holds it (a lock taken by `dlock acquire`, `--limit` > 1, shared
//! holders: GET_LOCK has no shared mode), waiters poll with a backoff from
//! 5 ms to 100 ms. Readers waiting for a writer's `run`
//! block in GET_LOCK like any waiter, and each lets it go as soon as it has
//! it, so they all wake in turn within moments.
//!
//! Only the first [`SLOTS`] waiters of a key block in GET_LOCK (see
//! [`super::crowd`]): each on its connection of its own, which also holds
//! one of the key's slots, a lock `..._q0` to `..._q7` taken with
//! `GET_LOCK(slot, 0)` (several locks per connection: MySQL 5.7, MariaDB
//! 10.0.2). A blocked waiter also keeps the engine's connection, so that
//! its attempt when woken does not wait for a new one; the rest of a crowd
//! close it while they sleep and hold none: they poll, and after each
//! attempt ask `IS_FREE_LOCK` whether a slot is free.
//! The first waiter to take the key keeps its connection: the holder's
//! wake-up lock is taken on it.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use tokio::sync::Mutex;

use super::crowd::{self, SLOTS};
use super::{Ahead, BREAK_GRACE, Dialect, Names, Spelling, SqlBackend, Statements, channel_name};
use crate::backend::kit;
use crate::backend::probe::{Check, Level};
use crate::backend::{LeaseKind, LockSpec, redact_url};
use crate::error::usage;

struct Mysql {
    opts: MySqlConnectOptions,
    timeout: Duration,
    /// Names server-side locks uniquely per database and table prefix.
    wake_scope: String,
    /// The engine's pool: its connection is closed while we wait without a
    /// slot.
    pool: crowd::PoolCell,
    /// The wake-up locks (GET_LOCK) of keys we hold, by lock name, and
    /// the connection each is held on.
    held: Mutex<Vec<(String, WakeConn)>>,
    /// The connection a waiter blocks on, when it is among the key's first.
    waiter: Mutex<Option<Waiter>>,
    /// The poll of a waiter that blocks but finds nobody holding the
    /// wake-up lock.
    poll: kit::PollBackoff,
    /// The sleep between attempts of a waiter without a slot.
    backoff: crowd::Backoff,
    /// Where we stood in the key's line at our last attempt, and whether
    /// we may try for a slot.
    place: crowd::Place,
    /// Our row's id in the key's line and the one just ahead of it, at our
    /// last attempt (fair queues).
    line: std::sync::Mutex<Option<(String, Option<String>)>>,
    /// Whether our last wait was a hand-off of the key's wake-up lock to
    /// us (first in line, blocked on it while someone held it): the key
    /// was released just now, so the attempt goes straight to its
    /// transaction, which decides as ever, without the read that would
    /// tell it the key may be free (a round trip between a release and the
    /// next command's start).
    handed: std::sync::atomic::AtomicBool,
}

/// Where a holder keeps its wake-up lock: on the connection it waited on
/// (it was first in line), or on the engine's own (it took the key without
/// waiting on a connection of its own: one connection per run, not two).
enum WakeConn {
    Own(MySqlConnection),
    Engine,
}

/// A waiter's own connection, holding the slot `slot` of the key whose
/// wake-up lock is `wake`.
struct Waiter {
    wake: String,
    slot: String,
    conn: MySqlConnection,
    /// The line lock we hold on `conn` (fair queues): the name the one
    /// behind us in line blocks on.
    line: Option<String>,
}

fn statements(t: &Names) -> Statements {
    let (lease, fence, waiter, queue) = (&t.lease, &t.fence, &t.waiter, &t.queue);
    // The leases' part is read locked in the acquiring transaction, as
    // `holders_locked`; the line's rows are only written by a transaction
    // holding the key's fence row, which this one holds then.
    let line = |lock: &str| {
        format!(
            "(SELECT 'l' AS what, id, token, owner, host, pid, lim,
                 CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', acquired_at) AS SIGNED) AS acquired_us,
                 CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS SIGNED) AS left_us,
                 '' AS host_id, CAST(0 AS SIGNED) AS proc_start
               FROM {lease} WHERE ns = ? AND lkey = ? AND expires_at > UTC_TIMESTAMP(6){lock})
             UNION ALL
             (SELECT 'q', id, ticket, owner, host, pid, lim,
                 CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', since) AS SIGNED),
                 CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS SIGNED),
                 host_id, proc_start
               FROM {queue} WHERE ns = ? AND lkey = ? AND expires_at > UTC_TIMESTAMP(6))"
        )
    };
    let holders = format!(
        "SELECT id, token, owner, host, pid, lim,
                CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', acquired_at) AS SIGNED) AS acquired_us,
                CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS SIGNED) AS left_us
           FROM {lease} WHERE ns = ? AND lkey = ? AND expires_at > UTC_TIMESTAMP(6) ORDER BY acquired_at"
    );
    Statements {
        fence: format!(
            "INSERT INTO {fence} (ns, lkey, token) VALUES (?, ?, 0) ON DUPLICATE KEY UPDATE token = token"
        ),
        delete_expired: Some(format!(
            "DELETE FROM {lease} WHERE ns = ? AND lkey = ? AND expires_at <= UTC_TIMESTAMP(6)"
        )),
        holders_locked: format!("{holders} LOCK IN SHARE MODE"),
        holders,
        bump: Some(format!(
            "UPDATE {fence} SET token = LAST_INSERT_ID(token + 1) WHERE ns = ? AND lkey = ?"
        )),
        insert: format!(
            "INSERT INTO {lease} (ns, lkey, id, token, owner, host, pid, lim, acquired_at, expires_at)
             VALUES (?, ?, ?, LAST_INSERT_ID(), ?, ?, ?, ?, UTC_TIMESTAMP(6),
                     UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)"
        ),
        break_lease: format!(
            "UPDATE {lease} SET expires_at = LEAST(expires_at, UTC_TIMESTAMP(6) + INTERVAL {} MICROSECOND)
              WHERE ns = ? AND lkey = ? AND id = ?",
            BREAK_GRACE.as_micros()
        ),
        exclusive_waiters: format!(
            "SELECT COUNT(*) FROM {waiter}
              WHERE ns = ? AND lkey = ? AND expires_at > UTC_TIMESTAMP(6) AND id NOT LIKE ?"
        ),
        line: line(""),
        line_locked: line(" LOCK IN SHARE MODE"),
        enqueue: format!(
            "INSERT INTO {queue} (ns, lkey, id, ticket, owner, host, pid, host_id, proc_start, lim,
                                  since, expires_at)
             SELECT ?, ?, ?, COALESCE(MAX(ticket), 0) + 1, ?, ?, ?, ?, ?, ?,
                    UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
               FROM {queue} WHERE ns = ? AND lkey = ?
             ON DUPLICATE KEY UPDATE ticket = VALUES(ticket), lim = VALUES(lim),
                                     since = VALUES(since), expires_at = VALUES(expires_at)"
        ),
        join: format!(
            "INSERT INTO {queue} (ns, lkey, id, ticket, owner, host, pid, host_id, proc_start, lim,
                                  since, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                     UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
             ON DUPLICATE KEY UPDATE ticket = VALUES(ticket), lim = VALUES(lim),
                                     since = VALUES(since), expires_at = VALUES(expires_at)"
        ),
        lapsed_queue: format!(
            "DELETE FROM {queue} WHERE ns = ? AND lkey = ? AND expires_at <= UTC_TIMESTAMP(6)"
        ),
        dequeue: format!("DELETE FROM {queue} WHERE ns = ? AND lkey = ? AND id = ?"),
        renew_queue: format!(
            "UPDATE {queue} SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
              WHERE ns = ? AND lkey = ? AND id = ?"
        ),
        foreign_writers: format!(
            "SELECT COUNT(*) FROM {waiter} w
              WHERE w.ns = ? AND w.lkey = ? AND w.expires_at > UTC_TIMESTAMP(6) AND w.id NOT LIKE ?
                AND NOT EXISTS (SELECT 1 FROM {queue} q
                                 WHERE q.ns = w.ns AND q.lkey = w.lkey AND q.id = w.id)"
        ),
        delete_waiter: format!("DELETE FROM {waiter} WHERE ns = ? AND lkey = ? AND id = ?"),
        upsert_waiter: format!(
            "INSERT INTO {waiter} (ns, lkey, id, expires_at)
             VALUES (?, ?, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
             ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at)"
        ),
        stale_waiters: format!(
            "DELETE FROM {waiter} WHERE ns = ? AND lkey = ?
                AND expires_at < UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE"
        ),
        renew: format!(
            "UPDATE {lease} SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
              WHERE ns = ? AND lkey = ? AND id = ? AND expires_at > UTC_TIMESTAMP(6)"
        ),
        release: format!(
            "DELETE FROM {lease} WHERE ns = ? AND lkey = ? AND id = ? AND expires_at > UTC_TIMESTAMP(6)"
        ),
        disown: format!(
            "UPDATE {lease} SET id = SUBSTRING_INDEX(id, '~', 1)
              WHERE ns = ? AND lkey = ? AND id = ? AND expires_at > UTC_TIMESTAMP(6)"
        ),
        force: format!(
            "DELETE FROM {lease} WHERE ns = ? AND lkey = ? AND expires_at > UTC_TIMESTAMP(6)"
        ),
        held_keys: format!(
            "SELECT DISTINCT lkey FROM {lease} WHERE ns = ? AND expires_at > UTC_TIMESTAMP(6) ORDER BY lkey"
        ),
        waiter_counts: format!(
            "SELECT lkey, COUNT(*) FROM {waiter}
              WHERE ns = ? AND expires_at > UTC_TIMESTAMP(6) GROUP BY lkey"
        ),
        version: "SELECT VERSION()",
        clock_us: "SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)",
        spelling: Spelling {
            key: "lkey",
            param: "?",
            now: "UTC_TIMESTAMP(6)",
        },
    }
}

/// Connect, and create the tables where they are missing.
pub async fn connect(url: &str, timeout: Duration) -> Result<SqlBackend> {
    let shown = redact_url(url);
    let (url, t) = Names::from_url(url)?;
    let url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url,
    };
    // Session times in UTC, as the lease columns are.
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}timezone=%2B00:00");
    let opts = MySqlConnectOptions::from_str(&url)
        .map_err(|e| usage(format!("bad MySQL URL {shown}: {e}")))?
        // The connections of our own (a slot, the wake-up lock) only take
        // and let go of named locks, whose names are ASCII: sqlx's
        // session settings (sql_mode, time zone, NAMES) change nothing
        // there, and cost a round trip per connection, one of them between
        // an uncontended holder's commit and its command's start.
        .pipes_as_concat(false)
        .no_engine_substitution(false)
        .timezone(None)
        .set_names(false);
    let db = opts.get_database().unwrap_or_default().to_string();
    let pool = Arc::new(OnceLock::new());
    let d = Mysql {
        opts,
        timeout,
        wake_scope: format!("{db}.{}", t.prefix),
        pool: pool.clone(),
        held: Mutex::new(Vec::new()),
        waiter: Mutex::new(None),
        poll: kit::PollBackoff::default(),
        backoff: crowd::Backoff::default(),
        place: crowd::Place::default(),
        line: std::sync::Mutex::new(None),
        handed: std::sync::atomic::AtomicBool::new(false),
    };
    let q = statements(&t);
    // A wait for the key's row lock behind a crowd's attempts ends well
    // within the call's bound, as busy (retried), not as a server that does
    // not answer: 170 waiters on MariaDB's 151 connections queued on the
    // fence row past 5 s and exited 69. (InnoDB's default is 50 s.)
    let secs = super::lock_wait(timeout).as_secs().max(1);
    let init = format!("SET SESSION innodb_lock_wait_timeout = {secs}");
    let mut b = SqlBackend::open(shown, &url, timeout, t, q, Box::new(d), Some(init)).await?;
    let _ = pool.set(b.pool.clone());
    let table = |name: &str, cols: &str, key: &str| {
        format!(
            "CREATE TABLE IF NOT EXISTS {name} ({cols}, PRIMARY KEY ({key}))
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        )
    };
    let (ns, lkey, id) = (
        "ns VARCHAR(191) NOT NULL",
        "lkey VARCHAR(512) NOT NULL",
        "id VARCHAR(64) NOT NULL",
    );
    let lease = table(
        &b.t.lease,
        &format!(
            "{ns}, {lkey}, {id}, token BIGINT NOT NULL, owner VARCHAR(255) NOT NULL,
             host VARCHAR(255) NOT NULL, pid BIGINT NOT NULL, lim INT NOT NULL,
             acquired_at DATETIME(6) NOT NULL, expires_at DATETIME(6) NOT NULL"
        ),
        "ns, lkey, id",
    );
    let fence = table(
        &b.t.fence,
        &format!("{ns}, {lkey}, token BIGINT NOT NULL"),
        "ns, lkey",
    );
    let waiter = table(
        &b.t.waiter,
        &format!("{ns}, {lkey}, {id}, expires_at DATETIME(6) NOT NULL"),
        "ns, lkey, id",
    );
    let queue = table(
        &b.t.queue,
        &format!(
            "{ns}, {lkey}, {id}, ticket BIGINT NOT NULL, owner VARCHAR(255) NOT NULL,
             host VARCHAR(255) NOT NULL, pid BIGINT NOT NULL, host_id VARCHAR(255) NOT NULL,
             proc_start BIGINT NOT NULL, lim INT NOT NULL, since DATETIME(6) NOT NULL,
             expires_at DATETIME(6) NOT NULL"
        ),
        "ns, lkey, id",
    );
    // All four in one round trip, as nearly every start finds them there.
    let all = format!("{lease}; {fence}; {waiter}; {queue}");
    if b.ddl("create tables", all).await.is_ok() {
        b.waiter_table = true;
        b.queue_table = b.t.fair;
        return Ok(b);
    }
    // A user that may not create every table: one at a time.
    b.ddl("create tables", lease).await?;
    b.ddl("create tables", fence).await?;
    // Waiter rows feed `status` and let waiting writers go before later
    // readers: without the table, locking works, `status` shows no waiter
    // count and readers do not give way to waiting writers. Without the
    // line, locking works, first come not always first served.
    b.waiter_table = b.ddl("create the waiter table", waiter).await.is_ok();
    b.queue_table = b.t.fair && b.ddl("create the queue table", queue).await.is_ok();
    Ok(b)
}

impl Mysql {
    /// The server-side lock name for a key.
    fn wake_name(&self, ns: &str, key: &str) -> String {
        format!(
            "{}_w",
            channel_name(&format!("{}\0{ns}", self.wake_scope), key)
        )
    }

    /// The name of the lock a waiter in a key's line holds while it
    /// waits (the one behind it blocks on it), from its row's id.
    fn line_name(wake: &str, id: &str) -> String {
        let base = wake.strip_suffix("_w").unwrap_or(wake);
        format!("{base}_l{:016x}", super::fnv64(&[id]))
    }

    /// The names of a key's waiter slots.
    fn slots(wake: &str) -> impl Iterator<Item = String> + '_ {
        let base = wake.strip_suffix("_w").unwrap_or(wake);
        (0..SLOTS).map(move |i| format!("{base}_q{i}"))
    }

    /// Whether one of the key's slots is free, asked on the engine's
    /// connection of the attempt just made.
    async fn slot_free(&self, wake: &str) -> bool {
        let Some(pool) = self.pool.get() else {
            return false;
        };
        let sum = vec!["COALESCE(IS_FREE_LOCK(?), 1)"; SLOTS as usize].join(" + ");
        let sql = format!("SELECT CAST({sum} AS SIGNED)");
        let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
        for s in Mysql::slots(wake) {
            q = q.bind(s);
        }
        kit::best_effort(self.timeout, pool.with(move |c| Box::pin(q.fetch_one(c))))
            .await
            .is_some_and(|n| n > 0)
    }

    /// A connection of our own that holds a free slot of the key; `None`
    /// if every slot is taken.
    async fn take_slot(&self, wake: &str) -> Result<Option<Waiter>, sqlx::Error> {
        let mut conn = MySqlConnection::connect_with(&self.opts).await?;
        for slot in Mysql::slots(wake) {
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
                .bind(&slot)
                .fetch_one(&mut conn)
                .await?;
            if got == Some(1) {
                return Ok(Some(Waiter {
                    wake: wake.to_string(),
                    slot,
                    conn,
                    line: None,
                }));
            }
        }
        let _ = conn.close().await;
        Ok(None)
    }
}

#[async_trait]
impl Dialect for Mysql {
    fn service(&self) -> &'static str {
        "MySQL"
    }

    fn product(&self, version: &str) -> &'static str {
        if version.to_ascii_lowercase().contains("mariadb") {
            "mariadb"
        } else {
            "mysql"
        }
    }

    /// Hold GET_LOCK for a key a `run` holds alone, on a connection of its
    /// own. Not for a shared lease: readers are many, and GET_LOCK has one
    /// holder.
    async fn taken(&self, spec: &LockSpec, kind: LeaseKind) {
        self.poll.reset();
        self.backoff.reset();
        // Our waiter connection, if we had one: its slot goes to the next
        // waiter, the connection to the wake-up lock.
        let kept = self.waiter.lock().await.take();
        if kind != LeaseKind::Run || spec.limit != 1 || spec.shared {
            // Closing it lets go of our slot and our line lock: the next in
            // line wakes.
            if let Some(w) = kept {
                kit::best_effort(self.timeout, w.conn.close()).await;
            }
            return;
        }
        let name = self.wake_name(&spec.namespace, &spec.key);
        // One round trip between our commit and our command's start
        // (there were three): take the wake-up lock, and only then let go
        // of our line lock, so that the next in line, blocked on it, wakes
        // to find the wake-up lock held and blocks on that; and of our
        // slot. IF evaluates its condition first, and each release is part
        // of the value, so none is optimised away.
        const TAKE: &str = "SELECT CAST(IF(GET_LOCK(?, 0.2) = 1,
            10 + COALESCE(RELEASE_LOCK(?), 0) + 2 * COALESCE(RELEASE_LOCK(?), 0), 0)
            AS SIGNED)";
        let Some(w) = kept else {
            // Nothing to let go of: the wake-up lock goes on the engine's
            // connection (the pool's one, which keeps it for the process's
            // life), where a connection of its own cost a second login.
            let Some(pool) = self.pool.get() else { return };
            let q = sqlx::query_scalar::<_, Option<i64>>(TAKE)
                .bind(name.clone())
                .bind(None::<String>)
                .bind(None::<String>);
            let take = pool.with(move |c| Box::pin(q.fetch_one(c)));
            if let Some(Some(got)) = kit::best_effort(self.timeout, take).await
                && got >= 10
            {
                self.held.lock().await.push((name, WakeConn::Engine));
            }
            return;
        };
        let take = async {
            let mut c = w.conn;
            let got: Option<i64> = sqlx::query_scalar(TAKE)
                .bind(&name)
                .bind(w.line)
                .bind(w.slot)
                .fetch_one(&mut c)
                .await?;
            // Not taken: dropping the connection lets go of the rest.
            Ok::<_, sqlx::Error>((got >= Some(10)).then_some(c))
        };
        if let Some(Some(c)) = kit::best_effort(self.timeout, take).await {
            self.held.lock().await.push((name, WakeConn::Own(c)));
        }
    }

    /// Handed the wake-up lock by a release (see [`Mysql::handed`]).
    fn first_in_line(&self, _spec: &LockSpec, _kind: LeaseKind) -> bool {
        self.handed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    async fn missed(&self, _spec: &LockSpec, ahead: usize, place: Option<(&str, Option<&str>)>) {
        self.place.missed(ahead, place);
        *self.line.lock().unwrap() = place.map(|(me, before)| (me.into(), before.map(Into::into)));
    }

    async fn freed(&self, e: &SqlBackend, ns: &str, key: &str) {
        let name = self.wake_name(ns, key);
        let mut held = self.held.lock().await;
        if let Some(i) = held.iter().position(|(n, _)| *n == name) {
            match held.remove(i).1 {
                WakeConn::Own(c) => {
                    kit::best_effort(self.timeout, c.close()).await;
                }
                WakeConn::Engine => {
                    let q = sqlx::query("SELECT RELEASE_LOCK(?)").bind(&name);
                    let let_go = e.pool.with(move |c| Box::pin(q.execute(c)));
                    kit::best_effort(self.timeout, let_go).await;
                }
            }
        }
    }

    async fn wait(&self, spec: &LockSpec, bound: Instant, ahead: Ahead<'_>) {
        // The engine's work runs while this blocks on a connection of its
        // own, or first if it does not.
        let ahead = async {
            if let Some(a) = ahead {
                a.await;
            }
        };
        let name = self.wake_name(&spec.namespace, &spec.key);
        let mut w = self.waiter.lock().await;
        if let Some(old) = w.take_if(|o| o.wake != name) {
            kit::best_effort(self.timeout, old.conn.close()).await;
        }
        if w.is_none() && self.place.may_try() && self.slot_free(&name).await {
            *w = self.place.try_slot(bound, self.take_slot(&name)).await;
        }
        let Some(waiter) = w.as_mut() else {
            drop(w);
            // Behind the first few: no connection while we sleep (nor
            // statements prepared on it). The first in line keeps its own:
            // it looks often.
            if self.place.first() {
                ahead.await;
            } else {
                drop(ahead);
                // Not while the engine's connection holds the wake-up lock
                // of a key we hold (a run of several keys): closing it
                // would let that lock go, and that key's waiters would
                // take it for a release.
                let engine_holds =
                    (self.held.lock().await.iter()).any(|(_, c)| matches!(c, WakeConn::Engine));
                if !engine_holds {
                    crowd::hang_up(&self.pool).await;
                }
            }
            self.place.sleep(&self.backoff, bound).await;
            return;
        };
        if spec.limit > 1 {
            drop(w);
            ahead.await;
            tokio::time::sleep_until(bound.min(Instant::now() + self.poll.next()).into()).await;
            return;
        }
        // In line (fair queues), each waiter holds a line lock, and blocks
        // on the line lock of the one just ahead of it: a release wakes the
        // first in line only (blocked on the wake-up lock), and each, once
        // it holds the key, wakes the next. Woken all at once, those behind
        // found the wake-up lock free before the new holder took it, and
        // polled: the first in line was often asleep at the next release.
        let line = self.line.lock().unwrap().clone();
        let target = match &line {
            Some((_, Some(before))) => Mysql::line_name(&name, before),
            _ => name.clone(),
        };
        let behind = target != name;
        let mine = line.map(|(me, _)| Mysql::line_name(&name, &me));
        let in_line = mine.is_some();
        let started = Instant::now();
        let secs = bound
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        let c = &mut waiter.conn;
        let held = &mut waiter.line;
        let wait = async {
            if mine.is_some() && *held != mine {
                if let Some(old) = held.take() {
                    sqlx::query("SELECT RELEASE_LOCK(?)")
                        .bind(old)
                        .execute(&mut *c)
                        .await?;
                }
                let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
                    .bind(&mine)
                    .fetch_one(&mut *c)
                    .await?;
                if got == Some(1) {
                    *held = mine.clone();
                }
            }
            // One round trip: whether someone held the lock as we asked
            // for it (only then is a grant a hand-off: judged by the time
            // it took, a holder whose command ran under 2 ms looked like
            // none, and its waiter slept 5-20 ms before its attempt), the
            // blocking GET_LOCK, and if granted its release (we only wait
            // to be woken). IF evaluates its condition, then one branch.
            let got: Option<i64> = sqlx::query_scalar(
                "SELECT CAST(IF(IS_USED_LOCK(?) IS NULL,
                    IF(GET_LOCK(?, ?) = 1, 10 + COALESCE(RELEASE_LOCK(?), 0), 0),
                    IF(GET_LOCK(?, ?) = 1, 30 + COALESCE(RELEASE_LOCK(?), 0), 20)) AS SIGNED)",
            )
            .bind(&target)
            .bind(&target)
            .bind(secs)
            .bind(&target)
            .bind(&target)
            .bind(secs)
            .bind(&target)
            .fetch_one(&mut *c)
            .await?;
            Ok::<_, sqlx::Error>(got)
        };
        // 20: held by someone as we asked, not granted in time; 30 and
        // above: held, then granted to us (a release).
        let wait = tokio::time::timeout_at((bound + Duration::from_millis(500)).into(), wait);
        let (waited, ()) = tokio::join!(wait, ahead);
        let got = match waited {
            Ok(Ok(got)) => got,
            // A connection stuck in GET_LOCK or broken is dropped, and its
            // slot with it; the next wait looks for one again.
            _ => {
                *w = None;
                None
            }
        };
        let was_held = got >= Some(20);
        // Only the first in line: a waiter without a place in line (in a
        // crowd larger than the server takes) blocks on the wake-up lock
        // too, and each is granted it in turn at a release.
        self.handed.store(
            in_line && !behind && got >= Some(30),
            std::sync::atomic::Ordering::Relaxed,
        );
        drop(w);
        let at_once = !was_held && started.elapsed() < Duration::from_millis(2);
        if at_once && behind {
            // Granted at once, nobody holding it: the one ahead holds no
            // line lock (it has no slot, or has just left): look by our
            // place.
            self.place.sleep(&self.backoff, bound).await;
        } else if at_once {
            // Granted at once, nobody holding it: nobody holds the wake-up
            // lock (a handle's lease, or a holder that lost it). Poll.
            tokio::time::sleep_until(bound.min(Instant::now() + self.poll.next()).into()).await;
        } else {
            self.poll.reset();
        }
    }

    async fn durability(&self, e: &SqlBackend) -> Check {
        // Settings under which a crash can take back a committed lease row.
        let q = sqlx::query_scalar::<_, String>(
            "SELECT CAST(@@innodb_flush_log_at_trx_commit AS CHAR)",
        );
        let flush = e.pool.with(move |c| Box::pin(q.fetch_one(c)));
        match e.bounded("doctor", flush).await {
            Ok(v) if v == "1" => Check::ok(
                "durability",
                "innodb_flush_log_at_trx_commit = 1: a committed lease survives a crash",
            ),
            Ok(v) => Check::new(
                Level::Warn,
                "durability",
                format!(
                    "{} has innodb_flush_log_at_trx_commit = {v}: a crash can lose about a second of commits, a lease just taken among them, and another process then takes the lock while its holder runs",
                    e.shown
                ),
            )
            .fix("SET GLOBAL innodb_flush_log_at_trx_commit = 1 (and in my.cnf)"),
            Err(err) => Check::new(
                Level::Warn,
                "durability",
                format!("cannot read innodb_flush_log_at_trx_commit: {err:#}"),
            ),
        }
    }
}
