//! Node names: whose recipe writes which, and a contender's place and
//! mode from its name.

use anyhow::Result;

use super::kit;
use crate::error::usage;

/// Whose node names dlock writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recipe {
    /// Apache Curator's `InterProcessMutex`: `_c_<uuid>-lock-NNNNNNNNNN`.
    Curator,
    /// kazoo's `Lock`: `<uuid hex>__lock__NNNNNNNNNN`.
    Kazoo,
}

impl Recipe {
    /// The name of a node of lease `id`, before its sequence number: an
    /// exclusive one (Curator's `InterProcessMutex`, kazoo's `Lock`), or a
    /// shared one (the read side of Curator's `InterProcessReadWriteLock`,
    /// kazoo's `ReadLock`).
    pub(super) fn tag(self, id: &str, shared: bool) -> String {
        match (self, shared) {
            (Recipe::Curator, false) => format!("_c_{}-lock-", uuid_of(id)),
            (Recipe::Curator, true) => format!("_c_{}-{SHARED_CURATOR}", uuid_of(id)),
            (Recipe::Kazoo, false) => format!("{}__lock__", hex_of(id)),
            (Recipe::Kazoo, true) => format!("{}{SHARED_KAZOO}", hex_of(id)),
        }
    }
}

/// What a contender's node name ends with, before its ten-digit sequence
/// number, and whether it is shared: dlock's and Curator's
/// `InterProcessMutex` (`lock-`), kazoo's `Lock` and `WriteLock`
/// (`__lock__`), the write and read sides of Curator's
/// `InterProcessReadWriteLock` (`__WRIT__`, `__READ__`) and kazoo's
/// `ReadLock` (`__rlock__`).
pub(super) const MARKERS: [(&str, bool); 5] = [
    ("lock-", false),
    ("__lock__", false),
    ("__WRIT__", false),
    (SHARED_CURATOR, true),
    (SHARED_KAZOO, true),
];
pub(super) const SHARED_CURATOR: &str = "__READ__";
pub(super) const SHARED_KAZOO: &str = "__rlock__";

pub(super) struct Contender {
    pub(super) name: String,
    pub(super) seq: i64,
    /// A shared (read) entry.
    pub(super) shared: bool,
}

impl Contender {
    /// Its mode for the admission rule; an exclusive entry's limit is
    /// `limit` (the rule reads only our own).
    pub(super) fn mode(&self, limit: u32) -> kit::Mode {
        kit::Mode::of(self.shared, limit)
    }
}

/// The modes of a queue's contenders, for the admission rule.
pub(super) fn modes(contenders: &[Contender], limit: u32) -> Vec<kit::Mode> {
    contenders.iter().map(|c| c.mode(limit)).collect()
}

/// The sequence number of a contender's node (ZooKeeper appends ten
/// digits) and whether it is shared; None for any other child, such as a
/// nested key's directory.
pub(super) fn entry_of(name: &str) -> Option<(i64, bool)> {
    let cut = name.len().checked_sub(10)?;
    let (head, tail) = (name.get(..cut)?, &name[cut..]);
    if !tail.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let shared = MARKERS
        .iter()
        .find(|(m, _)| head.ends_with(m))
        .map(|(_, shared)| *shared)?;
    Some((tail.parse().ok()?, shared))
}

pub(super) fn seq_of(name: &str) -> Option<i64> {
    entry_of(name).map(|(seq, _)| seq)
}

/// The contenders among a lock directory's children, in lock order: by
/// sequence number, whatever the name (the counter is the directory's, so
/// the numbers are unique across recipes and modes).
pub(super) fn contenders_of(names: Vec<String>) -> Vec<Contender> {
    let mut v: Vec<Contender> = names
        .into_iter()
        .filter_map(|name| entry_of(&name).map(|(seq, shared)| Contender { name, seq, shared }))
        .collect();
    v.sort_by_key(|c| c.seq);
    v
}

/// A lease id as 32 hex digits (kazoo's `uuid4().hex`).
pub(super) fn hex_of(id: &str) -> String {
    id.chars().chain(std::iter::repeat('0')).take(32).collect()
}

