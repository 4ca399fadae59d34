//! The rows a key's line is made of: lease rows, and the waiter rows that
//! `status` counts and readers give way to.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use super::kit::{self, Mode};
use crate::backend::{Holder, KeyStatus, LockSpec, Waiting};

/// How long a waiter row lasts without being renewed; a waiter renews it
/// every third of this (its polls are at most a second apart), so one that
/// died or gave up stops being counted within this.
pub const WAITER_LAPSE: std::time::Duration = std::time::Duration::from_secs(3);

/// The prefix of a shared waiter's id in the waiter table (SQL and SQLite):
/// rows without it are exclusive waiters, whom later readers let go first.
pub const SHARED_WAITER: &str = "s:";

/// The `LIKE` pattern of shared waiters' ids (bound, never spliced in).
pub const SHARED_WAITER_LIKE: &str = "s:%";

/// A lease row's mode from its `lim` column: 0 is a shared lease.
pub fn mode_of_lim(lim: i64) -> Mode {
    if lim <= 0 {
        Mode::Shared
    } else {
        Mode::Exclusive {
            limit: lim.min(i64::from(u32::MAX)) as u32,
        }
    }
}

/// The `lim` column for a lease taken with `spec`: 0 when shared.
pub fn lim_of(spec: &LockSpec) -> u32 {
    if spec.shared { 0 } else { spec.limit }
}

/// A waiter's id in the waiter table: `id`, or `s:id` for a shared waiter.
pub fn waiter_id(id: &str, shared: bool) -> Cow<'_, str> {
    if shared {
        format!("{SHARED_WAITER}{id}").into()
    } else {
        id.into()
    }
}

/// This process's rows in a waiter table, SQL's and SQLite's alike: the
/// keys it waits for, when each row was last written, and the mode it
/// waits in (a shared waiter's rows are `s:ID`, an exclusive one's `ID`).
#[derive(Default)]
pub struct WaiterRows {
    keys: Waiting,
    shared: AtomicBool,
}

impl WaiterRows {
    /// This process's id, without the mode's prefix.
    pub fn id(&self) -> &str {
        &self.keys.id
    }

    /// The id our row has for a request in this mode.
    fn row_id(&self, shared: bool) -> Cow<'_, str> {
        waiter_id(&self.keys.id, shared)
    }

    /// The id to write our row for `spec`'s key under, if that is due: the
    /// row is new, or a third of [`WAITER_LAPSE`] old (waiters wake often
    /// under contention; a write per wake would slow every hand-off).
    pub fn due(&self, spec: &LockSpec) -> Option<Cow<'_, str>> {
        if !self.keys.due(&spec.namespace, &spec.key, WAITER_LAPSE) {
            return None;
        }
        if spec.shared {
            self.shared.store(true, Ordering::Relaxed);
        }
        Some(self.row_id(spec.shared))
    }

    /// Our row for the key was written now: true the first time, when the
    /// rows of waiters that died long ago are cleared.
    pub fn written(&self, ns: &str, key: &str) -> bool {
        self.keys.note(ns, key)
    }

    /// Whether our rows for the key are not written yet: the next write is
    /// the first, which also clears the rows of waiters that died.
    pub fn first_write(&self, ns: &str, key: &str) -> bool {
        !self.keys.has(ns, key)
    }

    /// Our row for `spec`'s key, if we wrote one: the acquiring transaction
    /// deletes it, so the new holder is never counted as both.
    pub fn ours(&self, spec: &LockSpec) -> Option<Cow<'_, str>> {
        self.keys
            .has(&spec.namespace, &spec.key)
            .then(|| self.row_id(spec.shared))
    }

    /// Acquired: our row for the key went with the acquisition.
    pub fn done(&self, ns: &str, key: &str) {
        self.keys.done(ns, key);
    }

    /// Forget every row: the id they have, whether we waited shared (a
    /// writer that stops waiting wakes the readers giving way to it), and
    /// the (namespace, key) pairs whose rows to delete.
    pub fn clear(&self) -> (Cow<'_, str>, bool, Vec<(String, String)>) {
        let shared = self.shared.load(Ordering::Relaxed);
        (self.row_id(shared), shared, self.keys.clear())
    }
}

