//! The waiter entries this process has made (Redis, SQL, SQLite and S3
//! count waiters in entries each waiter renews), so that they are renewed
//! when due and removed on the way out.

use std::time::{Duration, Instant};

/// The keys this process is registered as waiting for (Redis, SQL and
/// SQLite count waiters in entries each waiter renews, for `status`), and
/// when each entry was last renewed.
pub struct Waiting {
    /// This process's id in waiter entries.
    pub id: String,
    keys: std::sync::Mutex<std::collections::HashMap<(String, String), Instant>>,
}

impl Default for Waiting {
    fn default() -> Waiting {
        Waiting::new()
    }
}

impl Waiting {
    pub fn new() -> Waiting {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Waiting {
            id: format!("{}-{:016x}", std::process::id(), u64::from_ne_bytes(b)),
            keys: Default::default(),
        }
    }

    fn k(ns: &str, key: &str) -> (String, String) {
        (ns.to_string(), key.to_string())
    }

    /// Whether the entry for this key should be written (again): it is new,
    /// or a third of `lapse` has passed since it was renewed. Waiters wake
    /// often under contention; one write per wake would slow every hand-off.
    pub fn due(&self, ns: &str, key: &str, lapse: Duration) -> bool {
        self.keys
            .lock()
            .unwrap()
            .get(&Self::k(ns, key))
            .is_none_or(|at| at.elapsed() >= lapse / 3)
    }

    /// The entry for this key was written now; true the first time.
    pub fn note(&self, ns: &str, key: &str) -> bool {
        self.keys
            .lock()
            .unwrap()
            .insert(Self::k(ns, key), Instant::now())
            .is_none()
    }

    /// Whether this process has an entry for the key (the acquiring
    /// transaction then deletes it).
    pub fn has(&self, ns: &str, key: &str) -> bool {
        self.keys.lock().unwrap().contains_key(&Self::k(ns, key))
    }

    /// Forget the key (its entry was deleted with the acquisition).
    pub fn done(&self, ns: &str, key: &str) {
        self.keys.lock().unwrap().remove(&Self::k(ns, key));
    }

    /// Forget every key, returning the (namespace, key) pairs whose entries
    /// to delete.
    pub fn clear(&self) -> Vec<(String, String)> {
        self.keys.lock().unwrap().drain().map(|(k, _)| k).collect()
    }
}
