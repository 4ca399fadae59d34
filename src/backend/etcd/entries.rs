//! Queue entries under a key's prefix: which keys are entries, of which
//! mode, and the holder each names (with an elect candidate's side key).

use super::ec;
use crate::backend::kit::{self, NField, Record};
use crate::backend::{Holder, user_with_value};

/// The holder an entry names: dlock's record in its value (`run`); or a
/// published value in its value and dlock's record in its side key
/// (`elect`, `side`: the side key's value); else a foreign client's entry,
/// whose value (empty for `etcdctl lock` and `concurrency.Mutex`, V for
/// `etcdctl elect` and `concurrency.Election`) is all there is to show.
pub(super) fn holder_from(kv: &ec::KeyValue, side: Option<&[u8]>) -> Holder {
    let value = String::from_utf8_lossy(kv.value());
    let token = Some(kv.create_revision() as u64);
    if let Some(r) = record(&value) {
        return r.holder(token, None);
    }
    let side = side.map(String::from_utf8_lossy);
    let lease = format!("{:x}", kv.lease());
    if let Some(r) = side.as_deref().and_then(record).filter(|r| r.id == lease) {
        // As the other backends show a published value: in the owner,
        // unless it is elect's default (`USER@HOST pid PID`), which they
        // do not publish.
        let h = r.holder(token, None);
        let default = format!("{}@{} pid {}", r.user, r.host, h.pid.unwrap_or(0));
        return Holder {
            owner: Some(if value == default {
                r.user.clone()
            } else {
                user_with_value(&r.user, &value)
            }),
            value: Some(value.into_owned()),
            ..h
        };
    }
    Holder {
        token,
        value: (!value.is_empty()).then(|| value.into_owned()),
        ..Holder::default()
    }
}

/// The side key of an entry `NS/KEY/<lease id>`: `NS/KEY@<lease id>`,
/// where an elect candidate keeps dlock's record of itself (its entry
/// holds its published value), on the entry's lease. It is outside the
/// prefix `NS/KEY/` the Go recipes list, so they see one key per
/// candidate, and its last part is no entry's (see [`mode_of`]).
pub(super) fn side_key(entry: &[u8]) -> Option<Vec<u8>> {
    let at = entry.iter().rposition(|&b| b == b'/')?;
    let mut k = entry.to_vec();
    k[at] = b'@';
    Some(k)
}

