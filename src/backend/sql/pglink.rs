//! PostgreSQL's one connection per run: the engine's statements run on it,
//! and a waiter `LISTEN`s on it ([`super::postgres`]).
//!
//! A PostgreSQL connection is a forked server process, 3.4-3.9 ms of server
//! CPU. A contended run used to open two: the engine's, through sqlx's
//! `Any` driver (which gives no access to notifications), and a waiter's
//! `LISTEN` connection. Here the engine's connection is sqlx's `PgListener`
//! (which runs statements too), held for the whole run: its rows are handed
//! to the engine as `Any` rows, and a notification that arrives during a
//! statement is kept for the next wait.
//!
//! A step that did not finish (timed out, or the connection broke) leaves
//! the connection in a state nobody knows: it is given up at once, and the
//! next step opens another. What a waiter held on the old one (a slot, its
//! `LISTEN`) went with it ([`State::listening`]). A transaction dropped
//! unfinished (an error in it) has its `ROLLBACK` sent at once, not at the
//! next statement: until then it would keep the key's fence row locked. A
//! connection unused for [`IDLE_CHECK`] is pinged before its next step, as
//! sqlx's pool tested each connection before every statement (a ping each
//! way, which a held connection saves).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use sqlx::any::AnyRow;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgTypeInfo,
};
use sqlx::{Acquire, Either, Postgres};

use super::IDLE_CHECK;
use super::plan::{Args, Out, Stmt, Val};

/// The engine's connection to a PostgreSQL server (cheap to clone: the
/// engine and the dialect share it).
#[derive(Clone)]
pub struct PgLink(Arc<Inner>);

struct Inner {
    opts: PgConnectOptions,
    /// How long opening a connection retries a refused or full server.
    part: Duration,
    /// The bound of a `ROLLBACK` sent on its own.
    timeout: Duration,
    state: tokio::sync::Mutex<State>,
}

/// What a waiter holds on the connection: a `LISTEN` on its key's channel
/// and one of the key's slots, the session advisory lock (class, slot).
pub struct Listening {
    pub chan: String,
    pub class: i32,
    pub slot: i32,
}

#[derive(Default)]
pub struct State {
    /// The connection, in a pool of its own (closed when it is given up,
    /// so that it is not kept idle there).
    conn: Option<(PgPool, PgListener)>,
    /// A step is under way, or did not finish: if still set when the
    /// guard goes, the connection is given up.
    dirty: bool,
    /// A transaction was dropped unfinished: its `ROLLBACK` waits on the
    /// connection to be sent.
    rollback: bool,
    /// What a waiter holds on this connection.
    listening: Option<Listening>,
    /// When a step last ended (or the connection was opened).
    used: Option<Instant>,
    /// How many connections have been opened: which one this is.
    opened: u64,
}

impl State {
    fn give_up(&mut self) {
        if let Some((pool, l)) = self.conn.take() {
            // Marked closed now: the connection, once the listener's drop
            // has sent `UNLISTEN *` (in a task of its own), is closed, not
            // kept idle.
            drop(pool.close());
            drop(l);
        }
        self.dirty = false;
        self.rollback = false;
        self.listening = None;
        self.used = None;
    }
}

/// Whether the connection is known to be fine after a step with this result.
fn clean<T>(r: &sqlx::Result<T>) -> bool {
    matches!(
        r,
        Ok(_) | Err(sqlx::Error::Database(_) | sqlx::Error::RowNotFound)
    )
}

impl PgLink {
    pub fn new(opts: PgConnectOptions, part: Duration, timeout: Duration) -> PgLink {
        PgLink(Arc::new(Inner {
            opts,
            part,
            timeout,
            state: Default::default(),
        }))
    }

