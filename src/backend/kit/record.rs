//! dlock's holder record: the codec, read and written by every layout that
//! stores one, and the liveness of the process it names.

use std::time::Duration;

use crate::backend::{Holder, Owner};

/// What a record's third field `N` holds, by the layout that writes it:
/// the fencing token on Redis (whose scripts write it, and rewrite it for
/// Redlock: 0 until then); the `--limit` on ZooKeeper and etcd (0: a
/// shared entry, which only etcd marks so), whose token is the service's
/// own counter (czxid, create revision) or, on ZooKeeper, `TOKEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NField {
    Token,
    Limit,
}

/// dlock's holder record, stored with every lease on Redis, ZooKeeper and
/// etcd so that `status` can say who holds it:
/// `dlock1|ID|N|USER|HOST|PID|SINCE_MS[|TTL_MS|TOKEN|T[|HOST_ID|START]]`,
/// `TTL_MS`, `TOKEN` and `T` ZooKeeper's ([`NField`] says what `N` is), and
/// `HOST_ID|START` the liveness of a process that holds while it runs
/// ([`Record::live`]). Parsed, each field has one meaning whatever the
/// backend. Anything else is a foreign client's value.
///
/// Older readers split a record into at most 10 fields, so the liveness
/// fields reach them folded into `T`: they are never written beside `T`
/// (a node that outlives its session belongs to no running process).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Names the lease: the owner's secret (Redis, ZooKeeper), the lease id
    /// in hex (etcd).
    pub id: String,
    /// The fencing token the record carries, if it carries one: Redis's
    /// once fenced; a ZooKeeper node's that took over a `run`'s lease
    /// (`--lock-at-least`). Elsewhere the service's counter is the token.
    pub token: Option<u64>,
    /// The `--limit` of an exclusive entry, where recorded (ZooKeeper,
    /// etcd).
    pub limit: Option<u32>,
    /// A shared entry, where the record says so (etcd; the other backends
    /// tell shared entries by where they are).
    pub shared: bool,
    pub user: String,
    pub host: String,
    pub pid: Option<u32>,
    /// When it was taken, in milliseconds since the epoch.
    pub since_ms: Option<u64>,
    /// The TTL of a ZooKeeper node that outlives its session, judged from
    /// its `mtime`.
    pub ttl_ms: Option<u64>,
    /// A ZooKeeper server TTL node (its TTL cannot change).
    pub ttl_node: bool,
    /// Where and which process holds this entry while it runs (a `run`, an
    /// `elect` candidate, a waiter): its [`crate::host::host_id`] and
    /// start time, so that another process on the same machine can tell
    /// that it is dead ([`Record::dead_here`]). None for a handle's lease
    /// (`dlock acquire`), whose process exits by design.
    pub live: Option<(String, u64)>,
    /// The semaphore slot of an exclusive entry taken with `--limit` > 1
    /// (`SLOT`, the 13th field, after the liveness fields, written only
    /// where there is one: a mutex is slot 0). A reader that splits into
    /// 12 fields sees it folded into `START`, so it loses only the
    /// liveness of a semaphore holder, never who holds.
    pub slot: Option<u32>,
}

impl Record {
    /// The record for `me`, taking a lease named `id` now.
    pub fn new(id: impl Into<String>, me: &Owner) -> Record {
        let since_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Record {
            id: id.into(),
            user: me.user.clone(),
            host: me.host.clone(),
            pid: Some(me.pid),
            since_ms: Some(since_ms),
            live: (me.kind == crate::backend::LeaseKind::Run && !me.host_id.is_empty())
                .then(|| (me.host_id.clone(), me.proc_start)),
            ..Record::default()
        }
    }

    /// Whether the process that wrote this entry is known to be gone: it
    /// ran on this machine (the same boot and PID namespace) and no
    /// process with its pid and start time exists. Entries from other
    /// machines, handles' leases and foreign clients' are never dead here:
    /// they end with their TTL or session.
    pub fn dead_here(&self) -> bool {
        match (&self.live, self.pid) {
            (Some((host_id, start)), Some(pid)) => {
                *host_id == crate::host::host_id() && !crate::host::process_alive(pid, *start)
            }
            _ => false,
        }
    }

