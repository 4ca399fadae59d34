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
mod errors;
mod line;
mod link;
mod liveness;
mod mysql;
mod names;
mod plan;
mod postgres;
mod sqlite;

pub use errors::*;
pub use line::*;
pub use link::*;
pub use liveness::*;
pub use names::*;
pub use plan::*;

pub use mysql::connect as connect_mysql;
pub use postgres::connect as connect_postgres;
pub use sqlite::connect as connect_sqlite;

use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AssertSqlSafe, Row};

use super::kit;
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Poll, Renewal,
};
use crate::backend::probe::{Check, Level};

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
    use crate::backend::kit::Mode;

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
