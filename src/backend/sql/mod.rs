//! PostgreSQL and MySQL/MariaDB: one engine over two dialects.
//!
//! A lease row per holder, judged by the database server's clock, never the
//! client's. Tables (created if missing; `?dlock_table=NAME` in the URL
//! renames the `dlock` prefix): `dlock_lease` (one row per held lease),
//! `dlock_fence` (the per-key token counter) and `dlock_waiter` (waiters,
//! for `status`). Acquisition is one transaction of the same steps on both:
//! lock the key's fence row (contenders queue on that row lock, so no more
//! than `--limit` are ever admitted), delete expired leases, read the live
//! ones, and if [`kit::admits`] lets us in bump the token and insert our
//! lease, dropping our waiter row in the same transaction. Every value is a
//! bound parameter.
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
//! What differs is in a [`Dialect`]: the statements' spelling, the tables,
//! the token bump, how a waiter is woken (PostgreSQL `LISTEN`/`NOTIFY`,
//! MySQL `GET_LOCK`), and the doctor's durability check. The engine talks
//! through sqlx's `Any` driver, so it is written once.
//!
//! SQLite ([`super::sqlite`]) keeps its own transaction (the client's clock
//! in milliseconds, `BEGIN IMMEDIATE` instead of a fence-row lock, the
//! `flock` wake-up, breaking a dead local holder's lease) over sqlx's own
//! SQLite driver, but shares with this engine what the two layouts have in
//! common: a lease row's holder ([`lease_holder`]), what a request is
//! admitted behind ([`ahead`]), this process's waiter rows
//! ([`WaiterRows`]), a key's status ([`key_status`], [`waiters_of`]) and
//! the key hash ([`fnv64`]).

mod crowd;
mod mysql;
mod postgres;

pub use mysql::connect as connect_mysql;
pub use postgres::connect as connect_postgres;

use std::borrow::Cow;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AssertSqlSafe, Row};

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
) -> Result<(Holder, i64)>
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
            _ => return kit::no_answer(service, "connect", timeout),
        },
        e => e,
    };
    kit::typed(kind(&e), format!("{service}: connect: {}", Shown(e)))
}

/// A server's clock reading in microseconds since the epoch.
pub fn epoch_micros(us: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)
}

/// The statements of one dialect. Each takes its parameters in the order
/// its comment gives, the same on every dialect, so the engine binds them
/// once for all.
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

/// What one database does its own way, beside its statements.
#[async_trait]
pub trait Dialect: Send + Sync {
    /// The service's name in messages: `PostgreSQL`, `MySQL`.
    fn service(&self) -> &'static str;
    /// The product, from its version string, for `ping`.
    fn product(&self, version: &str) -> &'static str;
    /// We took `spec.key` (MySQL holds a wake-up lock for an exclusive one).
    async fn taken(&self, _spec: &LockSpec, _kind: LeaseKind) {}
    /// We let go of a key, broke it, or stopped waiting for it as a writer
    /// (readers may be giving way to us): wake its waiters.
    async fn freed(&self, e: &SqlBackend, ns: &str, key: &str);
    /// Sleep until trying `spec.key` again is worthwhile, or `bound`.
    async fn wait(&self, spec: &LockSpec, bound: Instant);
    /// The doctor's finding on durability settings.
    async fn durability(&self, e: &SqlBackend) -> Check;
}

/// The engine: a lease row per holder, for any [`Dialect`].
pub struct SqlBackend {
    shown: String,
    pool: AnyPool,
    t: Names,
    q: Statements,
    d: Box<dyn Dialect>,
    timeout: Duration,
    /// The soonest a busy key's holder can expire, from the last attempt.
    next_expiry: StdMutex<Option<Instant>>,
    waiting: WaiterRows,
    /// Whether the waiter table can be read: without it, shared requests
    /// cannot see waiting writers (and do not give way to them).
    waiter_table: bool,
}

