//! PostgreSQL, MySQL/MariaDB and SQLite: one engine over three dialects.
//!
//! A lease row per holder, judged by the database's clock (a server's, or
//! for SQLite, which has no server, the client's on the one host that
//! shares the file). Tables (created if missing; `?dlock_table=NAME` in a
//! server's URL renames the `dlock` prefix): `dlock_lease` (one row per
//! held lease), `dlock_fence` (the per-key token counter) and
//! `dlock_waiter` (waiters, for `status`). Acquisition is one transaction
//! of the same steps on all three (`SqlBackend::attempt`): lock the key
//! (its fence row, or SQLite's `BEGIN IMMEDIATE`; contenders queue there,
//! so no more than `--limit` are ever admitted), delete expired leases,
//! read the live ones, and if [`kit::admits`] lets us in bump the token and
//! insert our lease, dropping our waiter row in the same transaction. If it
//! does not, holders the dialect knows to be dead ([`Dialect::dead`]) have
//! their leases ended [`BREAK_GRACE`] from now, and the attempt is made
//! once more then. Every value is a bound parameter, each statement naming
//! its own ([`Stmt`], [`Arg`]).
//!
//! Shared locks (`--shared`) use the same tables, unchanged: a shared lease
//! is a lease row with `lim = 0` (an exclusive one has its `--limit`, 1 or
//! more), and a shared waiter's row in `dlock_waiter` has its id prefixed
//! with `s:` (an exclusive waiter's id is the bare waiter id, as before). A
//! shared request is admitted when no live lease row is exclusive and no
//! exclusive waiter row is live: once a writer waits, later readers wait
//! behind it. An exclusive request reads only the lease rows, as before.
//! Older dlock versions see a shared lease as a holder (so their mutex
//! excludes it) and their waiters as exclusive ones.
//!
//! What differs is in a [`Plan`] (the statements: their spelling, the
//! clock, the token bump) and a [`Dialect`]: how a waiter is woken
//! (PostgreSQL `LISTEN`/`NOTIFY`, MySQL `GET_LOCK`, SQLite `flock` on a
//! wake file), which holders are known dead, and the doctor's checks. The
//! engine talks to a server through sqlx's `Any` driver, and to a SQLite
//! file through its own driver (whose options `Any` cannot pass), in rows
//! of `Any` either way ([`Link`]), so it is written once.

mod crowd;
mod direct;
mod mysql;
mod postgres;
mod sqlite;

pub use mysql::connect as connect_mysql;
pub use postgres::connect as connect_postgres;
pub use sqlite::connect as connect_sqlite;

use std::borrow::Cow;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use async_trait::async_trait;
use futures_util::TryStreamExt;
use sqlx::any::{Any, AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, AnyPool};
use sqlx::{AssertSqlSafe, Either, Row, SqlSafeStr, SqlStr};

use super::kit::{self, Kind, Mode};
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Poll,
    Renewal, Waiting,
};
use crate::backend::probe::{Check, Level};
use crate::error::usage;

/// Table names; `?dlock_table=NAME` in the URL changes the `dlock` prefix
/// (for sites with naming rules). The parameter is removed before the URL
/// reaches the driver.
pub struct Names {
    pub lease: String,
    pub fence: String,
    pub waiter: String,
    pub prefix: String,
}

impl Names {
    pub fn from_url(url: &str) -> Result<(String, Names)> {
        let mut prefix = "dlock".to_string();
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("dlock_table", v)) => prefix = v.to_string(),
                _ => kept.push(pair),
            }
        }
        let ok = !prefix.is_empty()
            && prefix.len() <= 48
            && prefix
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(usage(format!(
                "dlock_table={prefix:?}: a table prefix must be a plain identifier (letters, digits, _)"
            )));
        }
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((
            url,
            Names {
                lease: format!("{prefix}_lease"),
                fence: format!("{prefix}_fence"),
                waiter: format!("{prefix}_waiter"),
                prefix,
            },
        ))
    }
}

/// How long a waiter row lasts without being renewed; a waiter renews it
/// every third of this (its polls are at most a second apart), so one that
/// died or gave up stops being counted within this.
pub const WAITER_LAPSE: std::time::Duration = std::time::Duration::from_secs(3);

/// The prefix of a shared waiter's id in the waiter table (SQL and SQLite):
/// rows without it are exclusive waiters, whom later readers let go first.
pub const SHARED_WAITER: &str = "s:";

/// The `LIKE` pattern of shared waiters' ids (bound, never spliced in).
pub const SHARED_WAITER_LIKE: &str = "s:%";

/// A lease row's mode from its `lim` column: 0 is a shared lease.
pub fn mode_of_lim(lim: i64) -> Mode {
    if lim <= 0 {
        Mode::Shared
    } else {
        Mode::Exclusive {
            limit: lim.min(i64::from(u32::MAX)) as u32,
        }
    }
}

/// The `lim` column for a lease taken with `spec`: 0 when shared.
pub fn lim_of(spec: &LockSpec) -> u32 {
    if spec.shared { 0 } else { spec.limit }
}

/// A waiter's id in the waiter table: `id`, or `s:id` for a shared waiter.
pub fn waiter_id(id: &str, shared: bool) -> Cow<'_, str> {
    if shared {
        format!("{SHARED_WAITER}{id}").into()
    } else {
        id.into()
    }
}

/// What a request is admitted behind ([`kit::admits`]): the live leases, by
/// their `lim` column, and `writers` exclusive waiters (a shared request
/// gives way to them; counted up to 1024).
pub fn ahead(lims: impl IntoIterator<Item = i64>, writers: i64) -> Vec<Mode> {
    let mut modes: Vec<Mode> = lims.into_iter().map(mode_of_lim).collect();
    let writer = Mode::Exclusive { limit: 1 };
    modes.extend(std::iter::repeat_n(writer, writers.clamp(0, 1024) as usize));
    modes
}

/// This process's rows in a waiter table, SQL's and SQLite's alike: the
/// keys it waits for, when each row was last written, and the mode it
/// waits in (a shared waiter's rows are `s:ID`, an exclusive one's `ID`).
#[derive(Default)]
pub struct WaiterRows {
    keys: Waiting,
    shared: AtomicBool,
}

impl WaiterRows {
    /// This process's id, without the mode's prefix.
    pub fn id(&self) -> &str {
        &self.keys.id
    }

