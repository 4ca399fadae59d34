//! Nodes that outlive their session (handles, `--lock-at-least`): their
//! expiry judged on the server's clock, their creation and their touch.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use zookeeper_client as zk;

use super::node::{NodeData, encode, expiry_of};
use super::{ZkBackend, kit, zk_err};

impl ZkBackend {
    /// The server's clock now (milliseconds since the epoch): the `mtime`
    /// of a write made now, to the lock directory `dir` (its data written
    /// back unchanged). None if this client may not write it.
    pub(super) async fn server_now(&self, c: &zk::Client, dir: &str) -> Option<i64> {
        for _ in 0..3 {
            let (data, stat) = kit::best_effort(self.timeout, c.get_data(dir)).await?;
            let write = c.set_data(dir, &data, Some(stat.version));
            match tokio::time::timeout(self.timeout, write).await.ok()? {
                Ok(s) => return Some(s.mtime),
                Err(zk::Error::BadVersion) => continue,
                Err(e) => {
                    tracing::debug!("cannot read the server's clock by writing {dir}: {e}");
                    return None;
                }
            }
        }
        None
    }

    /// Delete the nodes among `names` (children of `dir`) that outlive
    /// their session and have gone unmodified for their TTL, judged on the
    /// server's clock; each only if unchanged since it was judged.
    /// `lasting` remembers the names that need no second look (ephemeral
    /// nodes, foreign clients' nodes). Returns whether any node went or
    /// changed (list again), and how long until the next one expires.
    pub(super) async fn reap(
        &self,
        c: &zk::Client,
        dir: &str,
        names: &[&str],
        lasting: &mut HashSet<String>,
    ) -> Result<(bool, Option<Duration>)> {
        let mut changed = false;
        let mut expiring = Vec::new();
        for n in names {
            if lasting.contains(*n) {
                continue;
            }
            let path = format!("{dir}/{n}");
            match self
                .answer(&format!("read {path}"), c.get_data(&path))
                .await?
            {
                Ok((data, stat)) => match expiry_of(&data, &stat) {
                    Some(at) => expiring.push((path, at, stat.version)),
                    None => {
                        lasting.insert(n.to_string());
                    }
                },
                Err(zk::Error::NoNode) => changed = true,
                // Not ours to judge (an ACL): leave it.
                Err(_) => {
                    lasting.insert(n.to_string());
                }
            }
        }
        if expiring.is_empty() {
            return Ok((changed, None));
        }
        let Some(now) = self.server_now(c, dir).await else {
            return Ok((changed, None));
        };
        let mut next: Option<i64> = None;
        for (path, at, version) in expiring {
            if now < at {
                next = Some(next.map_or(at - now, |n| n.min(at - now)));
                continue;
            }
            match tokio::time::timeout(self.timeout, c.delete(&path, Some(version))).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        event = "expired",
                        node = path,
                        "deleted a lock node whose TTL ran out on the server's clock"
                    );
                    changed = true;
                }
                // Gone, or renewed since it was judged: look again.
                Ok(Err(zk::Error::NoNode | zk::Error::BadVersion)) => changed = true,
                Ok(Err(e)) => tracing::debug!("cannot delete expired {path}: {e}"),
                Err(_) => {}
            }
        }
        Ok((
            changed,
            next.map(|ms| Duration::from_millis(ms.max(0) as u64)),
        ))
    }

    /// Create a persistent sequential node at `prefix` that expires after
    /// `ttl` unmodified: a TTL node where the server has them, else a plain
    /// persistent node whose TTL (in its data) dlock judges.
    /// Its data is `data` marked as a TTL node's or not; returned with it.
    /// None if the lock directory is missing.
    pub(super) async fn create_outliving(
        &self,
        c: &zk::Client,
        prefix: &str,
        mut data: NodeData,
        ttl: Duration,
    ) -> Result<Option<(zk::Stat, zk::CreateSequence, Vec<u8>)>> {
        let acls = self.acls();
        let what = format!("create a lock node at {prefix}");
        if !self.no_ttl_nodes.load(Ordering::Relaxed) {
            let opts = zk::CreateMode::PersistentSequential
                .with_acls(acls)
                .with_ttl(ttl);
            data.ttl_node = true;
            let bytes = encode(&data);
            match self.answer(&what, c.create(prefix, &bytes, &opts)).await? {
                Ok((stat, seq)) => return Ok(Some((stat, seq, bytes))),
                Err(zk::Error::NoNode) => return Ok(None),
                // No TTL nodes on this server.
                Err(zk::Error::Unimplemented) => {}
                Err(e) => return Err(zk_err(&self.shown, &what, e)),
            }
            tracing::debug!("the server has no TTL nodes: dlock judges expiry itself");
            self.no_ttl_nodes.store(true, Ordering::Relaxed);
        }
        let opts = zk::CreateMode::PersistentSequential.with_acls(acls);
        data.ttl_node = false;
        let bytes = encode(&data);
        match self.answer(&what, c.create(prefix, &bytes, &opts)).await? {
            Ok((stat, seq)) => Ok(Some((stat, seq, bytes))),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(zk_err(&self.shown, &what, e)),
        }
    }

    /// Rewrite a node that outlives its session, unchanged, so that its
    /// TTL starts again (a handle's node while it waits). When the write
    /// was sent, or None if the node is gone.
    pub(super) async fn touch(
        &self,
        c: &zk::Client,
        path: &str,
        data: &[u8],
    ) -> Result<Option<Instant>> {
        let t = Instant::now();
        let what = format!("touch {path}");
        match self.answer(&what, c.set_data(path, data, None)).await? {
            Ok(_) => Ok(Some(t)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(zk_err(&self.shown, &what, e)),
        }
    }
}
