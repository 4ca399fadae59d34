//! Semaphore slots (`--limit N` > 1): each holder claims the lowest free
//! slot 0..N-1 as the key `NS/KEY@slotS`, whose value is the claiming
//! holder's entry key, on the holder's lease.
//!
//! The claims are outside the prefix `NS/KEY/`: `etcdctl lock` and
//! `concurrency.Mutex` take every key under it for a waiter. `@slot` and a
//! number are no entry's last part (see [`super::entries::mode_of`]), nor a
//! side key's (a lease id is hex). A claim is put with the holder's record
//! (its `SLOT` field) in one transaction, so that `status` reads every
//! holder's slot from its own record; being on the holder's lease, it ends
//! when the lease does (released, expired, a dead process's entry removed).
//!
//! A claim whose entry is gone while its lease lives on (the entry deleted
//! by `release --force`) is free: the next holder takes it over. Each claim
//! is a transaction that checks, on the server, that the slot is still
//! free (its key absent, or unchanged since read and its entry gone) and
//! that our entry is still there: so two holders admitted at once never
//! get the same slot.

use anyhow::Result;

use super::{EtcdBackend, ec};
use crate::backend::kit::{NField, Record};

/// How many times the claims are read again when others claimed
/// meanwhile (each retry follows another holder's successful claim).
const ROUNDS: usize = 64;

/// What the claim keys of the lock whose prefix is `NS/KEY/` start with:
/// `NS/KEY@slot`.
fn slots_base(prefix: &str) -> String {
    format!("{}@slot", prefix.strip_suffix('/').unwrap_or(prefix))
}

/// The claim key of slot `s` of the lock whose prefix is `NS/KEY/`.
fn slot_key(prefix: &str, s: u32) -> String {
    format!("{}{s}", slots_base(prefix))
}

/// The slot a claim key names, if it is one of the lock whose claims
/// start with `base` (`NS/KEY@slot`).
fn slot_of(base: &[u8], key: &[u8]) -> Option<u32> {
    let tail = key.strip_prefix(base)?;
    if tail.is_empty() || !tail.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(tail).ok()?.parse().ok()
}

/// Our entry, as a claim needs it.
pub(super) struct Claimant<'a> {
    /// Our entry's key, and its create revision.
    pub(super) key: &'a str,
    pub(super) rev: i64,
    pub(super) lease: i64,
    /// Where our record is (our entry, or an elect candidate's side key),
    /// and what it says.
    pub(super) record_key: Vec<u8>,
    pub(super) record: &'a Record,
}

impl EtcdBackend {
    /// Claim the lowest free slot below `limit` of the lock whose prefix
    /// is `prefix`, for `me`, writing it into our record in the same
    /// transaction. None if every slot is held by a live entry (holders
    /// that disagree on `--limit`), or our entry is gone.
    pub(super) async fn claim_slot(
        &self,
        prefix: &str,
        limit: u32,
        me: &Claimant<'_>,
    ) -> Result<Option<u32>> {
        let base = slots_base(prefix);
        let mut c = self.client.clone();
        let ours = || ec::Compare::create_revision(me.key, ec::CompareOp::Equal, me.rev);
        'rounds: for round in 0..ROUNDS {
            if round > 0 {
                // Each failed claim: first, is our entry still there?
                let r = self.bounded("get", c.get(me.key, None)).await?;
                if r.kvs()
                    .first()
                    .is_none_or(|kv| kv.create_revision() != me.rev)
                {
                    return Ok(None);
                }
            }
            let got = self
                .bounded(
                    &format!("get {base}"),
                    c.get(base.as_str(), Some(ec::GetOptions::new().with_prefix())),
                )
                .await?;
            let claims: Vec<(u32, ec::KeyValue)> = got
                .kvs()
                .iter()
                .filter_map(|kv| Some((slot_of(base.as_bytes(), kv.key())?, kv.clone())))
                .collect();
            for s in 0..limit.max(1) {
                let key = slot_key(prefix, s);
                let mut when = vec![ours()];
                match claims.iter().find(|(n, _)| *n == s) {
                    None => when.push(ec::Compare::create_revision(
                        key.as_str(),
                        ec::CompareOp::Equal,
                        0,
                    )),
                    Some((_, kv)) => {
                        // Its owner's entry was made before the claim, and
                        // is read after it: a live owner's is seen.
                        let owner = kv.value().to_vec();
                        let r = self.bounded("get", c.get(owner.clone(), None)).await?;
                        if !r.kvs().is_empty() || owner.is_empty() {
                            continue;
                        }
                        when.push(ec::Compare::mod_revision(
                            key.as_str(),
                            ec::CompareOp::Equal,
                            kv.mod_revision(),
                        ));
                        when.push(ec::Compare::create_revision(owner, ec::CompareOp::Equal, 0));
                    }
                }
                let record = Record {
                    slot: Some(s),
                    ..me.record.clone()
                }
                .encode(NField::Limit);
                let on_lease = || Some(ec::PutOptions::new().with_lease(me.lease));
                let txn = ec::Txn::new().when(when).and_then([
                    ec::TxnOp::put(key.as_str(), me.key, on_lease()),
                    ec::TxnOp::put(me.record_key.clone(), record, on_lease()),
                ]);
                if self.bounded("claim a slot", c.txn(txn)).await?.succeeded {
                    return Ok(Some(s));
                }
                continue 'rounds;
            }
            return Ok(None);
        }
        tracing::warn!(
            prefix,
            "could not claim a semaphore slot: the claims kept changing; holding without one"
        );
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_keys() {
        assert_eq!(slot_key("dlock/job/", 2), "dlock/job@slot2");
        // A key that ends with a slash is another key's lock.
        assert_eq!(slot_key("dlock/job//", 2), "dlock/job/@slot2");
        let base = b"dlock/job@slot";
        assert_eq!(slot_of(base, b"dlock/job@slot12"), Some(12));
        assert_eq!(slot_of(base, b"dlock/job@slot"), None);
        // Another lock's claims (key `job@slot1`), and a side key.
        assert_eq!(slot_of(base, b"dlock/job@slot1@slot2"), None);
        assert_eq!(slot_of(b"dlock/job@", b"dlock/job@694d"), None);
        // No claim is an entry of its key, or of a parent.
        let kv = ec::KeyValue {
            value: b"dlock/job/694d".to_vec(),
            ..Default::default()
        };
        assert_eq!(super::super::entries::entry_in(b"job@slot2", &kv), None);
        assert_eq!(super::super::entries::entry_in(b"a/job@slot2", &kv), None);
    }
}
