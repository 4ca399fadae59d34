//! The statements a dialect gives the engine, and the values they bind.

use std::time::SystemTime;

use sqlx::any::{Any, AnyRow};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqlStr};

use super::line::channel_name;
use super::{SHARED_WAITER_LIKE, Spelling, WAITER_LAPSE, us};

/// The statements of a dialect whose every statement takes its parameters
/// in the one order its comment gives (PostgreSQL, MySQL); the engine reads
/// them as a [`Plan`] with those lists.
pub struct Statements {
    /// (ns, key): create the key's fence row, or lock it (and, where
    /// `delete_expired` is None, then delete the key's expired leases).
    pub fence: String,
    /// (ns, key): delete the key's expired leases, after `fence`; None
    /// where `fence` does it.
    pub delete_expired: Option<String>,
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
    /// (ns, key, ns, key) -> what (`l` a lease, `q` a waiter in line), id,
    /// token (a waiter's: its ticket), owner, host, pid, lim, acquired_us
    /// (a waiter's: since when it waits), left_us, host_id, proc_start:
    /// the key's live leases and live waiters, in one read.
    pub line: String,
    /// As `line`, inside the acquiring transaction.
    pub line_locked: String,
    /// (ns, key, id, owner, host, pid, host_id, proc_start, lim, lapse_us,
    /// ns, key): our row at the back of the line, its ticket one more than
    /// the key's highest (our own row, lapsed, is replaced).
    pub enqueue: String,
    /// (ns, key, id, token (the ticket), owner, host, pid, host_id,
    /// proc_start, lim, lapse_us): our row in the line with the ticket
    /// given, outside the key's lock (see [`Plan::join`]).
    pub join: String,
    /// (ns, key): the key's waiter rows that have lapsed.
    pub lapsed_queue: String,
    /// (ns, key, id)
    pub dequeue: String,
    /// (lapse_us, ns, key, id): how many rows it extended.
    pub renew_queue: String,
    /// (ns, key, like): as `exclusive_waiters`, counting only the rows of
    /// waiters that are not in line (older dlock versions').
    pub foreign_writers: String,
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
    /// The key's wake-up channel ([`channel_name`]: PostgreSQL's `NOTIFY`).
    Chan,
    /// Our row's id in the key's line (where `Id` is our lease's).
    Place,
    /// Our waiter row's id (where `Id` is our lease's or our place's).
    Waiter,
}

