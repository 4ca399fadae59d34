//! Waiting on S3, which has no watch: each attempt reads the lock object
//! and, if the key is busy, takes (or keeps) this process's place in the
//! object's line in the same conditional write; between attempts a waiter
//! sleeps for a poll interval set by its place in line.

use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;

use super::kit::{self, NField, Record};
use super::state::Entry;
use super::{S3Backend, Step, clean, ms};
use crate::backend::{Attempt, Holder, LockSpec, Owner, Poll};
use crate::error::Retry;

/// How long a waiter's entry lasts unless renewed (every third of it):
/// long, since each renewal is a write to the lock object every waiter
/// shares; a waiter that gives up removes its entry, and one on this
/// machine that dies is taken out of the line at once.
const WAITER_LAPSE: Duration = Duration::from_secs(12);

/// A waiter's poll interval: it doubles from 10 ms up to a ceiling that
/// grows with its place in line: 20 ms for the first two, who are served
/// next, 25 ms per waiter ahead for the others (100 ms to 2 s). So a
/// hand-off waits on the first in line only, and a crowd costs the store
/// about as many reads a second as a few waiters.
pub(super) struct Polling {
    pub(super) interval: Duration,
    pub(super) place: usize,
}

impl Polling {
    fn next(&mut self) -> Duration {
        // The second in line too: it is first as soon as the first takes
        // the lock, and a short hold would otherwise wait on its poll.
        let cap = if self.place <= 1 {
            Duration::from_millis(20)
        } else {
            (Duration::from_millis(25) * self.place as u32)
                .clamp(Duration::from_millis(100), Duration::from_secs(2))
        };
        let d = self.interval.min(cap);
        self.interval = (d * 2).min(cap);
        kit::jitter(d)
    }
}

