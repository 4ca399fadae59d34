//! `status`: a key's holders and its line, from its lock directory.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use zookeeper_client as zk;

use super::names::{Contender, contenders_of, seq_of};
use super::node::holder_from;
use super::slots::slots_dir;
use super::{Holder, KeyStatus, Listing, ZkBackend, kit};
use crate::error::Error;

/// A contender's node as read: its holder (or waiter) and the `--limit`
/// its record gives.
struct Read {
    name: String,
    holder: Holder,
    limit: Option<u32>,
    shared: bool,
}

impl ZkBackend {
    /// The status of one key from its lock directory's children; nodes
    /// found expired are deleted first. Every node is read once: the
    /// first `holding` by the admission rule are the holders, the rest the
    /// line, in sequence order.
    pub(super) async fn key_status(
        &self,
        c: &zk::Client,
        key: String,
        dir: &str,
        mut contenders: Vec<Contender>,
    ) -> Result<KeyStatus> {
        let names: Vec<&str> = contenders.iter().map(|ct| ct.name.as_str()).collect();
        let (gone, _) = self.reap(c, dir, &names, &mut HashSet::new()).await?;
        if gone {
            contenders = self.contenders(c, dir).await?;
        }
        let read = self.read_all(c, dir, &contenders).await;
        let names: Vec<String> = read.iter().map(|r| r.name.clone()).collect();
        let entries = read
            .into_iter()
            .map(|r| kit::Entry::new(r.holder, r.limit.filter(|_| !r.shared)))
            .collect();
        let mut view = kit::View::ordered(key, entries);
        // A semaphore holder whose record has no slot (a server TTL node's
        // record keeps none, for older readers): its claim says.
        if view.limit() > 1
            && view
                .holders
                .iter()
                .any(|e| !e.holder.shared && e.holder.slot.is_none())
        {
            let claims = self.claims_of(c, dir).await;
            for (e, name) in view.holders.iter_mut().zip(&names) {
                if e.holder.slot.is_none() {
                    e.holder.slot = claims.get(name).copied();
                }
            }
        }
        Ok(view.status())
    }

    /// Read the nodes of `contenders` (children of `dir`) at once, in
    /// their order; a node gone meanwhile (or unreadable) is left out.
    async fn read_all(&self, c: &zk::Client, dir: &str, contenders: &[Contender]) -> Vec<Read> {
        let reads = contenders.iter().map(|ct| async move {
            let path = format!("{dir}/{}", ct.name);
            let (data, stat) = kit::best_effort(self.timeout, c.get_data(&path)).await?;
            let (mut holder, limit) = holder_from(&data, &stat);
            holder.shared = ct.shared;
            Some(Read {
                name: ct.name.clone(),
                holder,
                limit,
                shared: ct.shared,
            })
        });
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The slot claims of the lock directory `dir` ([`super::slots`]), by
    /// the name of the node that made each; none where they cannot be read.
    async fn claims_of(&self, c: &zk::Client, dir: &str) -> HashMap<String, u32> {
        let sdir = slots_dir(dir);
        let Some(names) = kit::best_effort(self.timeout, c.list_children(&sdir)).await else {
            return HashMap::new();
        };
        let reads = names.into_iter().filter_map(|n| {
            let slot: u32 = n.parse().ok()?;
            let path = format!("{sdir}/{n}");
            Some(async move {
                let (data, _) = kit::best_effort(self.timeout, c.get_data(&path)).await?;
                Some((String::from_utf8_lossy(&data).into_owned(), slot))
            })
        });
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// A queue's `--limit`: the one its first exclusive contender was
    /// taken with (1 if it says none, or there is none).
    pub(super) async fn limit_of(
        &self,
        c: &zk::Client,
        dir: &str,
        contenders: &[Contender],
    ) -> u32 {
        let Some(first) = contenders.iter().find(|ct| !ct.shared) else {
            return 1;
        };
        match self
            .bounded("read", c.get_data(&format!("{dir}/{}", first.name)))
            .await
        {
            Ok((data, stat)) => holder_from(&data, &stat).1.unwrap_or(1).max(1),
            Err(_) => 1,
        }
    }

    /// What the nodes of `holding` (children of `dir`) say of their holders.
    pub(super) async fn holders_among(
        &self,
        c: &zk::Client,
        dir: &str,
        holding: &[Contender],
    ) -> Vec<Holder> {
        self.read_all(c, dir, holding)
            .await
            .into_iter()
            .map(|r| r.holder)
            .collect()
    }

    /// The state of the given keys, or of every held key of the namespace.
    pub(super) async fn statuses(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<Vec<KeyStatus>> {
        let session = self.client(Duration::from_secs(30)).await?;
        let c = &*session;
        let mut out = Vec::new();
        if !keys.is_empty() {
            for k in keys {
                let dir = Self::dir(namespace, k)?;
                out.push(match self.list(c, &dir).await? {
                    Listing::Children(names) => {
                        self.key_status(c, k.clone(), &dir, contenders_of(names))
                            .await?
                    }
                    Listing::Unreadable(why) => KeyStatus::unreadable(k.clone(), why),
                });
            }
            return Ok(out);
        }
        // Every held key of the namespace, nested ones (`a/b`) included: a
        // lock directory's children that are not contenders are the
        // directories of nested keys. A key this client may not read is
        // listed as unreadable; the others are listed all the same.
        let root = format!("/{namespace}");
        let mut todo: Vec<String> = match self.list(c, &root).await? {
            Listing::Children(names) => names,
            Listing::Unreadable(why) => {
                return Err(Error::Unavailable(format!("ZooKeeper {}: {why}", self.shown)).into());
            }
        };
        while let Some(k) = todo.pop() {
            let dir = format!("{root}/{k}");
            match self.list(c, &dir).await? {
                Listing::Children(names) => {
                    let (mine, nested): (Vec<String>, Vec<String>) =
                        names.into_iter().partition(|n| seq_of(n).is_some());
                    todo.extend(nested.into_iter().map(|n| format!("{k}/{n}")));
                    let contenders = contenders_of(mine);
                    if contenders.is_empty() {
                        continue;
                    }
                    let st = self.key_status(c, k, &dir, contenders).await?;
                    if !st.holders.is_empty() {
                        out.push(st);
                    }
                }
                Listing::Unreadable(why) => out.push(KeyStatus::unreadable(k, why)),
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
