//! One `acquire`'s key under its lock's prefix, waiting its turn in
//! [`queue::wait_turn`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;

use super::entries::{Entry, record, record_of, side_key};
use super::slots::Claimant;
use super::{EtcdBackend, ec};
use crate::backend::kit::{self, Record};
use crate::backend::{Holder, Lease, LeaseKind, LockSpec, Owner, queue};
use crate::error::unavailable;

/// One `acquire`'s key under its lock's prefix, waiting its turn.
pub(super) struct EtcdTurn<'a> {
    pub(super) b: &'a EtcdBackend,
    pub(super) c: ec::Client,
    pub(super) spec: &'a LockSpec,
    pub(super) me: &'a Owner,
    pub(super) prefix: String,
    pub(super) key: String,
    pub(super) lease: i64,
    /// The revision of the last listing: watches start after it.
    pub(super) rev: i64,
    pub(super) alive_since: Instant,
    /// The records read from side keys, by entry key and create revision.
    pub(super) sides: HashMap<(Vec<u8>, i64), Option<Record>>,
    /// Our record, and the key it is in (our entry, or an elect
    /// candidate's side key): a semaphore's holder adds its slot.
    pub(super) record: Record,
    pub(super) record_key: Vec<u8>,
    /// The listing read with our put, in its transaction: the first
    /// `entries` needs no read of its own.
    pub(super) first: Option<(Vec<Entry>, i64)>,
}

#[async_trait]
impl queue::Turn for EtcdTurn<'_> {
    type Entry = Entry;

    async fn entries(&mut self) -> Result<(Vec<Entry>, Option<usize>)> {
        let listed = match self.first.take() {
            Some(first) => Ok(first),
            None => self.b.contenders(&self.prefix).await,
        };
        let (entries, rev) = match listed {
            Ok(v) => v,
            Err(e) => {
                self.b.give_up(&self.key, self.lease).await;
                return Err(e);
            }
        };
        self.rev = rev;
        let ours = entries
            .iter()
            .position(|e| e.kv.key() == self.key.as_bytes());
        Ok((entries, ours))
    }

    fn mode(&self, e: &Entry) -> kit::Mode {
        e.mode(self.spec.limit)
    }

    async fn record(&mut self, e: &Entry) -> Result<Option<Record>> {
        if let Some(r) = record_of(&e.kv) {
            return Ok(Some(r));
        }
        if !e.may_have_side() {
            return Ok(None);
        }
        let at = (e.kv.key().to_vec(), e.kv.create_revision());
        if let Some(r) = self.sides.get(&at) {
            return Ok(r.clone());
        }
        let Some(side) = side_key(e.kv.key()) else {
            return Ok(None);
        };
        let got = self.b.bounded("get", self.c.get(side, None)).await?;
        // The side record of this entry's lease, not of another's.
        let lease = format!("{:x}", e.kv.lease());
        let r = got
            .kvs()
            .first()
            .and_then(|kv| record(&String::from_utf8_lossy(kv.value())))
            .filter(|r| r.id == lease);
        self.sides.insert(at, r.clone());
        Ok(r)
    }

    /// Whether the entry is gone now: a holder that released, then exited
    /// since we listed, is not slept on for the grace (the line would
    /// stand still behind us meanwhile).
    async fn gone(&mut self, e: &Entry) -> Result<bool> {
        let got = self
            .b
            .bounded("get", self.c.get(e.kv.key().to_vec(), None))
            .await?;
        let rev = e.kv.create_revision();
        Ok(!got.kvs().iter().any(|kv| kv.create_revision() == rev))
    }

    async fn remove_dead(&mut self, e: &Entry) -> Result<bool> {
        self.b.remove_dead(e).await
    }

    async fn vanished(&mut self) -> anyhow::Error {
        self.b.give_up(&self.key, self.lease).await;
        unavailable(format!(
            "etcd {}: our queue key {} vanished (its lease expired?)",
            self.b.shown, self.key
        ))
    }

    async fn admitted(&mut self, entries: &[Entry], ours: usize) -> Result<Lease> {
        let (spec, lease) = (self.spec, self.lease);
        self.b.mine.lock().await.insert(
            (spec.namespace.clone(), spec.key.clone()),
            (self.key.clone(), lease),
        );
        self.b.queued.resolved(&lease);
        // A semaphore's holder claims the lowest free slot, recorded in
        // its record ([`super::slots`]); a mutex is slot 0, a reader has
        // none.
        let mut slot = spec.fixed_slot();
        if !spec.shared && spec.limit > 1 {
            let me = Claimant {
                key: &self.key,
                rev: entries[ours].kv.create_revision(),
                lease,
                record_key: self.record_key.clone(),
                record: &self.record,
            };
            slot = self.b.claim_slot(&self.prefix, spec.limit, &me).await?;
        }
        // The handle carries the lease id: it names our key.
        let id = if self.me.kind == LeaseKind::Handle {
            format!("{lease:x}")
        } else {
            self.me.id.clone()
        };
        let token = entries[ours].kv.create_revision() as u64;
        Ok(spec.lease(token, id, self.alive_since, slot))
    }

    async fn give_up(&mut self, holding: &[Entry]) -> Result<Vec<Holder>> {
        let holders = self.b.holders(holding).await;
        self.b.give_up(&self.key, self.lease).await;
        Ok(holders)
    }

    async fn wait(&mut self, blocker: &Entry, deadline: Option<Instant>) -> Result<()> {
        let (c, lease) = (&mut self.c, self.lease);
        // The watch first: one created from a revision etcd has already
        // passed is "unsynced", and etcd catches those up only every
        // 100 ms; so the sooner it is in place after the listing, the
        // likelier a release is seen the moment it commits.
        let pred = blocker.kv.key().to_vec();
        let opts = ec::WatchOptions::new().with_start_revision(self.rev + 1);
        let watch = self.b.bounded("watch", c.watch(pred, Some(opts))).await;
        // While waiting, keep our own lease alive.
        let sent = Instant::now();
        // (A member that does not answer is left for the next one.)
        let kept = self
            .b
            .bounded("keep-alive", async {
                let (mut k, mut s) = c.lease_keep_alive(lease).await?;
                k.keep_alive().await?;
                Ok::<_, ec::Error>(s.message().await?.is_some_and(|m| m.ttl() > 0))
            })
            .await;
        if matches!(kept, Ok(true)) {
            self.alive_since = sent;
        }
        let recheck = Instant::now() + (self.spec.ttl / 3).min(Duration::from_secs(2));
        let until = deadline.map_or(recheck, |d| d.min(recheck));
        if let Ok(mut stream) = watch {
            let _ = tokio::time::timeout_at(until.into(), async {
                while let Ok(Some(resp)) = stream.message().await {
                    if resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == ec::EventType::Delete)
                    {
                        break;
                    }
                }
            })
            .await;
        } else {
            tokio::time::sleep_until(
                until
                    .min(Instant::now() + Duration::from_millis(200))
                    .into(),
            )
            .await;
        }
        Ok(())
    }
}
