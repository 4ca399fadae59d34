//! The polling engine of a service without a queue of its own (Redis,
//! SQL, SQLite, S3): try, remove dead entries, wait for a change, try again.

use std::time::{Duration, Instant};

use crate::backend::{Attempt, Holder, LockSpec, Owner, Poll};

/// How long after finding a holder's process gone its entry is removed:
/// the dead dlock's guard, woken by its death, is still SIGKILLing the
/// job's process group, and a new holder's child must not start beside it.
pub const BREAK_GRACE: Duration = Duration::from_millis(100);

/// Take a slot of `spec.key` on a service without a queue: try, and until
/// `deadline` wait for a change and try again. Holders known dead (a
/// process on this machine that is gone) are removed at once and the
/// attempt made again, `--no-wait` included: the liveness rule.
pub async fn poll(
    b: &dyn Poll,
    spec: &LockSpec,
    me: &Owner,
    deadline: Option<Instant>,
) -> anyhow::Result<Attempt> {
    // The holders found gone so far (their entries): each is looked at once
    // more before it is taken for dead, see below.
    let mut gone: Vec<Option<String>> = Vec::new();
    loop {
        // The clock `wait_change` sleeps on (tokio's, the same as std's but
        // for paused time in tests, where std's would make this spin).
        let now = || tokio::time::Instant::now().into_std();
        let join = deadline.is_none_or(|d| now() < d);
        match b.try_acquire(spec, me, join).await? {
            Attempt::Acquired(l) => return Ok(Attempt::Acquired(l)),
            Attempt::Busy(mut h) => {
                // A holder whose process is gone may just have finished: it
                // released before it exited, so an attempt made now sees
                // the release. Try again at once, and take it for dead only
                // if it is still there: with a line, the grace below would
                // otherwise hold up every waiter behind us after an
                // ordinary hand-off (issue 21).
                let first = h
                    .iter()
                    .filter(|h| h.dead && !h.waiting && !gone.contains(&h.entry));
                let first: Vec<Option<String>> = first.map(|h| h.entry.clone()).collect();
                if !first.is_empty() {
                    gone.extend(first);
                    continue;
                }
                let dead: Vec<Holder> = h.iter().filter(|h| h.dead).cloned().collect();
                // Dead waiters ahead go at once; a dead holder's guard may
                // still be stopping its job.
                if dead.iter().any(|h| !h.waiting) {
                    tokio::time::sleep(BREAK_GRACE).await;
                }
                if !dead.is_empty() && b.break_dead(spec, &dead).await? {
                    tracing::info!(
                        event = "broke_dead",
                        key = spec.key,
                        holders = dead.len(),
                        "removed the entries of holders whose process is gone"
                    );
                    continue;
                }
                if deadline.is_some_and(|d| now() >= d) {
                    h.retain(|h| !h.waiting);
                    return Ok(Attempt::Busy(h));
                }
                b.wait_change(spec, deadline).await?;
            }
        }
    }
}

/// A waiter's poll interval where nothing wakes it (a handle's lease, a
/// semaphore): 5 ms, doubling to 100 ms, and back to 5 ms after a hand-off.
pub struct PollBackoff(std::sync::Mutex<Duration>);

impl Default for PollBackoff {
    fn default() -> PollBackoff {
        PollBackoff(std::sync::Mutex::new(PollBackoff::MIN))
    }
}

impl PollBackoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(100);

    /// The next interval to sleep.
    pub fn next(&self) -> Duration {
        let mut p = self.0.lock().unwrap();
        let cur = *p;
        *p = (cur * 2).min(Self::MAX);
        cur
    }

    /// Something happened: poll fast again.
    pub fn reset(&self) {
        *self.0.lock().unwrap() = Self::MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The liveness rule in the polling engine: a key held only by dead
    /// holders is taken at once, `--no-wait` included; a live holder is
    /// never broken.
    #[tokio::test(flavor = "current_thread")]
    async fn the_engine_removes_dead_holders_and_tries_again_at_once() {
        use crate::backend::{Lease, LeaseKind};
        use std::sync::Mutex;
        struct Fake {
            holders: Mutex<Vec<Holder>>,
            broken: Mutex<usize>,
        }
        #[async_trait::async_trait]
        impl Poll for Fake {
            async fn try_acquire(
                &self,
                spec: &LockSpec,
                _: &Owner,
                _: bool,
            ) -> anyhow::Result<Attempt> {
                let h = self.holders.lock().unwrap().clone();
                if !h.is_empty() {
                    return Ok(Attempt::Busy(h));
                }
                Ok(Attempt::Acquired(Lease {
                    namespace: spec.namespace.clone(),
                    key: spec.key.clone(),
                    token: 1,
                    id: "me".into(),
                    ttl: spec.ttl,
                    granted_at: Instant::now(),
                    shared: false,
                    slot: Some(0),
                }))
            }
            async fn wait_change(&self, _: &LockSpec, _: Option<Instant>) -> anyhow::Result<()> {
                Ok(())
            }
            async fn break_dead(&self, _: &LockSpec, dead: &[Holder]) -> anyhow::Result<bool> {
                assert!(
                    dead.iter().all(|h| h.dead),
                    "a live holder offered to break"
                );
                *self.broken.lock().unwrap() += dead.len();
                self.holders.lock().unwrap().retain(|h| !h.dead);
                Ok(!dead.is_empty())
            }
        }
        let spec = LockSpec {
            namespace: "ns".into(),
            key: "k".into(),
            ttl: Duration::from_secs(60),
            limit: 1,
            shared: false,
        };
        let me = Owner {
            id: "me".into(),
            user: "u".into(),
            host: "h".into(),
            pid: 1,
            host_id: String::new(),
            proc_start: 0,
            kind: LeaseKind::Run,
            value: None,
        };
        let dead = Holder {
            dead: true,
            ..Holder::default()
        };
        let fake = Fake {
            holders: Mutex::new(vec![dead.clone()]),
            broken: Mutex::new(0),
        };
        // --no-wait: the deadline has passed, one look; the dead holder goes.
        let got = poll(&fake, &spec, &me, Some(Instant::now())).await.unwrap();
        assert!(matches!(got, Attempt::Acquired(_)));
        assert_eq!(*fake.broken.lock().unwrap(), 1);
        // A live holder beside a dead one: the dead one goes, the key stays busy.
        *fake.holders.lock().unwrap() = vec![dead, Holder::default()];
        let got = poll(&fake, &spec, &me, Some(Instant::now())).await.unwrap();
        assert!(matches!(got, Attempt::Busy(h) if h.len() == 1 && !h[0].dead));
        assert_eq!(*fake.broken.lock().unwrap(), 2);
    }
}
