//! Waiting on Redis: an attempt (`ACQUIRE`, and Redlock's `FENCE` round),
//! the waiter's entry, and the wake-up on a release.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::{Script, Value};

use super::scripts::{ACQUIRE, BREAK_DEAD, FENCE};
use super::status::{holders_from, strings};
use super::{RedisBackend, clean, keys, waiter_entry};
use crate::backend::{Attempt, Holder, LockSpec, Owner, Poll, kit};

/// How long a waiter's place in line lasts without being renewed: every
/// attempt renews it, and a waiter tries at least every 250 ms.
pub(super) const WAITER_LAPSE: Duration = Duration::from_secs(2);

#[async_trait]
impl Poll for RedisBackend {
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner, join: bool) -> Result<Attempt> {
        let k = keys(&spec.namespace, &spec.key);
        let step = self.step_timeout(spec.ttl);
        let granted_at = Instant::now();
        let mode = if self.redlock() { "2" } else { "1" };
        let semaphore = !spec.shared && spec.limit > 1;
        if join {
            // Noted before the script that writes our place, so that an
            // interrupted waiter's `close` takes it out.
            self.waiting.note(&spec.namespace, &spec.key);
        }
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
            if join { "1" } else { "0" }.to_string(),
            self.ticket(spec, join),
            WAITER_LAPSE.as_millis().to_string(),
            // Our record in line: `N` is the --limit, 0 for a shared
            // request (kit::NField::Limit).
            format!(
                "dlock1|{}|{}|{}|{}|{}",
                self.waiting.id,
                if spec.shared { 0 } else { spec.limit },
                clean(&me.user),
                clean(&me.host),
                me.pid
            ),
            // A waiter is a running process whatever it waits for (a
            // `run`, or a handle's `acquire`): one that died is dead.
            if me.host_id.is_empty() {
                String::new()
            } else {
                format!("||||{}|{}", me.host_id, me.proc_start)
            },
        ];
        let results = self
            .everywhere("ACQUIRE", &Script::new(ACQUIRE), &k.all(), &args, step)
            .await;
        // (token, slot) of each server that admitted us.
        let mut granted: Vec<(u64, u32)> = Vec::new();
        let mut busy: Vec<(String, Holder)> = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(v) => {
                    let s = strings(&v);
                    if s.first().map(String::as_str) == Some("1") {
                        let num = |i: usize| s.get(i).and_then(|t| t.parse::<u64>().ok());
                        let slot = num(2).unwrap_or(0).min(u64::from(u32::MAX)) as u32;
                        granted.push((num(1).unwrap_or(0), slot));
                    } else {
                        for (id, h) in holders_from(&s[1.min(s.len())..]) {
                            // Only a dead waiter ahead is of use to the
                            // caller (to remove); the others wait, as we do.
                            if (!h.waiting || h.dead) && !busy.iter().any(|(i, _)| *i == id) {
                                busy.push((id, h));
                            }
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        let elapsed = granted_at.elapsed();
        let drift = spec.ttl / 100 + Duration::from_millis(2);
        let valid = spec.ttl.saturating_sub(elapsed + drift);
        let lease = |token, slot: Option<u32>| {
            let slot = slot.filter(|_| semaphore);
            spec.lease(token, me.id.clone(), granted_at, slot)
        };
        if granted.len() >= self.quorum && !valid.is_zero() {
            if !self.redlock() {
                self.acquired(spec);
                let (token, slot) = granted[0];
                return Ok(Attempt::Acquired(lease(token, Some(slot))));
            }
            let token = granted.iter().map(|g| g.0).max().unwrap_or(0) + 1;
            // Redlock: one slot on a majority. The one most servers chose
            // (the lowest of those), written by the second round only where
            // no other live holder has it: two holders of one slot would
            // each need a majority, and any two majorities share a server.
            let slot = semaphore.then(|| agreed_slot(&granted));
            let fenced = self
                .everywhere(
                    "FENCE",
                    &Script::new(FENCE),
                    &[
                        &k.main, &k.fence, &k.sem, &k.shared, &k.waiters, &k.queue, &k.qrec,
                    ],
                    &[
                        me.id.clone(),
                        token.to_string(),
                        slot.map_or(String::new(), |s| s.to_string()),
                        waiter_entry(&self.waiting.id, spec.shared),
                    ],
                    step,
                )
                .await;
            let ok = fenced
                .iter()
                .filter(|r| matches!(r, Ok(Value::Int(1))))
                .count();
            if ok >= self.quorum && granted_at.elapsed() + drift < spec.ttl {
                self.acquired(spec);
                return Ok(Attempt::Acquired(lease(token, slot)));
            }
            errors.extend(fenced.into_iter().filter_map(|r| r.err()));
        }
        // No majority (or no validity left): undo everywhere, then report.
        // The granting servers dropped our place in line: the next attempt
        // writes it again, with the same ticket.
        if !granted.is_empty() {
            self.release_on(&lease(0, None), "release", 0).await;
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
                "BREAK_DEAD",
                &Script::new(BREAK_DEAD),
                &k.all(),
                &ids,
                self.step_timeout(spec.ttl),
            )
            .await;
        Ok(results
            .iter()
            .any(|r| matches!(r, Ok(Value::Int(n)) if *n > 0)))
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        // Our place in line was taken (and its lapse renewed) by the
        // attempt before this wait. A waiter subscribes only once it is
        // kept out (an uncontended run never does), so a release between
        // that attempt and the subscription named us to nobody: had we
        // waited now, we, the first in line, would sleep out the poll, and
        // the whole line with us (that was the 2.5x of issue 21). Try once
        // more instead: from here on every release reaches us.
        let mine = waiter_entry(&self.waiting.id, spec.shared);
        if self.subscribe(&spec.namespace, &spec.key, &mine).await? {
            return Ok(());
        }
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
        let Some((_, streams)) = subs.as_mut() else {
            return Ok(());
        };
        // Redlock: a release reaches the servers one by one, and an attempt
        // made on the first one's word finds the others still held, is
        // granted by a minority, undone, and leaves us out of the line
        // there until we try again. Wait until a majority of the servers we
        // hear from have said that we may go (they all order the line
        // alike); the poll covers a release that reached fewer.
        let mut heard: Vec<usize> = Vec::new();
        while !streams.is_empty() {
            let need = self.quorum.min(streams.len());
            match tokio::time::timeout_at(bound.into(), streams.next()).await {
                // The poll's bound: try again.
                Err(_) => return Ok(()),
                Ok(Some((server, msg))) if wakes(&msg) => {
                    if !heard.contains(&server) {
                        heard.push(server);
                    }
                    if heard.len() >= need {
                        return Ok(());
                    }
                }
                // A message for other waiters: wait on.
                Ok(Some(_)) => {}
                // Every subscription ended (a server restarted): subscribe
                // again at the next wait.
                Ok(None) => {
                    *subs = None;
                    break;
                }
            }
        }
        // Nothing to wake us: poll rather than spin.
        drop(subs);
        tokio::time::sleep_until(bound.into()).await;
        Ok(())
    }
}

impl RedisBackend {
    /// Our ticket for `spec.key`'s line: '' on one server (the script
    /// takes the next one). Redlock: per-server tickets could put two
    /// waiters each first on some servers and neither on a majority, so
    /// the ticket is chosen here, once per wait (the first attempt's time
    /// in microseconds; equal tickets are ordered by entry), the same on
    /// every server, which therefore all order the line alike; a server
    /// that lost our entry (a restart) is given it again, in its place.
    fn ticket(&self, spec: &LockSpec, join: bool) -> String {
        if !self.redlock() || !join {
            return String::new();
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let Ok(mut t) = self.tickets.lock() else {
            return now.to_string();
        };
        t.entry((spec.namespace.clone(), spec.key.clone()))
            .or_insert(now)
            .to_string()
    }

    /// The wait for `spec.key` is over: our place in line went with the
    /// attempt that admitted us.
    fn acquired(&self, spec: &LockSpec) {
        self.waiting.done(&spec.namespace, &spec.key);
        if let Ok(mut t) = self.tickets.lock() {
            t.remove(&(spec.namespace.clone(), spec.key.clone()));
        }
    }
}

/// Whether a message on the waiter's channels is a reason for it to try
/// again: a release on its own channel (`:released:ENTRY`, published only
/// to the waiters that may go in now), or a keyspace event that may have
/// freed the key (a foreign client's release, an expiry), not one that
/// took it.
fn wakes(msg: &redis::Msg) -> bool {
    if msg.get_channel_name().starts_with("__keyspace@") {
        let payload: String = msg.get_payload().unwrap_or_default();
        return !matches!(payload.as_str(), "set" | "expire");
    }
    true
}

/// The slot most granting servers chose, the lowest of those if several.
fn agreed_slot(granted: &[(u64, u32)]) -> u32 {
    let mut best = (0usize, 0u32);
    for &(_, s) in granted {
        let n = granted.iter().filter(|g| g.1 == s).count();
        if n > best.0 || (n == best.0 && s < best.1) {
            best = (n, s);
        }
    }
    best.1
}