    /// The record in a stored value, if it is one of dlock's, whose `N` is
    /// `n`. Every value older versions wrote parses.
    pub fn parse(value: &str, n: NField) -> Option<Record> {
        let f: Vec<&str> = value.splitn(13, '|').collect();
        if f.len() < 7 || f[0] != "dlock1" {
            return None;
        }
        let third: Option<u64> = f[2].parse().ok();
        let num = |i: usize| f.get(i).and_then(|t| t.parse().ok());
        let (token, limit, shared) = match n {
            NField::Token => (third.filter(|t| *t > 0), None, false),
            NField::Limit => (
                num(8),
                third
                    .filter(|l| *l > 0)
                    .map(|l| l.min(u64::from(u32::MAX)) as u32),
                third == Some(0),
            ),
        };
        Some(Record {
            id: f[1].to_string(),
            token,
            limit,
            shared,
            user: f[3].to_string(),
            host: f[4].to_string(),
            pid: f[5].parse().ok(),
            since_ms: f[6].parse().ok(),
            ttl_ms: num(7),
            ttl_node: f.get(9) == Some(&"T"),
            live: match (f.get(10), f.get(11).and_then(|s| s.parse().ok())) {
                (Some(h), Some(start)) if !h.is_empty() => Some((h.to_string(), start)),
                _ => None,
            },
            slot: num(12).map(|s| s.min(u64::from(u32::MAX)) as u32),
        })
    }

    /// The value to store, with `N` as `n` says.
    pub fn encode(&self, n: NField) -> String {
        let third = match n {
            NField::Token => self.token.unwrap_or(0),
            NField::Limit if self.shared => 0,
            NField::Limit => u64::from(self.limit.unwrap_or(1)),
        };
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        let mut s = format!(
            "dlock1|{}|{third}|{}|{}|{}|{}",
            self.id,
            self.user,
            self.host,
            opt(self.pid.map(u64::from)),
            opt(self.since_ms)
        );
        // ZooKeeper's fields: `TOKEN` (maybe empty) and `T` need `TTL_MS`;
        // the liveness fields need all three (maybe empty), and never go
        // beside `T` (see the type's note on older readers).
        let token = self.token.filter(|_| n == NField::Limit);
        let live = self.live.as_ref().filter(|_| !self.ttl_node);
        let slot = self.slot.filter(|_| !self.ttl_node);
        if self.ttl_ms.is_some() || live.is_some() || slot.is_some() {
            s.push_str(&format!("|{}", opt(self.ttl_ms)));
            if token.is_some() || self.ttl_node || live.is_some() || slot.is_some() {
                s.push_str(&format!("|{}", opt(token)));
            }
            if self.ttl_node {
                s.push_str("|T");
            } else if let Some((host_id, start)) = live {
                s.push_str(&format!("||{host_id}|{start}"));
            } else if slot.is_some() {
                s.push_str("|||");
            }
            if let Some(slot) = slot {
                s.push_str(&format!("|{slot}"));
            }
        }
        s
    }

    /// The fields a record of a running process ends with, for a layout
    /// that writes its record elsewhere (Redis's scripts): empty, or
    /// `||||HOST_ID|START` after `SINCE_MS`.
    pub fn live_suffix(me: &Owner) -> String {
        match (me.kind, me.host_id.is_empty()) {
            (crate::backend::LeaseKind::Run, false) => {
                format!("||||{}|{}", me.host_id, me.proc_start)
            }
            _ => String::new(),
        }
    }

