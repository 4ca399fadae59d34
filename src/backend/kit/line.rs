//! A key's line as a polling backend's attempt reads it, and the one ruling
//! over it: enter now (in which semaphore slot), or wait (joining the line
//! or not). SQL runs it inside the key's transaction, S3 inside one
//! compare-and-swap of the lock object, the in-memory service under its
//! lock; each adapter only reads its entries into [`Seat`]s and writes what
//! the ruling says. (ZooKeeper and etcd keep one queue of nodes in arrival
//! order and apply [`super::admits`] over it; Redis applies the same rule
//! in its Lua script.)
//!
//! The rule, once: a request is admitted by [`super::admits`] behind every
//! holder (dead ones too: a dead holder's lease is broken first, after
//! [`super::BREAK_GRACE`]) and the live waiters ahead of it in line, plus
//! the writers waiting outside the line (SQL: older versions' waiter rows),
//! which a shared request gives way to. A request not yet in line comes
//! after every waiter. Dead waiters ahead hold nothing: they are passed,
//! and leave the line in the same write ([`Line::dead_ahead`]).

use super::{Mode, admits, lowest_free_slot};

/// One entry of a key's line as the ruling reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    pub mode: Mode,
    /// Its process is known gone ([`super::Record::dead_here`]).
    pub dead: bool,
    /// A holder's semaphore slot, if its entry records one (an exclusive
    /// holder of an older version may not).
    pub slot: Option<u32>,
}

impl Seat {
    pub fn new(mode: Mode, dead: bool, slot: Option<u32>) -> Seat {
        Seat { mode, dead, slot }
    }
}

/// What one attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ruling {
    /// Take the key now; a semaphore's holder (exclusive, `--limit` above
    /// 1) in this slot, the lowest that no live exclusive holder has.
    Enter { slot: Option<u32> },
    /// Busy. `join`: take a place at the back of the line in this same
    /// write (asked to, and not in line yet).
    Wait { join: bool },
}

/// A key's holders, and its line of waiters in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Line {
    pub holders: Vec<Seat>,
    pub queue: Vec<Seat>,
}

impl Line {
    pub fn new(holders: Vec<Seat>, queue: Vec<Seat>) -> Line {
        Line { holders, queue }
    }

    /// The waiters ahead of a request whose place in line is `place` (none:
    /// not in line yet, so behind them all).
    fn before(&self, place: Option<usize>) -> &[Seat] {
        &self.queue[..place.unwrap_or(self.queue.len()).min(self.queue.len())]
    }

    /// The modes a request at `place` is admitted behind: every holder, the
    /// live waiters ahead of it, and `writers` exclusive waiters outside
    /// the line (counted up to 1024).
    pub fn ahead(&self, place: Option<usize>, writers: usize) -> Vec<Mode> {
        let waiting = self.before(place).iter().filter(|s| !s.dead);
        let mut modes: Vec<Mode> = self.holders.iter().chain(waiting).map(|s| s.mode).collect();
        let writer = Mode::Exclusive { limit: 1 };
        modes.extend(std::iter::repeat_n(writer, writers.min(1024)));
        modes
    }

    /// Whether a request in `mode` at `place` enters now.
    pub fn admits(&self, mode: Mode, place: Option<usize>, writers: usize) -> bool {
        admits(mode, &self.ahead(place, writers))
    }

