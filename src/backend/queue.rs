//! The wait of a queue backend (ZooKeeper, etcd), written once: our entry
//! is in the service's queue (registered in the backend's
//! [`kit::Queued`] before it was created, so `close` removes it if we are
//! interrupted); then, until it holds or the deadline passes, list the
//! entries, let the admission rule ([`kit::admits`], [`kit::blocker`]) say
//! whether ours holds given every entry before it, and else watch the one
//! entry ahead whose leaving may let it in (no herd). The backend says how
//! to list, watch, tidy and give up ([`Turn`]).

use std::time::Instant;

use anyhow::Result;
use async_trait::async_trait;

use super::kit::{self, Mode};
use super::{Attempt, Holder, Lease};

/// One attempt's entry in a service's queue, as its backend handles it.
#[async_trait]
pub trait Turn: Send {
    /// A queue entry as the service lists it.
    type Entry: Send + Sync;

    /// The queue's entries, in order, and the index of ours; None if ours
    /// is gone (its session or lease expired).
    async fn entries(&mut self) -> Result<(Vec<Self::Entry>, Option<usize>)>;

    /// An entry's mode for the admission rule.
    fn mode(&self, entry: &Self::Entry) -> Mode;

    /// The error for our entry gone while we waited (after any clean-up).
    async fn vanished(&mut self) -> anyhow::Error;

    /// Ours holds now (`entries[ours]`): make it our lease.
    async fn admitted(&mut self, entries: &[Self::Entry], ours: usize) -> Result<Lease>;

    /// Before waiting on the entries `ahead`: tidy them (ZooKeeper deletes
    /// the ones whose TTL ran out). True if the queue changed: look again.
    async fn tidy(&mut self, _ahead: &[Self::Entry]) -> Result<bool> {
        Ok(false)
    }

    /// The deadline passed: remove our entry. `holders` are the entries
    /// that hold (by the rule), for the busy message.
    async fn give_up(&mut self, holders: &[Self::Entry]) -> Result<Vec<Holder>>;

    /// Wait until `blocker` leaves, or a periodic re-check, or `deadline`;
    /// keep our entry alive meanwhile.
    async fn wait(&mut self, blocker: &Self::Entry, deadline: Option<Instant>) -> Result<()>;
}

/// Wait for our entry's turn in `mode`, until `deadline` (None: for ever;
/// past: one look).
pub async fn wait_turn<T: Turn>(
    t: &mut T,
    mode: Mode,
    deadline: Option<Instant>,
) -> Result<Attempt> {
    loop {
        let (entries, ours) = t.entries().await?;
        let Some(ours) = ours else {
            return Err(t.vanished().await);
        };
        let modes: Vec<Mode> = entries.iter().map(|e| t.mode(e)).collect();
        let Some(blocker) = kit::blocker(mode, &modes[..ours]) else {
            return Ok(Attempt::Acquired(t.admitted(&entries, ours).await?));
        };
        if t.tidy(&entries[..ours]).await? {
            continue;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let holding = kit::holding(&modes);
            return Ok(Attempt::Busy(t.give_up(&entries[..holding]).await?));
        }
        t.wait(&entries[blocker], deadline).await?;
    }
}
