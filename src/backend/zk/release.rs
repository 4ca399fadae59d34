//! Releasing a node, through our session or, when its server does not
//! answer, through another; and clearing what failed attempts left queued.

use std::time::Duration;

use anyhow::Result;
use zookeeper_client as zk;

use super::node::expiry_of;
use super::{ZkBackend, kit, zk_err};

impl ZkBackend {
    /// Delete the queue nodes of attempts that were interrupted or failed:
    /// every child of a registered directory that carries our prefix. An
    /// outage ends it with its error: what is left stays registered, for
    /// the next attempt (whose node must never queue behind our own).
    pub(super) async fn drop_queued(&self, c: &zk::Client) -> Result<()> {
        let mut left = self.queued.take().into_iter();
        while let Some((dir, tag)) = left.next() {
            let dropped = async {
                let contenders = self.contenders(c, &dir).await?;
                for ct in contenders.iter().filter(|ct| ct.name.starts_with(&tag)) {
                    let path = format!("{dir}/{}", ct.name);
                    self.bounded("delete an earlier queue node", async {
                        match c.delete(&path, None).await {
                            Err(zk::Error::NoNode) => Ok(()),
                            r => r,
                        }
                    })
                    .await?;
                    tracing::info!(
                        event = "dropped_queued",
                        node = path,
                        "deleted the queue node of an earlier attempt"
                    );
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            if let Err(e) = dropped {
                self.queued.add((dir, tag));
                left.for_each(|q| self.queued.add(q));
                return Err(e);
            }
        }
        Ok(())
    }
    /// Release our node at `path`, one that lives with the session `c`
    /// (a `run`'s): delete it. Already gone (broken with --force, the
    /// session expired) is a lease we no longer held.
    pub(super) async fn delete_ephemeral(&self, c: &zk::Client, path: &str) -> Result<bool> {
        let what = format!("release {path}");
        match self.answer(&what, c.delete(path, None)).await? {
            Ok(()) => Ok(true),
            Err(zk::Error::NoNode) => Ok(false),
            Err(e) => Err(zk_err(&self.shown, &what, e)),
        }
    }

    /// Release our node at `path` through the session `c`.
    pub(super) async fn release_on(&self, c: &zk::Client, path: &str) -> Result<bool> {
        let what = format!("release {path}");
        // A node already gone (broken with --force, session expired,
        // deleted when found expired) is a lease we no longer held: not an
        // error.
        let mut version = None;
        let mut ours = true;
        for _ in 0..5 {
            let (data, stat) = match self.answer(&what, c.get_data(path)).await? {
                Ok(r) => r,
                Err(zk::Error::NoNode) => return Ok(false),
                Err(e) => return Err(zk_err(&self.shown, &what, e)),
            };
            let Some(at) = expiry_of(&data, &stat) else {
                break;
            };
            // A node that outlives its session may have expired without
            // anyone deleting it yet: judge on the server's clock, by
            // writing it (unchanged) and reading the write's time.
            let write = c.set_data(path, &data, Some(stat.version));
            match self.answer(&what, write).await? {
                Ok(s) => {
                    ours = s.mtime <= at;
                    version = Some(s.version);
                    break;
                }
                Err(zk::Error::NoNode) => return Ok(false),
                Err(zk::Error::BadVersion) => continue,
                Err(e) => return Err(zk_err(&self.shown, &what, e)),
            }
        }
        match self.answer(&what, c.delete(path, version)).await? {
            Ok(()) => Ok(ours),
            Err(zk::Error::NoNode | zk::Error::BadVersion) => Ok(false),
            Err(e) => Err(zk_err(&self.shown, &what, e)),
        }
    }

    /// Delete our node at `path` through a session of its own to each
    /// other listed server at once (the first that answers does it): for a
    /// release whose session's server does not answer. None if no server
    /// answered; a node already gone counts as deleted (the first try may
    /// have done it).
    pub(super) async fn delete_elsewhere(&self, path: &str) -> Option<()> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let (hosts, chroot) = match self.cluster.find('/') {
            Some(i) => self.cluster.split_at(i),
            None => (self.cluster.as_str(), ""),
        };
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if hosts.len() < 2 {
            return None;
        }
        tracing::warn!(
            event = "release_elsewhere",
            node = path,
            "the server of our session does not answer: deleting our node through another"
        );
        // Until the bound, not once: a server that cannot make a session
        // yet (the frozen one was the leader, and the others are still
        // choosing another) is asked again.
        let until = tokio::time::Instant::now() + self.timeout;
        let mut tries: FuturesUnordered<_> = hosts
            .iter()
            .map(|h| async move {
                let one = format!("{h}{chroot}");
                loop {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    let c = self.connector(Duration::from_secs(2), left);
                    let Some(c) = kit::best_effort(left, c.connect(&one)).await else {
                        // Refused or reset at once: not a hot loop.
                        tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                        continue;
                    };
                    return match tokio::time::timeout_at(until, c.delete(path, None)).await {
                        Ok(Ok(()) | Err(zk::Error::NoNode)) => Some(()),
                        _ => None,
                    };
                }
            })
            .collect();
        while let Some(r) = tries.next().await {
            if r.is_some() {
                return r;
            }
        }
        None
    }
}