    /// The holder it describes; `token` is the service's own (a record's
    /// own token comes first) and the expiry is known otherwise.
    pub fn holder(&self, token: Option<u64>, expires_at: Option<std::time::SystemTime>) -> Holder {
        Holder {
            owner: Some(self.user.clone()),
            host: Some(self.host.clone()),
            pid: self.pid,
            token: self.token.or(token),
            acquired_at: self
                .since_ms
                .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
            expires_at,
            dead: self.dead_here(),
            shared: self.shared,
            value: None,
            entry: None,
            slot: self.slot,
            waiting: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_records_round_trip() {
        let me = Owner {
            id: "s3cr3t".into(),
            user: "ci".into(),
            host: "runner-7".into(),
            pid: 81234,
            host_id: String::new(),
            proc_start: 0,
            kind: crate::backend::LeaseKind::Run,
            value: None,
        };
        // Written for each N, read back with the same meaning.
        let mut r = Record::new("abc", &me);
        r.limit = Some(3);
        let v = r.encode(NField::Limit);
        assert!(v.starts_with("dlock1|abc|3|ci|runner-7|81234|"), "{v}");
        assert_eq!(v.split('|').count(), 7);
        assert_eq!(Record::parse(&v, NField::Limit), Some(r.clone()));
        let h = r.holder(Some(9), None);
        assert_eq!((h.token, h.owner.as_deref()), (Some(9), Some("ci")));
        assert!(h.acquired_at.is_some() && !h.shared);
        let shared = Record {
            limit: None,
            shared: true,
            ..r.clone()
        };
        let v = shared.encode(NField::Limit);
        assert!(v.starts_with("dlock1|abc|0|"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(shared.clone()));
        assert!(shared.holder(None, None).shared);
        let fenced = Record {
            limit: None,
            token: Some(7),
            ..r.clone()
        };
        let v = fenced.encode(NField::Token);
        assert!(v.starts_with("dlock1|abc|7|"), "{v}");
        assert_eq!(Record::parse(&v, NField::Token), Some(fenced.clone()));
        assert_eq!(fenced.holder(Some(1), None).token, Some(7));
        // N is read as the layout that wrote it says, never both ways.
        let as_limit = Record::parse(&v, NField::Limit).unwrap();
        assert_eq!((as_limit.limit, as_limit.token), (Some(7), None));
        // What older versions wrote, byte for byte, each field typed.
        let redis = "dlock1|f00d|7|root|box|42|1700000000000";
        let r = Record::parse(redis, NField::Token).unwrap();
        assert_eq!(
            (r.id.as_str(), r.token, r.limit, r.shared, r.pid, r.since_ms),
            (
                "f00d",
                Some(7),
                None,
                false,
                Some(42),
                Some(1_700_000_000_000)
            )
        );
        assert_eq!(r.encode(NField::Token), redis);
        // Redlock before the fencing round: no token yet.
        let r = Record::parse("dlock1|f00d|0|root|box|42|1", NField::Token).unwrap();
        assert_eq!((r.token, r.shared), (None, false));
        let etcd_shared = "dlock1|694d|0|me|h|1|0";
        let r = Record::parse(etcd_shared, NField::Limit).unwrap();
        assert_eq!((r.limit, r.shared, r.token), (None, true, None));
        assert_eq!(r.encode(NField::Limit), etcd_shared);
        for zk in [
            "dlock1|id|1|me|host|42|1000",
            "dlock1|id|1|me|host|0|1000|500",
            "dlock1|id|3|me|host|0|1000|500|7",
            "dlock1|id|1|me|host|0|1000|500||T",
            "dlock1|id|1|me|host|0|1000|500|7|T",
        ] {
            let r = Record::parse(zk, NField::Limit).unwrap();
            assert_eq!(r.encode(NField::Limit), zk);
        }
        let r = Record::parse("dlock1|id|3|me|host|0|1000|500|7|T", NField::Limit).unwrap();
        assert_eq!(
            (r.limit, r.ttl_ms, r.token, r.ttl_node, r.shared),
            (Some(3), Some(500), Some(7), true, false)
        );
        // A running process's record carries its liveness, after empty
        // ZooKeeper fields; older readers (10 fields at most) see them
        // folded into `T`, which they do not take for a TTL node.
        let live = Record {
            live: Some(("boot/pid:[1]".into(), 4242)),
            since_ms: Some(1000),
            limit: Some(1),
            ..Record::new("abc", &me)
        };
        let v = live.encode(NField::Limit);
        assert!(v.ends_with("|1000||||boot/pid:[1]|4242"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(live.clone()));
        let old_reader: Vec<&str> = v.splitn(10, '|').collect();
        assert_ne!(old_reader[9], "T");
        assert_eq!(old_reader[7], "", "an older reader sees no TTL_MS");
        let zk_live = Record {
            ttl_ms: Some(500),
            token: Some(7),
            ..live.clone()
        };
        let v = zk_live.encode(NField::Limit);
        assert!(v.ends_with("|500|7||boot/pid:[1]|4242"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(zk_live));
        // Never beside `T`: a TTL node belongs to no running process.
        let ttl_node = Record {
            ttl_ms: Some(500),
            ttl_node: true,
            ..live.clone()
        };
        let v = ttl_node.encode(NField::Limit);
        assert!(v.ends_with("|500||T"), "{v}");
        // Redis's scripts append the suffix to what they write.
        let me_live = Owner {
            host_id: "boot/pid:[1]".into(),
            proc_start: 4242,
            ..me.clone()
        };
        let v = format!(
            "dlock1|f00d|7|root|box|42|1700000000000{}",
            Record::live_suffix(&me_live)
        );
        let r = Record::parse(&v, NField::Token).unwrap();
        assert_eq!((r.token, r.live.clone()), (Some(7), live.live.clone()));
        assert_eq!(r.encode(NField::Token), v);
        assert_eq!(Record::live_suffix(&me), "", "no host id, no liveness");
        // A semaphore holder's slot, the 13th field, with or without the
        // liveness before it; a reader of 12 fields keeps who holds.
        let slotted = Record {
            slot: Some(2),
            limit: Some(3),
            ..live.clone()
        };
        let v = slotted.encode(NField::Limit);
        assert!(v.ends_with("||||boot/pid:[1]|4242|2"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(slotted.clone()));
        assert_eq!(slotted.holder(None, None).slot, Some(2));
        let twelve: Vec<&str> = v.splitn(12, '|').collect();
        assert_eq!((twelve[3], twelve[5]), ("ci", "81234"));
        let handle_slot = Record {
            live: None,
            ..slotted.clone()
        };
        let v = handle_slot.encode(NField::Limit);
        assert!(v.ends_with("|1000||||||2"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(handle_slot));
        let lapsing = Record {
            ttl_ms: Some(500),
            ttl_node: true,
            ..slotted.clone()
        };
        assert!(lapsing.encode(NField::Limit).ends_with("|500||T"));
        // A user or host with a `|` was never written (Redis and elect
        // replace it); not dlock's, or not a record at all:
        assert_eq!(Record::parse("a redis-py token", NField::Token), None);
        assert_eq!(Record::parse("dlock1|only|three", NField::Limit), None);
        assert_eq!(Record::parse("", NField::Limit), None);
        assert_eq!(Record::parse("10.0.0.1", NField::Limit), None);
    }

    #[test]
    fn a_local_entry_whose_process_is_gone_is_dead() {
        let here = crate::host::host_id();
        let me = std::process::id();
        let start = crate::host::proc_start(me).unwrap();
        let rec = |host_id: &str, pid: u32, start: u64| Record {
            pid: Some(pid),
            live: Some((host_id.to_string(), start)),
            ..Record::default()
        };
        assert!(!rec(&here, me, start).dead_here(), "we are alive");
        assert!(rec(&here, me, start + 1).dead_here(), "pid reused");
        // A child that exited and was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let cstart = crate::host::proc_start(pid).unwrap_or(0);
        child.wait().unwrap();
        assert!(rec(&here, pid, cstart).dead_here());
        assert!(rec(&here, pid, cstart).holder(None, None).dead);
        // Another machine's entry, a handle's, a foreign one: never dead here.
        assert!(!rec("other-boot/pid:[1]", pid, cstart).dead_here());
        let handle = Record {
            pid: Some(pid),
            ..Record::default()
        };
        assert!(!handle.dead_here());
    }
}