    /// The indices in [`Line::queue`] of the dead waiters ahead of `place`:
    /// they leave the line in the attempt's write, with no grace (they hold
    /// nothing).
    pub fn dead_ahead(&self, place: Option<usize>) -> impl Iterator<Item = usize> + '_ {
        let before = self.before(place);
        (0..before.len()).filter(move |&i| before[i].dead)
    }

    /// How many live waiters are ahead of `place`.
    pub fn waiting_ahead(&self, place: Option<usize>) -> usize {
        self.before(place).iter().filter(|s| !s.dead).count()
    }

    /// Whether the key is busy for a request in `mode` at `place` only
    /// because of holders known dead: it enters once their leases are
    /// broken.
    pub fn busy_with_the_dead(&self, mode: Mode, place: Option<usize>, writers: usize) -> bool {
        let alive = Line {
            holders: self.holders.iter().filter(|s| !s.dead).copied().collect(),
            queue: self.before(place).to_vec(),
        };
        !self.admits(mode, place, writers) && alive.admits(mode, None, writers)
    }

    /// The lowest semaphore slot no live exclusive holder has, below
    /// `limit` (there always is one for a request [`Line::admits`] lets in,
    /// as fewer than `limit` hold; else 0, for holders whose slots are not
    /// known).
    pub fn free_slot(&self, limit: u32) -> u32 {
        let used = self
            .holders
            .iter()
            .filter(|s| !s.mode.is_shared())
            .filter_map(|s| s.slot);
        Some(lowest_free_slot(used))
            .filter(|s| *s < limit.max(1))
            .unwrap_or(0)
    }

    /// The ruling on a request in `mode` at `place`, with `writers` waiting
    /// outside the line; `join`: it may wait (not `--no-wait`, deadline not
    /// passed).
    pub fn rule(&self, mode: Mode, place: Option<usize>, writers: usize, join: bool) -> Ruling {
        if self.admits(mode, place, writers) {
            let slot = match mode {
                Mode::Exclusive { limit } if limit > 1 => Some(self.free_slot(limit)),
                _ => None,
            };
            Ruling::Enter { slot }
        } else {
            Ruling::Wait {
                join: join && place.is_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: Mode = Mode::Exclusive { limit: 1 };
    const R: Mode = Mode::Shared;

    fn live(mode: Mode) -> Seat {
        Seat::new(mode, false, None)
    }

    fn dead(mode: Mode) -> Seat {
        Seat::new(mode, true, None)
    }

    #[test]
    fn a_request_goes_behind_the_waiters_ahead_of_it() {
        // Free key, a waiter in line: a newcomer waits (and joins), the
        // waiter enters.
        let line = Line::new(vec![], vec![live(X)]);
        assert_eq!(line.rule(X, None, 0, true), Ruling::Wait { join: true });
        assert_eq!(line.rule(X, None, 0, false), Ruling::Wait { join: false });
        assert_eq!(line.rule(X, Some(0), 0, true), Ruling::Enter { slot: None });
        // One in line that must wait does not join again.
        let line = Line::new(vec![live(X)], vec![live(X)]);
        assert_eq!(line.rule(X, Some(0), 0, true), Ruling::Wait { join: false });
        // A dead waiter ahead does not hold us up, and is named to remove.
        let line = Line::new(vec![], vec![dead(X), live(X), dead(X)]);
        assert!(line.admits(X, Some(1), 0));
        assert!(!line.admits(X, None, 0));
        assert_eq!(line.dead_ahead(Some(1)).collect::<Vec<_>>(), [0]);
        assert_eq!(line.dead_ahead(None).collect::<Vec<_>>(), [0, 2]);
        // A dead holder still holds (its lease is broken first).
        let line = Line::new(vec![dead(X)], vec![]);
        assert!(!line.admits(X, None, 0));
        assert!(line.busy_with_the_dead(X, None, 0));
        let line = Line::new(vec![dead(X), live(R)], vec![]);
        assert!(!line.busy_with_the_dead(X, None, 0));
        // Readers ahead of a reader, a reader holding: all let in; a
        // writer between them: not.
        let line = Line::new(vec![live(R)], vec![live(R), live(R), live(X), live(R)]);
        assert!(line.admits(R, Some(1), 0));
        assert!(!line.admits(R, Some(3), 0));
        assert!(!line.admits(X, Some(2), 0));
        assert!(!line.admits(R, None, 0));
        // ... and writers waiting outside the line.
        assert!(!line.admits(R, Some(0), 1));
    }

    #[test]
    fn semaphore_slots_are_the_lowest_free() {
        let three = Mode::Exclusive { limit: 3 };
        let sem = |slot| Seat::new(three, false, Some(slot));
        let line = Line::new(vec![sem(0), sem(2)], vec![]);
        assert_eq!(line.free_slot(3), 1);
        assert_eq!(
            line.rule(three, None, 0, true),
            Ruling::Enter { slot: Some(1) }
        );
        let line = Line::new(vec![sem(1)], vec![]);
        assert_eq!(line.free_slot(3), 0);
        // A holder of an older version has no slot we know of.
        let line = Line::new(vec![live(three)], vec![]);
        assert_eq!(line.free_slot(3), 0);
        // Shared holders take no slot.
        let line = Line::new(vec![Seat::new(R, false, Some(0))], vec![]);
        assert_eq!(line.free_slot(3), 0);
        // A mutex and a shared request take none.
        let line = Line::default();
        assert_eq!(line.rule(X, None, 0, true), Ruling::Enter { slot: None });
        assert_eq!(line.rule(R, None, 0, true), Ruling::Enter { slot: None });
        // Full: the next waits.
        let line = Line::new(vec![sem(0), sem(1), sem(2)], vec![]);
        assert_eq!(line.rule(three, None, 0, true), Ruling::Wait { join: true });
    }
}
