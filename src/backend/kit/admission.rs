//! The admission rule, the one every backend applies, by mode and order.

/// A lock request's or a queue entry's mode, as the admission rule reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One of at most `limit` holders (1: a mutex, N: a semaphore).
    Exclusive { limit: u32 },
    /// One of any number of shared holders (`--shared`).
    Shared,
}

impl Mode {
    /// A shared entry's mode, or an exclusive one's of `limit`.
    pub fn of(shared: bool, limit: u32) -> Mode {
        if shared {
            Mode::Shared
        } else {
            Mode::Exclusive { limit }
        }
    }

    pub fn is_shared(self) -> bool {
        self == Mode::Shared
    }

    /// The `--limit` of an exclusive mode (none for shared).
    pub fn limit(self) -> Option<u32> {
        match self {
            Mode::Exclusive { limit } => Some(limit),
            Mode::Shared => None,
        }
    }

    /// The word `status --json` uses.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Exclusive { .. } => "exclusive",
        }
    }
}

/// The admission rule, the one every backend applies: may a request in
/// `mode` enter, given the modes of the entries `ahead` of it?
///
/// On a queue (ZooKeeper, etcd) the entries ahead are every entry created
/// before ours, holding or waiting. A polling backend (Redis, SQL, SQLite)
/// passes the holders and, for a shared request, the exclusive requests
/// waiting: so once a writer waits, readers that come after it wait behind
/// it, and writers are never starved.
///
/// A shared request enters when nothing ahead is exclusive; an exclusive
/// one when nothing ahead is shared and fewer than its limit are ahead.
pub fn admits(mode: Mode, ahead: &[Mode]) -> bool {
    match mode {
        Mode::Shared => ahead.iter().all(|m| m.is_shared()),
        Mode::Exclusive { limit } => {
            ahead.len() < limit.max(1) as usize && !ahead.iter().any(|m| m.is_shared())
        }
    }
}

/// On a queue, the entry ahead (its index in `ahead`, which is in queue
/// order) whose removal may let a request in `mode` enter: the one to
/// watch. `None` when [`admits`] says it may enter now.
pub fn blocker(mode: Mode, ahead: &[Mode]) -> Option<usize> {
    if admits(mode, ahead) {
        return None;
    }
    match mode {
        // The last exclusive entry ahead: once it is gone, so is every
        // exclusive one before it, unless it left out of turn (the caller
        // looks again in any case).
        Mode::Shared => ahead.iter().rposition(|m| !m.is_shared()),
        // With shared entries ahead: the one just ahead. Else the one
        // `limit` places ahead, whose leaving frees the slot we are next for.
        Mode::Exclusive { limit } => {
            let limit = limit.max(1) as usize;
            if ahead.iter().any(|m| m.is_shared()) || ahead.len() < limit {
                Some(ahead.len() - 1)
            } else {
                Some(ahead.len() - limit)
            }
        }
    }
}

/// The semaphore slot a new holder takes: the lowest that none of `used`
/// (the slots of the live exclusive holders) is. Below the `--limit` of a
/// request [`admits`] lets in, since fewer than that many hold.
pub fn lowest_free_slot(used: impl IntoIterator<Item = u32>) -> u32 {
    let used: Vec<u32> = used.into_iter().collect();
    (0..).find(|s| !used.contains(s)).unwrap_or(0)
}

/// On a queue whose entries are `modes`, in queue order: how many lead it
/// as holders, each admitted by [`admits`] given the entries before it (the
/// rest wait; once one waits, every entry after it waits too).
pub fn holding(modes: &[Mode]) -> usize {
    (0..modes.len())
        .find(|&i| !admits(modes[i], &modes[..i]))
        .unwrap_or(modes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_rule() {
        use Mode::*;
        let x = Exclusive { limit: 1 };
        let sem = Exclusive { limit: 3 };
        assert!(admits(x, &[]));
        assert!(!admits(x, &[x]));
        assert!(!admits(x, &[Shared]));
        assert!(admits(Shared, &[]));
        assert!(admits(Shared, &[Shared, Shared]));
        assert!(!admits(Shared, &[Shared, x]));
        assert!(admits(sem, &[sem, sem]));
        assert!(!admits(sem, &[sem, sem, sem]));
        assert!(!admits(sem, &[Shared]));
        assert_eq!(blocker(x, &[]), None);
        assert_eq!(blocker(x, &[x, x, x]), Some(2));
        assert_eq!(blocker(sem, &[sem, sem, sem, sem]), Some(1));
        assert_eq!(blocker(sem, &[Shared, Shared]), Some(1));
        assert_eq!(blocker(Shared, &[Shared, x, Shared, x, Shared]), Some(3));
        assert_eq!(blocker(Shared, &[Shared, Shared]), None);
        assert_eq!(holding(&[]), 0);
        assert_eq!(holding(&[Shared, Shared, x, Shared]), 2);
        assert_eq!(holding(&[x, Shared, Shared]), 1);
        assert_eq!(holding(&[sem, sem, sem, sem]), 3);
        assert_eq!(holding(&[Shared, Shared, Shared]), 3);
        assert_eq!(lowest_free_slot([]), 0);
        assert_eq!(lowest_free_slot([0, 2]), 1);
        assert_eq!(lowest_free_slot([1, 0, 2]), 3);
    }
}
