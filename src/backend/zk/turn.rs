//! One `acquire`'s node in its lock directory, waiting its turn in
//! [`queue::wait_turn`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use zookeeper_client as zk;

use super::names::Contender;
use super::node::{node_data, outlives_session, record_of};
use super::slots::slots_dir;
use super::{Holder, Lease, LockSpec, Owner, ZkBackend, kit, queue, zk_err};
use crate::backend::kit::Record;
use crate::error::unavailable;

/// One `acquire`'s node in its lock directory, waiting its turn.
pub(super) struct ZkTurn<'a> {
    pub(super) b: &'a ZkBackend,
    pub(super) c: Arc<zk::Client>,
    pub(super) spec: &'a LockSpec,
    pub(super) me: &'a Owner,
    pub(super) dir: String,
    pub(super) name: String,
    pub(super) path: String,
    /// Our entry in the backend's registry of queue entries.
    pub(super) entry: (String, String),
    pub(super) token: u64,
    /// Our node's data, written back unchanged to touch a handle's node.
    pub(super) data: Vec<u8>,
    /// A handle's node (it outlives the session, and lives from its last
    /// write: `touched`).
    pub(super) handle: bool,
    pub(super) touched: Instant,
    /// When the listing that found us holding was sent.
    pub(super) checked: Instant,
    pub(super) waited: bool,
    /// Nodes that need no look for expiry (see `reap`).
    pub(super) lasting: HashSet<String>,
    /// The records of nodes ahead, read once each: (record, version).
    pub(super) records: HashMap<String, (Option<Record>, i32)>,
    /// When the next node ahead expires.
    pub(super) next_expiry: Option<Duration>,
    /// A watch on the node ahead we wait for, set as its record was read.
    pub(super) watching: Option<(String, zk::OneshotWatcher)>,
}

impl ZkTurn<'_> {
    /// Keep the record of the node `name` ahead: a node's liveness never
    /// changes (one that outlives its session has none), so it is read once.
    fn remember(&mut self, name: String, data: &[u8], stat: &zk::Stat) {
        if !outlives_session(stat) {
            // An ephemeral node: never expires by its TTL (`reap`).
            self.lasting.insert(name.clone());
        }
        self.records
            .insert(name, (record_of(data, stat), stat.version));
    }

    /// Rewrite a handle's node so that its TTL starts again.
    async fn touch(&mut self) -> Result<()> {
        match self.b.touch(&self.c, &self.path, &self.data).await? {
            Some(t) => self.touched = t,
            None => return Err(queue::Turn::vanished(self).await),
        }
        Ok(())
    }
}

