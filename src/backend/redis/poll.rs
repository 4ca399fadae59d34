//! Waiting on Redis: an attempt (`ACQUIRE`, and Redlock's `FENCE` round),
//! the waiter's entry, and the wake-up on a release.

use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::{Script, Value};

use super::scripts::{ACQUIRE, BREAK_DEAD, FENCE, WAITING};
use super::status::{holders_from, strings};
use super::{RedisBackend, clean, keys};
use crate::backend::{Attempt, Holder, Lease, LockSpec, Owner, Poll, kit};

/// How long a waiter's entry lasts without being renewed (it is renewed
/// every third of this; polls are at most 250ms apart).
pub(super) const WAITER_LAPSE: Duration = Duration::from_secs(2);

#[async_trait]
impl Poll for RedisBackend {
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner, _join: bool) -> Result<Attempt> {
        let k = keys(&spec.namespace, &spec.key);
        let step = self.step_timeout(spec.ttl);
        let granted_at = Instant::now();
        let mode = if self.redlock() { "2" } else { "1" };
        let args = [
            me.id.clone(),
            spec.ttl.as_millis().to_string(),
            spec.limit.to_string(),
            mode.to_string(),
            clean(&me.user),
            clean(&me.host),
            me.pid.to_string(),
            waiter_entry(&self.waiting.id, spec.shared),
            if spec.shared { "1" } else { "0" }.to_string(),
            kit::Record::live_suffix(me),
        ];
        let results = self
            .everywhere(
                &Script::new(ACQUIRE),
                &[&k.main, &k.fence, &k.sem, &k.waiters, &k.shared],
                &args,
                step,
            )
            .await;
        let mut counters = Vec::new();
        let mut busy: Vec<(String, Holder)> = Vec::new();
        let mut errors = Vec::new();
        for r in &results {
            match r {
                Ok(v) => {
                    let s = strings(v);
                    if s.first().map(String::as_str) == Some("1") {
                        counters.push(s.get(1).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0));
                    } else {
                        for (id, h) in holders_from(&s[1.min(s.len())..]) {
                            if !busy.iter().any(|(i, _)| *i == id) {
                                busy.push((id, h));
                            }
                        }
                    }
                }
                Err(e) => errors.push(e.clone()),
            }
        }
        let elapsed = granted_at.elapsed();
        let drift = spec.ttl / 100 + Duration::from_millis(2);
        let valid = spec.ttl.saturating_sub(elapsed + drift);
        let lease = |token| Lease {
            namespace: spec.namespace.clone(),
            key: spec.key.clone(),
            token,
            id: me.id.clone(),
            ttl: spec.ttl,
            granted_at,
            shared: spec.shared,
            slot: spec.fixed_slot(),
        };
        if counters.len() >= self.quorum && !valid.is_zero() {
            if !self.redlock() {
                self.waiting.done(&spec.namespace, &spec.key);
                return Ok(Attempt::Acquired(lease(counters[0])));
            }
            let token = counters.iter().max().copied().unwrap_or(0) + 1;
            let fenced = self
                .everywhere(
                    &Script::new(FENCE),
                    &[&k.main, &k.fence, &k.sem, &k.shared],
                    &[me.id.clone(), token.to_string()],
                    step,
                )
                .await;
            let ok = fenced
                .iter()
                .filter(|r| matches!(r, Ok(Value::Int(1))))
                .count();
            if ok >= self.quorum && granted_at.elapsed() + drift < spec.ttl {
                self.waiting.done(&spec.namespace, &spec.key);
                return Ok(Attempt::Acquired(lease(token)));
            }
            errors.extend(fenced.into_iter().filter_map(|r| r.err()));
        }
        // No majority (or no validity left): undo everywhere, then report.
        if !counters.is_empty() {
            self.release_on(&lease(0), "release", 0).await;
            // The granting servers dropped our waiter entry: write it
            // again at the next wait, not a third of its lapse later, so
            // that a waiting writer keeps later readers out.
            self.waiting.done(&spec.namespace, &spec.key);
        }
        if self.nodes.len() - errors.len() < self.quorum {
            return Err(self.too_few(&errors));
        }
        Ok(Attempt::Busy(busy.into_iter().map(|(_, h)| h).collect()))
    }

    async fn break_dead(&self, spec: &LockSpec, dead: &[Holder]) -> Result<bool> {
        let ids: Vec<String> = dead.iter().filter_map(|h| h.entry.clone()).collect();
        if ids.is_empty() {
            return Ok(false);
        }
        let k = keys(&spec.namespace, &spec.key);
        let results = self
            .everywhere(
                &Script::new(BREAK_DEAD),
                &[&k.main, &k.sem, &k.chan, &k.shared],
                &ids,
                self.step_timeout(spec.ttl),
            )
            .await;
        Ok(results
            .iter()
            .any(|r| matches!(r, Ok(Value::Int(n)) if *n > 0)))
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        // Our waiter entry, written first thing after a failed attempt: it
        // counts for `status`, and an exclusive one keeps shared requests
        // that come after it out (no writer starvation). Noted before it
        // is written, so an interrupted waiter's `close` removes it. Best
        // effort: an error here only makes the count low.
        if self.waiting.due(&spec.namespace, &spec.key, WAITER_LAPSE) {
            self.waiting.note(&spec.namespace, &spec.key);
            let k = keys(&spec.namespace, &spec.key);
            let _ = self
                .everywhere(
                    &Script::new(WAITING),
                    &[&k.waiters, &k.chan],
                    &[
                        waiter_entry(&self.waiting.id, spec.shared),
                        WAITER_LAPSE.as_millis().to_string(),
                    ],
                    self.step_timeout(spec.ttl),
                )
                .await;
        }
        self.subscribe(&spec.namespace, &spec.key).await?;
        // Wake on a release message, or poll: a holder that expires or a
        // foreign client that releases does not publish.
        let mut cap = Duration::from_millis(200);
        if self.redlock() {
            // Redlock: a random delay, so contenders do not collide in step.
            let mut b = [0u8; 1];
            let _ = getrandom::fill(&mut b);
            cap += Duration::from_millis(u64::from(b[0]) % 50);
        }
        let bound = until.map_or(Instant::now() + cap, |u| u.min(Instant::now() + cap));
        let mut subs = self.subs.lock().await;
        if let Some((_, streams)) = subs.as_mut() {
            let woke = if streams.is_empty() {
                None
            } else {
                tokio::time::timeout_at(bound.into(), streams.next())
                    .await
                    .ok()
            };
            // Every subscription ended (a server restarted): subscribe again
            // at the next wait, and poll until then rather than spin.
            if matches!(woke, None | Some(None)) {
                if woke.is_some() {
                    *subs = None;
                }
                drop(subs);
                tokio::time::sleep_until(bound.into()).await;
            }
        }
        Ok(())
    }
}

/// This process's entry in a key's waiters set: its id, marked `s|` when
/// it waits to share (exclusive entries are the bare id, as before).
pub(super) fn waiter_entry(id: &str, shared: bool) -> String {
    if shared {
        format!("s|{id}")
    } else {
        id.to_string()
    }
}