pub(super) fn uuid_of(id: &str) -> String {
    let h = hex_of(id);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `zk://[auth@]hosts[/chroot][?recipe=curator|kazoo]`: (auth, hosts and
/// chroot, recipe).
pub(super) fn parse_url(url: &str, shown: &str) -> Result<(Option<Vec<u8>>, String, Recipe)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let rest = rest.split('#').next().unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    let (auth, cluster) = match rest.rsplit_once('@') {
        Some((userinfo, c)) => (Some(userinfo.as_bytes().to_vec()), c.to_string()),
        None => (None, rest.to_string()),
    };
    if cluster.is_empty() || cluster.starts_with('/') {
        return Err(usage(format!(
            "{shown}: expected zk://HOST:PORT[,HOST:PORT...][/chroot][?recipe=curator|kazoo]"
        )));
    }
    let mut recipe = Recipe::Curator;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("recipe", "curator")) => recipe = Recipe::Curator,
            Some(("recipe", "kazoo")) => recipe = Recipe::Kazoo,
            Some(("recipe", v)) => {
                return Err(usage(format!(
                    "{shown}: unknown ZooKeeper recipe {v:?}: expected recipe=curator \
                     (Curator's node names, the default) or recipe=kazoo (kazoo's)"
                )));
            }
            _ => {
                return Err(usage(format!(
                    "{shown}: unknown ZooKeeper URL parameter {kv:?}: the one accepted is \
                     recipe=curator|kazoo"
                )));
            }
        }
    }
    Ok((auth, cluster, recipe))
}

#[cfg(test)]
mod tests {
    use super::super::ZkBackend;
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            seq_of("_c_0a1b2c3d-0000-0000-0000-000000000000-lock-0000000042"),
            Some(42)
        );
        assert_eq!(seq_of("f00dfeed__lock__0000000007"), Some(7));
        assert_eq!(seq_of("unrelated"), None);
        assert_eq!(
            uuid_of("0123456789abcdef0123456789abcdef"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert!(ZkBackend::dir("dlock", "a/../b").is_err());
        assert!(ZkBackend::dir("dlock", "a/b").is_ok());
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            Recipe::Curator.tag(id, false),
            "_c_01234567-89ab-cdef-0123-456789abcdef-lock-"
        );
        assert_eq!(
            Recipe::Kazoo.tag(id, false),
            "0123456789abcdef0123456789abcdef__lock__"
        );
        assert_eq!(
            Recipe::Curator.tag(id, true),
            "_c_01234567-89ab-cdef-0123-456789abcdef-__READ__"
        );
        assert_eq!(
            Recipe::Kazoo.tag(id, true),
            "0123456789abcdef0123456789abcdef__rlock__"
        );
        for (r, shared) in [(Recipe::Curator, false), (Recipe::Curator, true)]
            .into_iter()
            .chain([(Recipe::Kazoo, false), (Recipe::Kazoo, true)])
        {
            let name = format!("{}0000000009", r.tag(id, shared));
            assert_eq!(entry_of(&name), Some((9, shared)), "{name}");
        }
        // Curator's write side and kazoo's `WriteLock` are exclusive.
        assert_eq!(entry_of("_c_x-__WRIT__0000000003"), Some((3, false)));
        assert_eq!(entry_of("ab__lock__0000000004"), Some((4, false)));
        assert_eq!(entry_of("ab__rlock__0000000005"), Some((5, true)));
        assert_eq!(entry_of("ab__rlock__000000005"), None);
        assert_eq!(entry_of("0000000005"), None);
        let order = contenders_of(vec![
            "ab__rlock__0000000005".into(),
            "_c_x-lock-0000000002".into(),
            "sub".into(),
            "_c_y-__READ__0000000003".into(),
        ]);
        let names: Vec<_> = order.iter().map(|c| (c.seq, c.shared)).collect();
        assert_eq!(names, [(2, false), (3, true), (5, true)]);
    }

    #[test]
    fn urls() {
        let (auth, cluster, recipe) = parse_url("zk://h:1,h:2/app?recipe=kazoo", "x").unwrap();
        assert_eq!(
            (auth, cluster.as_str(), recipe),
            (None, "h:1,h:2/app", Recipe::Kazoo)
        );
        let (auth, cluster, recipe) = parse_url("zk://u:p@h:1", "x").unwrap();
        assert_eq!(auth.as_deref(), Some(&b"u:p"[..]));
        assert_eq!((cluster.as_str(), recipe), ("h:1", Recipe::Curator));
        let (_, _, recipe) = parse_url("zk://h:1?recipe=curator", "x").unwrap();
        assert_eq!(recipe, Recipe::Curator);
        assert!(parse_url("zk://h:1?recipe=etcd", "x").is_err());
        assert!(parse_url("zk://h:1?x=1", "x").is_err());
        assert!(parse_url("zk://?recipe=kazoo", "x").is_err());
    }
}