/// One key's status from its line ([`kit::View`]); `waiters` counts the
/// waiter rows (older versions' too).
pub fn key_status(key: String, line: Line, waiters: Option<u64>) -> KeyStatus {
    let entry = |e: Entry| {
        let limit = e.mode().limit();
        kit::Entry::new(e.holder, limit)
    };
    let holders = line.leases.into_iter().map(entry).collect();
    let queue = line.queue.into_iter().map(entry).collect();
    kit::View::split(key, holders, queue)
        .counted(waiters)
        .status()
}

pub fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A short identifier naming one key, safe to use unquoted (LISTEN channel,
/// GET_LOCK name).
pub fn channel_name(ns: &str, key: &str) -> String {
    format!("dlock_{:016x}", fnv64(&[ns, key]))
}

/// Waiters counted per key from `(key, count)` rows; `None` when the count
/// could not be read (no waiter table: dlock may not create tables there).
pub fn waiters_of(counts: &Option<Vec<(String, i64)>>, key: &str) -> Option<u64> {
    counts.as_ref().map(|c| {
        c.iter()
            .find(|(n, _)| n == key)
            .map_or(0, |(_, n)| *n as u64)
    })
}

/// One entry of a key's line, as [`super::Plan::line`] reads it: a lease
/// (a holder) or a waiter's row in line (`holder.waiting`).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Who; for a waiter, `acquired_at` is since when it waits.
    pub holder: Holder,
    /// The row's id: a lease's, or a waiter's ([`WaiterRows::id`]).
    pub id: String,
    /// The `lim` column: 0 shared, else the `--limit`.
    pub lim: i64,
    /// Microseconds left by the database's clock.
    pub left_us: i64,
    /// A lease's `acquired_us`, a waiter's ticket: the order in its part.
    pub order: i64,
}

impl Entry {
    pub fn mode(&self) -> Mode {
        mode_of_lim(self.lim)
    }
}

/// A key's live leases and its line of live waiters, each in order.
#[derive(Debug, Default)]
pub struct Line {
    pub leases: Vec<Entry>,
    pub queue: Vec<Entry>,
}

impl Line {
    pub fn new(entries: Vec<Entry>) -> Line {
        let (mut queue, mut leases): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(|e| e.holder.waiting);
        leases.sort_by_key(|e| e.order);
        // Two waiters that joined at once outside the key's lock can share
        // a ticket: every reader orders them by id.
        queue.sort_by(|a, b| (a.order, &a.id).cmp(&(b.order, &b.id)));
        Line { leases, queue }
    }

    /// Where our row (id `me`) stands in the line, if it is there.
    pub fn place(&self, me: &str) -> Option<usize> {
        self.queue.iter().position(|e| e.id == me)
    }

    /// The id of the live waiter just ahead of our row `me` in the line
    /// (none: `me` is first, or not in line).
    pub fn before(&self, me: &str) -> Option<String> {
        let place = self.place(me).unwrap_or(self.queue.len());
        self.queue[..place]
            .iter()
            .rev()
            .find(|e| !e.holder.dead)
            .map(|e| e.id.clone())
    }