#[async_trait]
impl Poll for S3Backend {
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner, join: bool) -> Result<Attempt> {
        self.conditional().await?;
        let (ns, key) = (&spec.namespace, &spec.key);
        let object = self.object(ns, key);
        let waiter = self.waiting.id.clone();
        // When the write that admits us was decided (set in the step that
        // admits, just before the expiry is counted from the store's clock):
        // not the attempt's start, as a crowd rewriting the object can keep
        // the compare-and-swap going for seconds, and a lease clock counted
        // from before them would call the lease lost at once (74 in
        // `s3::contention_never_overlaps` under load).
        let mut granted_at = Instant::now();
        let mut rec = Record::new(&me.id, me);
        rec.user = clean(&rec.user);
        rec.host = clean(&rec.host);
        rec.shared = spec.shared;
        rec.limit = (!spec.shared).then_some(spec.limit);
        // Who waits, should this attempt join the line: since now, its
        // liveness in the waiter entry's own `live`.
        let queued = Record {
            id: waiter.clone(),
            live: None,
            ..rec.clone()
        }
        .encode(NField::Limit);
        let had = self.waiting.has(ns, key);
        let due = join && self.waiting.due(ns, key, WAITER_LAPSE);
        if due {
            // Noted before it is written, so that an interrupted waiter's
            // `close` removes it.
            self.waiting.note(ns, key);
        }
        // A newcomer that meets other writers is joining the line, not
        // taking a hand-off: a calmer backoff, as a crowd arrives at once.
        let backoff = if join && !had {
            kit::Backoff::new(Duration::from_millis(10), Duration::from_secs(1))
        } else {
            kit::Backoff::new(Duration::from_millis(2), Duration::from_millis(100))
        };
        // The holders the last look found, when it wrote (only) our entry.
        let mut joining: Option<Vec<Holder>> = None;
        // Whether the last look wrote our lease (admitted).
        let mut admitting = false;
        let got = self
            .update_with(&object, backoff, |o, clock| {
                joining = None;
                admitting = false;
                // Ours already: a write whose answer was lost took effect,
                // in an earlier attempt. Its expiry is written again from
                // now, where the lease clock starts.
                if let Some(i) = o.find(&me.id) {
                    let e = &mut o.holders[i];
                    granted_at = Instant::now();
                    e.exp = clock.now_hi() + ms(spec.ttl);
                    admitting = true;
                    return Step::Write(Ok((e.token, e.record().and_then(|r| r.slot))));
                }
                // (Waiters on this machine whose process is gone were
                // pruned from `o`: they leave the line in this write.)
                let at = o.place(&waiter);
                let slot = match o.seats().rule(spec.mode(), at, 0, join) {
                    kit::Ruling::Enter { slot } => slot,
                    kit::Ruling::Wait { join: joining_now } => {
                        let busy = Err(o.holders());
                        let step = if joining_now || (join && due) {
                            // Take our place at the end of the line, or keep
                            // it (renewed), in the same write as the attempt.
                            o.wait(
                                &waiter,
                                spec.shared,
                                clock.now_hi() + ms(WAITER_LAPSE),
                                &queued,
                            );
                            joining = busy.as_ref().err().cloned();
                            Step::Write(busy)
                        } else if !join && o.unwait(&waiter) {
                            // Given up (`--no-wait`, or the deadline passed):
                            // no trace left.
                            Step::Write(busy)
                        } else {
                            Step::Done(busy)
                        };
                        self.polling.lock().unwrap().place = at.unwrap_or(o.waiters.len());
                        return step;
                    }
                };
                // A semaphore's holder records the lowest free slot (the
                // ruling's) in the write that admits it (a mutex is slot 0,
                // shared none: not recorded).
                let mut r = rec.clone();
                r.slot = slot;
                granted_at = Instant::now();
                o.fence += 1;
                o.holders.push(Entry {
                    rec: r.encode(NField::Limit),
                    token: o.fence,
                    exp: clock.now_hi() + ms(spec.ttl),
                });
                o.unwait(&waiter);
                admitting = true;
                Step::Write(Ok((o.fence, slot)))
            })
            .await;
        let got = match got {
            Ok(g) => g,
            // Only our place in line was being written, and the store did
            // not answer in time (a crowd rewriting one hot object): busy,
            // as a waiter's entry was before it joined in the attempt; the
            // next attempt reads whether it is in line, and joins if not.
            // An outage goes on to fail the next attempt's read.
            Err(e) if joining.is_some() && crate::error::retry_of(&e) != Retry::Never => {
                tracing::debug!(error = format!("{e:#}"), "joining the line: trying again");
                return Ok(Attempt::Busy(joining.unwrap_or_default()));
            }
            // The write that admits us got no answer, from a store that
            // answered the read just before (one request stuck behind a
            // crowd rewriting the object: twice in a row for a newcomer of
            // the S3 crowd test, which then exited 69 with the store up).
            // Not an outage yet: the next attempt reads again at once, and
            // finds our entry if the write took effect; a store that is
            // down fails that read.
            // (A request that does not wait, `--no-wait`, keeps the error:
            // "busy" would be a guess.)
            Err(e) if admitting && join && crate::error::retry_of(&e) == Retry::Outage => {
                tracing::debug!(
                    error = format!("{e:#}"),
                    "admitted, unanswered: looking again"
                );
                return Ok(Attempt::Busy(Vec::new()));
            }
            Err(e) => {
                if due && !had {
                    // Perhaps not in line: the next attempt joins again.
                    self.waiting.done(ns, key);
                }
                return Err(e);
            }
        };
        match got {
            Ok((token, slot)) => {
                self.waiting.done(ns, key);
                self.polling.lock().unwrap().interval = Duration::from_millis(10);
                let slot = spec.fixed_slot().or(slot);
                Ok(Attempt::Acquired(spec.lease(
                    token,
                    me.id.clone(),
                    granted_at,
                    slot,
                )))
            }
            Err(holders) => {
                if joining.is_some() && !due {
                    // Our entry was gone (lapsed): written again now.
                    self.waiting.note(ns, key);
                } else if !join {
                    self.waiting.done(ns, key);
                }
                Ok(Attempt::Busy(holders))
            }
        }
    }

    async fn break_dead(&self, spec: &LockSpec, dead: &[Holder]) -> Result<bool> {
        let ids: Vec<&str> = dead.iter().filter_map(|h| h.entry.as_deref()).collect();
        if ids.is_empty() {
            return Ok(false);
        }
        let object = self.object(&spec.namespace, &spec.key);
        self.update(&object, |o, _| {
            // Only an entry still dead now: an id names one acquisition.
            o.holders.retain(|e| {
                !e.record()
                    .is_some_and(|r| ids.contains(&r.id.as_str()) && r.dead_here())
            });
            // Gone now (removed, or ended meanwhile and pruned from what we
            // read): write the object without them, so that every reader
            // sees them gone, whatever it knows of the store's clock.
            let left = o.holders.iter().filter_map(Entry::id).collect::<Vec<_>>();
            if ids.iter().any(|id| !left.iter().any(|l| l == id)) {
                Step::Write(true)
            } else {
                Step::Done(false)
            }
        })
        .await
    }

    async fn wait_change(&self, _spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        // Our place in line was taken (and is renewed) by the attempts
        // themselves ([`Poll::try_acquire`] with `join`); S3 has no watch.
        let d = self.polling.lock().unwrap().next();
        let wake = Instant::now() + d;
        let wake = until.map_or(wake, |u| u.min(wake));
        tokio::time::sleep_until(wake.into()).await;
        Ok(())
    }
}