    /// The id our row has for a request in this mode.
    fn row_id(&self, shared: bool) -> Cow<'_, str> {
        waiter_id(&self.keys.id, shared)
    }

    /// The id to write our row for `spec`'s key under, if that is due: the
    /// row is new, or a third of [`WAITER_LAPSE`] old (waiters wake often
    /// under contention; a write per wake would slow every hand-off).
    pub fn due(&self, spec: &LockSpec) -> Option<Cow<'_, str>> {
        if !self.keys.due(&spec.namespace, &spec.key, WAITER_LAPSE) {
            return None;
        }
        if spec.shared {
            self.shared.store(true, Ordering::Relaxed);
        }
        Some(self.row_id(spec.shared))
    }

    /// Our row for the key was written now: true the first time, when the
    /// rows of waiters that died long ago are cleared.
    pub fn written(&self, ns: &str, key: &str) -> bool {
        self.keys.note(ns, key)
    }

    /// Our row for `spec`'s key, if we wrote one: the acquiring transaction
    /// deletes it, so the new holder is never counted as both.
    pub fn ours(&self, spec: &LockSpec) -> Option<Cow<'_, str>> {
        self.keys
            .has(&spec.namespace, &spec.key)
            .then(|| self.row_id(spec.shared))
    }

    /// Acquired: our row for the key went with the acquisition.
    pub fn done(&self, ns: &str, key: &str) {
        self.keys.done(ns, key);
    }

    /// Forget every row: the id they have, whether we waited shared (a
    /// writer that stops waiting wakes the readers giving way to it), and
    /// the (namespace, key) pairs whose rows to delete.
    pub fn clear(&self) -> (Cow<'_, str>, bool, Vec<(String, String)>) {
        let shared = self.shared.load(Ordering::Relaxed);
        (self.row_id(shared), shared, self.keys.clear())
    }
}

/// The holder a lease row names (its columns `owner`, `host`, `pid`,
/// `token` and `lim`, the same on SQL and SQLite), taken at `acquired_at`
/// and expiring at `expires_at`; and the row's `lim` (0: shared).
pub fn lease_holder<R>(
    r: &R,
    acquired_at: SystemTime,
    expires_at: SystemTime,
) -> sqlx::Result<(Holder, i64)>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let pid: i64 = r.try_get("pid")?;
    let token: i64 = r.try_get("token")?;
    let lim: i64 = r.try_get("lim")?;
    Ok((
        Holder {
            owner: Some(r.try_get("owner")?),
            host: Some(r.try_get("host")?),
            pid: Some(pid as u32),
            token: Some(token as u64),
            acquired_at: Some(acquired_at),
            expires_at: Some(expires_at),
            dead: false,
            shared: mode_of_lim(lim).is_shared(),
            value: None,
            entry: None,
            slot: None,
            waiting: false,
        },
        lim,
    ))
}

/// One key's status from its live lease rows (SQL and SQLite); `holder`
/// reads a row as the holder and its `lim` column (0: shared).
pub fn key_status<R>(
    key: String,
    rows: &[R],
    waiters: Option<u64>,
    holder: impl Fn(&R) -> Result<(Holder, i64)>,
) -> Result<KeyStatus> {
    let mut limit = 1u32;
    let mut holders = Vec::with_capacity(rows.len());
    for r in rows {
        let (h, lim) = holder(r)?;
        limit = limit.max(lim.clamp(1, i64::from(u32::MAX)) as u32);
        holders.push(h);
    }
    Ok(KeyStatus {
        key,
        limit,
        holders,
        waiters,
        queue: vec![],
        unreadable: None,
    })
}

pub fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A short identifier naming one key, safe to use unquoted (LISTEN channel,
/// GET_LOCK name).
pub fn channel_name(ns: &str, key: &str) -> String {
    format!("dlock_{:016x}", fnv64(&[ns, key]))
}

/// Waiters counted per key from `(key, count)` rows; `None` when the count
/// could not be read (no waiter table: dlock may not create tables there).
pub fn waiters_of(counts: &Option<Vec<(String, i64)>>, key: &str) -> Option<u64> {
    counts.as_ref().map(|c| {
        c.iter()
            .find(|(n, _)| n == key)
            .map_or(0, |(_, n)| *n as u64)
    })
}

/// How one SQL dialect spells what the doctor's probe needs.
pub struct Spelling {
    /// The key column (`key`, or `lkey` where `key` is reserved).
    pub key: &'static str,
    /// The one bind parameter (`$1` or `?`).
    pub param: &'static str,
    /// The server's current time.
    pub now: &'static str,
}

impl Names {
    /// Every kind of statement dlock makes on the lock tables, on a key of
    /// its own (bound as the one parameter), for a probe that is rolled back.
    pub fn probe_statements(&self, d: &Spelling) -> Vec<String> {
        let (k, p, now) = (d.key, d.param, d.now);
        vec![
            format!(
                "INSERT INTO {} (ns, {k}, token) VALUES ('', {p}, 0)",
                self.fence
            ),
            format!(
                "UPDATE {} SET token = token + 1 WHERE ns = '' AND {k} = {p}",
                self.fence
            ),
            format!(
                "INSERT INTO {} (ns, {k}, id, token, owner, host, pid, lim, acquired_at, expires_at)
                 VALUES ('', {p}, 'doctor', 0, '', '', 0, 1, {now}, {now})",
                self.lease
            ),
            format!(
                "UPDATE {} SET expires_at = {now} WHERE ns = '' AND {k} = {p}",
                self.lease
            ),
            format!("DELETE FROM {} WHERE ns = '' AND {k} = {p}", self.lease),
            format!("DELETE FROM {} WHERE ns = '' AND {k} = {p}", self.fence),
        ]
    }

    /// The doctor's findings from the rights probe and from reading the
    /// waiter table.
    pub fn judge_access(&self, probe: Result<()>, waiters: Result<()>) -> Vec<Check> {
        let mut out = vec![match probe {
            Ok(()) => Check::ok(
                "rights",
                format!(
                    "dlock's user may take and release locks in {} and {}",
                    self.lease, self.fence
                ),
            ),
            Err(e) => Check::new(Level::Fail, "rights", format!("{e:#}")).fix(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {}, {}, {} TO the user in the URL",
                self.lease, self.fence, self.waiter
            )),
        }];
        if let Err(e) = waiters {
            out.push(
                Check::new(
                    Level::Info,
                    "waiters",
                    format!(
                        "`status` cannot count waiters, and readers (--shared) cannot see \
                         writers waiting, so they do not give way to them: {e:#}"
                    ),
                )
                .fix(format!(
                    "create {} (dlock does when it may) and grant access to it",
                    self.waiter
                )),
            );
        }
        out
    }
}

/// What kind of failure a database error is: "too many connections" is a
/// full server (waited out like a busy lock), a rejected login or missing
/// privilege is final, anything else is an outage.
pub fn kind(e: &sqlx::Error) -> Kind {
    match e {
        sqlx::Error::Database(db) => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // ER_CON_COUNT_ERROR, ER_TOO_MANY_USER_CONNECTIONS,
                // ER_USER_LIMIT_REACHED; access denied (db, user, plugin).
                return match my.number() {
                    1040 | 1203 | 1226 => Kind::Full,
                    // ... and an unknown database: no retry cures these.
                    1044 | 1045 | 1698 | 1049 => Kind::Denied,
                    _ => Kind::Outage,
                };
            }
            match db.code().as_deref() {
                // too_many_connections
                Some("53300") => Kind::Full,
                // invalid authorization, insufficient privilege, no such
                // database: no retry cures these.
                Some(c) if c.starts_with("28") || c == "42501" || c == "3D000" => Kind::Denied,
                _ => Kind::Outage,
            }
        }
        sqlx::Error::Tls(_) => Kind::Denied,
        _ => Kind::Outage,
    }
}