    /// The connection, opened if there is none.
    pub async fn lock(&self) -> sqlx::Result<PgGuard<'_>> {
        let mut s = self.0.state.lock().await;
        // A ping cut short below (by the caller's bound) left this set.
        if s.dirty {
            s.give_up();
        }
        let rollback = std::mem::take(&mut s.rollback);
        let idle = s.used.is_some_and(|t| t.elapsed() >= IDLE_CHECK);
        if s.conn.is_some() && (rollback || idle) {
            // A transaction dropped unfinished keeps the key's fence row
            // locked until its queued ROLLBACK is sent: a ping sends it.
            // After a while unused (a holder's child running), the server
            // may have restarted: a ping finds out before the statement.
            s.dirty = true;
            let ping = async {
                let Some((_, l)) = s.conn.as_mut() else {
                    return Err(sqlx::Error::PoolClosed);
                };
                sqlx::Connection::ping(l.acquire().await?).await
            };
            if matches!(tokio::time::timeout(self.0.timeout, ping).await, Ok(Ok(()))) {
                s.dirty = false;
            } else {
                s.give_up();
            }
        }
        if s.conn.is_none() {
            s.give_up();
            s.conn = Some(self.open().await?);
            s.opened += 1;
        }
        s.used = Some(Instant::now());
        Ok(PgGuard { inner: &self.0, s })
    }

    /// The connection, if it is still the one `generation` names and is
    /// in a known state: for a step about what was held on that one, which
    /// is gone with it otherwise.
    pub async fn lock_same(&self, generation: u64) -> Option<PgGuard<'_>> {
        let s = self.0.state.lock().await;
        (s.conn.is_some() && !s.dirty && !s.rollback && s.opened == generation)
            .then(|| PgGuard { inner: &self.0, s })
    }

    async fn open(&self) -> sqlx::Result<(PgPool, PgListener)> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.0.part)
            .test_before_acquire(false)
            .connect_lazy_with(self.0.opts.clone());
        match PgListener::connect_with(&pool).await {
            Ok(mut l) => {
                // A lost connection ends the wait; the next step opens
                // another (and the waiter takes a slot again).
                l.eager_reconnect(false);
                l.ignore_pool_close_event(true);
                Ok((pool, l))
            }
            // The pool retries a refused or full server until its time-out
            // and then says only "pool timed out": one direct attempt tells
            // which, so that a full server is waited out as busy.
            Err(sqlx::Error::PoolTimedOut) => {
                drop(pool.close());
                match self.probe().await {
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

    /// A connection of its own, to learn why the pool could not connect.
    pub async fn probe(&self) -> sqlx::Result<PgConnection> {
        use sqlx::ConnectOptions;
        self.0.opts.connect().await
    }

    /// One step on the connection (`f` given owned values: it may be cut
    /// short by a time bound, which gives the connection up).
    pub async fn with<T, F>(&self, f: F) -> sqlx::Result<T>
    where
        F: for<'c> FnOnce(&'c mut PgListener) -> BoxFuture<'c, sqlx::Result<T>>,
    {
        let mut g = self.lock().await?;
        let r = f(g.conn()?).await;
        g.done(&r);
        r
    }
}

/// The connection, held: nobody else's step runs meanwhile.
pub struct PgGuard<'a> {
    inner: &'a Arc<Inner>,
    s: tokio::sync::MutexGuard<'a, State>,
}

