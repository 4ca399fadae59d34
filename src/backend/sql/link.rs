//! Where the engine's statements go: a server's pool, PostgreSQL's held
//! connection, or a database file's one connection, in rows of `Any`
//! every way.

use futures_util::TryStreamExt;
use sqlx::any::Any;
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, AnyPool, Either};

use super::direct;
use super::plan::{Args, Out, Stmt, Val};

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
    Pool(PoolConnection<Any>),
    Local(tokio::sync::MutexGuard<'a, direct::Direct>),
    #[cfg(feature = "postgres")]
    Pg(super::pglink::PgGuard<'a>),
}

/// A transaction on a [`Conn`]; rolled back if dropped.
pub(super) enum Tx<'c> {
    Pool(sqlx::Transaction<'c, Any>),
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
            Conn::Pool(c) => run_any(c, stmt, args).await,
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
            Conn::Pool(c) => {
                for s in stmts {
                    sqlx::Executor::prepare(&mut **c, s.sql.clone()).await?;
                }
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
            (Conn::Pool(c), None) => Tx::Pool(c.begin().await?),
            (Conn::Pool(c), Some(s)) => Tx::Pool(c.begin_with(s).await?),
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
            Tx::Pool(t) => run_any(t, stmt, args).await,
            Tx::Local(t) => run_sqlite(t.c, stmt, args).await,
            #[cfg(feature = "postgres")]
            Tx::Pg(t) => t.run(stmt, args).await,
        }
    }

    pub(super) async fn commit(self) -> sqlx::Result<()> {
        match self {
            Tx::Pool(t) => t.commit().await,
            Tx::Local(t) => t.end("COMMIT"),
            #[cfg(feature = "postgres")]
            Tx::Pg(t) => t.end(true).await,
        }
    }

    pub(super) async fn rollback(self) -> sqlx::Result<()> {
        match self {
            Tx::Pool(t) => t.rollback().await,
            Tx::Local(t) => t.end("ROLLBACK"),
            #[cfg(feature = "postgres")]
            Tx::Pg(t) => t.end(false).await,
        }
    }
}