/// A database error as a user should read it: the server's message and its
/// code, without the server's source line that sqlx adds for PostgreSQL
/// ("at line 768").
struct Shown(sqlx::Error);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => write!(f, "{} (SQLSTATE {code})", db.message()),
                None => f.write_str(db.message()),
            },
            e => write!(f, "{e}"),
        }
    }
}

/// The typed error for a failed connection. sqlx's pool retries a refused
/// or full server until its time-out and then says only "pool timed out";
/// one direct attempt (`probe`) then tells which it was.
pub async fn connect_error<F, C>(
    service: &str,
    e: sqlx::Error,
    timeout: std::time::Duration,
    probe: F,
) -> anyhow::Error
where
    F: std::future::Future<Output = Result<C, sqlx::Error>>,
{
    let e = match e {
        sqlx::Error::PoolTimedOut => match tokio::time::timeout(timeout, probe).await {
            Ok(Err(e)) => e,
            // The pool and the probe each waited `timeout`.
            _ => return kit::no_answer(service, "connect", timeout * 2),
        },
        e => e,
    };
    kit::typed(kind(&e), format!("{service}: connect: {}", Shown(e)))
}

/// A server's clock reading in microseconds since the epoch.
pub fn epoch_micros(us: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)
}

/// The statements of a dialect whose every statement takes its parameters
/// in the one order its comment gives (PostgreSQL, MySQL); the engine reads
/// them as a [`Plan`] with those lists.
pub struct Statements {
    /// (ns, key): create the key's fence row, or lock it.
    pub fence: String,
    /// (ns, key)
    pub delete_expired: String,
    /// (ns, key) -> id, token, owner, host, pid, lim, acquired_us, left_us,
    /// the live leases, oldest first.
    pub holders: String,
    /// As `holders`, inside the acquiring transaction.
    pub holders_locked: String,
    /// (ns, key): bump the token on its own, where `insert` cannot; the
    /// statement's LAST_INSERT_ID is the token.
    pub bump: Option<String>,
    /// (ns, key, id, owner, host, pid, lim, ttl_us): insert our lease
    /// (returning the token, where there is no `bump`).
    pub insert: String,
    /// (ns, key, id): end a dead holder's lease [`BREAK_GRACE`] from now,
    /// if it would last longer.
    pub break_lease: String,
    /// (ns, key, like): how many live waiter rows whose id is not LIKE
    /// `like` (the exclusive waiters, with [`SHARED_WAITER_LIKE`]).
    pub exclusive_waiters: String,
    /// (ns, key, id)
    pub delete_waiter: String,
    /// (ns, key, id, lapse_us)
    pub upsert_waiter: String,
    /// (ns, key): waiter rows of processes that died long ago.
    pub stale_waiters: String,
    /// (ttl_us, ns, key, id)
    pub renew: String,
    /// (ns, key, id): deletes our live lease.
    pub release: String,
    /// (ns, key, id): our live lease's id becomes its part before the
    /// first `~` ([`Plan::disown`]).
    pub disown: String,
    /// (ns, key): deletes every live lease of the key.
    pub force: String,
    /// (ns) -> key, every key with a live lease.
    pub held_keys: String,
    /// (ns) -> key, count of live waiter rows.
    pub waiter_counts: String,
    /// -> the server's version.
    pub version: &'static str,
    /// -> the server's clock, microseconds since the epoch.
    pub clock_us: &'static str,
    pub spelling: Spelling,
}

/// A value a statement binds, by name: each [`Stmt`] lists those it takes,
/// in its own order.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ns,
    Key,
    /// Our lease's id, or our waiter row's.
    Id,
    Owner,
    Host,
    Pid,
    HostId,
    ProcStart,
    /// The lease's kind (`run`, `handle`); NULL where a renewal keeps it.
    Kind,
    /// The `lim` column: the `--limit`, 0 if shared.
    Lim,
    /// The fencing token the attempt's `bump` returned.
    Token,
    /// The TTL in microseconds.
    TtlUs,
    /// [`WAITER_LAPSE`] in microseconds.
    LapseUs,
    /// [`SHARED_WAITER_LIKE`].
    Like,
    /// The client's clock in milliseconds since the epoch, for a dialect
    /// without a server's (SQLite): read once per call, so that a
    /// transaction sees one time.
    NowMs,
}

/// One statement and the values it binds, in order.
pub struct Stmt {
    sql: SqlStr,
    args: &'static [Arg],
}

impl Stmt {
    pub fn new(sql: String, args: &'static [Arg]) -> Stmt {
        Stmt {
            sql: AssertSqlSafe(sql).into_sql_str(),
            args,
        }
    }
}

/// What the engine runs, each statement with its parameters; the
/// attempt's steps are in `SqlBackend::attempt`.
pub struct Plan {
    /// What opens the attempt's transaction (SQLite's `BEGIN IMMEDIATE`
    /// takes the write lock at once); None: `BEGIN`.
    pub begin: Option<&'static str>,
    /// Create the key's fence row, or lock it: contenders queue on it. None
    /// where `begin` already lets one attempt in at a time.
    pub fence: Option<Stmt>,
    pub delete_expired: Stmt,
    /// -> id, token, owner, host, pid, lim, acquired_us, left_us (and
    /// whatever the dialect's [`Dialect::dead`] reads): the live leases,
    /// oldest first.
    pub holders: Stmt,
    /// As `holders`, inside the acquiring transaction.
    pub holders_locked: Stmt,
    /// Bump the token before `insert`: the row it returns, or else its
    /// LAST_INSERT_ID, is the token ([`Arg::Token`] for `insert`).
    pub bump: Option<Stmt>,
    /// Insert our lease (returning the token, where there is no `bump`).
    pub insert: Stmt,
    /// End a dead holder's lease [`BREAK_GRACE`] from now (where the
    /// dialect can tell one: [`Dialect::dead`]).
    pub break_lease: Option<Stmt>,
    /// -> how many live exclusive waiters (ids not LIKE [`Arg::Like`]).
    pub exclusive_waiters: Stmt,
    pub delete_waiter: Stmt,
    pub upsert_waiter: Stmt,
    /// Waiter rows of processes that died long ago.
    pub stale_waiters: Stmt,
    /// Extend our live lease (and set its kind, where bound and not NULL).
    pub renew: Stmt,
    /// Delete our lease: whether it was live is the row it returns, if
    /// any, else whether it deleted one.
    pub release: Stmt,
    /// Our live lease outlives this process (`--lock-at-least`): its row
    /// id loses the liveness [`row_id`] put in it, so that it is not taken
    /// for a dead process's. None where liveness has columns (SQLite: the
    /// kind, set by `renew`).
    pub disown: Option<Stmt>,
    /// Delete every live lease of the key.
    pub force: Stmt,
    /// -> key, every key with a live lease.
    pub held_keys: Stmt,
    /// -> key, count of live waiter rows.
    pub waiter_counts: Stmt,
    /// -> the database's version.
    pub version: Stmt,
    /// -> the server's clock, microseconds since the epoch.
    pub clock_us: Option<Stmt>,
    /// For the doctor's rights probe ([`Dialect::doctor`]).
    pub spelling: Option<Spelling>,
}

