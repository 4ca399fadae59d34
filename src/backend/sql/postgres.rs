//! PostgreSQL's dialect: `now()` is the transaction's clock, the token is
//! bumped and the lease inserted in one statement, and a waiter `LISTEN`s on
//! a per-key channel that a release `NOTIFY`s (with a bounded poll for
//! expiries), naming the next in line when only that one may go
//! ([`next_in_line`]). Readers and writers listen alike; a writer that stops
//! waiting notifies too, for the readers that gave way to it.
//!
//! A run has one connection ([`PgLink`]): the engine's statements and a
//! waiter's `LISTEN` share it. Only the first [`SLOTS`] waiters of a key
//! listen (see [`super::crowd`]): each holds one of the key's slots, the
//! session advisory lock (key hash, slot), taken on that connection with its
//! `LISTEN` and let go of (with `UNLISTEN`) when it takes the key; the
//! server lets go of it if the connection ends. The rest of a crowd poll,
//! and near the front of the line try for a slot.
//!
//! Unlike MySQL's, the connection is kept while waiting: a PostgreSQL
//! connection is a forked server process, and a crowd of 200 reconnecting
//! for every attempt kept two cores busy forking; attempts then queued past
//! `--connect-timeout` and some waiters exited 69.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use futures_util::FutureExt;
use sqlx::postgres::PgConnectOptions;

use super::crowd::{self, SLOTS};
use super::pglink::{Listening, PgGuard, PgLink};
use super::{
    Ahead, Arg, BREAK_GRACE, Dialect, Names, Spelling, SqlBackend, Statements, Stmt, channel_name,
    connect_error, fnv64,
};
use crate::backend::kit;
use crate::backend::probe::{Check, Level};
use crate::backend::{LeaseKind, LockSpec, redact_url};
use crate::error::usage;

type PgBackend = SqlBackend<PgLink>;

struct Postgres {
    timeout: Duration,
    /// The engine's connection, on which we also listen.
    link: PgLink,
    /// The sleep between attempts of a waiter that does not listen.
    backoff: crowd::Backoff,
    /// Where we stood in the key's line at our last attempt, and whether
    /// we may try to listen.
    place: crowd::Place,
    /// Our row's id in a key's line (its channel, the id) at our last
    /// attempt: a release that names another waiter is not for us.
    me: std::sync::Mutex<Option<(String, String)>>,
    /// The `NOTIFY` naming the next in line ([`next_in_line`]) after a
    /// forced release, a lease left to its TTL, a waiter leaving the line,
    /// or a release the server refused with its own `NOTIFY`
    /// ([`release_waking`] wakes the waiters of every other release).
    notify: String,
    /// Whether the last notification named us: the key is ours to try,
    /// without reading first whether it is busy.
    named: AtomicBool,
}

/// The first of a key's advisory lock pairs (key hash, slot) that hold its
/// listeners' slots: non-negative, as `pg_locks` shows it (an oid).
fn slot_class(spec: &LockSpec) -> i32 {
    (fnv64(&[&spec.namespace, &spec.key, "listeners"]) >> 33) as i32
}

/// A release's `NOTIFY` on the key's channel ($1), whose payload names the
/// one waiter it is for: the first live one in the key's line ($2, $3), in
/// the order every reader puts the line in (by ticket, then by id, byte by
/// byte: two waiters that joined at once may share a ticket), when that
/// one wants the key alone (`lim` 1), since nobody behind it may
/// go before it. Otherwise (readers first in line, a semaphore's, nobody in
/// line) the payload is empty and every listener tries, as before: several
/// may be let in at once. Older versions ignore the payload and wake on
/// every notification; a waiter of this one takes an empty payload (an
/// older release's) as meant for all.
///
/// Each listener but the one named used to wake and read the line only to
/// find the key taken: about 7 reads per contended run of 8 × 20. The
/// payload only says who should look first; who may enter is still decided
/// in the attempt's transaction. A named waiter that died keeps the next
/// one waiting until its bounded poll (at most a second).
fn next_in_line(t: &Names) -> String {
    format!("SELECT pg_notify($1, {})", named(t, "$2", "$3"))
}