/// A lease id as `concurrency.Mutex` and dlock write it: lowercase hex
/// (of an i64: at most 16 digits).
pub(super) fn is_lease_id(tail: &[u8]) -> bool {
    !tail.is_empty()
        && tail.len() <= 16
        && tail.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The name `recipes.RWMutex` gives its keys: `time.Now().UnixNano()`.
pub(super) fn is_nanos(tail: &[u8]) -> bool {
    tail.len() >= 17 && tail.iter().all(u8::is_ascii_digit)
}

/// dlock's record in a value (`N` is the limit, 0 for a shared entry).
pub(super) fn record(value: &str) -> Option<Record> {
    Record::parse(value, NField::Limit)
}

/// dlock's record in an entry's value; None for a foreign client's value
/// (or an elect candidate's, whose record is in its side key).
pub(super) fn record_of(kv: &ec::KeyValue) -> Option<Record> {
    record(&String::from_utf8_lossy(kv.value()))
}

/// Whether the key `NS/KEY/<tail>` is an entry in the queue of `KEY`, and
/// then whether it is shared:
///
/// - `<lease id>`: exclusive (dlock, `etcdctl lock`, `concurrency.Mutex`);
/// - `read/<lease id>` with dlock's value for a shared entry: shared;
/// - `read/<nanos>` and `write/<nanos>`: the reader and writer of a Go
///   `recipes.RWMutex` on `NS/KEY`.
///
/// The rest (nested keys' entries, among them those of a key `KEY/read`)
/// is another lock's. A dlock reader of `KEY/..` is not an exclusive
/// entry of `KEY/read`, whose prefix its key is under too.
pub(super) fn mode_of(tail: &[u8], kv: &ec::KeyValue) -> Option<bool> {
    // dlock's record says shared (Some(true)) or not; None: a foreign value.
    let marked = record_of(kv).map(|r| r.shared);
    let slash = tail.iter().position(|&b| b == b'/');
    let Some(at) = slash else {
        return (is_lease_id(tail) && marked != Some(true)).then_some(false);
    };
    let (dir, id) = (&tail[..at], &tail[at + 1..]);
    match (dir, marked) {
        (b"read", Some(true)) => is_lease_id(id).then_some(true),
        (b"read", None) => is_nanos(id).then_some(true),
        (b"write", None) => is_nanos(id).then_some(false),
        _ => None,
    }
}

/// The key (below `NS/`) and mode of an entry `NS/<rest>`, as listed
/// namespace-wide.
pub(super) fn entry_in(rest: &[u8], kv: &ec::KeyValue) -> Option<(String, bool)> {
    let at = rest.iter().rposition(|&b| b == b'/')?;
    // `KEY/read/<id>` or `KEY/write/<id>`: shared or foreign entries of KEY.
    if let Some(k) = rest[..at].iter().rposition(|&b| b == b'/')
        && let Some(shared) = mode_of(&rest[k + 1..], kv)
    {
        return Some((String::from_utf8_lossy(&rest[..k]).into_owned(), shared));
    }
    let shared = mode_of(&rest[at + 1..], kv)?;
    Some((String::from_utf8_lossy(&rest[..at]).into_owned(), shared))
}

/// A queue entry: its key-value, whether it is shared, and its side
/// key's value if it was read ([`side_key`]).
pub(super) struct Entry {
    pub(super) kv: ec::KeyValue,
    pub(super) shared: bool,
    pub(super) side: Option<Vec<u8>>,
}

impl Entry {
    pub(super) fn mode(&self, limit: u32) -> kit::Mode {
        kit::Mode::of(self.shared, limit)
    }

    /// The `--limit` its record gives, if any.
    pub(super) fn limit(&self) -> Option<u32> {
        record_of(&self.kv)?.limit
    }

    pub(super) fn holder(&self) -> Holder {
        Holder {
            shared: self.shared,
            ..holder_from(&self.kv, self.side.as_deref())
        }
    }

    /// Whether its holder record may be in a side key: its value is not
    /// one (an elect candidate's, or a foreign client's with none).
    pub(super) fn may_have_side(&self) -> bool {
        !self.shared && record_of(&self.kv).is_none()
    }
}

pub(super) fn modes(entries: &[Entry], limit: u32) -> Vec<kit::Mode> {
    entries.iter().map(|e| e.mode(limit)).collect()
}

/// A queue's `--limit`: its first exclusive dlock entry's (else 1).
pub(super) fn queue_limit(entries: &[Entry]) -> u32 {
    kit::queue_limit(entries.iter().map(|e| (e.shared, e.limit())))
}

/// The holders of a queue, by the admission rule.
pub(super) fn holding(entries: &[Entry]) -> &[Entry] {
    &entries[..kit::holding(&modes(entries, queue_limit(entries)))]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str) -> ec::KeyValue {
        ec::KeyValue {
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_and_their_modes() {
        let x = kv("dlock1|694d|1|me|h|1|0");
        let r = kv("dlock1|694d|0|me|h|1|0");
        let foreign = kv("");
        let nanos = "1764161234567890123";
        // dlock's and etcdctl's exclusive entries, dlock's readers.
        assert_eq!(mode_of(b"694d9a3b5e0c1234", &x), Some(false));
        assert_eq!(mode_of(b"694d9a3b5e0c1234", &foreign), Some(false));
        assert_eq!(mode_of(b"read/694d9a3b5e0c1234", &r), Some(true));
        // A Go recipes.RWMutex's reader and writer.
        let rw = |d: &str| format!("{d}/{nanos}");
        assert_eq!(mode_of(rw("read").as_bytes(), &foreign), Some(true));
        assert_eq!(mode_of(rw("write").as_bytes(), &foreign), Some(false));
        // Another lock's: the nested key KEY/read's exclusive entries (dlock's,
        // etcdctl's), a dlock reader of KEY/read seen from KEY/read's parent.
        assert_eq!(mode_of(b"read/694d9a3b5e0c1234", &x), None);
        assert_eq!(mode_of(b"read/694d9a3b5e0c1234", &foreign), None);
        assert_eq!(mode_of(b"write/694d", &foreign), None);
        assert_eq!(mode_of(b"694d", &r), None);
        assert_eq!(mode_of(b"sub/694d", &x), None);
        assert_eq!(mode_of(b"read/read/694d", &r), None);
        assert_eq!(mode_of(nanos.as_bytes(), &foreign), None);
        // Namespace-wide: which key an entry is of.
        let of = |rest: &str, kv: &ec::KeyValue| entry_in(rest.as_bytes(), kv);
        assert_eq!(of("job/694d", &x), Some(("job".into(), false)));
        assert_eq!(of("a/job/694d", &x), Some(("a/job".into(), false)));
        assert_eq!(of("job/read/694d", &r), Some(("job".into(), true)));
        assert_eq!(of("job/read/694d", &x), Some(("job/read".into(), false)));
        assert_eq!(
            of("job/read/read/694d", &r),
            Some(("job/read".into(), true))
        );
        assert_eq!(
            of(&format!("job/{}", rw("write")), &foreign),
            Some(("job".into(), false))
        );
        assert_eq!(
            of(&format!("job/{}", rw("read")), &foreign),
            Some(("job".into(), true))
        );
        assert_eq!(of("694d", &x), None);
    }

    #[test]
    fn elect_entries_keep_their_record_in_a_side_key() {
        assert_eq!(
            side_key(b"dlock/job/694d"),
            Some(b"dlock/job@694d".to_vec())
        );
        assert_eq!(
            side_key(b"dlock/a/job/694d"),
            Some(b"dlock/a/job@694d".to_vec())
        );
        // A side key is no entry, of its key or of a parent.
        let rec = kv("dlock1|694d|1|me|h|7|0");
        assert_eq!(mode_of(b"job@694d", &rec), None);
        assert_eq!(entry_in(b"job@694d", &rec), None);
        assert_eq!(entry_in(b"a/job@694d", &rec), None);
        assert_eq!(entry_in(b"a/read@694d", &rec), None);
        assert_eq!(entry_in(b"a/b/read@694d", &rec), None);
        // The candidate's entry holds V (read as exclusive), on lease 694d.
        let entry = |v: &str| ec::KeyValue {
            value: v.as_bytes().to_vec(),
            lease: 0x694d,
            create_revision: 9,
            ..Default::default()
        };
        assert_eq!(mode_of(b"694d", &entry("web-1:8080")), Some(false));
        let side = b"dlock1|694d|1|me|h|7|1764161234567".as_slice();
        let h = holder_from(&entry("web-1:8080 (a|b)"), Some(side));
        assert_eq!(h.value.as_deref(), Some("web-1:8080 (a|b)"));
        assert_eq!(h.value(), Some("web-1:8080 (a|b)"));
        assert_eq!(h.owner.as_deref(), Some("me (web-1:8080 (a_b))"));
        assert_eq!(
            (h.host.as_deref(), h.pid, h.token),
            (Some("h"), Some(7), Some(9))
        );
        assert!(h.acquired_at.is_some());
        // elect's default value is the owner's own name, not published in it.
        let h = holder_from(&entry("me@h pid 7"), Some(side));
        assert_eq!(h.owner.as_deref(), Some("me"));
        assert_eq!(h.value(), Some("me@h pid 7"));
        // Another lease's record is not this entry's: a foreign candidate
        // (`etcdctl elect`), whose value is still what it publishes.
        let h = holder_from(
            &entry("etcd-side"),
            Some(b"dlock1|abcd|1|me|h|7|0".as_slice()),
        );
        assert_eq!((h.owner.as_deref(), h.value()), (None, Some("etcd-side")));
        let h = holder_from(&entry("etcd-side"), None);
        assert_eq!(
            (h.owner.as_deref(), h.value(), h.token),
            (None, Some("etcd-side"), Some(9))
        );
        // `etcdctl lock` stores nothing; `run` stores its record.
        let h = holder_from(&entry(""), None);
        assert_eq!((h.owner.as_deref(), h.value()), (None, None));
        let h = holder_from(&entry("dlock1|694d|1|me|h|7|0"), None);
        assert_eq!((h.owner.as_deref(), h.value()), (Some("me"), None));
    }

    #[test]
    fn holders_by_the_rule() {
        let e = |shared: bool, n: u32| Entry {
            kv: kv(&format!("dlock1|1|{n}|me|h|1|0")),
            shared,
            side: None,
        };
        assert_eq!(
            holding(&[e(true, 0), e(true, 0), e(false, 1), e(true, 0)]).len(),
            2
        );
        assert_eq!(holding(&[e(false, 2), e(false, 2), e(false, 2)]).len(), 2);
        assert_eq!(holding(&[e(true, 0), e(false, 3), e(false, 3)]).len(), 1);
        assert_eq!(queue_limit(&[e(true, 0), e(false, 3)]), 3);
        assert_eq!(queue_limit(&[e(true, 0)]), 1);
    }
}