/// One statement and the values it binds, in order.
pub struct Stmt {
    pub(super) sql: SqlStr,
    pub(super) args: &'static [Arg],
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
    /// Delete the key's expired leases, after `fence`; None where `fence`
    /// does it (one statement, and round trip, less per attempt).
    pub delete_expired: Option<Stmt>,
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
    /// As `insert`, and in the same statement `dequeue` of our place
    /// ([`Arg::Place`]) and `delete_waiter` of our waiter row
    /// ([`Arg::Waiter`]): for a waiter, whose grant then takes one round
    /// trip where it took three. None: the three apart. It bumps the
    /// token itself, as `insert` does where there is no `bump`: only a
    /// dialect without `bump` has it.
    pub insert_leaving: Option<Stmt>,
    /// End a dead holder's lease [`BREAK_GRACE`] from now (where the
    /// dialect can tell one: [`Dialect::dead`]).
    pub break_lease: Option<Stmt>,
    /// -> how many live exclusive waiters (ids not LIKE [`Arg::Like`]).
    pub exclusive_waiters: Stmt,
    /// -> `what` (`l`, `q`), id, token, owner, host, pid, lim,
    /// acquired_us, left_us, host_id, proc_start (and whatever the
    /// dialect's [`Dialect::dead`] reads): the key's live leases and its
    /// line of live waiters, in any order (the engine sorts them).
    pub line: Stmt,
    /// As `line`, inside the acquiring transaction.
    pub line_locked: Stmt,
    /// Our waiter row at the back of the key's line.
    pub enqueue: Stmt,
    /// Our row in the line, with a ticket one more than the highest a read
    /// just saw, written alone: a waiter that read the key busy joins
    /// without the key's fence row. None: joining takes the key's lock (a
    /// database file, whose every write does).
    pub join: Option<Stmt>,
    /// As `join`, and in the same statement `upsert_waiter` of our
    /// waiter row ([`Arg::Waiter`]). None: the two apart.
    pub join_waiting: Option<Stmt>,
    /// Delete the key's lapsed waiter rows in line.
    pub lapsed_queue: Stmt,
    /// Delete a waiter's row in line, by its id.
    pub dequeue: Stmt,
    /// Extend our row in line: the rows it changed.
    pub renew_queue: Stmt,
    /// -> how many live exclusive waiter rows are not in line (older
    /// dlock versions' writers, whom readers still let go first).
    pub foreign_writers: Stmt,
    pub delete_waiter: Stmt,
    pub upsert_waiter: Stmt,
    /// Waiter rows of processes that died long ago.
    pub stale_waiters: Stmt,
    /// Extend our live lease (and set its kind, where bound and not NULL).
    pub renew: Stmt,
    /// Delete our lease: whether it was live is the row it returns, if
    /// any, else whether it deleted one.
    pub release: Stmt,
    /// As `release` (with the key's channel, [`Arg::Chan`]), and it also
    /// wakes the key's waiters in the same statement (PostgreSQL: its
    /// `NOTIFY`): no [`super::Dialect::freed`] follows it. Where the
    /// server refuses it (a full notification queue, the line's table
    /// unreadable), `release` and `freed` run instead.
    pub release_waking: Option<Stmt>,
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
            delete_expired: q.delete_expired.map(|d| s(d, &[Ns, Key])),
            holders: s(q.holders, &[Ns, Key]),
            holders_locked: s(q.holders_locked, &[Ns, Key]),
            bump: q.bump.map(|b| s(b, &[Ns, Key])),
            insert: s(q.insert, &[Ns, Key, Id, Owner, Host, Pid, Lim, TtlUs]),
            insert_leaving: None,
            break_lease: Some(s(q.break_lease, &[Ns, Key, Id])),
            exclusive_waiters: s(q.exclusive_waiters, &[Ns, Key, Like]),
            line: s(q.line, &[Ns, Key, Ns, Key]),
            line_locked: s(q.line_locked, &[Ns, Key, Ns, Key]),
            enqueue: s(
                q.enqueue,
                &[
                    Ns, Key, Id, Owner, Host, Pid, HostId, ProcStart, Lim, LapseUs, Ns, Key,
                ],
            ),
            join: Some(s(
                q.join,
                &[
                    Ns, Key, Id, Token, Owner, Host, Pid, HostId, ProcStart, Lim, LapseUs,
                ],
            )),
            join_waiting: None,
            lapsed_queue: s(q.lapsed_queue, &[Ns, Key]),
            dequeue: s(q.dequeue, &[Ns, Key, Id]),
            renew_queue: s(q.renew_queue, &[LapseUs, Ns, Key, Id]),
            foreign_writers: s(q.foreign_writers, &[Ns, Key, Like]),
            delete_waiter: s(q.delete_waiter, &[Ns, Key, Id]),
            upsert_waiter: s(q.upsert_waiter, &[Ns, Key, Id, LapseUs]),
            stale_waiters: s(q.stale_waiters, &[Ns, Key]),
            renew: s(q.renew, &[TtlUs, Ns, Key, Id]),
            release: s(q.release, &[Ns, Key, Id]),
            release_waking: None,
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
#[derive(Default, Clone, Copy)]
pub(super) struct Args<'a> {
    pub(super) ns: &'a str,
    pub(super) key: &'a str,
    pub(super) id: &'a str,
    pub(super) owner: &'a str,
    pub(super) host: &'a str,
    pub(super) pid: i64,
    pub(super) host_id: &'a str,
    pub(super) proc_start: i64,
    pub(super) kind: Option<&'a str>,
    pub(super) lim: i32,
    pub(super) token: i64,
    pub(super) ttl_us: i64,
    pub(super) now_ms: i64,
    pub(super) place: &'a str,
    pub(super) waiter: &'a str,
}

pub(super) enum Val<'a> {
    Str(&'a str),
    /// Text made from the arguments ([`Arg::Chan`]).
    Owned(String),
    Opt(Option<&'a str>),
    I64(i64),
    I32(i32),
}

impl<'a> Args<'a> {
    /// For a statement on `key` of `ns`, now.
    pub(super) fn of(ns: &'a str, key: &'a str) -> Args<'a> {
        Args {
            ns,
            key,
            now_ms: Args::now_ms(),
            ..Args::default()
        }
    }

    /// This machine's clock, as a database file's statements read it.
    pub(super) fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    /// For a statement on our lease, or our waiter row, `id`.
    pub(super) fn id(self, id: &'a str) -> Args<'a> {
        Args { id, ..self }
    }

    pub(super) fn val(&self, a: Arg) -> Val<'a> {
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
            Arg::Chan => Val::Owned(channel_name(self.ns, self.key)),
            Arg::Place => Val::Str(self.place),
            Arg::Waiter => Val::Str(self.waiter),
        }
    }
}

/// What a statement gave: its rows, how many rows it changed, and its
/// LAST_INSERT_ID (MySQL).
#[derive(Default)]
pub(super) struct Out {
    pub(super) rows: Vec<AnyRow>,
    pub(super) affected: u64,
    pub(super) last_id: Option<i64>,
}

impl Out {
    /// The first column of the first row, if there is a row.
    pub(super) fn first<T>(&self) -> Result<Option<T>, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
    {
        self.rows.first().map(|r| r.try_get(0)).transpose()
    }
}