/// The payload of [`next_in_line`] for the key whose namespace and key
/// are the parameters `ns` and `key`.
fn named(t: &Names, ns: &str, key: &str) -> String {
    format!(
        "COALESCE((
            SELECT CASE WHEN lim = 1 THEN id ELSE '' END FROM {}
             WHERE ns = {ns} AND key = {key} AND expires_at > clock_timestamp()
             ORDER BY ticket, id COLLATE \"C\" LIMIT 1), '')",
        t.queue
    )
}

/// The release (ns, key, id, the key's channel) that also wakes the key's
/// waiters: its `NOTIFY` ([`next_in_line`]; without the line, for all)
/// in the same statement, one round trip less on the hand-off's path. The
/// notification goes out as the delete commits, as before right after
/// it; the waiter it names is read at the statement's start, so one that
/// leaves the line in that moment may be named (the next then waits for
/// its poll, up to a second, as when a named waiter dies). -> whether our
/// lease was live.
fn release_waking(t: &Names, line: bool) -> Stmt {
    let payload = if line {
        named(t, "$1", "$2")
    } else {
        "''".to_string()
    };
    Stmt::new(
        format!(
            "WITH d AS (DELETE FROM {} WHERE ns = $1 AND key = $2 AND id = $3
                          AND expires_at > now() RETURNING 1)
             SELECT (SELECT count(*) FROM d), pg_notify($4, {payload})",
            t.lease
        ),
        &[Arg::Ns, Arg::Key, Arg::Id, Arg::Chan],
    )
}

/// A waiter's grant (the insert's parameters, then our place in line and
/// our waiter row): the token bumped, our lease in, and our place and our
/// waiter row gone, in one statement, where they were three round trips
/// between the wake-up and the command's start. (Every data-modifying
/// `WITH` runs to completion, read or not; an id that matches no row
/// deletes nothing.)
fn insert_leaving(t: &Names) -> Stmt {
    use Arg::*;
    let (lease, fence, waiter, queue) = (&t.lease, &t.fence, &t.waiter, &t.queue);
    Stmt::new(
        format!(
            "WITH t AS (UPDATE {fence} SET token = token + 1 WHERE ns = $1 AND key = $2 RETURNING token),
                  q AS (DELETE FROM {queue} WHERE ns = $1 AND key = $2 AND id = $9),
                  w AS (DELETE FROM {waiter} WHERE ns = $1 AND key = $2 AND id = $10)
             INSERT INTO {lease} (ns, key, id, token, owner, host, pid, lim, acquired_at, expires_at)
             SELECT $1, $2, $3, t.token, $4, $5, $6, $7, now(),
                    now() + $8::float8 * interval '1 microsecond' FROM t
             RETURNING token"
        ),
        &[Ns, Key, Id, Owner, Host, Pid, Lim, TtlUs, Place, Waiter],
    )
}

/// An arrival's place at the back of the line (`join`'s parameters) and
/// its waiter row ([`Arg::Waiter`]), in one statement.
fn join_waiting(t: &Names) -> Stmt {
    use Arg::*;
    let (waiter, queue) = (&t.waiter, &t.queue);
    Stmt::new(
        format!(
            "WITH j AS (
               INSERT INTO {queue} (ns, key, id, ticket, owner, host, pid, host_id, proc_start,
                                    lim, since, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                       clock_timestamp(), clock_timestamp() + $11::float8 * interval '1 microsecond')
               ON CONFLICT (ns, key, id) DO UPDATE
                  SET ticket = EXCLUDED.ticket, lim = EXCLUDED.lim, since = EXCLUDED.since,
                      expires_at = EXCLUDED.expires_at)
             INSERT INTO {waiter} (ns, key, id, expires_at)
             VALUES ($1, $2, $12, clock_timestamp() + $11::float8 * interval '1 microsecond')
             ON CONFLICT (ns, key, id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        ),
        &[
            Ns, Key, Id, Token, Owner, Host, Pid, HostId, ProcStart, Lim, LapseUs, Waiter,
        ],
    )
}

