//! Semaphore slots (`--limit N` > 1): each holder claims the lowest free
//! slot 0..N-1, as a node `/NS/KEY@slots/S` whose data names the claiming
//! holder's lock node (a child of `/NS/KEY`).
//!
//! The claims live beside the lock directory, not in it: Curator and kazoo
//! read every child of `/NS/KEY` as a contender. A claim is made with the
//! holder's lock node's record (its `SLOT` field) in one transaction, so
//! that `status` reads every holder's slot from its own record. A `run`'s
//! claim is ephemeral, so it ends with the session, like its lock node; a
//! handle's is persistent, as its lock node is.
//!
//! A claim whose lock node is gone (released in a session that goes on,
//! broken with `--force`, a dead process's node removed, a handle expired)
//! is free: the next holder that finds it takes it over. Two holders
//! admitted at once never get the same slot: every claim (a new one, or a
//! takeover) is a transaction that also writes the claims directory's data
//! at the version read before the slots were judged, so of two claims
//! judged on the same view only the first commits, and a takeover never
//! replaces a claim made since it judged the old one gone.

use std::collections::HashSet;

use anyhow::Result;
use zookeeper_client as zk;

use super::node::{NodeData, encode, outlives_session};
use super::{ZkBackend, kit, zk_err};

/// How many times a claim is tried again when others claimed meanwhile
/// (each retry follows another holder's successful claim).
const ROUNDS: usize = 64;

/// The directory of the slot claims of the lock directory `dir`. No key
/// ends a part in the suffix ([`crate::config::SLOTS_SUFFIX`] is refused
/// by the key rules), so it is no key's lock directory, nor inside one.
pub(super) fn slots_dir(dir: &str) -> String {
    format!("{dir}{}", crate::config::SLOTS_SUFFIX)
}

/// How a claim attempt ended.
enum Claim {
    /// Ours, and our record says so.
    Got,
    /// Someone changed the claims meanwhile: read them again.
    Again,
    /// Our lock node is gone: we hold nothing.
    Gone,
}

impl ZkBackend {
    /// Claim the lowest free slot below `limit` for our lock node `name`
    /// (a child of `dir`), writing it into our record `d` in the same
    /// transaction. Returns the slot and our node's new data; None if
    /// every slot is claimed by a live holder (holders that disagree on
    /// `--limit`, or more claimers than rounds) or our node is gone.
    pub(super) async fn claim_slot(
        &self,
        c: &zk::Client,
        dir: &str,
        name: &str,
        limit: u32,
        handle: bool,
        d: &NodeData,
    ) -> Result<Option<(u32, Vec<u8>)>> {
        let sdir = slots_dir(dir);
        let ours = format!("{dir}/{name}");
        let mode = if handle {
            zk::CreateMode::Persistent
        } else {
            zk::CreateMode::Ephemeral
        };
        let acls = self.acls();
        let opts = mode.with_acls(acls);
        'rounds: for _ in 0..ROUNDS {
            let list = format!("list {sdir}");
            let (claimed, stat) = match self.answer(&list, c.get_children(&sdir)).await? {
                Ok(v) => v,
                Err(zk::Error::NoNode) => {
                    let parent = zk::CreateMode::Persistent.with_acls(acls);
                    self.bounded(&format!("create {sdir}"), async {
                        match c.mkdir(&sdir, &parent).await {
                            Err(zk::Error::NodeExists) => Ok(()),
                            r => r,
                        }
                    })
                    .await?;
                    continue;
                }
                Err(e) => return Err(zk_err(&self.shown, &list, e)),
            };
            for s in 0..limit.max(1) {
                let claim = format!("{sdir}/{s}");
                let taken = claimed.iter().any(|n| *n == s.to_string());
                if taken && self.claim_is_live(c, dir, &claim).await? {
                    continue;
                }
                let mut mine = d.clone();
                mine.slot = Some(s);
                let data = encode(&mine);
                let mut m = c.new_multi_writer();
                // Nobody claimed since we judged (see the module's note).
                m.add_set_data(&sdir, b"", Some(stat.version))?;
                if taken {
                    m.add_delete(&claim, None)?;
                }
                m.add_create(&claim, name.as_bytes(), &opts)?;
                m.add_set_data(&ours, &data, None)?;
                let last = if taken { 3 } else { 2 };
                match self.commit_claim(m, last).await? {
                    Claim::Got => return Ok(Some((s, data))),
                    Claim::Again => continue 'rounds,
                    Claim::Gone => return Ok(None),
                }
            }
            return Ok(None);
        }
        tracing::warn!(
            dir,
            "could not claim a semaphore slot: the claims kept changing; holding without one"
        );
        Ok(None)
    }

    /// Whether the claim at `claim` belongs to a lock node of `dir` that
    /// still exists. The owner's node was made before its claim, and is
    /// looked for after the claim was read, so a live owner's is seen.
    async fn claim_is_live(&self, c: &zk::Client, dir: &str, claim: &str) -> Result<bool> {
        let read = format!("read {claim}");
        let owner = match self.answer(&read, c.get_data(claim)).await? {
            Ok((data, _)) => String::from_utf8_lossy(&data).into_owned(),
            // Gone since it was listed: free.
            Err(zk::Error::NoNode) => return Ok(false),
            Err(e) => return Err(zk_err(&self.shown, &read, e)),
        };
        if owner.is_empty() || owner.contains('/') {
            // Not a claim of ours to judge: leave it be.
            return Ok(true);
        }
        let path = format!("{dir}/{owner}");
        let look = format!("look for {path}");
        let stat = self.bounded(&look, c.check_stat(&path)).await?;
        match stat {
            None => Ok(false),
            // A node that outlives its session (a handle, a lapsing
            // holder) may have expired with nobody to delete it yet (a
            // server without TTL nodes): judged, and deleted if so.
            Some(stat) if outlives_session(&stat) => {
                let (changed, _) = self
                    .reap(c, dir, &[owner.as_str()], &mut HashSet::new())
                    .await?;
                if !changed {
                    return Ok(true);
                }
                // Deleted, or renewed meanwhile: look again.
                Ok(self.bounded(&look, c.check_stat(&path)).await?.is_some())
            }
            Some(_) => Ok(true),
        }
    }

    /// Commit a claim whose last operation (index `last`) writes our
    /// record.
    async fn commit_claim(&self, mut m: zk::MultiWriter<'_>, last: usize) -> Result<Claim> {
        let service = format!("ZooKeeper {}", self.shown);
        match kit::answer(&service, "claim a slot", self.timeout, m.commit()).await? {
            Ok(_) => Ok(Claim::Got),
            Err(zk::MultiWriteError::OperationFailed {
                index,
                source: zk::Error::NoNode,
            }) if index == last => Ok(Claim::Gone),
            // The directory's version moved, the claim went or came.
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::BadVersion | zk::Error::NoNode | zk::Error::NodeExists,
                ..
            }) => Ok(Claim::Again),
            Err(e) => Err(zk_err(&self.shown, "claim a slot", e.into())),
        }
    }

    /// Let go of our claim `claim`, only while our lock node `ours` is
    /// there: until it goes nobody else may take the claim over, so the
    /// claim is still ours.
    pub(super) async fn unclaim(&self, c: &zk::Client, ours: &str, claim: &str) {
        let mut m = c.new_multi_writer();
        if m.add_check_version(ours, -1).is_err() || m.add_delete(claim, None).is_err() {
            return;
        }
        kit::best_effort(self.timeout, m.commit()).await;
    }
}