impl From<Statements> for Plan {
    fn from(q: Statements) -> Plan {
        use Arg::*;
        let s = Stmt::new;
        Plan {
            begin: None,
            fence: Some(s(q.fence, &[Ns, Key])),
            delete_expired: s(q.delete_expired, &[Ns, Key]),
            holders: s(q.holders, &[Ns, Key]),
            holders_locked: s(q.holders_locked, &[Ns, Key]),
            bump: q.bump.map(|b| s(b, &[Ns, Key])),
            insert: s(q.insert, &[Ns, Key, Id, Owner, Host, Pid, Lim, TtlUs]),
            break_lease: Some(s(q.break_lease, &[Ns, Key, Id])),
            exclusive_waiters: s(q.exclusive_waiters, &[Ns, Key, Like]),
            delete_waiter: s(q.delete_waiter, &[Ns, Key, Id]),
            upsert_waiter: s(q.upsert_waiter, &[Ns, Key, Id, LapseUs]),
            stale_waiters: s(q.stale_waiters, &[Ns, Key]),
            renew: s(q.renew, &[TtlUs, Ns, Key, Id]),
            release: s(q.release, &[Ns, Key, Id]),
            disown: Some(s(q.disown, &[Ns, Key, Id])),
            force: s(q.force, &[Ns, Key]),
            held_keys: s(q.held_keys, &[Ns]),
            waiter_counts: s(q.waiter_counts, &[Ns]),
            version: s(q.version.into(), &[]),
            clock_us: Some(s(q.clock_us.into(), &[])),
            spelling: Some(q.spelling),
        }
    }
}

/// The values one call binds, by [`Arg`].
#[derive(Default)]
struct Args<'a> {
    ns: &'a str,
    key: &'a str,
    id: &'a str,
    owner: &'a str,
    host: &'a str,
    pid: i64,
    host_id: &'a str,
    proc_start: i64,
    kind: Option<&'a str>,
    lim: i32,
    token: i64,
    ttl_us: i64,
    now_ms: i64,
}

enum Val<'a> {
    Str(&'a str),
    Opt(Option<&'a str>),
    I64(i64),
    I32(i32),
}

impl<'a> Args<'a> {
    /// For a statement on `key` of `ns`, now.
    fn of(ns: &'a str, key: &'a str) -> Args<'a> {
        let now_ms = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Args {
            ns,
            key,
            now_ms,
            ..Args::default()
        }
    }

    /// For a statement on our lease, or our waiter row, `id`.
    fn id(self, id: &'a str) -> Args<'a> {
        Args { id, ..self }
    }

    fn val(&self, a: Arg) -> Val<'a> {
        match a {
            Arg::Ns => Val::Str(self.ns),
            Arg::Key => Val::Str(self.key),
            Arg::Id => Val::Str(self.id),
            Arg::Owner => Val::Str(self.owner),
            Arg::Host => Val::Str(self.host),
            Arg::Pid => Val::I64(self.pid),
            Arg::HostId => Val::Str(self.host_id),
            Arg::ProcStart => Val::I64(self.proc_start),
            Arg::Kind => Val::Opt(self.kind),
            Arg::Lim => Val::I32(self.lim),
            Arg::Token => Val::I64(self.token),
            Arg::TtlUs => Val::I64(self.ttl_us),
            Arg::LapseUs => Val::I64(us(WAITER_LAPSE)),
            Arg::Like => Val::Str(SHARED_WAITER_LIKE),
            Arg::NowMs => Val::I64(self.now_ms),
        }
    }
}

/// What a statement gave: its rows, how many rows it changed, and its
/// LAST_INSERT_ID (MySQL).
#[derive(Default)]
struct Out {
    rows: Vec<AnyRow>,
    affected: u64,
    last_id: Option<i64>,
}

impl Out {
    /// The first column of the first row, if there is a row.
    fn first<T>(&self) -> Result<Option<T>, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
    {
        self.rows.first().map(|r| r.try_get(0)).transpose()
    }
}

/// `stmt` with the values of `args` bound, as a query of `$db`.
macro_rules! bound {
    ($stmt:expr, $args:expr) => {{
        let mut q = sqlx::query($stmt.sql.clone());
        for &a in $stmt.args {
            q = match $args.val(a) {
                Val::Str(v) => q.bind(v),
                Val::Opt(v) => q.bind(v),
                Val::I64(v) => q.bind(v),
                Val::I32(v) => q.bind(v),
            };
        }
        q
    }};
}

async fn run_any(c: &mut AnyConnection, stmt: &Stmt, args: &Args<'_>) -> sqlx::Result<Out> {
    let mut out = Out::default();
    let mut s = sqlx::Executor::fetch_many(c, bound!(stmt, args));
    while let Some(x) = s.try_next().await? {
        match x {
            Either::Left(r) => {
                out.affected += r.rows_affected();
                out.last_id = r.last_insert_id();
            }
            Either::Right(row) => out.rows.push(row),
        }
    }
    Ok(out)
}

/// `stmt` on a database file, on this thread ([`direct`]).
async fn run_sqlite(c: &mut direct::Direct, stmt: &Stmt, args: &Args<'_>) -> sqlx::Result<Out> {
    let vals: Vec<Val<'_>> = stmt.args.iter().map(|&a| args.val(a)).collect();
    c.run_waiting(stmt.sql.as_str(), &vals).await
}

/// Where the engine's statements go: a pool of connections to a server
/// (PostgreSQL, MySQL, through sqlx's `Any` driver), or the one connection
/// of this process to a database file (SQLite, opened with its driver's
/// own options, which `Any` cannot pass).
pub trait Link: Send + Sync + 'static {
    /// A server may not answer: each call is then bounded by
    /// `--connect-timeout` and its error typed by [`kind`]. A database
    /// file's calls are bounded by its busy timeout, and their errors pass
    /// up as the driver words them (the `Typed` decorator names the
    /// backend).
    const SERVER: bool;
    fn conn(&self) -> impl Future<Output = sqlx::Result<Conn<'_>>> + Send;
}