fn statements(t: &Names) -> Statements {
    let (lease, fence, waiter, queue) = (&t.lease, &t.fence, &t.waiter, &t.queue);
    // A waiter row's times are the clock's now, not the transaction's
    // start: it is renewed outside the acquiring transaction.
    let line = format!(
        "SELECT 'l' AS what, id, token, owner, host, pid, lim,
                (EXTRACT(EPOCH FROM acquired_at) * 1000000)::bigint AS acquired_us,
                (EXTRACT(EPOCH FROM (expires_at - now())) * 1000000)::bigint AS left_us,
                '' AS host_id, 0::bigint AS proc_start
           FROM {lease} WHERE ns = $1 AND key = $2 AND expires_at > now()
         UNION ALL
         SELECT 'q', id, ticket, owner, host, pid, lim,
                (EXTRACT(EPOCH FROM since) * 1000000)::bigint,
                (EXTRACT(EPOCH FROM (expires_at - clock_timestamp())) * 1000000)::bigint,
                host_id, proc_start
           FROM {queue} WHERE ns = $3 AND key = $4 AND expires_at > clock_timestamp()"
    );
    let holders = format!(
        "SELECT id, token, owner, host, pid, lim,
                (EXTRACT(EPOCH FROM acquired_at) * 1000000)::bigint AS acquired_us,
                (EXTRACT(EPOCH FROM (expires_at - now())) * 1000000)::bigint AS left_us
           FROM {lease} WHERE ns = $1 AND key = $2 AND expires_at > now() ORDER BY acquired_at"
    );
    Statements {
        // The fence row first (the one-time filter on the CTE runs before
        // the scan: every statement that deletes or shortens others' leases
        // holds the fence row first, so no two wait on each other; a
        // release or a renewal touches only its own row, and takes no
        // other lock), then the key's expired leases, in
        // one statement: a round trip less per attempt. The delete reads
        // the statement's snapshot, from before any wait for the fence
        // row: a lease committed during that wait is new, not expired, and
        // the read after this statement sees it.
        fence: format!(
            "WITH f AS (INSERT INTO {fence} (ns, key, token) VALUES ($1, $2, 0)
                        ON CONFLICT (ns, key) DO UPDATE SET token = {fence}.token RETURNING 1)
             DELETE FROM {lease} WHERE EXISTS (SELECT 1 FROM f)
                AND ns = $1 AND key = $2 AND expires_at <= now()"
        ),
        delete_expired: None,
        holders_locked: holders.clone(),
        holders,
        bump: None,
        insert: format!(
            "WITH t AS (UPDATE {fence} SET token = token + 1 WHERE ns = $1 AND key = $2 RETURNING token)
             INSERT INTO {lease} (ns, key, id, token, owner, host, pid, lim, acquired_at, expires_at)
             SELECT $1, $2, $3, t.token, $4, $5, $6, $7, now(),
                    now() + $8::float8 * interval '1 microsecond' FROM t
             RETURNING token"
        ),
        break_lease: format!(
            "UPDATE {lease} SET expires_at = LEAST(expires_at, now() + interval '{} milliseconds')
              WHERE ns = $1 AND key = $2 AND id = $3",
            BREAK_GRACE.as_millis()
        ),
        exclusive_waiters: format!(
            "SELECT count(*) FROM {waiter}
              WHERE ns = $1 AND key = $2 AND expires_at > clock_timestamp() AND id NOT LIKE $3"
        ),
        line_locked: line.clone(),
        line,
        enqueue: format!(
            "INSERT INTO {queue} (ns, key, id, ticket, owner, host, pid, host_id, proc_start, lim,
                                  since, expires_at)
             SELECT $1, $2, $3, COALESCE(MAX(ticket), 0) + 1, $4, $5, $6, $7, $8, $9,
                    clock_timestamp(), clock_timestamp() + $10::float8 * interval '1 microsecond'
               FROM {queue} WHERE ns = $11 AND key = $12
             ON CONFLICT (ns, key, id) DO UPDATE
                SET ticket = EXCLUDED.ticket, lim = EXCLUDED.lim, since = EXCLUDED.since,
                    expires_at = EXCLUDED.expires_at"
        ),
        join: format!(
            "INSERT INTO {queue} (ns, key, id, ticket, owner, host, pid, host_id, proc_start, lim,
                                  since, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                     clock_timestamp(), clock_timestamp() + $11::float8 * interval '1 microsecond')
             ON CONFLICT (ns, key, id) DO UPDATE
                SET ticket = EXCLUDED.ticket, lim = EXCLUDED.lim, since = EXCLUDED.since,
                    expires_at = EXCLUDED.expires_at"
        ),
        lapsed_queue: format!(
            "DELETE FROM {queue} WHERE ns = $1 AND key = $2 AND expires_at <= clock_timestamp()"
        ),
        dequeue: format!("DELETE FROM {queue} WHERE ns = $1 AND key = $2 AND id = $3"),
        renew_queue: format!(
            "UPDATE {queue} SET expires_at = clock_timestamp() + $1::float8 * interval '1 microsecond'
              WHERE ns = $2 AND key = $3 AND id = $4"
        ),
        foreign_writers: format!(
            "SELECT count(*) FROM {waiter} w
              WHERE w.ns = $1 AND w.key = $2 AND w.expires_at > clock_timestamp() AND w.id NOT LIKE $3
                AND NOT EXISTS (SELECT 1 FROM {queue} q
                                 WHERE q.ns = w.ns AND q.key = w.key AND q.id = w.id)"
        ),
        delete_waiter: format!("DELETE FROM {waiter} WHERE ns = $1 AND key = $2 AND id = $3"),
        upsert_waiter: format!(
            "INSERT INTO {waiter} (ns, key, id, expires_at)
             VALUES ($1, $2, $3, clock_timestamp() + $4::float8 * interval '1 microsecond')
             ON CONFLICT (ns, key, id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        ),
        stale_waiters: format!(
            "DELETE FROM {waiter} WHERE ns = $1 AND key = $2
                AND expires_at < clock_timestamp() - interval '1 minute'"
        ),
        renew: format!(
            "UPDATE {lease} SET expires_at = now() + $1::float8 * interval '1 microsecond'
              WHERE ns = $2 AND key = $3 AND id = $4 AND expires_at > now()"
        ),
        release: format!(
            "DELETE FROM {lease} WHERE ns = $1 AND key = $2 AND id = $3 AND expires_at > now()"
        ),
        disown: format!(
            "UPDATE {lease} SET id = split_part(id, '~', 1)
              WHERE ns = $1 AND key = $2 AND id = $3 AND expires_at > now()"
        ),
        force: format!("DELETE FROM {lease} WHERE ns = $1 AND key = $2 AND expires_at > now()"),
        held_keys: format!(
            "SELECT DISTINCT key FROM {lease} WHERE ns = $1 AND expires_at > now() ORDER BY key"
        ),
        waiter_counts: format!(
            "SELECT key, count(*) FROM {waiter}
              WHERE ns = $1 AND expires_at > clock_timestamp() GROUP BY key"
        ),
        version: "SHOW server_version",
        clock_us: "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint",
        spelling: Spelling {
            key: "key",
            param: "$1",
            now: "now()",
        },
    }
}

