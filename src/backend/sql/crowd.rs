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
//! - The first [`SLOTS`] waiters in a key's line each keep one *wake-up
//!   connection* (PostgreSQL `LISTEN`, MySQL's blocking `GET_LOCK`), which
//!   also holds one of the key's slots: a server-side lock (an advisory
//!   lock, a `GET_LOCK` name) that the server lets go of when the
//!   connection ends, so a waiter that dies never keeps its slot. They are
//!   woken the moment the key is freed.
//! - Every other waiter (on MySQL) holds no connection between attempts, or
//!   (on PostgreSQL) only the engine's: it polls with
//!   a capped, jittered backoff ([`Backoff`]), and after each attempt looks
//!   whether a slot is free, on the connection it has open for the attempt.
//!
//! So a crowd of any size keeps about 2 × `SLOTS` idle connections per key
//! on a MySQL server (a slot's and the engine's), plus those of the holders
//! and of the attempts in flight; on PostgreSQL one per waiter, plus
//! `SLOTS`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::AnyPool;

use crate::backend::kit;

/// How many waiters of one key keep a wake-up connection. With 4, eight
/// processes taking turns on a key (`bench/bench-sql.sh`) were 10-16 %
/// slower than when all listened: those polling fell behind.
pub const SLOTS: u32 = 8;

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
pub type PoolCell = Arc<OnceLock<AnyPool>>;

/// Close the engine's connection, if it has one, so that a waiter holds
/// none of its own while it sleeps. Never opens one.
pub async fn hang_up(pool: &PoolCell) {
    let Some(pool) = pool.get() else { return };
    if pool.size() == 0 {
        return;
    }
    // The last attempt's connection may be on its way back to the pool.
    if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(500), pool.acquire()).await {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
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
