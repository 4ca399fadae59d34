//! One attempt to take a key: the transaction every dialect runs, with the
//! fair line (arrival order) and semaphore slots decided in it.
//!
//! The key is locked first (its fence row, or SQLite's `BEGIN IMMEDIATE`),
//! so every attempt on a key runs alone, and one statement reads its live
//! leases and its line of live waiters ([`Plan::line_locked`]). The entries
//! ahead of a request are the leases and the waiters whose ticket is lower
//! than its own (all of them for a request not in line yet): if
//! [`kit::admits`] lets it in over their modes, it takes the lowest free
//! slot, bumps the token, inserts its lease and leaves the line, all in
//! that transaction. If not, and it may join (`join`: not `--no-wait`), it
//! takes a ticket one more than the key's highest: arrival order is the
//! order of first attempts. On a server, a waiter that a read outside the
//! transaction finds busy joins without it (`Plan::join`), with a ticket
//! one more than the highest that read saw. Waiters ahead whose process is gone (on this
//! machine) leave the line in the same transaction, with no grace (they
//! hold nothing); a dead holder's lease ends [`BREAK_GRACE`] from now.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{
    Args, BREAK_GRACE, Entry, Line, Link, SqlBackend, epoch_micros, kit, lim_of, slot_in, us,
    waiter_dead, with_slot,
};
use crate::backend::{Attempt, Holder, LockSpec, Owner};

/// A busy attempt.
pub(super) struct Busy {
    /// The key's leases (dead ones marked), each with its `lim` and its
    /// microseconds left.
    holders: Vec<Entry>,
    /// The line as the ruling read it, our place in it, and the writers
    /// of older versions counted (a shared request gives way to them).
    seats: kit::Line,
    at: Option<usize>,
    writers: usize,
    /// If some holders were found dead, the most microseconds until their
    /// leases end.
    gone: Option<i64>,
    /// Our place, if we are in the line: the id of the live waiter just
    /// ahead of us (none: we are first), for a dialect that wakes each
    /// waiter when the one ahead of it goes ([`super::Dialect::missed`]).
    place: Option<Option<String>>,
}

impl<P: Link> SqlBackend<P> {
    /// A row of [`super::Plan::line`] (or of `holders`, which has only
    /// leases) as the engine reads it.
    pub(super) fn entry(&self, r: &AnyRow) -> sqlx::Result<Entry> {
        self.entry_judged(r, None)
    }

    /// [`Self::entry`], asking whether a waiter's process is gone only if
    /// the waiter is ahead of `ticket` in line (none: of every waiter).
    fn entry_judged(&self, r: &AnyRow, ticket: Option<i64>) -> sqlx::Result<Entry> {
        let waiting = r.try_get::<String, _>("what").is_ok_and(|w| w == "q");
        let id: String = r.try_get("id")?;
        let pid: i64 = r.try_get("pid")?;
        let token: i64 = r.try_get("token")?;
        let lim: i64 = r.try_get("lim")?;
        let acquired_us: i64 = r.try_get("acquired_us")?;
        let left_us: i64 = r.try_get("left_us")?;
        let shared = lim <= 0;
        let mut holder = Holder {
            owner: Some(r.try_get("owner")?),
            host: Some(r.try_get("host")?),
            pid: Some(pid as u32),
            acquired_at: Some(epoch_micros(acquired_us)),
            shared,
            waiting,
            ..Holder::default()
        };
        let order = if waiting {
            if ticket.is_none_or(|t| token <= t) {
                let host_id: String = r.try_get("host_id")?;
                let start: i64 = r.try_get("proc_start")?;
                holder.dead = waiter_dead(&host_id, pid, start);
            }
            token
        } else {
            holder.token = Some(token as u64);
            holder.expires_at =
                Some(SystemTime::now() + Duration::from_micros(left_us.max(0) as u64));
            holder.dead = self.d.dead(r);
            holder.slot = match lim {
                ..=0 => None,
                1 => Some(0),
                _ => slot_in(&id),
            };
            acquired_us
        };
        Ok(Entry {
            holder,
            id,
            lim,
            left_us,
            order,
        })
    }

    pub(super) fn line_of(&self, rows: &[AnyRow]) -> sqlx::Result<Line> {
        let entries = rows
            .iter()
            .map(|r| self.entry(r))
            .collect::<sqlx::Result<Vec<_>>>()?;
        Ok(Line::new(entries))
    }

