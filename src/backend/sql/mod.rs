//! PostgreSQL, MySQL/MariaDB and SQLite: one engine over three dialects.
//!
//! A lease row per holder, judged by the database's clock (a server's, or
//! for SQLite, which has no server, the client's on the one host that
//! shares the file). Tables (created if missing; `?dlock_table=NAME` in a
//! server's URL renames the `dlock` prefix): `dlock_lease` (one row per
//! held lease), `dlock_fence` (the per-key token counter), `dlock_queue`
//! (the line of waiters, fair queues: [`attempt`]) and `dlock_waiter`
//! (waiters, as older versions count them). Acquisition is one
//! transaction of the same steps on all three (`SqlBackend::attempt`):
//! lock the key (its fence row, or SQLite's `BEGIN IMMEDIATE`; contenders
//! queue there, so no more than `--limit` are ever admitted), delete
//! expired leases, read the live ones and the line, and if [`kit::admits`]
//! lets us in behind them and the waiters ahead of us, bump the token and
//! insert our lease (a semaphore's with the lowest free slot in its id),
//! leaving the line in the same transaction; if not, join it. Holders the
//! dialect knows to be dead ([`Dialect::dead`]) have their leases ended
//! [`BREAK_GRACE`] from now, and the attempt is made once more then;
//! waiters known dead leave the line at once. Every value is a bound
//! parameter, each statement naming its own ([`Stmt`], [`Arg`]).
//!
//! Shared locks (`--shared`) use the same tables: a shared lease is a
//! lease row with `lim = 0` (an exclusive one has its `--limit`, 1 or
//! more), and a shared waiter's row in `dlock_waiter` has its id prefixed
//! with `s:` (an exclusive waiter's id is the bare waiter id, as before). A
//! shared request is admitted when nothing ahead of it (leases, waiters
//! ahead in line, and older versions' exclusive waiters, who are not in
//! line) is exclusive: once a writer waits, later readers wait behind it.
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

mod attempt;
// What PostgreSQL and MySQL share: waiters on servers.
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod crowd;
mod direct;
mod errors;
mod line;
mod link;
mod liveness;
#[cfg(feature = "mysql")]
mod mysql;
mod names;
#[cfg(feature = "postgres")]
mod pglink;
mod place;
mod plan;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

pub use errors::*;
pub use line::*;
pub use link::*;
pub use liveness::*;
pub use names::*;
pub use plan::*;

#[cfg(feature = "mysql")]
pub use mysql::connect as connect_mysql;
#[cfg(feature = "postgres")]
pub use postgres::connect as connect_postgres;
pub use sqlite::connect as connect_sqlite;

use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::kit;
use super::{
    Attempt, Backend, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Poll, Renewal,
};
use crate::backend::probe::{Check, Level};