/// Connect, and create the tables where they are missing.
pub async fn connect(url: &str, timeout: Duration) -> Result<PgBackend> {
    // Boxed: sqlx's connection set-up nests deep enough to take every
    // caller's future past the compiler's depth limit in a release build.
    Box::pin(open(url, timeout)).await
}

async fn open(url: &str, timeout: Duration) -> Result<PgBackend> {
    let shown = redact_url(url);
    let (url, t) = Names::from_url(url)?;
    // Every statement, and every wait for a row lock, is bounded.
    let ms = timeout.as_millis();
    let sep = if url.contains('?') { '&' } else { '?' };
    // A wait for the key's row lock behind a crowd's attempts ends well
    // within that, as busy (retried), not as a server that does not answer.
    let lock_ms = super::lock_wait(timeout).as_millis();
    let url =
        format!("{url}{sep}options=-c%20statement_timeout%3D{ms}%20-c%20lock_timeout%3D{lock_ms}");
    let opts = PgConnectOptions::from_str(&url)
        .map_err(|e| usage(format!("bad PostgreSQL URL {shown}: {e}")))?;
    // Opening a connection retries a refused or full server for part of
    // the time; a direct attempt in the rest says which it was.
    let part = timeout.mul_f64(0.45);
    let link = PgLink::new(opts, part, timeout);
    if let Err(e) = link.lock().await {
        let service = format!("PostgreSQL {shown}");
        return Err(connect_error(&service, e, part, link.probe()).await);
    }
    let d = Postgres {
        timeout,
        link: link.clone(),
        backoff: crowd::Backoff::default(),
        place: crowd::Place::default(),
        me: std::sync::Mutex::new(None),
        notify: next_in_line(&t),
        named: AtomicBool::new(false),
    };
    let q = statements(&t);
    let mut b = SqlBackend::new(shown, link, timeout, t, q.into(), Box::new(d));
    let (lease, fence, waiter, queue) = (&b.t.lease, &b.t.fence, &b.t.waiter, &b.t.queue);
    // Most runs find the tables there: one cheap look instead of DDL
    // (which takes locks and sends notices). The waiter table counts only
    // where this role may read it, the line only where it may use it.
    let names = [lease, fence, waiter, queue].map(String::clone);
    let look = b.pool.with(move |c| {
        let [lease, fence, waiter, queue] = names;
        sqlx::query_as::<_, (bool, bool, bool, bool, bool)>(
            "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL,
                to_regclass($3) IS NOT NULL,
                CASE WHEN to_regclass($3) IS NULL THEN false
                     ELSE has_table_privilege($3, 'SELECT') END,
                to_regclass($4) IS NOT NULL,
                CASE WHEN to_regclass($4) IS NULL THEN false
                     ELSE has_table_privilege($4, 'SELECT') AND has_table_privilege($4, 'INSERT')
                      AND has_table_privilege($4, 'UPDATE') AND has_table_privilege($4, 'DELETE')
                END",
        )
        .bind(lease)
        .bind(fence)
        .bind(waiter)
        .bind(queue)
        .fetch_one(c)
        .boxed()
    });
    let (present, waiter_present, waiter_readable, queue_present, queue_usable) = b
        .bounded("looking for the tables", look)
        .await
        .unwrap_or((false, false, false, false, false));
    b.waiter_table = waiter_readable;
    b.queue_table = queue_usable && b.t.fair;
    if !waiter_present {
        // Waiter rows feed `status` and let waiting writers go before later
        // readers: a role that may not create tables still locks without
        // them (readers then do not give way to waiting writers).
        b.waiter_table = run_ddl(
            &b,
            "create the waiter table",
            format!(
                "CREATE TABLE IF NOT EXISTS {waiter} (
                        ns TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL,
                        expires_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (ns, key, id))"
            ),
        )
        .await
        .is_ok();
    }
    if !queue_present && b.t.fair {
        // The line (fair queues): a role that may not create it still
        // locks, first come not always first served.
        // Two clients creating it at once may collide; the loser finds it.
        b.queue_table = run_ddl(&b, "create the queue table", queue_ddl(queue))
            .await
            .is_ok()
            || run_ddl(&b, "create the queue table", queue_ddl(queue))
                .await
                .is_ok();
    }
    b.q.release_waking = Some(release_waking(&b.t, b.queue_table));
    if b.queue_table && b.waiter_table {
        b.q.insert_leaving = Some(insert_leaving(&b.t));
        b.q.join_waiting = Some(join_waiting(&b.t));
    }
    if present {
        return Ok(b);
    }
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {lease} (
            ns TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL, token BIGINT NOT NULL,
            owner TEXT NOT NULL, host TEXT NOT NULL, pid BIGINT NOT NULL, lim INTEGER NOT NULL,
            acquired_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (ns, key, id));
         CREATE TABLE IF NOT EXISTS {fence} (
            ns TEXT NOT NULL, key TEXT NOT NULL, token BIGINT NOT NULL, PRIMARY KEY (ns, key))"
    );
    // Two clients creating the tables at once may collide; the loser finds
    // them made.
    if let Err(first) = run_ddl(&b, "create tables", ddl.clone()).await {
        run_ddl(&b, "create tables", ddl)
            .await
            .map_err(|e| e.context(format!("(first: {first:#})")))?;
    }
    Ok(b)
}