/// A lease row: the holder, the `--limit` it was taken with (0: shared),
/// and how many microseconds it has left by the server's clock.
fn holder(r: &AnyRow) -> Result<(Holder, i64, i64)> {
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
        Ok(SqlBackend {
            shown,
            pool,
            t,
            q,
            d,
            timeout,
            next_expiry: StdMutex::new(None),
            waiting: WaiterRows::default(),
            waiter_table: false,
        })
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        let service = format!("{} {}", self.d.service(), self.shown);
        use futures_util::TryFutureExt;
        kit::bounded(&service, what, self.timeout, f.map_err(Shown), |e| {
            kind(&e.0)
        })
        .await
    }

    /// Run DDL (several statements) once.
    async fn ddl(&self, what: &str, sql: String) -> Result<()> {
        self.bounded(what, sqlx::raw_sql(AssertSqlSafe(sql)).execute(&self.pool))
            .await
            .map(drop)
    }

    /// Delete the rows of our waiter entries. A writer that stops waiting
    /// wakes the readers that were giving way to it.
    async fn drop_waiters(&self) {
        let (id, shared, rows) = self.waiting.clear();
        for (ns, key) in rows {
            let q = sqlx::query(AssertSqlSafe(self.q.delete_waiter.as_str()))
                .bind(&ns)
                .bind(&key)
                .bind(id.as_ref())
                .execute(&self.pool);
            let _ = self.bounded("waiting", q).await;
            if !shared {
                self.d.freed(self, &ns, &key).await;
            }
        }
    }
}

