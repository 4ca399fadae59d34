//! A node's data and stat: dlock's record, when a node that outlives its
//! session expires, and the holder it describes.

use std::time::{Duration, UNIX_EPOCH};

use zookeeper_client as zk;

use super::Holder;
use super::kit::{NField, Record};

/// A dlock node's data: [`kit::Record`] with `N` the limit, and the
/// trailing fields ZooKeeper uses:
/// `dlock1|ID|LIMIT|USER|HOST|PID|SINCE[|TTL_MS[|TOKEN[|T]]]`. `TTL_MS` is
/// there on a node that outlives its session; `TOKEN` (may be empty) on one
/// that took over a `run`'s lease (`--lock-at-least`), whose fencing token
/// it keeps; `T` marks a server TTL node (whose `ephemeralOwner` clients
/// see as 0, as a plain persistent node's), which cannot change its TTL.
pub(super) type NodeData = Record;

pub(super) fn node_data(data: &[u8]) -> Option<NodeData> {
    Record::parse(std::str::from_utf8(data).ok()?, NField::Limit)
}

pub(super) fn encode(d: &NodeData) -> Vec<u8> {
    d.encode(NField::Limit).into_bytes()
}

/// Whether a node outlives any session: persistent, or a TTL node (the
/// server shows clients the `ephemeralOwner` of both as 0).
pub(super) fn outlives_session(stat: &zk::Stat) -> bool {
    stat.ephemeral_owner == 0
}

/// When a dlock node that outlives its session expires, in milliseconds
/// since the epoch on the server's clock; None for a node that lives with
/// its session, or one that is not dlock's (a foreign client's).
pub(super) fn expiry_of(data: &[u8], stat: &zk::Stat) -> Option<i64> {
    if !outlives_session(stat) {
        return None;
    }
    let ttl = node_data(data)?.ttl_ms?;
    Some(stat.mtime.saturating_add(ttl.min(i64::MAX as u64) as i64))
}

pub(super) fn ms_of(d: Duration) -> u64 {
    d.as_millis().max(1).min(u128::from(u64::MAX)) as u64
}

/// dlock's record in a node; a node that outlives its session belongs to
/// no running process, whatever its data says of one.
pub(super) fn record_of(data: &[u8], stat: &zk::Stat) -> Option<Record> {
    let mut d = node_data(data)?;
    if outlives_session(stat) {
        d.live = None;
    }
    Some(d)
}

pub(super) fn holder_from(data: &[u8], stat: &zk::Stat) -> (Holder, Option<u32>) {
    let token = Some(stat.czxid as u64);
    let expires_at =
        expiry_of(data, stat).map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    if let Some(d) = record_of(data, stat) {
        (d.holder(token, expires_at), d.limit)
    } else {
        // Curator stores the client's IP, kazoo an identifier: show it as the host.
        let s = String::from_utf8_lossy(data);
        let host = (!s.is_empty()).then(|| s.chars().take(64).collect());
        let acquired_at = Some(UNIX_EPOCH + Duration::from_millis(stat.ctime.max(0) as u64));
        (
            Holder {
                host,
                token,
                acquired_at,
                ..Holder::default()
            },
            None,
        )
    }
}

/// A random lease id (32 hex digits), for a node that takes over another.
pub(super) fn fresh_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_data_round_trips() {
        let old = b"dlock1|id|1|me|host|42|1000";
        let d = node_data(old).unwrap();
        assert_eq!((d.ttl_ms, d.token), (None, None));
        assert_eq!(encode(&d), old.to_vec());
        let mut d2 = d.clone();
        d2.ttl_ms = Some(500);
        d2.token = Some(7);
        assert_eq!(node_data(&encode(&d2)), Some(d2));
        assert!(node_data(b"10.0.0.1").is_none());
        let stat = |owner: i64| zk::Stat {
            czxid: 1,
            mzxid: 1,
            pzxid: 1,
            ctime: 1000,
            mtime: 2000,
            version: 0,
            cversion: 0,
            aversion: 0,
            ephemeral_owner: owner,
            data_length: 0,
            num_children: 0,
        };
        let with_ttl = b"dlock1|id|1|me|host|0|1000|500";
        // Persistent and TTL nodes expire at mtime + TTL; ephemeral ones
        // and foreign nodes live with their session.
        assert_eq!(expiry_of(with_ttl, &stat(0)), Some(2500));
        let mut d3 = node_data(with_ttl).unwrap();
        d3.ttl_node = true;
        assert_eq!(encode(&d3), b"dlock1|id|1|me|host|0|1000|500||T".to_vec());
        assert_eq!(node_data(&encode(&d3)), Some(d3.clone()));
        assert_eq!(expiry_of(&encode(&d3), &stat(0)), Some(2500));
        assert_eq!(expiry_of(with_ttl, &stat(0x1234)), None);
        assert_eq!(expiry_of(old, &stat(0)), None);
        assert_eq!(expiry_of(b"10.0.0.1", &stat(0)), None);
        let (h, limit) = holder_from(b"dlock1|id|3|me|host|0|1000|500|7", &stat(0));
        assert_eq!((h.token, limit), (Some(7), Some(3)));
        assert_eq!(h.expires_at, Some(UNIX_EPOCH + Duration::from_millis(2500)));
    }
}