/// Run DDL (several statements) once.
async fn run_ddl(b: &PgBackend, what: &str, sql: String) -> Result<()> {
    let run = b.pool.with(move |c| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(c)
            .map(|r| r.map(drop))
            .boxed()
    });
    b.bounded(what, run).await
}

/// The line of waiters of every key (see [`super::line`]).
fn queue_ddl(queue: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {queue} (
            ns TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL, ticket BIGINT NOT NULL,
            owner TEXT NOT NULL, host TEXT NOT NULL, pid BIGINT NOT NULL,
            host_id TEXT NOT NULL, proc_start BIGINT NOT NULL, lim INTEGER NOT NULL,
            since TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (ns, key, id))"
    )
}

impl Postgres {
    /// Whether a release's notification on `chan` (payload: the waiter it
    /// is for, or empty for all, [`next_in_line`]) is for us. A waiter not
    /// in the key's line (`dlock_queue=off`) takes every one.
    fn for_us(&self, chan: &str, payload: &str) -> bool {
        if payload.is_empty() {
            return true;
        }
        let me = self.me.lock().unwrap();
        let Some((c, id)) = me.as_ref() else {
            return true;
        };
        if c == chan && id == payload {
            self.named.store(true, Ordering::Relaxed);
        }
        c != chan || id == payload
    }