impl Link for AnyPool {
    const SERVER: bool = true;
    async fn conn(&self) -> sqlx::Result<Conn<'_>> {
        match self.acquire().await {
            Ok(c) => Ok(Conn::Pool(c)),
            // The pool retries a refused or full server (PostgreSQL's
            // 53300) until its time-out and then says only "pool timed
            // out": one direct attempt tells which, so that a full server
            // is waited out as busy, not counted as an outage.
            Err(sqlx::Error::PoolTimedOut) => {
                use sqlx::ConnectOptions;
                match self.connect_options().connect().await {
                    Err(e) => Err(e),
                    Ok(c) => {
                        let _ = sqlx::Connection::close(c).await;
                        Err(sqlx::Error::PoolTimedOut)
                    }
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// A database file's one connection (SQLite), used on dlock's own thread.
pub struct Local(pub tokio::sync::Mutex<direct::Direct>);

impl Link for Local {
    const SERVER: bool = false;
    async fn conn(&self) -> sqlx::Result<Conn<'_>> {
        Ok(Conn::Local(self.0.lock().await))
    }
}

/// A connection taken from a [`Link`].
pub enum Conn<'a> {
    Pool(PoolConnection<Any>),
    Local(tokio::sync::MutexGuard<'a, direct::Direct>),
}

/// A transaction on a [`Conn`]; rolled back if dropped.
enum Tx<'c> {
    Pool(sqlx::Transaction<'c, Any>),
    Local(LocalTx<'c>),
}

/// A transaction on a database file: `BEGIN` (or the plan's own opening)
/// run now, `ROLLBACK` if dropped before its commit.
struct LocalTx<'c> {
    c: &'c mut direct::Direct,
    open: bool,
}

impl LocalTx<'_> {
    fn end(mut self, sql: &str) -> sqlx::Result<()> {
        self.open = false;
        let r = self.c.exec(sql);
        if r.is_err() && sql == "COMMIT" {
            // A failed COMMIT (busy) leaves the transaction open.
            let _ = self.c.exec("ROLLBACK");
        }
        r
    }
}

impl Drop for LocalTx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.c.exec("ROLLBACK");
        }
    }
}

impl Conn<'_> {
    async fn run(&mut self, stmt: &Stmt, args: &Args<'_>) -> sqlx::Result<Out> {
        match self {
            Conn::Pool(c) => run_any(c, stmt, args).await,
            Conn::Local(c) => run_sqlite(c, stmt, args).await,
        }
    }

    async fn begin(&mut self, with: Option<&'static str>) -> sqlx::Result<Tx<'_>> {
        use sqlx::Connection;
        Ok(match (self, with) {
            (Conn::Pool(c), None) => Tx::Pool(c.begin().await?),
            (Conn::Pool(c), Some(s)) => Tx::Pool(c.begin_with(s).await?),
            (Conn::Local(c), with) => {
                c.exec_waiting(with.unwrap_or("BEGIN")).await?;
                Tx::Local(LocalTx { c, open: true })
            }
        })
    }
}

impl Tx<'_> {
    async fn run(&mut self, stmt: &Stmt, args: &Args<'_>) -> sqlx::Result<Out> {
        match self {
            Tx::Pool(t) => run_any(t, stmt, args).await,
            Tx::Local(t) => run_sqlite(t.c, stmt, args).await,
        }
    }

    async fn commit(self) -> sqlx::Result<()> {
        match self {
            Tx::Pool(t) => t.commit().await,
            Tx::Local(t) => t.end("COMMIT"),
        }
    }

    async fn rollback(self) -> sqlx::Result<()> {
        match self {
            Tx::Pool(t) => t.rollback().await,
            Tx::Local(t) => t.end("ROLLBACK"),
        }
    }
}

/// The id of a lease row on a server database: the owner's secret, and for
/// a process that holds while it runs (`run`, `elect`) where it runs:
/// `SECRET~HOST~START`, HOST a 64-bit hash of its [`crate::host::host_id`]
/// (boot id and PID namespace) and START its start time, so that another
/// dlock on the same machine can tell that it is gone
/// ([`dead_by_row_id`]) with no new column (older versions read and write
/// the same tables; MySQL's id column holds 64 characters). A handle's
/// lease keeps the bare secret.
pub fn row_id(me: &Owner) -> String {
    if me.kind != LeaseKind::Run || me.host_id.is_empty() {
        return me.id.clone();
    }
    let secret = &me.id[..me.id.len().min(24)];
    format!("{secret}~{:016x}~{}", host_hash(&me.host_id), me.proc_start)
}

/// A host id's hash in a row id: stable across processes and versions.
fn host_hash(host_id: &str) -> u64 {
    fnv64(&[host_id])
}

/// Whether the lease row `id` of process `pid` names a process on this
/// machine that is gone ([`row_id`]).
pub fn dead_by_row_id(id: &str, pid: i64) -> bool {
    let mut f = id.split('~');
    let (Some(_), Some(host), Some(start), None) = (f.next(), f.next(), f.next(), f.next()) else {
        return false;
    };
    let (Ok(host), Ok(start), Ok(pid)) = (
        u64::from_str_radix(host, 16),
        start.parse::<u64>(),
        u32::try_from(pid),
    ) else {
        return false;
    };
    host == host_hash(&crate::host::host_id()) && !crate::host::process_alive(pid, start)
}

/// How soon the lease of a holder found dead ([`Dialect::dead`]) ends: the
/// grace lets the dead holder's guard finish killing the job's process
/// group.
pub const BREAK_GRACE: Duration = kit::BREAK_GRACE;

/// What one database does its own way, beside its statements. The methods
/// with a body are those a server dialect leaves alone.
#[async_trait]
pub trait Dialect<P: Link = AnyPool>: Send + Sync {
    /// The service's name in messages: `PostgreSQL`, `MySQL`.
    fn service(&self) -> &'static str;
    /// The product, from its version string, for `ping`.
    fn product(&self, version: &str) -> &'static str;
    /// Where `ping` says the database is; None: its URL.
    fn detail(&self) -> Option<String> {
        None
    }
    /// Whether a lease row's holder is known to be dead (a `run` on this
    /// machine whose process is gone): `status` says so, and a busy
    /// attempt ends its lease [`BREAK_GRACE`] from now ([`Plan::break_lease`]).
    /// A server database reads the liveness in the row's id ([`row_id`]);
    /// SQLite has columns of its own.
    fn dead(&self, row: &AnyRow) -> bool {
        let id: String = row.try_get("id").unwrap_or_default();
        let pid: i64 = row.try_get("pid").unwrap_or_default();
        dead_by_row_id(&id, pid)
    }
    /// The id our lease row is written with ([`row_id`]).
    fn row_id(&self, me: &Owner) -> String {
        row_id(me)
    }
    /// Before an attempt on a database file: whether this process is first
    /// in line for `spec.key` (SQLite: it has just locked the key's wake
    /// file, for a `run`), so that it goes straight to the write transaction
    /// without reading first whether the key is busy.
    fn first_in_line(&self, _spec: &LockSpec, _kind: LeaseKind) -> bool {
        false
    }
    /// We took `spec.key` (MySQL holds a wake-up lock for an exclusive one).
    async fn taken(&self, _spec: &LockSpec, _kind: LeaseKind) {}
    /// An attempt found `spec.key` busy.
    async fn missed(&self, _spec: &LockSpec) {}
    /// We let go of a key, broke it, or stopped waiting for it as a writer
    /// (readers may be giving way to us): wake its waiters.
    async fn freed(&self, e: &SqlBackend<P>, ns: &str, key: &str);
    /// Sleep until trying `spec.key` again is worthwhile, or `bound`.
    async fn wait(&self, spec: &LockSpec, bound: Instant);
    /// The doctor's finding on durability settings.
    async fn durability(&self, _e: &SqlBackend<P>) -> Check {
        Check::new(Level::Info, "durability", "not checked")
    }
    /// The doctor's findings: durability, and dlock's rights on the tables.
    async fn doctor(&self, e: &SqlBackend<P>) -> Vec<Check> {
        let mut out = vec![self.durability(e).await];
        out.extend(e.access().await);
        out
    }
}

