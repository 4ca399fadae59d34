//! Where the engine's statements go: MySQL's pool's one connection
//! ([`Held`]), PostgreSQL's held connection, or a database file's one
//! connection, in rows of `Any` every way.

use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use sqlx::any::Any;
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, AnyPool, Either};

use super::IDLE_CHECK;
use crate::backend::kit;

use super::direct;
use super::plan::{Args, Out, Stmt, Val};

/// `stmt` with the values of `args` bound, as a query of `$db`.
macro_rules! bound {
    ($stmt:expr, $args:expr) => {{
        let mut q = sqlx::query($stmt.sql.clone());
        for &a in $stmt.args {
            q = match $args.val(a) {
                Val::Str(v) => q.bind(v),
                Val::Owned(v) => q.bind(v),
                Val::Opt(v) => q.bind(v),
                Val::I64(v) => q.bind(v),
                Val::I32(v) => q.bind(v),
            };
        }
        q
    }};
}

pub(super) async fn run_any(
    c: &mut AnyConnection,
    stmt: &Stmt,
    args: &Args<'_>,
) -> sqlx::Result<Out> {
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
pub(super) async fn run_sqlite(
    c: &mut direct::Direct,
    stmt: &Stmt,
    args: &Args<'_>,
) -> sqlx::Result<Out> {
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

/// The pool's connection, taken out (the pool retries a refused or full
/// server for part of the time, and then says only "pool timed out": one
/// direct attempt tells which, so that a full server is waited out as
/// busy, not counted as an outage, as PostgreSQL's 53300).
async fn acquire(pool: &AnyPool) -> sqlx::Result<PoolConnection<Any>> {
    match pool.acquire().await {
        Ok(c) => Ok(c),
        Err(sqlx::Error::PoolTimedOut) => {
            use sqlx::ConnectOptions;
            match pool.connect_options().connect().await {
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

/// MySQL's: the pool's one connection, kept out of the pool between steps
/// that ended well. sqlx pings a connection each time it goes back to its
/// pool (and, unless told otherwise, again as it is taken out): a round
/// trip each, several per run, some of them between a release and the
/// next holder's command. Here a step that ended well keeps the connection
/// for the next; one that did not (an error, a transaction left open, a
/// step cut short by its bound) gives it back to the pool, whose ping sends
/// a dropped transaction's `ROLLBACK` at once (until then it would keep the
/// key's fence row locked) and closes a broken connection. A connection
/// unused for [`IDLE_CHECK`] goes back to the pool too, and so is pinged,
/// before its next step: its server may have restarted meanwhile.
#[derive(Clone)]
pub struct Held(std::sync::Arc<HeldInner>);

struct HeldInner {
    pool: AnyPool,
    slot: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    conn: Option<PoolConnection<Any>>,
    /// When the last step that ended well ended.
    used: Option<std::time::Instant>,
    /// The last step did not end well: it may have been cut off while
    /// its `BEGIN` was on its way, leaving a transaction open on the
    /// server that sqlx does not know of (its ping does not end it), in
    /// which the next steps' statements would stay uncommitted, holding
    /// their row locks.
    unsure: bool,
}

impl Held {
    pub fn new(pool: AnyPool) -> Held {
        Held(std::sync::Arc::new(HeldInner {
            pool,
            slot: Default::default(),
        }))
    }

    /// The connection, taken from the pool if we hold none.
    pub async fn lock(&self) -> sqlx::Result<HeldGuard<'_>> {
        let mut s = self.0.slot.lock().await;
        if s.used.is_some_and(|t| t.elapsed() >= IDLE_CHECK) {
            // Back to the pool, which pings it (and replaces a broken one).
            s.conn = None;
        }
        if s.conn.is_none() {
            s.used = None;
            s.conn = Some(acquire(&self.0.pool).await?);
        }
        if s.unsure {
            // A round trip after a failed step only: a no-op without a
            // transaction.
            let c = s.conn.as_mut().expect("just taken");
            if let Err(e) = sqlx::raw_sql("ROLLBACK").execute(&mut **c).await {
                s.conn = None;
                return Err(e);
            }
            s.unsure = false;
        }
        Ok(HeldGuard { s, ok: false })
    }

    /// Run `f` on the connection as one step.
    pub async fn with<T>(
        &self,
        f: impl for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, sqlx::Result<T>>,
    ) -> sqlx::Result<T> {
        let mut g = self.lock().await?;
        let r = f(g.conn()).await;
        g.ok = r.is_ok();
        r
    }

    /// Close the connection, if we hold one or the pool keeps one idle, so
    /// that a waiter holds none while it sleeps. Never opens one.
    pub async fn hang_up(&self) {
        let held = {
            let mut s = self.0.slot.lock().await;
            let c = s.conn.take();
            // A closed connection ends whatever transaction it had.
            s.unsure &= c.is_none();
            c
        };
        if let Some(c) = held {
            kit::best_effort(std::time::Duration::from_secs(1), c.close()).await;
            return;
        }
        let pool = &self.0.pool;
        if pool.size() == 0 {
            return;
        }
        // A step's connection given back may be on its way to the pool.
        if let Some(c) =
            kit::best_effort(std::time::Duration::from_millis(500), pool.acquire()).await
        {
            kit::best_effort(std::time::Duration::from_secs(1), c.close()).await;
        }
    }
}

impl Link for Held {
    const SERVER: bool = true;
    async fn conn(&self) -> sqlx::Result<Conn<'_>> {
        Ok(Conn::Held(self.lock().await?))
    }
}

/// A step on [`Held`]'s connection: kept for the next step if it ended
/// well (`ok`), given back to the pool if not.
pub struct HeldGuard<'a> {
    s: tokio::sync::MutexGuard<'a, Slot>,
    ok: bool,
}

impl HeldGuard<'_> {
    fn conn(&mut self) -> &mut AnyConnection {
        self.s.conn.as_mut().expect("a guard holds the connection")
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        if self.ok {
            self.s.used = Some(std::time::Instant::now());
        } else {
            self.s.conn = None;
            self.s.used = None;
            self.s.unsure = true;
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

/// PostgreSQL's: one connection held for the run, on which a waiter also
/// listens ([`super::pglink`]).
#[cfg(feature = "postgres")]
impl Link for super::pglink::PgLink {
    const SERVER: bool = true;
    async fn conn(&self) -> sqlx::Result<Conn<'_>> {
        Ok(Conn::Pg(self.lock().await?))
    }
}

/// A connection taken from a [`Link`].
pub enum Conn<'a> {
    Held(HeldGuard<'a>),
    Local(tokio::sync::MutexGuard<'a, direct::Direct>),
    #[cfg(feature = "postgres")]
    Pg(super::pglink::PgGuard<'a>),
}

/// A transaction on a [`Conn`]; rolled back if dropped.
pub(super) enum Tx<'c> {
    /// On [`Held`]'s connection: `ok` is its guard's, set once the
    /// transaction has ended well.
    Held(sqlx::Transaction<'c, Any>, &'c mut bool),
    Local(LocalTx<'c>),
    #[cfg(feature = "postgres")]
    Pg(super::pglink::PgTx<'c>),
}

/// A transaction on a database file: `BEGIN` (or the plan's own opening)
/// run now, `ROLLBACK` if dropped before its commit.
pub(super) struct LocalTx<'c> {
    pub(super) c: &'c mut direct::Direct,
    pub(super) open: bool,
}

impl LocalTx<'_> {
    pub(super) fn end(mut self, sql: &str) -> sqlx::Result<()> {
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
    pub(super) async fn run(&mut self, stmt: &Stmt, args: &Args<'_>) -> sqlx::Result<Out> {
        match self {
            Conn::Held(g) => {
                g.ok = false;
                let r = run_any(g.conn(), stmt, args).await;
                g.ok = r.is_ok();
                r
            }
            Conn::Local(c) => run_sqlite(c, stmt, args).await,
            #[cfg(feature = "postgres")]
            Conn::Pg(c) => c.run(stmt, args).await,
        }
    }

    /// Prepare `stmts` on this connection ahead of their first run (a
    /// server keeps them for the connection; a database file's are not
    /// kept across runs of [`direct`], and cost no round trip).
    pub(super) async fn prepare(
        &mut self,
        stmts: impl IntoIterator<Item = &Stmt>,
    ) -> sqlx::Result<()> {
        match self {
            Conn::Held(g) => {
                g.ok = false;
                for s in stmts {
                    sqlx::Executor::prepare(g.conn(), s.sql.clone()).await?;
                }
                g.ok = true;
                Ok(())
            }
            Conn::Local(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Conn::Pg(c) => c.prepare(stmts).await,
        }
    }

    pub(super) async fn begin(&mut self, with: Option<&'static str>) -> sqlx::Result<Tx<'_>> {
        use sqlx::Connection;
        Ok(match (self, with) {
            (Conn::Held(HeldGuard { s, ok }), with) => {
                *ok = false;
                let c = s.conn.as_mut().expect("a guard holds the connection");
                let tx = match with {
                    None => c.begin().await?,
                    Some(sql) => c.begin_with(sql).await?,
                };
                Tx::Held(tx, ok)
            }
            (Conn::Local(c), with) => {
                c.exec_waiting(with.unwrap_or("BEGIN")).await?;
                Tx::Local(LocalTx { c, open: true })
            }
            #[cfg(feature = "postgres")]
            (Conn::Pg(c), with) => Tx::Pg(c.begin(with).await?),
        })
    }
}

impl Tx<'_> {
    pub(super) async fn run(&mut self, stmt: &Stmt, args: &Args<'_>) -> sqlx::Result<Out> {
        match self {
            Tx::Held(t, _) => run_any(t, stmt, args).await,
            Tx::Local(t) => run_sqlite(t.c, stmt, args).await,
            #[cfg(feature = "postgres")]
            Tx::Pg(t) => t.run(stmt, args).await,
        }
    }

    pub(super) async fn commit(self) -> sqlx::Result<()> {
        match self {
            Tx::Held(t, ok) => {
                let r = t.commit().await;
                *ok = r.is_ok();
                r
            }
            Tx::Local(t) => t.end("COMMIT"),
            #[cfg(feature = "postgres")]
            Tx::Pg(t) => t.end(true).await,
        }
    }

    pub(super) async fn rollback(self) -> sqlx::Result<()> {
        match self {
            Tx::Held(t, ok) => {
                let r = t.rollback().await;
                *ok = r.is_ok();
                r
            }
            Tx::Local(t) => t.end("ROLLBACK"),
            #[cfg(feature = "postgres")]
            Tx::Pg(t) => t.end(false).await,
        }
    }
}
