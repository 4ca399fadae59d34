//! A crowd of waiters on one key must not fill the server's connections.
//!
//! Each dlock is a process of its own, so waiters cannot share a
//! connection. A waiter therefore holds at most one, and most hold none:
//!
//! - On MySQL, a waiter without a slot (below) gives the engine's own
//!   connection (its pool of one) back to the server whenever it goes to
//!   sleep ([`hang_up`]); the next attempt opens another (a thread on the
//!   server). PostgreSQL keeps it: there a connection is a forked process,
//!   too dear to open per attempt.
//! - The first [`SLOTS`] waiters in a key's line are woken the moment the
//!   key is freed, each holding one of the key's slots: a server-side lock
//!   (an advisory lock, a `GET_LOCK` name) that the server lets go of when
//!   the connection ends, so a waiter that dies never keeps its slot. On
//!   MySQL each keeps a *wake-up connection* for its blocking `GET_LOCK`;
//!   on PostgreSQL the slot and the `LISTEN` are on the engine's own
//!   connection (one per run), and a release wakes only the one first in
//!   line when only that one may go.
//! - Every other waiter (on MySQL) holds no connection between attempts, or
//!   (on PostgreSQL) only the engine's: it polls with
//!   a capped, jittered backoff ([`Backoff`]); near the front of the line
//!   it tries for a slot (on MySQL after looking whether one is free).
//!
//! - A waiter that could not open its wake-up connection (a server at its
//!   connection limit) does not try again for [`NO_SLOT_FOR`], and a try is
//!   bounded by [`SLOT_TRY`]: a try must never keep a waiter from renewing
//!   its place in line (its row lapses in 3 s), and every try costs the
//!   server a process or a thread. With 200 waiters on PostgreSQL's stock
//!   100 connections, the first in line spent its 4 s `--connect-timeout`
//!   on each try, its row lapsed, the next one did the same, and the line
//!   stalled. Meanwhile the first in line polls often
//!   ([`FIRST_IN_LINE_POLL`]), on the connection it keeps: nobody else
//!   may go.
//!
//! So a crowd of any size keeps about 2 × `SLOTS` idle connections per key
//! on a MySQL server (a slot's and the engine's), plus those of the holders
//! and of the attempts in flight; on PostgreSQL one per waiter.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::backend::kit;

/// How many waiters of one key keep a wake-up connection. With 4, eight
/// processes taking turns on a key (`bench/bench-sql.sh`) were 10-16 %
/// slower than when all listened: those polling fell behind.
pub const SLOTS: u32 = 8;

/// The most a try for a wake-up connection takes: a waiter renews its
/// place in line at least once a second.
pub const SLOT_TRY: Duration = Duration::from_secs(1);

/// How long a waiter whose try for a wake-up connection failed waits
/// before it tries again.
pub const NO_SLOT_FOR: Duration = Duration::from_secs(5);

/// How often the first in line looks whether the key is free when it has
/// no wake-up connection: a hand-off waits for it, and a look is one read.
pub const FIRST_IN_LINE_POLL: Duration = Duration::from_millis(20);

/// When a waiter may next try for a wake-up connection, and where it
/// stood in line at its last attempt.
#[derive(Default)]
pub struct Place {
    /// Live waiters ahead of us in the key's line: only the first
    /// [`SLOTS`] in line take a slot, so the next in line is woken.
    ahead: AtomicUsize,
    /// Whether we were in the key's line (fair queues).
    in_line: AtomicBool,
    /// No try for a wake-up connection before this.
    no_slot_until: Mutex<Option<Instant>>,
}

impl Place {
    /// An attempt found the key busy with `ahead` live waiters ahead, and
    /// `place` (the dialect's [`super::Dialect::missed`]): our row's id and
    /// the one just ahead of it, if we are in line.
    pub fn missed(&self, ahead: usize, place: Option<(&str, Option<&str>)>) {
        self.ahead.store(ahead, Ordering::Relaxed);
        self.in_line.store(place.is_some(), Ordering::Relaxed);
    }