/// The engine: a lease row per holder, for any [`Dialect`].
pub struct SqlBackend<P: Link = AnyPool> {
    shown: String,
    pool: P,
    t: Names,
    q: Plan,
    d: Box<dyn Dialect<P>>,
    timeout: Duration,
    /// The soonest a busy key's holder can expire, from the last attempt.
    next_expiry: StdMutex<Option<Instant>>,
    waiting: WaiterRows,
    /// Whether the waiter table can be read: without it, shared requests
    /// cannot see waiting writers (and do not give way to them).
    waiter_table: bool,
}

/// A busy attempt: the holders (each with its `lim` and microseconds
/// left), the exclusive waiters counted, and, if some holders were found
/// dead, the most microseconds until their leases end.
type Busy = (Vec<(Holder, i64, i64)>, i64, Option<i64>);

/// A lease row: the holder, the `--limit` it was taken with (0: shared),
/// and how many microseconds it has left by the database's clock.
fn holder(r: &AnyRow) -> sqlx::Result<(Holder, i64, i64)> {
    let acquired_us: i64 = r.try_get("acquired_us")?;
    let left_us: i64 = r.try_get("left_us")?;
    let (h, lim) = lease_holder(
        r,
        epoch_micros(acquired_us),
        SystemTime::now() + Duration::from_micros(left_us.max(0) as u64),
    )?;
    Ok((h, lim, left_us))
}

fn us(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

impl SqlBackend {
    /// Connect to `url` (sqlx's own form, for the `Any` driver) with one
    /// connection: a database connection costs a server process or
    /// thread, and a pool of more opens a second one whenever the first is
    /// on its way back.
    async fn open(
        shown: String,
        url: &str,
        timeout: Duration,
        t: Names,
        q: Statements,
        d: Box<dyn Dialect>,
    ) -> Result<SqlBackend> {
        static DRIVERS: std::sync::Once = std::sync::Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let service = format!("{} {shown}", d.service());
        // The pool retries a refused or full server for part of the time;
        // a direct attempt in the rest says which it was.
        let part = timeout.mul_f64(0.45);
        let pool = match AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(part)
            .connect(url)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let probe = <sqlx::AnyConnection as sqlx::Connection>::connect(url);
                return Err(connect_error(&service, e, part, probe).await);
            }
        };
        Ok(SqlBackend::new(shown, pool, timeout, t, q.into(), d))
    }

    /// Run DDL (several statements) once.
    async fn ddl(&self, what: &str, sql: String) -> Result<()> {
        self.bounded(what, sqlx::raw_sql(AssertSqlSafe(sql)).execute(&self.pool))
            .await
            .map(drop)
    }
}