    /// The line as the ruling reads it ([`kit::Line::rule`]).
    pub fn seats(&self) -> kit::Line {
        let seat = |e: &Entry| kit::Seat::new(e.mode(), e.holder.dead, e.holder.slot);
        kit::Line::new(
            self.leases.iter().map(seat).collect(),
            self.queue.iter().map(seat).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{slot_in, with_slot};
    use super::*;

    fn entry(waiting: bool, lim: i64, order: i64, dead: bool, id: &str) -> Entry {
        Entry {
            holder: Holder {
                waiting,
                dead,
                shared: lim == 0,
                slot: (!waiting && lim > 1).then(|| slot_in(id)).flatten(),
                ..Holder::default()
            },
            id: id.into(),
            lim,
            left_us: 1_000_000,
            order,
        }
    }

    /// The ruling over the line read, for the request whose row is `me`.
    fn admits(line: &Line, mode: Mode, me: &str, writers: usize) -> bool {
        line.seats().admits(mode, line.place(me), writers)
    }

    #[test]
    fn a_request_goes_behind_the_waiters_ahead_of_it() {
        let x = Mode::Exclusive { limit: 1 };
        // Free key, a waiter in line: a newcomer waits, the waiter goes.
        let line = Line::new(vec![entry(true, 1, 7, false, "w1")]);
        assert!(!admits(&line, x, "new", 0));
        assert!(admits(&line, x, "w1", 0));
        // Tickets, not the order rows come in, decide.
        let line = Line::new(vec![
            entry(true, 1, 9, false, "late"),
            entry(true, 1, 3, false, "early"),
        ]);
        assert_eq!(line.place("early"), Some(0));
        assert!(admits(&line, x, "early", 0) && !admits(&line, x, "late", 0));
        // A dead waiter ahead does not hold us up.
        let line = Line::new(vec![
            entry(true, 1, 1, true, "dead"),
            entry(true, 1, 2, false, "me"),
        ]);
        assert!(admits(&line, x, "me", 0));
        // Readers ahead of a reader, a reader holding: all let in; a
        // writer between them: not.
        let line = Line::new(vec![
            entry(false, 0, 1, false, "r0"),
            entry(true, 0, 1, false, "r1"),
            entry(true, 0, 2, false, "r2"),
            entry(true, 1, 3, false, "w3"),
            entry(true, 0, 4, false, "r4"),
        ]);
        assert!(admits(&line, Mode::Shared, "r2", 0));
        assert!(!admits(&line, Mode::Shared, "r4", 0));
        assert!(!admits(&line, x, "w3", 0));
        // ... and older versions' writers waiting outside the line.
        assert!(!admits(&line, Mode::Shared, "r1", 1));
    }

    #[test]
    fn semaphore_slots_are_the_lowest_free_and_live_in_the_id() {
        let id = with_slot("0123abcd~00ff~42", 2);
        assert_eq!(id, "0123abcd.2~00ff~42");
        assert_eq!(slot_in(&id), Some(2));
        // What the previous release keeps of a lease it disowns, and reads
        // as the liveness, are unchanged in form.
        assert_eq!(id.split('~').count(), 3);
        assert_eq!(slot_in(&with_slot("0123abcd", 0)), Some(0));
        assert_eq!(slot_in("0123abcd~00ff~42"), None);
        assert_eq!(slot_in("0123abcd"), None);
        let three = Mode::Exclusive { limit: 3 };
        let line = Line::new(vec![
            entry(false, 3, 1, false, &with_slot("a", 0)),
            entry(false, 3, 2, false, &with_slot("b", 2)),
        ]);
        assert_eq!(line.seats().free_slot(3), 1);
        assert!(admits(&line, three, "c", 0));
        let line = Line::new(vec![entry(false, 3, 1, false, &with_slot("b", 1))]);
        assert_eq!(line.seats().free_slot(3), 0);
        // A holder of an older version has no slot we know of.
        let line = Line::new(vec![entry(false, 3, 1, false, "old")]);
        assert_eq!(line.seats().free_slot(3), 0);
    }

    #[test]
    fn status_lists_the_line_and_the_limit_given() {
        let line = Line::new(vec![
            entry(false, 3, 1, false, &with_slot("a", 0)),
            entry(true, 3, 5, false, "w2"),
            entry(true, 3, 4, false, "w1"),
        ]);
        let st = key_status("k".into(), line, Some(1));
        assert_eq!(st.limit, 3);
        assert_eq!(st.holders.len(), 1);
        assert_eq!(st.holders[0].slot, Some(0));
        assert_eq!(st.queue.len(), 2);
        assert_eq!(st.waiters, Some(2), "at least the line");
        let st = key_status("k".into(), Line::default(), None);
        assert_eq!((st.limit, st.waiters), (1, None));
    }
}
