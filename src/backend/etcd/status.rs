//! `status`: a key's holders and its line, from the keys under its prefix.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use super::EtcdBackend;
use super::entries::{Entry, entry_in, holding, side_key};
use crate::backend::{KeyStatus, kit};

impl EtcdBackend {
    /// The state of the given keys, or of every held key of the namespace.
    pub(super) async fn statuses(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<Vec<KeyStatus>> {
        let mut by_key: std::collections::BTreeMap<String, Vec<Entry>> = Default::default();
        for k in keys {
            by_key.insert(k.clone(), Vec::new());
        }
        let ns = format!("{namespace}/");
        let (kvs, _) = self.under(&ns).await?;
        // Elect candidates' records, by side key (the namespace's keys
        // with an `@`, few: the entries' keys have none unless KEY has).
        let sides: HashMap<Vec<u8>, Vec<u8>> = kvs
            .iter()
            .filter(|kv| kv.key().contains(&b'@'))
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        for kv in kvs {
            // NS/KEY/<lease id> (or NS/KEY/read/..): KEY may itself hold
            // slashes (nested keys).
            let Some(rest) = kv.key().strip_prefix(ns.as_bytes()) else {
                continue;
            };
            let Some((name, shared)) = entry_in(rest, &kv) else {
                continue;
            };
            if keys.is_empty() || by_key.contains_key(&name) {
                let side = side_key(kv.key()).and_then(|k| sides.get(&k).cloned());
                by_key
                    .entry(name)
                    .or_default()
                    .push(Entry { kv, shared, side });
            }
        }
        let mut out = Vec::new();
        let mut c = self.client.clone();
        for (name, mut entries) in by_key {
            entries.sort_by_key(|e| e.kv.create_revision());
            let n = holding(&entries).len();
            let mut read = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                let mut h = e.holder();
                // A holder's lease as the server counts it down (etcd keeps
                // no time of its own for a waiter: its record's SINCE).
                let left = c.lease_time_to_live(e.kv.lease(), None);
                if i < n
                    && let Some(t) = kit::best_effort(self.timeout, left).await
                    && t.ttl() >= 0
                {
                    h.expires_at = Some(SystemTime::now() + Duration::from_secs(t.ttl() as u64));
                }
                read.push(kit::Entry::new(h, e.limit().filter(|_| !e.shared)));
            }
            out.push(kit::View::ordered(name, read).status());
        }
        Ok(out)
    }
}