impl PgGuard<'_> {
    /// The connection, for one step that [`Self::done`] ends.
    pub fn conn(&mut self) -> sqlx::Result<&mut PgListener> {
        self.s.dirty = true;
        self.s
            .conn
            .as_mut()
            .map(|(_, l)| l)
            .ok_or(sqlx::Error::PoolClosed)
    }

    /// A step ended with `r`.
    pub fn done<T>(&mut self, r: &sqlx::Result<T>) {
        self.s.dirty = !clean(r);
        self.s.used = Some(Instant::now());
    }

    /// A step was cut short where that is safe (a wait for a notification).
    pub fn idle(&mut self) {
        self.s.dirty = false;
        self.s.used = Some(Instant::now());
    }

    /// Which connection this is ([`PgLink::lock_same`]).
    pub fn generation(&self) -> u64 {
        self.s.opened
    }

    /// What the waiter holds on this connection.
    pub fn listening(&mut self) -> &mut Option<Listening> {
        &mut self.s.listening
    }

    pub(super) async fn run(&mut self, stmt: &Stmt, args: &Args<'_>) -> sqlx::Result<Out> {
        let r = async {
            let c = self.conn()?.acquire().await?;
            run_pg(c, stmt, args).await
        }
        .await;
        self.done(&r);
        r
    }

    /// Prepare `stmts` (with the types [`run_pg`] binds, as PostgreSQL
    /// fixes a statement's parameter types when it is prepared).
    pub(super) async fn prepare(
        &mut self,
        stmts: impl IntoIterator<Item = &Stmt>,
    ) -> sqlx::Result<()> {
        let r = async {
            let c = self.conn()?.acquire().await?;
            for s in stmts {
                let types: Vec<PgTypeInfo> = s
                    .args
                    .iter()
                    .map(|&a| match Args::default().val(a) {
                        Val::Str(_) | Val::Owned(_) | Val::Opt(_) => {
                            <&str as sqlx::Type<Postgres>>::type_info()
                        }
                        Val::I64(_) => <i64 as sqlx::Type<Postgres>>::type_info(),
                        Val::I32(_) => <i32 as sqlx::Type<Postgres>>::type_info(),
                    })
                    .collect();
                sqlx::Executor::prepare_with(&mut *c, s.sql.clone(), &types).await?;
            }
            Ok(())
        }
        .await;
        self.done(&r);
        r
    }

    pub(super) async fn begin(&mut self, with: Option<&'static str>) -> sqlx::Result<PgTx<'_>> {
        let s = &mut *self.s;
        s.dirty = true;
        let Some((_, l)) = s.conn.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        let r = match with {
            None => l.begin().await,
            Some(sql) => match l.acquire().await {
                Ok(c) => sqlx::Connection::begin_with(c, sql).await,
                Err(e) => Err(e),
            },
        };
        s.dirty = !clean(&r);
        Ok(PgTx {
            tx: Some(r?),
            dirty: &mut s.dirty,
            rollback: &mut s.rollback,
        })
    }
}

impl Drop for PgGuard<'_> {
    fn drop(&mut self) {
        if self.s.dirty {
            self.s.give_up();
            return;
        }
        if !std::mem::take(&mut self.s.rollback) {
            return;
        }
        // A transaction dropped unfinished: send its ROLLBACK now (a ping
        // flushes it), within the bound, or give the connection up.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.s.give_up();
            return;
        };
        let inner = self.inner.clone();
        rt.spawn(async move {
            let mut s = inner.state.lock().await;
            let Some((_, l)) = s.conn.as_mut() else {
                return;
            };
            let ping = async { sqlx::Connection::ping(l.acquire().await?).await };
            if !matches!(tokio::time::timeout(inner.timeout, ping).await, Ok(Ok(()))) {
                s.give_up();
            }
        });
    }
}

/// A transaction on the connection.
pub(super) struct PgTx<'c> {
    tx: Option<sqlx::Transaction<'c, Postgres>>,
    dirty: &'c mut bool,
    rollback: &'c mut bool,
}

impl PgTx<'_> {
    pub(super) async fn run(&mut self, stmt: &Stmt, args: &Args<'_>) -> sqlx::Result<Out> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        *self.dirty = true;
        let r = run_pg(tx, stmt, args).await;
        *self.dirty = !clean(&r);
        r
    }

    pub(super) async fn end(mut self, commit: bool) -> sqlx::Result<()> {
        let Some(tx) = self.tx.take() else {
            return Err(sqlx::Error::PoolClosed);
        };
        *self.dirty = true;
        let r = if commit {
            tx.commit().await
        } else {
            tx.rollback().await
        };
        *self.dirty = !clean(&r);
        r
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        // Dropped open: sqlx queues its ROLLBACK, which the guard sends.
        if self.tx.take().is_some() {
            *self.rollback = true;
        }
    }
}

/// `stmt` with the values of `args` bound, its rows as `Any` rows.
async fn run_pg(c: &mut PgConnection, stmt: &Stmt, args: &Args<'_>) -> sqlx::Result<Out> {
    let mut q = sqlx::query::<Postgres>(stmt.sql.clone());
    for &a in stmt.args {
        q = match args.val(a) {
            Val::Str(v) => q.bind(v),
            Val::Owned(v) => q.bind(v),
            Val::Opt(v) => q.bind(v),
            Val::I64(v) => q.bind(v),
            Val::I32(v) => q.bind(v),
        };
    }
    let mut out = Out::default();
    let mut s = sqlx::Executor::fetch_many(c, q);
    while let Some(x) = s.try_next().await? {
        match x {
            Either::Left(r) => out.affected += r.rows_affected(),
            Either::Right(row) => out.rows.push(AnyRow::try_from(&row)?),
        }
    }
    Ok(out)
}