/// What one database does its own way, beside its statements. The methods
/// with a body are those a server dialect leaves alone.
#[async_trait]
pub trait Dialect<P: Link = link::Held>: Send + Sync {
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
    /// Before an attempt: whether this process is first in line for
    /// `spec.key` (SQLite: it has just locked the key's wake file, for a
    /// `run`; PostgreSQL: the release's notification named it; MySQL: the
    /// release handed it the key's wake-up lock), so that it goes straight
    /// to the write transaction without reading first whether the key is
    /// busy.
    fn first_in_line(&self, _spec: &LockSpec, _kind: LeaseKind) -> bool {
        false
    }
    /// We took `spec.key` (MySQL holds a wake-up lock for an exclusive one).
    async fn taken(&self, _spec: &LockSpec, _kind: LeaseKind) {}
    /// An attempt found `spec.key` busy.
    /// An attempt found `spec.key` busy, with `ahead` live waiters ahead
    /// of us in its line; `place` is (our id, the id of the live waiter just
    /// ahead of us) when we are in the line.
    async fn missed(&self, _spec: &LockSpec, _ahead: usize, _place: Option<(&str, Option<&str>)>) {}
    /// We let go of a key, broke it, or left its line (those behind us
    /// may now go): wake its waiters. (Not after a release by
    /// [`Plan::release_waking`], which wakes them itself.)
    async fn freed(&self, e: &SqlBackend<P>, ns: &str, key: &str);
    /// Sleep until trying `spec.key` again is worthwhile, or `bound`.
    /// `ahead` is work for the engine's connection ([`Ahead`]): a dialect
    /// that waits on a connection of its own runs it meanwhile, the others
    /// first.
    async fn wait(&self, spec: &LockSpec, bound: Instant, ahead: Ahead<'_>);
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

/// Work a waiter does on the engine's connection while it waits: the
/// preparing of the statements of its grant and its release
/// ([`SqlBackend::prepare_ahead`]).
pub type Ahead<'a> = Option<futures_util::future::BoxFuture<'a, ()>>;

/// The engine: a lease row per holder, for any [`Dialect`].
pub struct SqlBackend<P: Link = link::Held> {
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
    /// Whether the line of waiters ([`Names::queue`]) can be used:
    /// without it (dlock may not create tables there), waiters are not
    /// served in arrival order.
    queue_table: bool,
    /// Whether a waiter has prepared the statements of its grant and its
    /// release ([`SqlBackend::prepare_ahead`]).
    prepared: std::sync::atomic::AtomicBool,
}

/// A server connection unused for this long is pinged before its next
/// step (a lost one is replaced): sqlx's pool tested it before every
/// step, a round trip each, where only a connection left idle (a holder's
/// command running) can have lost its server. A waiter uses its
/// connection at least once a second, and a contended hand-off takes
/// milliseconds.
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// How many times in a row a step is run when the server ends it as a
/// deadlock's victim ([`SqlBackend::bounded_again`]).
const VICTIM_TRIES: u32 = 5;

/// How long an attempt waits for the key's row lock (behind other
/// attempts) before it gives up as busy: half the call's bound.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn lock_wait(timeout: Duration) -> Duration {
    timeout / 2
}

fn us(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

// The server databases' connection (SQLite has its own: [`direct`]).
#[cfg(any(feature = "postgres", feature = "mysql"))]
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
        init: Option<String>,
    ) -> Result<SqlBackend> {
        static DRIVERS: std::sync::Once = std::sync::Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let service = format!("{} {shown}", d.service());
        // The pool retries a refused or full server for part of the time;
        // a direct attempt in the rest says which it was.
        let part = timeout.mul_f64(0.45);
        let pool = match sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(part)
            // The one connection (MySQL's: PostgreSQL holds its own in
            // `pglink`) keeps session state that others rely on for as
            // long as we run, the wake-up lock of a key we hold: never
            // recycled for its age or idleness.
            .max_lifetime(None)
            .idle_timeout(None)
            // Tested only after a while unused ([`IDLE_CHECK`]), as
            // PostgreSQL's held connection is: sqlx pinged it before every
            // step, a round trip each, some on the way to a hand-off. (A
            // step that ended well keeps it out of the pool: [`Held`].)
            .test_before_acquire(false)
            .before_acquire(|c, meta| {
                Box::pin(async move {
                    if meta.idle_for >= IDLE_CHECK {
                        sqlx::Connection::ping(c).await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |c, _| {
                // A session setting of the dialect's (a constant, no input).
                let init = init.clone();
                Box::pin(async move {
                    if let Some(sql) = init {
                        sqlx::Executor::execute(c, sqlx::AssertSqlSafe(sql)).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let probe = <sqlx::AnyConnection as sqlx::Connection>::connect(url);
                return Err(connect_error(&service, e, part, probe).await);
            }
        };
        let link = link::Held::new(pool);
        Ok(SqlBackend::new(shown, link, timeout, t, q.into(), d))
    }

    /// Run DDL (several statements) once.
    async fn ddl(&self, what: &str, sql: String) -> Result<()> {
        self.bounded(
            what,
            self.pool
                .with(move |c| Box::pin(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(c))),
        )
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
            queue_table: false,
            prepared: Default::default(),
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

    /// [`Self::bounded`] for a step that the server may end as a
    /// deadlock's victim ([`victim`]): a server picks one whenever two
    /// transactions lock rows in crossing orders, and rolls it back whole
    /// (seen once in CI, a shared reader's attempt on MariaDB; which
    /// transaction crossed it was not found). `step` makes the step afresh; it is run again,
    /// after a short jittered pause, up to [`VICTIM_TRIES`] times, all
    /// within the one bound, and only while half the bound is left: a run
    /// may wait that long for a row lock (`lock_wait`) and end as busy, and
    /// one that ran out of bound would end as a server that does not
    /// answer (69 at once). PostgreSQL finds a deadlock only after
    /// `deadlock_timeout` (1 s). (A victim that is not run again is a busy
    /// key, waited out like one: exit 75 under `--no-wait`, never 69.)
    async fn bounded_again<T, F, Fut>(&self, what: &str, mut step: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let run = async {
            let mut pause = kit::Backoff::new(Duration::from_millis(2), Duration::from_millis(50));
            let mut tries = 1;
            let started = Instant::now();
            let again = || started.elapsed() < self.timeout / 2;
            loop {
                match step().await {
                    Err(e) if tries < VICTIM_TRIES && victim(&e) && again() => {
                        tracing::debug!(what, tries, error = %Shown(e), "run again");
                        tries += 1;
                        tokio::time::sleep(pause.next_delay()).await;
                    }
                    r => return r,
                }
            }
        };
        self.bounded(what, run).await
    }

    /// A server prepares each statement once per connection, a round trip
    /// (two on PostgreSQL) the first time it runs. A waiter prepares those
    /// of its grant and of its release while it waits: off the path of the
    /// hand-offs to it and from it. (An insert that returns the token, with
    /// no separate bump, as on PostgreSQL, is left to its first run: sqlx
    /// describes a prepared statement's columns with a catalog query, 2 ms
    /// of a new server process's CPU.)
    async fn prepare_ahead(&self) {
        // Once per process, counted when it runs: a dialect may drop it
        // unrun (a MySQL waiter about to close its connection).
        if self
            .prepared
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let q = &self.q;
        // A waiter's first attempt only read (with the line; without it,
        // on a server, it was the transaction, whose statements a prepare
        // then finds cached): the statements of the attempt's transaction
        // have not run on this connection yet either, a round trip each,
        // once woken, before the grant.
        let read = if self.queue_table {
            &q.line_locked
        } else {
            &q.holders_locked
        };
        let tx = [q.fence.as_ref(), q.delete_expired.as_ref(), Some(read)];
        // (Where the insert also leaves the line, the grant has no other
        // statement.)
        let apart = q.insert_leaving.is_none();
        let ahead = [
            q.bump.as_ref(),
            q.bump.as_ref().map(|_| &q.insert),
            (apart && self.queue_table).then_some(&q.dequeue),
            (apart && self.waiter_table).then_some(&q.delete_waiter),
            Some(q.release_waking.as_ref().unwrap_or(&q.release)),
        ];
        let stmts: Vec<&Stmt> = tx.into_iter().chain(ahead).flatten().collect();
        let prepare = async {
            let mut c = self.pool.conn().await?;
            c.prepare(stmts).await
        };
        let _ = kit::best_effort(self.timeout, prepare).await;
    }

    /// One statement on a connection of its own.
    async fn call(&self, what: &str, stmt: &Stmt, args: &Args<'_>) -> Result<Out> {
        let run = || async { self.pool.conn().await?.run(stmt, args).await };
        self.bounded_again(what, run).await
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
        self.t.judge_access(probe, waiters, self.queue_table)
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
        // Whether our lease was live: the row the release returns, if any,
        // else whether it deleted one.
        let live = |out: &Out| -> Result<bool> {
            Ok(match out.first::<i64>()? {
                Some(live) => live != 0,
                None => out.affected == 1,
            })
        };
        if let Some(waking) = &self.q.release_waking {
            // The bound covers the call; the server's own error is looked
            // at, but for a deadlock's victim's, run again.
            let run = || async {
                match self.pool.conn().await?.run(waking, &a).await {
                    Err(e) if victim(&e) => Err(e),
                    r => Ok(r),
                }
            };
            match self.bounded_again("release", run).await? {
                Ok(out) => return live(&out),
                // Refused by the server (its notification queue full, the
                // line's table unreadable): the release does not hang on the
                // wake-up. The plain delete, then the wake-up on its own.
                Err(sqlx::Error::Database(e)) => {
                    tracing::debug!(error = %e.message(), "release and wake-up refused: releasing alone")
                }
                Err(e) => {
                    return self
                        .bounded("release", std::future::ready(Err::<bool, _>(e)))
                        .await;
                }
            }
        }
        let out = self.call("release", &self.q.release, &a).await?;
        let live = live(&out)?;
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
        let read = if self.queue_table {
            &self.q.line
        } else {
            &self.q.holders
        };
        for k in names {
            let rows = self
                .call("status", read, &Args::of(namespace, &k))
                .await?
                .rows;
            let w = waiters_of(&counts, &k);
            out.push(key_status(k, self.line_of(&rows)?, w));
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

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::SHARES
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
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner, join: bool) -> Result<Attempt> {
        // A dead holder's lease ends BREAK_GRACE after it is found dead; the
        // attempt that finds it waits that out and tries once more, so the
        // first contender after a crash gets the lock (`run -n` included).
        match self.attempt(spec, me, join).await? {
            (Attempt::Busy(_), Some(free_at)) => {
                tokio::time::sleep_until(free_at.into()).await;
                Ok(self.attempt(spec, me, join).await?.0)
            }
            (attempt, _) => Ok(attempt),
        }
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        let (ns, key) = (&spec.namespace, &spec.key);
        if self.queue_table {
            self.renew_place(spec).await;
        } else if let Some(id) = self.waiting.due(spec) {
            // Counted as a waiter for `status`, and, if exclusive, seen by
            // later readers, who give way to it; best effort.
            let a = Args::of(ns, key).id(&id);
            let row = self.call("waiting", &self.q.upsert_waiter, &a).await;
            if row.is_ok() && self.waiting.written(ns, key) && self.tidies() {
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
        let ahead: Ahead<'_> = (P::SERVER
            && !self.prepared.load(std::sync::atomic::Ordering::Relaxed))
        .then(|| Box::pin(self.prepare_ahead()) as _);
        self.d.wait(spec, bound, ahead).await;
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