    /// The line as an attempt of the waiter `me` reads it: every holder's
    /// liveness is judged, but a waiter's only if it is ahead of `me`
    /// (the ruling never asks about those behind). Each judgement reads a
    /// process's `/proc` entry, and a waiter woken at the head of a long
    /// line would otherwise read one for every waiter behind it.
    fn line_for(&self, rows: &[AnyRow], me: &str) -> sqlx::Result<Line> {
        let mine = |r: &&AnyRow| {
            r.try_get::<String, _>("what").is_ok_and(|w| w == "q")
                && r.try_get::<String, _>("id").is_ok_and(|id| id == me)
        };
        let ticket = match rows.iter().find(mine) {
            Some(r) => Some(r.try_get::<i64, _>("token")?),
            None => None,
        };
        let entries = rows
            .iter()
            .map(|r| self.entry_judged(r, ticket))
            .collect::<sqlx::Result<Vec<_>>>()?;
        Ok(Line::new(entries))
    }

    /// Whether `spec.key` is busy for us, by reading its line outside a
    /// transaction (see [`Self::attempt`]): `None` when it may
    /// be free, when we must join the line, or when an entry is dead (the
    /// write transaction removes it).
    async fn peek(&self, spec: &LockSpec, a: &Args<'_>, join: bool) -> Result<Option<Busy>> {
        let me = self.waiting.id();
        let read = if self.queue_table {
            &self.q.line
        } else {
            &self.q.holders
        };
        let rows = self.call("acquire", read, a).await?.rows;
        if rows.is_empty() {
            return Ok(None);
        }
        let line = self.line_for(&rows, me)?;
        let (seats, at) = (line.seats(), line.place(me));
        let joining = join && self.queue_table && at.is_none();
        let dead = seats.holders.iter().any(|s| s.dead) || seats.dead_ahead(at).next().is_some();
        // Joining on a server needs no transaction; on a database file it
        // is a write anyway, done in the attempt's.
        let join_stmt = self.q.join.as_ref().filter(|_| P::SERVER);
        if dead || (joining && join_stmt.is_none()) {
            return Ok(None);
        }
        let mut writers = 0;
        if spec.shared && self.waiter_table {
            let out = self.call("acquire", self.writers_stmt(), a).await?;
            writers = out.first()?.unwrap_or(0).max(0) as usize;
        }
        if seats.admits(spec.mode(), at, writers) {
            return Ok(None);
        }
        // Busy, and not in line yet: our row goes at the back in one
        // statement, outside the key's fence row. A crowd's arrivals each
        // held that row for a transaction of five round trips, and the
        // hand-offs queued behind them: with 165 arriving at once on
        // MariaDB, a debug build under load took so long that arrivals
        // passed the lock-wait bound and came back, and the key changed
        // hands about once a second for minutes. Only the order among
        // arrivals in the same moment is looser: two may share a ticket
        // (ordered by id), or one may land just ahead of another that
        // joined after this read. Who may take the key is still decided
        // under the fence row alone.
        if let Some(stmt) = join_stmt.filter(|_| joining) {
            let ticket = line.queue.iter().map(|e| e.order).max().unwrap_or(0) + 1;
            let row = Args {
                id: me,
                token: ticket,
                ..*a
            };
            // Our waiter row (the one older versions count) in the same
            // statement, where the dialect can: the first write of it,
            // which `renew_place` then finds done.
            let merged = self.q.join_waiting.as_ref().filter(|_| self.waiter_table);
            let w = merged.and_then(|_| self.waiting.due(spec));
            let mut joined = false;
            if let (Some(both), Some(w)) = (merged, &w) {
                let row = Args {
                    waiter: w.as_ref(),
                    ..row
                };
                match self.call("acquire", both, &row).await {
                    Ok(_) => joined = true,
                    // A role that may not write waiter rows waits in line
                    // without one, as before the merge.
                    Err(e) if crate::error::retry_of(&e) == crate::error::Retry::Never => {
                        tracing::debug!(error = %e, "no waiter row: joining alone");
                    }
                    Err(e) => return Err(e),
                }
            }
            if joined {
                let (ns, key) = (&spec.namespace, &spec.key);
                if self.waiting.written(ns, key) && self.tidies() {
                    self.tidy(ns, key).await;
                }
            } else {
                self.call("acquire", stmt, &row).await?;
            }
        }
        Ok(Some(Busy {
            place: (at.is_some() || joining).then(|| line.before(me)),
            holders: line.leases,
            seats,
            at,
            writers,
            gone: None,
        }))
    }

