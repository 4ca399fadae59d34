//! The registry of queue entries a waiter has made, so that a waiter that
//! is interrupted removes them on its way out instead of holding up the
//! waiters behind it.

/// Entries a waiter has put in a service's queue and not yet resolved
/// (acquired or removed). An entry is added *before* the call that waits
/// on it, so a waiter interrupted at any point leaves it here, and the
/// backend's `close` removes what is left.
pub struct Queued<T>(std::sync::Mutex<Vec<T>>);

impl<T> Default for Queued<T> {
    fn default() -> Queued<T> {
        Queued(std::sync::Mutex::new(Vec::new()))
    }
}

impl<T: PartialEq> Queued<T> {
    pub fn add(&self, entry: T) {
        self.0.lock().unwrap().push(entry);
    }

    /// The entry was resolved: it is a lease now, or it was removed.
    pub fn resolved(&self, entry: &T) {
        self.0.lock().unwrap().retain(|e| e != entry);
    }

    /// Every entry left, for `close` to remove.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_entries_are_left_until_resolved() {
        let q = Queued::default();
        q.add(1);
        q.add(2);
        q.resolved(&1);
        assert_eq!(q.take(), vec![2]);
        assert!(q.take().is_empty());
    }
}