    /// Take a free slot of the key (the lowest, in one round trip: the
    /// filter runs row by row and the limit stops at the first lock taken)
    /// and listen on its channel; `None` if every slot is taken.
    async fn listen(g: &mut PgGuard<'_>, class: i32, chan: &str) -> sqlx::Result<Option<i32>> {
        let l = g.conn()?;
        let slot = sqlx::query_scalar::<_, i32>(
            "SELECT s FROM generate_series(0, $2 - 1) AS s
              WHERE pg_try_advisory_lock($1, s) LIMIT 1",
        )
        .bind(class)
        .bind(SLOTS as i32)
        .fetch_optional(&mut *l)
        .await?;
        if slot.is_some() {
            l.listen(chan).await?;
        }
        g.idle();
        Ok(slot)
    }

    /// Stop listening, and let go of our slot for the next waiter.
    async fn unlisten(&self, g: &mut PgGuard<'_>) {
        if let Some(ls) = g.listening().take() {
            let_go(g, &ls, true, self.timeout).await;
        }
    }
}

/// `UNLISTEN` (if `unlisten`) and let go of the slot of `ls`.
async fn let_go(g: &mut PgGuard<'_>, ls: &Listening, unlisten: bool, timeout: Duration) {
    let r = async {
        let l = g.conn()?;
        if unlisten {
            l.unlisten(&ls.chan).await?;
        }
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(ls.class)
            .bind(ls.slot)
            .execute(&mut *l)
            .await
    };
    // Cut short, the connection is given up, and the slot with it.
    if let Ok(r) = tokio::time::timeout(timeout, r).await {
        g.done(&r);
    }
}