    /// How a shared request counts the writers it gives way to beside
    /// the line: those of older versions (not in line), or without a line
    /// every exclusive waiter.
    fn writers_stmt(&self) -> &super::Stmt {
        if self.queue_table {
            &self.q.foreign_writers
        } else {
            &self.q.exclusive_waiters
        }
    }

    /// One attempt; when busy only because of holders found dead, whose
    /// leases end within [`BREAK_GRACE`], also when they will be gone.
    pub(super) async fn attempt(
        &self,
        spec: &LockSpec,
        me: &Owner,
        join: bool,
    ) -> Result<(Attempt, Option<Instant>)> {
        let (ns, key) = (&spec.namespace, &spec.key);
        let q = &self.q;
        let row_id = self.d.row_id(me);
        let wid = self.waiting.id();
        let a = Args {
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
        // A key found busy by a read alone is busy without the write lock
        // (a database file's) or the key's fence row (a server's), on which
        // arriving waiters would queue behind the hand-over to the waiter
        // just woken. On a server this pays only with a line: a waiter in
        // line that is not first then reads, where each of a crowd's polls
        // would otherwise take the fence row in turn (with 200 waiters on
        // PostgreSQL, attempts queued there past their time bound, lost
        // their connections and, unable to renew their rows, their places).
        let read_first = !P::SERVER || self.queue_table;
        // A run's first attempt reads first too: on a busy key it then
        // joins the line in one statement of its own, without the fence row
        // and the four statements of a transaction (on PostgreSQL, 22.8 ->
        // 18.7 statements per contended run of 8 x 20, with the fence
        // statement's merge); on a free key the read's statement is the
        // transaction's read, prepared once (one round trip more).
        let peeked = if !read_first || self.d.first_in_line(spec, me.kind) {
            None
        } else {
            self.peek(spec, &a, join).await?
        };
        // Made afresh for each run ([`SqlBackend::bounded_again`]).
        let row_id = &row_id;
        let attempt = || async move {
            let mut c = self.pool.conn().await?;
            // The lease clock starts here, not at the attempt's start: a
            // peek, a connection and a wait for the write lock can take
            // longer than a short TTL, and a lease counted from before them
            // would be called lost as soon as it is granted. A server counts
            // the expiry from a moment after this (PostgreSQL's `now()` is
            // the transaction's start, MySQL's `UTC_TIMESTAMP(6)` the
            // statement's).
            let mut granted_at = Instant::now();
            let mut tx = c.begin(q.begin).await?;
            // A database file's statements read our clock, once we have its
            // write lock: the wait for it does not count against the lease.
            let a = if P::SERVER {
                a
            } else {
                granted_at = Instant::now();
                Args {
                    now_ms: Args::now_ms(),
                    ..a
                }
            };
            // Lock this key's fence row: contenders queue here.
            if let Some(fence) = &q.fence {
                tx.run(fence, &a).await?;
            }
            if let Some(delete) = &q.delete_expired {
                tx.run(delete, &a).await?;
            }
            let read = if self.queue_table {
                &q.line_locked
            } else {
                &q.holders_locked
            };
            let rows = tx.run(read, &a).await?.rows;
            let line = self.line_for(&rows, wid)?;
            let (seats, at) = (line.seats(), line.place(wid));
            // A shared request also gives way to the writers waiting.
            let mut writers = 0;
            if spec.shared && self.waiter_table {
                let n = tx.run(self.writers_stmt(), &a).await?.first()?;
                writers = n.unwrap_or(0).max(0) as usize;
            }
            // Waiters ahead whose process is gone leave the line now: they
            // hold nothing, so no grace.
            for e in seats.dead_ahead(at).map(|i| &line.queue[i]) {
                tracing::info!(
                    key = spec.key,
                    pid = e.holder.pid,
                    "a waiter's process is gone: removing it from the line"
                );
                tx.run(&q.dequeue, &Args::of(ns, key).id(&e.id)).await?;
            }
            let join = join && self.queue_table;
            let slot = match seats.rule(spec.mode(), at, writers, join) {
                kit::Ruling::Enter { slot } => slot,
                kit::Ruling::Wait { join: joined } => {
                    // Holders known dead: their leases end BREAK_GRACE from
                    // now instead of at their TTL, by when they are gone.
                    let mut gone = None;
                    for e in &line.leases {
                        if let (true, Some(brk)) = (e.holder.dead, &q.break_lease) {
                            gone = gone.max(Some(e.left_us.min(grace).max(0)));
                            if e.left_us > grace {
                                tracing::info!(
                                    key = spec.key,
                                    pid = e.holder.pid,
                                    "the holder's process is gone: breaking its lease"
                                );
                                tx.run(brk, &Args::of(ns, key).id(&e.id)).await?;
                            }
                        }
                    }
                    // Take our place at the back of the line, in this
                    // transaction. (The waiter row that older versions count
                    // is written after it, outside the key's lock:
                    // `wait_change`.)
                    // On a database file, whose one writer at a time is
                    // all the key's lock there is, our waiter row goes in
                    // the same write (`renew_place` then has nothing due).
                    let mut rows_written = false;
                    if joined {
                        tx.run(&q.enqueue, &Args { id: wid, ..a }).await?;
                        if !P::SERVER
                            && let Some(w) = self.waiting.due(spec)
                        {
                            let first = self.waiting.first_write(ns, key);
                            self.waiter_rows(&mut tx, ns, key, &w, first).await?;
                            rows_written = true;
                        }
                    }
                    tx.commit().await?;
                    if rows_written {
                        self.waiting.written(ns, key);
                    }
                    return Ok::<_, sqlx::Error>(Err(Busy {
                        place: (at.is_some() || joined).then(|| line.before(wid)),
                        holders: line.leases,
                        seats,
                        at,
                        writers,
                        gone,
                    }));
                }
            };
            // A semaphore's holder takes the lowest free slot (the ruling's);
            // the slot is in its lease's id ([`with_slot`]).
            let id = slot.map_or_else(|| row_id.clone(), |s| with_slot(row_id, s));
            // No longer a waiter: in the same transaction, so the new holder
            // is never counted as both; where the dialect can, in the
            // insert's own statement (a waiter with a waiter row is in
            // line there).
            let ours = self.waiting.ours(spec);
            let leaving = q.insert_leaving.as_ref().filter(|_| ours.is_some());
            let waiter = ours.as_deref().unwrap_or_default();
            let mut a = Args {
                id: &id,
                place: wid,
                waiter,
                ..a
            };
            if let Some(bump) = &q.bump {
                let out = tx.run(bump, &a).await?;
                a.token = out.first()?.or(out.last_id).unwrap_or(0);
            }
            let out = tx.run(leaving.unwrap_or(&q.insert), &a).await?;
            if q.bump.is_none() {
                a.token = out.first()?.unwrap_or(0);
            }
            if leaving.is_none() {
                if at.is_some() {
                    tx.run(&q.dequeue, &Args::of(ns, key).id(wid)).await?;
                }
                if let Some(w) = &ours {
                    tx.run(&q.delete_waiter, &Args::of(ns, key).id(w)).await?;
                }
            }
            tx.commit().await?;
            Ok(Ok((a.token, id, slot, granted_at)))
        };
        let result = match peeked {
            Some(busy) => Err(busy),
            None => self.bounded_again("acquire", attempt).await?,
        };
        match result {
            Ok((token, id, slot, granted_at)) => {
                self.waiting.done(ns, key);
                self.d.taken(spec, me.kind).await;
                let lease = spec.lease(token as u64, id, granted_at, slot);
                Ok((Attempt::Acquired(lease), None))
            }
            Err(busy) => {
                let place = busy.place.as_ref().map(|b| (wid, b.as_deref()));
                let ahead = busy.seats.waiting_ahead(busy.at);
                self.d.missed(spec, ahead, place).await;
                let soonest = busy.holders.iter().map(|e| e.left_us).min();
                let soonest = soonest.unwrap_or(i64::MAX);
                *self.next_expiry.lock().unwrap() = Some(
                    Instant::now() + Duration::from_micros(soonest.clamp(0, 3_600_000_000) as u64),
                );
                // Busy only because of holders that are dead: say when they
                // will be gone, so that the caller can try again then.
                let free_at = busy
                    .gone
                    .filter(|_| {
                        busy.seats
                            .busy_with_the_dead(spec.mode(), busy.at, busy.writers)
                    })
                    .map(|g| Instant::now() + Duration::from_micros(g as u64 + 5_000));
                let holders = busy.holders.into_iter().map(|e| e.holder).collect();
                Ok((Attempt::Busy(holders), free_at))
            }
        }
    }
}