impl<P: Link> SqlBackend<P> {
    pub fn new(
        shown: String,
        pool: P,
        timeout: Duration,
        t: Names,
        q: Plan,
        d: Box<dyn Dialect<P>>,
    ) -> SqlBackend<P> {
        SqlBackend {
            shown,
            pool,
            t,
            q,
            d,
            timeout,
            next_expiry: StdMutex::new(None),
            waiting: WaiterRows::default(),
            waiter_table: false,
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        if !P::SERVER {
            return Ok(f.await?);
        }
        let service = format!("{} {}", self.d.service(), self.shown);
        use futures_util::TryFutureExt;
        kit::bounded(&service, what, self.timeout, f.map_err(Shown), |e| {
            kind(&e.0)
        })
        .await
    }

    /// One statement on a connection of its own.
    async fn call(&self, what: &str, stmt: &Stmt, args: &Args<'_>) -> Result<Out> {
        let run = async { self.pool.conn().await?.run(stmt, args).await };
        self.bounded(what, run).await
    }

    /// Extend our lease to `ttl` from now if it is still live (and mark it
    /// as of `kind`, if given, where the dialect keeps kinds); whether it was.
    async fn extend(&self, lease: &Lease, ttl: Duration, kind: Option<LeaseKind>) -> Result<bool> {
        let a = Args {
            ttl_us: us(ttl),
            kind: kind.map(LeaseKind::as_str),
            ..Args::of(&lease.namespace, &lease.key).id(&lease.id)
        };
        Ok(self.call("renew", &self.q.renew, &a).await?.affected == 1)
    }

    /// A lease row as the dialect knows it: the holder (dead or not), its
    /// `lim`, and its microseconds left.
    fn holder(&self, r: &AnyRow) -> sqlx::Result<(Holder, i64, i64)> {
        let (mut h, lim, left) = holder(r)?;
        h.dead = self.d.dead(r);
        Ok((h, lim, left))
    }

    /// Delete the rows of our waiter entries. A writer that stops waiting
    /// wakes the readers that were giving way to it.
    async fn drop_waiters(&self) {
        let (id, shared, rows) = self.waiting.clear();
        for (ns, key) in rows {
            let a = Args::of(&ns, &key).id(&id);
            let _ = self.call("waiting", &self.q.delete_waiter, &a).await;
            if !shared {
                self.d.freed(self, &ns, &key).await;
            }
        }
    }

    /// The doctor's findings on dlock's rights: every statement dlock
    /// makes, rolled back, and reading the waiter table.
    async fn access(&self) -> Vec<Check> {
        let Some(spelling) = &self.q.spelling else {
            return Vec::new();
        };
        let probe_key = format!("doctor-{}", self.waiting.id());
        let a = Args::of("", &probe_key);
        let probe = async {
            let mut c = self.pool.conn().await?;
            let mut tx = c.begin(None).await?;
            for sql in self.t.probe_statements(spelling) {
                tx.run(&Stmt::new(sql, &[Arg::Key]), &a).await?;
            }
            tx.rollback().await
        };
        let probe = self.bounded("a rolled-back test write", probe).await;
        let read = Stmt::new(format!("SELECT 1 FROM {} LIMIT 1", self.t.waiter), &[]);
        let waiters = self
            .call("reading the waiter table", &read, &a)
            .await
            .map(drop);
        self.t.judge_access(probe, waiters)
    }

    /// Whether `spec.key` is busy, by reading its holders (and, for a shared
    /// request, the writers waiting) outside a transaction: `None` when it
    /// may be free, or a holder is dead (the write transaction breaks its
    /// lease), else the holders and writers that keep it busy.
    async fn peek(&self, spec: &LockSpec, a: &Args<'_>) -> Result<Option<Busy>> {
        let rows = self.call("acquire", &self.q.holders, a).await?.rows;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut held = Vec::with_capacity(rows.len());
        for r in &rows {
            let h = self.holder(r)?;
            if h.0.dead {
                return Ok(None);
            }
            held.push(h);
        }
        let mut writers = 0;
        if spec.shared && self.waiter_table {
            let out = self.call("acquire", &self.q.exclusive_waiters, a).await?;
            writers = out.first()?.unwrap_or(0);
        }
        if kit::admits(spec.mode(), &ahead(held.iter().map(|h| h.1), writers)) {
            return Ok(None);
        }
        Ok(Some((held, writers, None)))
    }

    /// One attempt; when busy only because of holders found dead, whose
    /// leases end within [`BREAK_GRACE`], also when they will be gone.
    async fn attempt(&self, spec: &LockSpec, me: &Owner) -> Result<(Attempt, Option<Instant>)> {
        let granted_at = Instant::now();
        let (ns, key) = (&spec.namespace, &spec.key);
        let q = &self.q;
        let row_id = self.d.row_id(me);
        let mut a = Args {
            id: &row_id,
            owner: &me.user,
            host: &me.host,
            pid: i64::from(me.pid),
            host_id: &me.host_id,
            proc_start: me.proc_start as i64,
            kind: Some(me.kind.as_str()),
            lim: lim_of(spec) as i32,
            ttl_us: us(spec.ttl),
            ..Args::of(ns, key)
        };
        let grace = us(BREAK_GRACE);
        // A database file: a key found busy by a read alone is busy without
        // the write lock, on which arriving waiters would queue behind the
        // hand-over to the waiter just woken.
        let peeked = if P::SERVER || self.d.first_in_line(spec, me.kind) {
            None
        } else {
            self.peek(spec, &a).await?
        };
        let attempt = async {
            let mut c = self.pool.conn().await?;
            let mut tx = c.begin(q.begin).await?;
            // Lock this key's fence row: contenders queue here.
            if let Some(fence) = &q.fence {
                tx.run(fence, &a).await?;
            }
            tx.run(&q.delete_expired, &a).await?;
            let rows = tx.run(&q.holders_locked, &a).await?.rows;
            let mut lims = Vec::with_capacity(rows.len());
            for r in &rows {
                lims.push(r.try_get::<i64, _>("lim")?);
            }
            // A shared request also gives way to the writers waiting.
            let mut writers = 0;
            if spec.shared && self.waiter_table {
                writers = tx
                    .run(&q.exclusive_waiters, &a)
                    .await?
                    .first()?
                    .unwrap_or(0);
            }
            if !kit::admits(spec.mode(), &ahead(lims, writers)) {
                let mut held = Vec::with_capacity(rows.len());
                // Holders known dead: their leases end BREAK_GRACE from
                // now instead of at their TTL, by when they are gone.
                let mut gone = None;
                for r in &rows {
                    let (h, lim, left) = self.holder(r)?;
                    if let (true, Some(brk)) = (h.dead, &q.break_lease) {
                        gone = gone.max(Some(left.min(grace).max(0)));
                        if left > grace {
                            tracing::info!(
                                key = spec.key,
                                pid = h.pid,
                                "the holder's process is gone: breaking its lease"
                            );
                            let id: String = r.try_get("id")?;
                            let a = Args::of(ns, key).id(&id);
                            tx.run(brk, &a).await?;
                        }
                    }
                    held.push((h, lim, left));
                }
                tx.commit().await?;
                return Ok::<_, sqlx::Error>(Err((held, writers, gone)));
            }
            if let Some(bump) = &q.bump {
                let out = tx.run(bump, &a).await?;
                a.token = out.first()?.or(out.last_id).unwrap_or(0);
            }
            let out = tx.run(&q.insert, &a).await?;
            if q.bump.is_none() {
                a.token = out.first()?.unwrap_or(0);
            }
            // No longer a waiter: in the same transaction, so the new holder
            // is never counted as both.
            if let Some(id) = self.waiting.ours(spec) {
                let a = Args::of(ns, key).id(&id);
                tx.run(&q.delete_waiter, &a).await?;
            }
            tx.commit().await?;
            Ok(Ok(a.token))
        };
        let result = match peeked {
            Some(busy) => Err(busy),
            None => self.bounded("acquire", attempt).await?,
        };
        match result {
            Ok(token) => {
                self.waiting.done(ns, key);
                self.d.taken(spec, me.kind).await;
                let lease = Lease {
                    namespace: ns.clone(),
                    key: key.clone(),
                    token: token as u64,
                    id: row_id.clone(),
                    ttl: spec.ttl,
                    granted_at,
                    shared: spec.shared,
                    slot: spec.fixed_slot(),
                };
                Ok((Attempt::Acquired(lease), None))
            }
            Err((held, writers, gone)) => {
                self.d.missed(spec).await;
                let soonest = held.iter().map(|h| h.2).min().unwrap_or(i64::MAX);
                *self.next_expiry.lock().unwrap() = Some(
                    Instant::now() + Duration::from_micros(soonest.clamp(0, 3_600_000_000) as u64),
                );
                // Busy only because of holders that are dead: say when they
                // will be gone, so that the caller can try again then.
                let alive = ahead(held.iter().filter(|h| !h.0.dead).map(|h| h.1), writers);
                let free_at = gone
                    .filter(|_| kit::admits(spec.mode(), &alive))
                    .map(|g| Instant::now() + Duration::from_micros(g as u64 + 5_000));
                let holders = held.into_iter().map(|h| h.0).collect();
                Ok((Attempt::Busy(holders), free_at))
            }
        }
    }
}

#[async_trait]
impl<P: Link> Backend for SqlBackend<P> {
    fn describe(&self) -> String {
        self.shown.clone()
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
        let a = Args::of(&lease.namespace, &lease.key).id(&lease.id);
        let out = self.call("release", &self.q.release, &a).await?;
        let live = match out.first::<i64>()? {
            Some(live) => live != 0,
            None => out.affected == 1,
        };
        self.d.freed(self, &lease.namespace, &lease.key).await;
        Ok(live)
    }

    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        // The lease outlives this process now: marked a handle's (where
        // the dialect keeps kinds), nobody breaks it early for its process
        // being gone.
        let ttl = remaining.max(Duration::from_millis(1));
        let kept = self.extend(lease, ttl, Some(LeaseKind::Handle)).await?;
        if let (true, Some(disown)) = (kept, &self.q.disown) {
            let a = Args::of(&lease.namespace, &lease.key).id(&lease.id);
            self.call("keep the lease", disown, &a).await?;
        }
        self.d.freed(self, &lease.namespace, &lease.key).await;
        Ok(kept)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let a = Args::of(namespace, key);
        let n = self
            .call("force release", &self.q.force, &a)
            .await?
            .affected;
        self.d.freed(self, namespace, key).await;
        Ok(n)
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let a = Args::of(namespace, "");
        let mut names = keys.to_vec();
        if names.is_empty() {
            let out = self.call("status", &self.q.held_keys, &a).await?;
            for r in &out.rows {
                names.push(r.try_get(0)?);
            }
        }
        // Without a waiter table (dlock may not create one there): no count.
        let counts = match self.call("status", &self.q.waiter_counts, &a).await {
            Ok(out) => Some(
                out.rows
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<sqlx::Result<Vec<(String, i64)>>>()?,
            ),
            Err(_) => None,
        };
        let mut out = Vec::new();
        for k in names {
            let rows = self
                .call("status", &self.q.holders, &Args::of(namespace, &k))
                .await?
                .rows;
            let w = waiters_of(&counts, &k);
            out.push(key_status(k, &rows, w, |r| {
                Ok(self.holder(r).map(|(h, lim, _)| (h, lim))?)
            })?);
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<PingInfo> {
        let out = self.call("ping", &self.q.version, &Args::default()).await?;
        let version: String = out.first()?.unwrap_or_default();
        Ok(PingInfo {
            kind: self.d.product(&version),
            version,
            detail: self.d.detail().unwrap_or_else(|| self.shown.clone()),
        })
    }

    async fn close(&self) {
        self.drop_waiters().await;
    }

    async fn doctor(&self, _ttl: Duration, _timeout: Duration) -> Vec<Check> {
        self.d.doctor(self).await
    }

    fn shares(&self) -> bool {
        true
    }

    async fn server_time(&self) -> Result<Option<SystemTime>> {
        let Some(clock) = &self.q.clock_us else {
            return Ok(None);
        };
        let out = self
            .call("reading the server's clock", clock, &Args::default())
            .await?;
        Ok(out.first()?.map(epoch_micros))
    }
}

#[async_trait]
impl<P: Link> Poll for SqlBackend<P> {
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner, _join: bool) -> Result<Attempt> {
        // A dead holder's lease ends BREAK_GRACE after it is found dead; the
        // attempt that finds it waits that out and tries once more, so the
        // first contender after a crash gets the lock (`run -n` included).
        match self.attempt(spec, me).await? {
            (Attempt::Busy(_), Some(free_at)) => {
                tokio::time::sleep_until(free_at.into()).await;
                Ok(self.attempt(spec, me).await?.0)
            }
            (attempt, _) => Ok(attempt),
        }
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        let (ns, key) = (&spec.namespace, &spec.key);
        if let Some(id) = self.waiting.due(spec) {
            // Counted as a waiter for `status`, and, if exclusive, seen by
            // later readers, who give way to it; best effort.
            let a = Args::of(ns, key).id(&id);
            let row = self.call("waiting", &self.q.upsert_waiter, &a).await;
            if row.is_ok() && self.waiting.written(ns, key) {
                // Rows of waiters that died long ago: once per key and process.
                let _ = self.call("waiting", &self.q.stale_waiters, &a).await;
            }
        }
        // At least once a second, and just after the soonest holder expires.
        let cap = Instant::now() + Duration::from_secs(1);
        let expiry = self
            .next_expiry
            .lock()
            .unwrap()
            .map(|e| e + Duration::from_millis(5));
        let bound = [Some(cap), until, expiry]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(cap);
        self.d.wait(spec, bound).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_option() {
        let (u, n) = Names::from_url("postgres://h/db?dlock_table=locks&sslmode=disable").unwrap();
        assert_eq!(u, "postgres://h/db?sslmode=disable");
        assert_eq!(n.lease, "locks_lease");
        assert!(Names::from_url("postgres://h/db?dlock_table=x;drop").is_err());
        let (u, n) = Names::from_url("mysql://h/db").unwrap();
        assert_eq!(
            (u.as_str(), n.fence.as_str()),
            ("mysql://h/db", "dlock_fence")
        );
    }

    #[test]
    fn shared_rows() {
        assert_eq!(mode_of_lim(0), Mode::Shared);
        assert_eq!(mode_of_lim(1), Mode::Exclusive { limit: 1 });
        assert_eq!(mode_of_lim(5), Mode::Exclusive { limit: 5 });
        let mut spec = LockSpec {
            namespace: "n".into(),
            key: "k".into(),
            ttl: Duration::from_secs(1),
            limit: 1,
            shared: true,
        };
        assert_eq!(lim_of(&spec), 0);
        assert_eq!(mode_of_lim(lim_of(&spec).into()), spec.mode());
        spec.shared = false;
        assert_eq!(mode_of_lim(lim_of(&spec).into()), spec.mode());
        // Exclusive waiters keep the id older versions wrote; shared ones
        // are told apart by the pattern the statements bind.
        assert_eq!(waiter_id("12-ab", false), "12-ab");
        let s = waiter_id("12-ab", true);
        assert!(s.starts_with(SHARED_WAITER_LIKE.trim_end_matches('%')));
        assert!(!"12-ab".starts_with(SHARED_WAITER));
    }

    #[test]
    fn a_running_process_row_id_tells_whether_it_is_gone() {
        let pid = std::process::id();
        let me = Owner {
            id: "0123456789abcdef0123456789abcdef".into(),
            user: "u".into(),
            host: "h".into(),
            pid,
            host_id: crate::host::host_id(),
            proc_start: crate::host::proc_start(pid).unwrap(),
            kind: LeaseKind::Run,
            value: None,
        };
        let id = row_id(&me);
        assert!(id.len() <= 64, "MySQL's id column: {id}");
        assert!(id.starts_with("0123456789abcdef01234567~"), "{id}");
        assert!(!dead_by_row_id(&id, i64::from(pid)), "we are alive");
        let reused = row_id(&Owner {
            proc_start: me.proc_start + 1,
            ..me.clone()
        });
        assert!(dead_by_row_id(&reused, i64::from(pid)), "another process");
        let elsewhere = row_id(&Owner {
            host_id: "another boot".into(),
            proc_start: me.proc_start + 1,
            ..me.clone()
        });
        assert!(
            !dead_by_row_id(&elsewhere, i64::from(pid)),
            "not ours to judge"
        );
        // A handle's row, and what older versions wrote: the bare secret.
        let handle = Owner {
            kind: LeaseKind::Handle,
            ..me.clone()
        };
        assert_eq!(row_id(&handle), me.id);
        assert!(!dead_by_row_id(&me.id, 0));
    }
}