#[async_trait]
impl Backend for SqlBackend {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn poller(&self) -> Option<&dyn Poll> {
        Some(self)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        let q = sqlx::query(AssertSqlSafe(self.q.renew.as_str()))
            .bind(us(ttl))
            .bind(&lease.namespace)
            .bind(&lease.key)
            .bind(&lease.id)
            .execute(&self.pool);
        Ok(if self.bounded("renew", q).await?.rows_affected() == 1 {
            Renewal::Renewed
        } else {
            Renewal::Lost
        })
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let q = sqlx::query(AssertSqlSafe(self.q.release.as_str()))
            .bind(&lease.namespace)
            .bind(&lease.key)
            .bind(&lease.id)
            .execute(&self.pool);
        let n = self.bounded("release", q).await?.rows_affected();
        self.d.freed(self, &lease.namespace, &lease.key).await;
        Ok(n == 1)
    }

    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        let kept = self
            .renew(lease, remaining.max(Duration::from_millis(1)))
            .await?
            == Renewal::Renewed;
        self.d.freed(self, &lease.namespace, &lease.key).await;
        Ok(kept)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let q = sqlx::query(AssertSqlSafe(self.q.force.as_str()))
            .bind(namespace)
            .bind(key)
            .execute(&self.pool);
        let n = self.bounded("force release", q).await?.rows_affected();
        self.d.freed(self, namespace, key).await;
        Ok(n)
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let mut names = keys.to_vec();
        if names.is_empty() {
            let q = sqlx::query_scalar(AssertSqlSafe(self.q.held_keys.as_str()))
                .bind(namespace)
                .fetch_all(&self.pool);
            names = self.bounded("status", q).await?;
        }
        // Without a waiter table (dlock may not create one there): no count.
        let q = sqlx::query_as(AssertSqlSafe(self.q.waiter_counts.as_str()))
            .bind(namespace)
            .fetch_all(&self.pool);
        let counts: Option<Vec<(String, i64)>> = self.bounded("status", q).await.ok();
        let mut out = Vec::new();
        for k in names {
            let q = sqlx::query(AssertSqlSafe(self.q.holders.as_str()))
                .bind(namespace)
                .bind(&k)
                .fetch_all(&self.pool);
            let rows: Vec<AnyRow> = self.bounded("status", q).await?;
            let w = waiters_of(&counts, &k);
            out.push(key_status(k, &rows, w, |r| {
                holder(r).map(|(h, lim, _)| (h, lim))
            })?);
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<PingInfo> {
        let q = sqlx::query_scalar(self.q.version).fetch_one(&self.pool);
        let version: String = self.bounded("ping", q).await?;
        Ok(PingInfo {
            kind: self.d.product(&version),
            version,
            detail: self.shown.clone(),
        })
    }

    async fn close(&self) {
        self.drop_waiters().await;
    }

    async fn doctor(&self, _ttl: Duration, _timeout: Duration) -> Vec<Check> {
        let mut out = vec![self.d.durability(self).await];
        // Rights: every statement dlock makes, rolled back.
        let probe_key = format!("doctor-{}", self.waiting.id());
        let probe = async {
            let mut tx = self.pool.begin().await?;
            for sql in self.t.probe_statements(&self.q.spelling) {
                sqlx::query(AssertSqlSafe(sql))
                    .bind(&probe_key)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.rollback().await
        };
        let probe = self.bounded("a rolled-back test write", probe).await;
        let waiters = sqlx::query(AssertSqlSafe(format!(
            "SELECT 1 FROM {} LIMIT 1",
            self.t.waiter
        )))
        .fetch_optional(&self.pool);
        let waiters = self
            .bounded("reading the waiter table", waiters)
            .await
            .map(drop);
        out.extend(self.t.judge_access(probe, waiters));
        out
    }

    fn shares(&self) -> bool {
        true
    }

    async fn server_time(&self) -> Result<Option<SystemTime>> {
        let q = sqlx::query_scalar(self.q.clock_us).fetch_one(&self.pool);
        let us: i64 = self.bounded("reading the server's clock", q).await?;
        Ok(Some(epoch_micros(us)))
    }
}

#[async_trait]
impl Poll for SqlBackend {
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner) -> Result<Attempt> {
        let granted_at = Instant::now();
        let (ns, key) = (&spec.namespace, &spec.key);
        let q = &self.q;
        let attempt = async {
            let mut tx = self.pool.begin().await?;
            // Lock this key's fence row: contenders queue here.
            for sql in [&q.fence, &q.delete_expired] {
                sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(ns)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            let rows = sqlx::query(AssertSqlSafe(q.holders_locked.as_str()))
                .bind(ns)
                .bind(key)
                .fetch_all(&mut *tx)
                .await?;
            let mut lims = Vec::with_capacity(rows.len());
            for r in &rows {
                lims.push(r.try_get::<i64, _>("lim")?);
            }
            // A shared request also gives way to the writers waiting.
            let mut writers = 0;
            if spec.shared && self.waiter_table {
                writers = sqlx::query_scalar(AssertSqlSafe(q.exclusive_waiters.as_str()))
                    .bind(ns)
                    .bind(key)
                    .bind(SHARED_WAITER_LIKE)
                    .fetch_one(&mut *tx)
                    .await?;
            }
            if !kit::admits(spec.mode(), &ahead(lims, writers)) {
                tx.commit().await?;
                return Ok::<_, sqlx::Error>(Err(rows));
            }
            let bumped = match &q.bump {
                Some(bump) => {
                    let r = sqlx::query(AssertSqlSafe(bump.as_str()))
                        .bind(ns)
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                    Some(r.last_insert_id().unwrap_or(0))
                }
                None => None,
            };
            let insert = sqlx::query(AssertSqlSafe(q.insert.as_str()))
                .bind(ns)
                .bind(key)
                .bind(&me.id)
                .bind(&me.user)
                .bind(&me.host)
                .bind(i64::from(me.pid))
                .bind(lim_of(spec) as i32)
                .bind(us(spec.ttl));
            let token: i64 = match bumped {
                Some(t) => {
                    insert.execute(&mut *tx).await?;
                    t
                }
                None => insert.fetch_one(&mut *tx).await?.try_get(0)?,
            };
            // No longer a waiter: in the same transaction, so the new holder
            // is never counted as both.
            if let Some(id) = self.waiting.ours(spec) {
                sqlx::query(AssertSqlSafe(q.delete_waiter.as_str()))
                    .bind(ns)
                    .bind(key)
                    .bind(id.as_ref())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(Ok(token))
        };
        match self.bounded("acquire", attempt).await? {
            Ok(token) => {
                self.waiting.done(ns, key);
                self.d.taken(spec, me.kind).await;
                Ok(Attempt::Acquired(Lease {
                    namespace: ns.clone(),
                    key: key.clone(),
                    token: token as u64,
                    id: me.id.clone(),
                    ttl: spec.ttl,
                    granted_at,
                    shared: spec.shared,
                }))
            }
            Err(rows) => {
                let mut hs = Vec::new();
                let mut soonest = i64::MAX;
                for r in &rows {
                    let (h, _, left) = holder(r)?;
                    soonest = soonest.min(left);
                    hs.push(h);
                }
                *self.next_expiry.lock().unwrap() = Some(
                    Instant::now() + Duration::from_micros(soonest.clamp(0, 3_600_000_000) as u64),
                );
                Ok(Attempt::Busy(hs))
            }
        }
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        let (ns, key) = (&spec.namespace, &spec.key);
        if let Some(id) = self.waiting.due(spec) {
            // Counted as a waiter for `status`, and, if exclusive, seen by
            // later readers, who give way to it; best effort.
            let row = sqlx::query(AssertSqlSafe(self.q.upsert_waiter.as_str()))
                .bind(ns)
                .bind(key)
                .bind(id.as_ref())
                .bind(us(WAITER_LAPSE))
                .execute(&self.pool);
            if self.bounded("waiting", row).await.is_ok() && self.waiting.written(ns, key) {
                // Rows of waiters that died long ago: once per key and process.
                let stale = sqlx::query(AssertSqlSafe(self.q.stale_waiters.as_str()))
                    .bind(ns)
                    .bind(key)
                    .execute(&self.pool);
                let _ = self.bounded("waiting", stale).await;
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
}
