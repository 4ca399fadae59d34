//! A key's state as `status` shows it, assembled once for every backend.
//!
//! An adapter reads a key's entries, each a [`Holder`] with the `--limit`
//! its record gives, and says where each stands: either the server keeps
//! holders and waiters apart ([`View::split`]: Redis, SQL, S3), or the
//! entries form one queue in arrival order and the admission rule says
//! which lead it as holders ([`View::ordered`]: ZooKeeper, etcd). What the
//! fields of a [`KeyStatus`] then mean is decided here, the same on every
//! backend: `limit` by [`View::limit`], a waiter shown without a token, a
//! lease or a slot, and `waiters` at least the length of the line.

use super::{Mode, holding};
use crate::backend::{Holder, KeyStatus};

/// One entry of a key as read: a holder, or a waiter in line.
#[derive(Debug, Clone)]
pub struct Entry {
    pub holder: Holder,
    /// The `--limit` of an exclusive entry, where its record gives it (a
    /// foreign client's, or an older dlock's semaphore, records none).
    pub limit: Option<u32>,
}

impl Entry {
    pub fn new(holder: Holder, limit: Option<u32>) -> Entry {
        Entry { holder, limit }
    }

    /// Its mode in a queue admitted by `limit` ([`queue_limit`]).
    pub fn mode(&self, limit: u32) -> Mode {
        Mode::of(self.holder.shared, limit)
    }
}

/// The `--limit` a queue in arrival order is admitted by: its first
/// exclusive entry's that records one (else 1). `entries` gives, for each
/// entry in queue order, whether it is shared and the limit it records.
pub fn queue_limit(entries: impl IntoIterator<Item = (bool, Option<u32>)>) -> u32 {
    entries
        .into_iter()
        .filter(|(shared, _)| !shared)
        .find_map(|(_, limit)| limit)
        .unwrap_or(1)
        .max(1)
}

/// A key's holders and its line, first in line first.
#[derive(Debug)]
pub struct View {
    key: String,
    pub holders: Vec<Entry>,
    pub queue: Vec<Entry>,
    /// The waiters the backend counts itself, where it counts more than it
    /// lists (SQL: older versions' waiter rows); `None` when it cannot.
    counted: Option<u64>,
}

impl View {
    /// The server keeps holders and waiters apart: `holders` hold, `queue`
    /// waits, first in line first.
    pub fn split(key: String, holders: Vec<Entry>, queue: Vec<Entry>) -> View {
        let counted = Some(queue.len() as u64);
        View {
            key,
            holders,
            queue,
            counted,
        }
    }

    /// One queue in arrival order: its first entries, as many as the
    /// admission rule lets in behind each other, hold; the rest wait.
    pub fn ordered(key: String, mut entries: Vec<Entry>) -> View {
        let limit = queue_limit(entries.iter().map(|e| (e.holder.shared, e.limit)));
        let modes: Vec<Mode> = entries.iter().map(|e| e.mode(limit)).collect();
        let queue = entries.split_off(holding(&modes));
        View::split(key, entries, queue)
    }

    /// The waiters the backend counts (`None`: it cannot tell); `status`
    /// shows at least the length of the line.
    pub fn counted(mut self, waiters: Option<u64>) -> View {
        self.counted = waiters;
        self
    }

    /// The `--limit` the key is held with, one meaning on every backend:
    /// the largest an exclusive holder's record gives; else (no exclusive
    /// holder records one) the first exclusive waiter's; else the number of
    /// exclusive holders, since an older dlock's semaphore records none;
    /// at least 1. (`status` shows none while the key is held shared.)
    pub fn limit(&self) -> u32 {
        let exclusive = |e: &&Entry| !e.holder.shared;
        let held = self.holders.iter().filter(exclusive);
        held.clone()
            .filter_map(|e| e.limit)
            .max()
            .or_else(|| self.queue.iter().filter(exclusive).find_map(|e| e.limit))
            .unwrap_or(held.count() as u32)
            .max(1)
    }