    /// Whether we were first in the key's line: in it, no live waiter
    /// ahead (MySQL's waiter keeps its connection then).
    #[cfg(feature = "mysql")]
    pub fn first(&self) -> bool {
        self.in_line.load(Ordering::Relaxed) && self.ahead.load(Ordering::Relaxed) == 0
    }

    /// Whether to try for a wake-up connection now.
    pub fn may_try(&self) -> bool {
        near_the_front(self.ahead.load(Ordering::Relaxed))
            && self
                .no_slot_until
                .lock()
                .unwrap()
                .is_none_or(|t| Instant::now() >= t)
    }

    /// One try for a wake-up connection (`take`: open one and take a free
    /// slot, `None` if every slot is taken), within the wait that ends at
    /// `bound` and at most [`SLOT_TRY`]. One that fails (no connection to
    /// spare: a crowd larger than the server's limit) or runs out of time
    /// is not tried again for [`NO_SLOT_FOR`].
    pub async fn try_slot<T, E>(
        &self,
        bound: Instant,
        take: impl Future<Output = Result<Option<T>, E>>,
    ) -> Option<T> {
        let until = bound.min(Instant::now() + SLOT_TRY);
        match tokio::time::timeout_at(until.into(), take).await {
            Ok(Ok(got)) => got,
            _ => {
                *self.no_slot_until.lock().unwrap() = Some(Instant::now() + NO_SLOT_FOR);
                None
            }
        }
    }

    /// The sleep of a waiter without a wake-up connection. In line, by its
    /// place: [`FIRST_IN_LINE_POLL`] for the first, that much more for each
    /// one ahead (a hand-off takes at least that), up to a second; each
    /// place moves up as soon as the one ahead takes the key, and the next
    /// hand-off waits for the new first to look. Without a line, `backoff`.
    pub async fn sleep(&self, backoff: &Backoff, bound: Instant) {
        if !self.in_line.load(Ordering::Relaxed) {
            return backoff.sleep(bound).await;
        }
        let ahead = self.ahead.load(Ordering::Relaxed).min(49) as u32;
        let d = (FIRST_IN_LINE_POLL * (ahead + 1)).min(Duration::from_secs(1));
        tokio::time::sleep_until(bound.min(Instant::now() + d).into()).await;
    }
}

/// Whether a waiter with `ahead` live waiters ahead of it in the key's line
/// may take a slot: the slots go to the first in line, whom a release is
/// for. Places only move forward (nobody joins ahead), so a slot's holder
/// stays among the first [`SLOTS`], and one of them that has none finds
/// one free.
pub fn near_the_front(ahead: usize) -> bool {
    ahead < SLOTS as usize
}

/// The engine's pool, for its dialect: set once the engine has opened it
/// (the dialect is made before the engine, and `wait` is not given it).
pub type PoolCell = Arc<OnceLock<super::link::Held>>;

/// Close the engine's connection, if it has one, so that a waiter holds
/// none of its own while it sleeps. Never opens one.
#[cfg(feature = "mysql")]
pub async fn hang_up(pool: &PoolCell) {
    if let Some(held) = pool.get() {
        held.hang_up().await;
    }
}

/// The sleep of a waiter without a wake-up connection between attempts:
/// from 250 ms, doubling to 1 s (the engine tries at least once a second),
/// each jittered (half of it to all of it), so that a crowd's attempts
/// spread out. Such a waiter is behind the first few, who are woken at
/// once: it has no reason to try often.
pub struct Backoff(Mutex<kit::Backoff>);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(Mutex::new(Backoff::fresh()))
    }
}

impl Backoff {
    fn fresh() -> kit::Backoff {
        kit::Backoff::new(Duration::from_millis(250), Duration::from_secs(1))
    }

    /// Sleep the next interval, or until `bound`.
    pub async fn sleep(&self, bound: Instant) {
        let d = self.0.lock().unwrap().next_delay();
        tokio::time::sleep_until(bound.min(Instant::now() + d).into()).await;
    }

    /// A key was taken: the next wait starts fast again.
    pub fn reset(&self) {
        *self.0.lock().unwrap() = Backoff::fresh();
    }
}