#[async_trait]
impl Dialect<PgLink> for Postgres {
    fn service(&self) -> &'static str {
        "PostgreSQL"
    }

    fn product(&self, _version: &str) -> &'static str {
        "postgres"
    }

    async fn freed(&self, e: &PgBackend, ns: &str, key: &str) {
        let chan = channel_name(ns, key);
        // Without the line (`dlock_queue=off`, or a role that may not use
        // it), every listener is woken.
        let line = e.queue_table;
        let sql = match line {
            true => self.notify.clone(),
            false => "SELECT pg_notify($1, '')".to_string(),
        };
        let (ns, key) = (ns.to_string(), key.to_string());
        let q = e.pool.with(move |c| {
            let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(chan);
            let q = if line { q.bind(ns).bind(key) } else { q };
            q.execute(c).map(|r| r.map(drop)).boxed()
        });
        let _ = e.bounded("notify", q).await;
    }

    /// Named by the release we were woken by: first in line, so the
    /// attempt goes straight to its transaction (which decides, as ever),
    /// without the read that would tell it the key may be free.
    fn first_in_line(&self, _spec: &LockSpec, _kind: LeaseKind) -> bool {
        self.named.swap(false, Ordering::Relaxed)
    }

    /// A holder does not listen: its slot goes to the next waiter.
    async fn taken(&self, _spec: &LockSpec, _kind: LeaseKind) {
        self.backoff.reset();
        let Some(mut g) = kit::best_effort(self.timeout, self.link.lock()).await else {
            return;
        };
        let Some(ls) = g.listening().take() else {
            return;
        };
        let generation = g.generation();
        drop(g);
        // The `LISTEN` and the slot are let go while the command starts,
        // not before it: two round trips off the hand-off's path. (A
        // notification meanwhile is read by nobody; the slot is the next
        // waiter's a few milliseconds later.) Should this process listen on
        // the channel again first, its `LISTEN` is kept; should the
        // connection be another by then, both went with the old one.
        let (link, timeout) = (self.link.clone(), self.timeout);
        tokio::spawn(async move {
            let same = tokio::time::timeout(timeout, link.lock_same(generation));
            if let Ok(Some(mut g)) = same.await {
                let again = g.listening().as_ref().is_some_and(|l| l.chan == ls.chan);
                let_go(&mut g, &ls, !again, timeout).await;
            }
        });
    }

    async fn missed(&self, spec: &LockSpec, ahead: usize, place: Option<(&str, Option<&str>)>) {
        self.place.missed(ahead, place);
        *self.me.lock().unwrap() = place.map(|(me, _)| {
            let chan = channel_name(&spec.namespace, &spec.key);
            (chan, me.to_string())
        });
    }

    async fn wait(&self, spec: &LockSpec, bound: Instant, ahead: Ahead<'_>) {
        // On the connection this waits on: first.
        if let Some(a) = ahead {
            a.await;
        }
        let chan = channel_name(&spec.namespace, &spec.key);
        let Some(mut g) = kit::best_effort(self.timeout, self.link.lock()).await else {
            self.place.sleep(&self.backoff, bound).await;
            return;
        };
        if g.listening().as_ref().is_some_and(|l| l.chan != chan) {
            self.unlisten(&mut g).await;
        }
        if g.listening().is_none() && self.place.may_try() {
            let class = slot_class(spec);
            let take = Self::listen(&mut g, class, &chan);
            if let Some(slot) = self.place.try_slot(bound, take).await {
                *g.listening() = Some(Listening { chan, class, slot });
                // A release between our last attempt and LISTEN went
                // unheard: try again at once.
                return;
            }
        }
        if g.listening().is_none() {
            drop(g);
            self.place.sleep(&self.backoff, bound).await;
            return;
        }
        loop {
            let Ok(l) = g.conn() else { return };
            match tokio::time::timeout_at(bound.into(), l.try_recv()).await {
                Ok(Ok(Some(n))) => {
                    g.idle();
                    if self.for_us(&chan, n.payload()) {
                        return;
                    }
                    // Another waiter is next in line: we would only find
                    // the key taken. Wait on, as far as the bound.
                }
                // The wait is safe to cut short: the connection is as it was.
                Err(_) => {
                    g.idle();
                    return;
                }
                // Lost or broken: given up (and the slot with it); the next
                // step opens another.
                Ok(_) => return,
            }
        }
    }

    async fn durability(&self, e: &PgBackend) -> Check {
        // Settings under which a crash can take back a committed lease row.
        let mut lax = Vec::new();
        for name in ["fsync", "synchronous_commit"] {
            let q = e.pool.with(move |c| {
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                    .fetch_one(c)
                    .boxed()
            });
            if let Ok(v) = e.bounded("doctor", q).await
                && v == "off"
            {
                lax.push(format!("{name} = off"));
            }
        }
        if lax.is_empty() {
            return Check::ok(
                "durability",
                "fsync and synchronous_commit are on: a committed lease survives a crash",
            );
        }
        Check::new(
            Level::Warn,
            "durability",
            format!(
                "{} has {}: a crash can lose a lease just committed, and another process then takes the lock while its holder runs",
                e.shown,
                lax.join(", ")
            ),
        )
        .fix("turn them on for the lock tables' database (ALTER SYSTEM SET ... ; SELECT pg_reload_conf())")
    }
}