#[async_trait]
impl queue::Turn for ZkTurn<'_> {
    type Entry = Contender;

    async fn entries(&mut self) -> Result<(Vec<Contender>, Option<usize>)> {
        self.checked = Instant::now();
        let contenders = self.b.contenders(&self.c, &self.dir).await?;
        let ours = contenders.iter().position(|ct| ct.name == self.name);
        Ok((contenders, ours))
    }

    fn mode(&self, ct: &Contender) -> kit::Mode {
        ct.mode(self.spec.limit)
    }

    async fn record(&mut self, ct: &Contender) -> Result<Option<Record>> {
        if let Some((r, _)) = self.records.get(&ct.name) {
            return Ok(r.clone());
        }
        let path = format!("{}/{}", self.dir, ct.name);
        match self
            .b
            .answer(&format!("read {path}"), self.c.get_data(&path))
            .await?
        {
            Ok((data, stat)) => {
                self.remember(ct.name.clone(), &data, &stat);
                Ok(record_of(&data, &stat))
            }
            // Gone, or not ours to read (an ACL).
            Err(_) => Ok(None),
        }
    }

    /// The records of the nodes ahead not read yet, in one batch of reads
    /// sent together (the server answers them in order, in one round trip).
    /// The blocker's is read with a watch, which `wait` then keeps
    /// (no second request to set one).
    async fn prefetch(&mut self, ahead: &[Contender], blocker: usize) -> Result<bool> {
        let paths: Vec<(String, String)> = ahead
            .iter()
            .filter(|ct| !self.records.contains_key(&ct.name))
            .map(|ct| (ct.name.clone(), format!("{}/{}", self.dir, ct.name)))
            .collect();
        if paths.is_empty() {
            return Ok(false);
        }
        let watched = ahead.get(blocker).map(|ct| ct.name.as_str());
        let (watched, others): (Vec<_>, Vec<_>) = paths
            .into_iter()
            .partition(|(n, _)| Some(n.as_str()) == watched);
        let c = &self.c;
        let reads = futures_util::future::join_all(others.iter().map(|(_, p)| c.get_data(p)));
        let watch = async {
            match watched.first() {
                Some((_, p)) => Some(c.get_and_watch_data(p).await),
                None => None,
            }
        };
        let what = format!("read the nodes ahead in {}", self.dir);
        let timeout = self.b.timeout;
        let (read, watch) = tokio::time::timeout(timeout, futures_util::future::join(reads, watch))
            .await
            .map_err(|_| kit::no_answer(&format!("ZooKeeper {}", self.b.shown), &what, timeout))?;
        let watch = watch.map(|r| r.map(|(data, stat, w)| ((data, stat), Some(w))));
        let read = read.into_iter().map(|r| r.map(|d| (d, None)));
        let mut gone = false;
        for ((name, _), r) in others.into_iter().chain(watched).zip(read.chain(watch)) {
            match r {
                Ok(((data, stat), w)) => {
                    if let Some(w) = w {
                        self.watching = Some((name.clone(), w));
                    }
                    self.remember(name, &data, &stat);
                }
                // Gone since the listing: the queue moved, look again.
                Err(zk::Error::NoNode) => gone = true,
                // Not ours to read (an ACL): no record, and nothing to
                // judge for expiry either.
                Err(zk::Error::NoAuth) => {
                    self.lasting.insert(name.clone());
                    self.records.insert(name, (None, -1));
                }
                // Left to `record`, read alone.
                Err(_) => {}
            }
        }
        Ok(gone)
    }

    fn settle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(20)
    }

    async fn gone(&mut self, ct: &Contender) -> Result<bool> {
        let path = format!("{}/{}", self.dir, ct.name);
        let stat = self
            .b
            .bounded(&format!("look for {path}"), self.c.check_stat(&path))
            .await?;
        Ok(stat.is_none())
    }

    async fn remove_dead(&mut self, ct: &Contender) -> Result<bool> {
        let Some((_, version)) = self.records.remove(&ct.name) else {
            return Ok(false);
        };
        let path = format!("{}/{}", self.dir, ct.name);
        let what = format!("delete {path}");
        match self
            .b
            .answer(&what, self.c.delete(&path, Some(version)))
            .await?
        {
            // Gone, or changed since it was read: look again.
            Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => Ok(true),
            Err(e) => Err(zk_err(&self.b.shown, &what, e)),
        }
    }

    async fn vanished(&mut self) -> anyhow::Error {
        unavailable(format!(
            "ZooKeeper {}: our queue node {} vanished (the session expired, or it went \
             untouched past its TTL?)",
            self.b.shown, self.path
        ))
    }

    async fn admitted(&mut self, _: &[Contender], _: usize) -> Result<Lease> {
        if self.handle && self.waited {
            // Its full TTL from now on, not what the wait left of it.
            self.touch().await?;
        }
        let spec = self.spec;
        let k = (spec.namespace.clone(), spec.key.clone());
        self.b
            .mine
            .lock()
            .await
            .insert(k.clone(), (self.path.clone(), self.handle));
        // A semaphore's holder claims the lowest free slot, recorded in
        // its node ([`super::slots`]); a mutex is slot 0, a reader has none.
        let mut slot = spec.fixed_slot();
        if !spec.shared
            && spec.limit > 1
            && let Some(d) = node_data(&self.data)
        {
            let claimed = self
                .b
                .claim_slot(&self.c, &self.dir, &self.name, spec.limit, self.handle, &d)
                .await?;
            if let Some((s, data)) = claimed {
                slot = Some(s);
                self.data = data;
                let claim = format!("{}/{s}", slots_dir(&self.dir));
                self.b.claims.lock().await.insert(k, claim);
            }
        }
        self.b.queued.resolved(&self.entry);
        let (ttl, granted_at) = if self.handle {
            (spec.ttl, self.touched)
        } else {
            (self.c.session_timeout().min(spec.ttl), self.checked)
        };
        Ok(Lease {
            ttl,
            ..spec.lease(self.token, self.me.id.clone(), granted_at, slot)
        })
    }

    /// A node ahead of us whose TTL ran out (a handle nobody renewed, a
    /// `--lock-at-least` lapse) is deleted; then look again.
    async fn tidy(&mut self, ahead: &[Contender]) -> Result<bool> {
        let names: Vec<&str> = ahead.iter().map(|ct| ct.name.as_str()).collect();
        let (changed, next_expiry) = self
            .b
            .reap(&self.c, &self.dir, &names, &mut self.lasting)
            .await?;
        self.next_expiry = next_expiry;
        Ok(changed)
    }

    async fn give_up(&mut self, holding: &[Contender]) -> Result<Vec<Holder>> {
        let holders = self.b.holders_among(&self.c, &self.dir, holding).await;
        if self
            .b
            .bounded("delete", self.c.delete(&self.path, None))
            .await
            .is_ok()
        {
            self.b.queued.resolved(&self.entry);
        }
        Ok(holders)
    }

    async fn wait(&mut self, blocker: &Contender, deadline: Option<Instant>) -> Result<()> {
        let ttl = self.spec.ttl;
        if self.handle && self.touched.elapsed() >= ttl / 3 {
            self.touch().await?;
        }
        let pred = format!("{}/{}", self.dir, blocker.name);
        let watcher = match self.watching.take() {
            // Set when its record was read: it has fired already if the
            // node went or changed since.
            Some((name, w)) if name == blocker.name => w,
            _ => match self
                .b
                .bounded(&format!("watch {pred}"), self.c.check_and_watch_stat(&pred))
                .await?
            {
                (Some(_), w) => w,
                (None, _) => return Ok(()),
            },
        };
        // Wake on the blocker's change, the deadline, or a periodic
        // re-check (a session event can end the watch silently; a node
        // ahead may expire; a handle's own node needs touching).
        let mut recheck = Instant::now() + Duration::from_secs(2);
        if let Some(d) = self.next_expiry {
            recheck = recheck.min(Instant::now() + d + Duration::from_millis(20));
        }
        if self.handle {
            recheck = recheck.min(self.touched + ttl / 3);
        }
        let until = deadline.map_or(recheck, |d| d.min(recheck));
        let _ = tokio::time::timeout_at(until.into(), watcher.changed()).await;
        self.waited = true;
        Ok(())
    }
}