    /// The key's state, each field with its one meaning.
    pub fn status(self) -> KeyStatus {
        let limit = self.limit();
        let queue: Vec<Holder> = self
            .queue
            .into_iter()
            .map(|e| Holder {
                // A waiter has no token, lease or slot yet; its
                // `acquired_at` is since when it waits.
                token: None,
                expires_at: None,
                slot: None,
                waiting: true,
                ..e.holder
            })
            .collect();
        KeyStatus {
            key: self.key,
            limit,
            holders: self
                .holders
                .into_iter()
                .map(|e| Holder {
                    waiting: false,
                    ..e.holder
                })
                .collect(),
            waiters: self.counted.map(|n| n.max(queue.len() as u64)),
            queue,
            unreadable: None,
        }
    }
}

impl KeyStatus {
    /// A key with no entry.
    pub fn free(key: String) -> KeyStatus {
        View::split(key, Vec::new(), Vec::new()).status()
    }

    /// A key whose entries could not be read (`why` names the path): shown
    /// as unreadable, never as free.
    pub fn unreadable(key: String, why: String) -> KeyStatus {
        KeyStatus {
            waiters: None,
            unreadable: Some(why),
            ..KeyStatus::free(key)
        }
    }
}

/// Of every key of a namespace listed, those held: `status` without keys
/// shows only those.
pub fn held_only(statuses: &mut Vec<KeyStatus>) {
    statuses.retain(|k| !k.holders.is_empty() || k.unreadable.is_some());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(shared: bool, limit: Option<u32>) -> Entry {
        Entry::new(
            Holder {
                shared,
                token: Some(7),
                slot: Some(0),
                ..Holder::default()
            },
            limit,
        )
    }

    #[test]
    fn limit_has_one_meaning() {
        let st = |h: Vec<Entry>, q: Vec<Entry>| View::split("k".into(), h, q).limit();
        // A mutex, a semaphore with one holder, and with two.
        assert_eq!(st(vec![e(false, Some(1))], vec![]), 1);
        assert_eq!(st(vec![e(false, Some(3))], vec![]), 3);
        assert_eq!(st(vec![e(false, Some(3)), e(false, None)], vec![]), 3);
        // Free, with a semaphore request waiting behind a shared holder.
        assert_eq!(st(vec![], vec![e(false, Some(4))]), 4);
        assert_eq!(st(vec![e(true, None)], vec![e(false, Some(4))]), 4);
        // An older dlock's semaphore records no limit: its holders' count.
        assert_eq!(st(vec![e(false, None), e(false, None)], vec![]), 2);
        assert_eq!(st(vec![], vec![]), 1);
    }

    #[test]
    fn an_ordered_queue_is_split_by_the_admission_rule() {
        let v = View::ordered(
            "k".into(),
            vec![
                e(true, None),
                e(true, None),
                e(false, Some(2)),
                e(true, None),
            ],
        );
        assert_eq!((v.holders.len(), v.queue.len()), (2, 2));
        let v = View::ordered(
            "k".into(),
            vec![
                e(false, None),
                e(false, Some(2)),
                e(false, Some(2)),
                e(false, None),
            ],
        );
        // Admitted by the first exclusive entry that records its limit.
        assert_eq!((v.holders.len(), v.queue.len(), v.limit()), (2, 2, 2));
        let st = v.status();
        assert_eq!(st.waiters, Some(2));
        assert!(
            st.queue.iter().all(|w| w.waiting
                && w.token.is_none()
                && w.slot.is_none()
                && w.expires_at.is_none())
        );
        assert!(st.holders.iter().all(|h| !h.waiting && h.token == Some(7)));
    }

    #[test]
    fn waiters_are_at_least_the_line() {
        let v = View::split("k".into(), vec![], vec![e(false, None)]);
        assert_eq!(v.counted(Some(0)).status().waiters, Some(1));
        let v = View::split("k".into(), vec![], vec![e(false, None)]);
        assert_eq!(v.counted(Some(5)).status().waiters, Some(5));
        let v = View::split("k".into(), vec![], vec![]);
        assert_eq!(v.counted(None).status().waiters, None);
        assert_eq!(KeyStatus::free("k".into()).waiters, Some(0));
        let u = KeyStatus::unreadable("k".into(), "no".into());
        assert_eq!((u.waiters, u.unreadable.as_deref()), (None, Some("no")));
    }
}
