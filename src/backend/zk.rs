//! ZooKeeper: the standard lock recipe, in Apache Curator's layout (or
//! kazoo's, with `?recipe=kazoo`).
//!
//! Each contender creates a sequential child of `/NAMESPACE/KEY` named like
//! Curator's `InterProcessMutex`: `_c_<uuid>-lock-NNNNNNNNNN` (with
//! `?recipe=kazoo`, like kazoo's `Lock`: `<uuid hex>__lock__NNNNNNNNNN`).
//! Children are ordered by their ten-digit sequence number (the counter is
//! the directory's, so numbers are unique across names). A shared
//! (`--shared`) contender's node is named like the read side of Curator's
//! `InterProcessReadWriteLock`, `_c_<uuid>-__READ__NNNNNNNNNN` (with
//! `?recipe=kazoo`, like kazoo's `ReadLock`: `<uuid hex>__rlock__NNNNNNNNNN`).
//! Every contender's mode comes from its name: `__READ__` and `__rlock__`
//! are shared; `lock-`, kazoo's `__lock__` (`Lock`, `WriteLock`) and
//! Curator's write side `__WRIT__` are exclusive. Which contenders hold and
//! which one a waiter watches is the admission rule's ([`kit::admits`],
//! [`kit::blocker`]) over the modes of every node before ours: the first
//! `--limit` of exclusive ones hold, a shared one holds when no exclusive
//! one is before it (so a waiting writer keeps later readers out), and
//! every waiter watches only the one node whose leaving may let it in (no
//! herd); the wait itself is [`queue::wait_turn`], shared with etcd. The
//! uuid lets us find our node again.
//!
//! What the foreign recipes see of dlock: kazoo's `WriteLock` sees every
//! dlock node of `?recipe=kazoo`, its `ReadLock` dlock's exclusive ones;
//! kazoo's plain `Lock` does not see readers (`__rlock__`), as it does not
//! see kazoo's own. Curator's read-write lock sees dlock's readers (its
//! `__READ__`), but neither its readers nor its writers see `lock-` nodes
//! (Curator's `InterProcessMutex`, dlock's exclusive holders), and
//! `InterProcessMutex` does not see the read-write lock's nodes: in Curator
//! the two recipes do not exclude each other either. dlock sees them all.
//!
//! The session is the lease of a `run`: its node is ephemeral, its timeout
//! follows `--ttl` (the server may clamp it; the lease then follows what
//! was negotiated). The fencing token is our node's `czxid`: zxids are
//! totally ordered across the ensemble and a later holder's node was
//! created later.
//!
//! A node that must outlive its process (a `dlock acquire` handle, or a
//! `run --lock-at-least` left to lapse) is persistent and carries its TTL in
//! its data. It expires when it has gone unmodified for that TTL, judged on
//! the server's clock: its `mtime` against the `mtime` of a write made now
//! (the lock directory's data, rewritten as it was). `renew` rewrites it
//! (moving its `mtime`); any dlock contender, or `status`, that finds one
//! expired deletes it (only if it is unchanged since it was judged). Where
//! the server offers TTL nodes (`zookeeper.extendedTypesEnabled=true`) the
//! node is a TTL node as well, so the server deletes it too, even when no
//! dlock comes by.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Result;
use async_trait::async_trait;
use std::sync::Arc;

use tokio::sync::Mutex;
use zookeeper_client as zk;

use super::kit::{self, Kind, NField, Queued, Record};
use super::queue;
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Renewal,
    redact_url,
};
use crate::backend::probe::{Check, Level};
use crate::error::{Error, unavailable, usage};

/// Whose node names dlock writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recipe {
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
    fn tag(self, id: &str, shared: bool) -> String {
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
const MARKERS: [(&str, bool); 5] = [
    ("lock-", false),
    ("__lock__", false),
    ("__WRIT__", false),
    (SHARED_CURATOR, true),
    (SHARED_KAZOO, true),
];
const SHARED_CURATOR: &str = "__READ__";
const SHARED_KAZOO: &str = "__rlock__";

pub struct ZkBackend {
    shown: String,
    cluster: String,
    auth: Option<Vec<u8>>,
    timeout: Duration,
    recipe: Recipe,
    /// The session, made on first use, and made anew once it has ended
    /// (expired: its ephemeral nodes went with it).
    client: Mutex<Option<Arc<zk::Client>>>,
    /// Our nodes, by (namespace, key): full path, and whether it outlives
    /// this process (a handle's node).
    mine: Mutex<HashMap<(String, String), (String, bool)>>,
    /// Queue entries not yet resolved, as (lock directory, our node-name
    /// prefix): registered before the node is created, so a waiter that is
    /// interrupted even mid-create finds and deletes its node in `close`.
    queued: Queued<(String, String)>,
    /// The server refused a TTL node: it has no extended types, so nodes
    /// that outlive their session are plain persistent ones.
    no_ttl_nodes: AtomicBool,
}

struct Contender {
    name: String,
    seq: i64,
    /// A shared (read) entry.
    shared: bool,
}

impl Contender {
    /// Its mode for the admission rule; an exclusive entry's limit is
    /// `limit` (the rule reads only our own).
    fn mode(&self, limit: u32) -> kit::Mode {
        if self.shared {
            kit::Mode::Shared
        } else {
            kit::Mode::Exclusive { limit }
        }
    }
}

/// The modes of a queue's contenders, for the admission rule.
fn modes(contenders: &[Contender], limit: u32) -> Vec<kit::Mode> {
    contenders.iter().map(|c| c.mode(limit)).collect()
}

/// What listing a node's children found.
enum Listing {
    Children(Vec<String>),
    /// The client may not read the node: why, naming the path.
    Unreadable(String),
}

/// The sequence number of a contender's node (ZooKeeper appends ten
/// digits) and whether it is shared; None for any other child, such as a
/// nested key's directory.
fn entry_of(name: &str) -> Option<(i64, bool)> {
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

fn seq_of(name: &str) -> Option<i64> {
    entry_of(name).map(|(seq, _)| seq)
}

/// The contenders among a lock directory's children, in lock order: by
/// sequence number, whatever the name (the counter is the directory's, so
/// the numbers are unique across recipes and modes).
fn contenders_of(names: Vec<String>) -> Vec<Contender> {
    let mut v: Vec<Contender> = names
        .into_iter()
        .filter_map(|name| entry_of(&name).map(|(seq, shared)| Contender { name, seq, shared }))
        .collect();
    v.sort_by_key(|c| c.seq);
    v
}

/// A lease id as 32 hex digits (kazoo's `uuid4().hex`).
fn hex_of(id: &str) -> String {
    id.chars().chain(std::iter::repeat('0')).take(32).collect()
}

fn uuid_of(id: &str) -> String {
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

/// What kind of failure a ZooKeeper error is.
fn kind(e: &zk::Error) -> Kind {
    match e {
        zk::Error::NoAuth | zk::Error::AuthFailed => Kind::Denied,
        _ => Kind::Outage,
    }
}

fn unreadable(key: &str, why: String) -> KeyStatus {
    KeyStatus {
        key: key.to_string(),
        limit: 1,
        holders: vec![],
        waiters: None,
        queue: vec![],
        unreadable: Some(why),
    }
}

fn zk_err(shown: &str, what: &str, e: zk::Error) -> anyhow::Error {
    kit::typed(kind(&e), format!("ZooKeeper {shown}: {what}: {e}"))
}

/// A dlock node's data: [`kit::Record`] with `N` the limit, and the
/// trailing fields ZooKeeper uses:
/// `dlock1|ID|LIMIT|USER|HOST|PID|SINCE[|TTL_MS[|TOKEN[|T]]]`. `TTL_MS` is
/// there on a node that outlives its session; `TOKEN` (may be empty) on one
/// that took over a `run`'s lease (`--lock-at-least`), whose fencing token
/// it keeps; `T` marks a server TTL node (whose `ephemeralOwner` clients
/// see as 0, as a plain persistent node's), which cannot change its TTL.
type NodeData = Record;

fn node_data(data: &[u8]) -> Option<NodeData> {
    Record::parse(std::str::from_utf8(data).ok()?, NField::Limit)
}

fn encode(d: &NodeData) -> Vec<u8> {
    d.encode(NField::Limit).into_bytes()
}

/// Whether a node outlives any session: persistent, or a TTL node (the
/// server shows clients the `ephemeralOwner` of both as 0).
fn outlives_session(stat: &zk::Stat) -> bool {
    stat.ephemeral_owner == 0
}

/// When a dlock node that outlives its session expires, in milliseconds
/// since the epoch on the server's clock; None for a node that lives with
/// its session, or one that is not dlock's (a foreign client's).
fn expiry_of(data: &[u8], stat: &zk::Stat) -> Option<i64> {
    if !outlives_session(stat) {
        return None;
    }
    let ttl = node_data(data)?.ttl_ms?;
    Some(stat.mtime.saturating_add(ttl.min(i64::MAX as u64) as i64))
}

fn ms_of(d: Duration) -> u64 {
    d.as_millis().max(1).min(u128::from(u64::MAX)) as u64
}

/// dlock's record in a node; a node that outlives its session belongs to
/// no running process, whatever its data says of one.
fn record_of(data: &[u8], stat: &zk::Stat) -> Option<Record> {
    let mut d = node_data(data)?;
    if outlives_session(stat) {
        d.live = None;
    }
    Some(d)
}

fn holder_from(data: &[u8], stat: &zk::Stat) -> (Holder, Option<u32>) {
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
fn fresh_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `zk://[auth@]hosts[/chroot][?recipe=curator|kazoo]`: (auth, hosts and
/// chroot, recipe).
fn parse_url(url: &str, shown: &str) -> Result<(Option<Vec<u8>>, String, Recipe)> {
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

impl ZkBackend {
    pub fn new(url: &str, timeout: Duration) -> Result<ZkBackend> {
        let shown = redact_url(url);
        let (auth, cluster, recipe) = parse_url(url, &shown)?;
        Ok(ZkBackend {
            shown,
            cluster,
            auth,
            timeout,
            recipe,
            client: Mutex::new(None),
            mine: Mutex::new(HashMap::new()),
            queued: Queued::default(),
            no_ttl_nodes: AtomicBool::new(false),
        })
    }
    /// Connect on first use, with a session timeout of `ttl`; and again
    /// once the session has ended (it expired while the server was out of
    /// reach, say: a waiter queues again in a new one).
    async fn client(&self, ttl: Duration) -> Result<Arc<zk::Client>> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.state().is_terminated() {
                return Ok(c.clone());
            }
            tracing::info!(
                event = "session_ended",
                state = ?c.state(),
                "the ZooKeeper session ended: starting a new one"
            );
        }
        let c = Arc::new(self.connect(ttl).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The session now, if there is one.
    async fn session(&self) -> Option<Arc<zk::Client>> {
        self.client.lock().await.clone()
    }

    /// A new session, with a session timeout of `ttl`.
    async fn connect(&self, ttl: Duration) -> Result<zk::Client> {
        let mut c = zk::Client::connector()
            .with_session_timeout(ttl.max(Duration::from_millis(100)))
            .with_connection_timeout(self.timeout)
            .with_fail_eagerly();
        if let Some(a) = &self.auth {
            c = c.with_auth("digest", a);
        }
        let service = format!("ZooKeeper {}", self.shown);
        let began = Instant::now();
        match tokio::time::timeout(self.timeout, c.connect(&self.cluster)).await {
            Ok(Ok(client)) => Ok(client),
            // The client gave up after its connection timeout (the
            // same bound): nothing answered.
            Ok(Err(e))
                if kind(&e) == Kind::Outage
                    && began.elapsed() + self.timeout / 10 >= self.timeout =>
            {
                Err(kit::no_answer(&service, "connect", self.timeout))
            }
            Ok(Err(e)) => {
                // A server past `maxClientCnxns` for our address
                // accepts the connection and closes it at once: up,
                // but full. A server that is down refuses it; one
                // that accepts and never answers (a wrong port, a
                // hung JVM) is down too.
                let k = match kind(&e) {
                    Kind::Outage if self.drops_us_at_once().await => Kind::Full,
                    k => k,
                };
                let why = if k == Kind::Full {
                    " (it accepts connections but closes ours at once: too many from this address?)"
                } else {
                    ""
                };
                Err(kit::typed(k, format!("{service}: connect: {e}{why}")))
            }
            Err(_) => Err(kit::no_answer(&service, "connect", self.timeout)),
        }
    }

    /// Whether a listed server accepts a TCP connection and closes it at
    /// once, before we say anything: what ZooKeeper does past its
    /// `maxClientCnxns` for our address (a reset). A server that keeps the
    /// connection open without answering is not full, it is down.
    async fn drops_us_at_once(&self) -> bool {
        use tokio::io::AsyncReadExt;
        let hosts = self.cluster.split('/').next().unwrap_or_default();
        let wait = (self.timeout / 4).min(Duration::from_secs(1));
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let c = tokio::net::TcpStream::connect(h);
            let mut tcp = match tokio::time::timeout(wait, c).await {
                Ok(Ok(tcp)) => tcp,
                // Accepted and reset so soon that the connect saw it (Linux
                // says EPIPE then).
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return true;
                }
                _ => continue,
            };
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(wait, tcp.read(&mut b)).await;
            if matches!(r, Ok(Ok(0) | Err(_))) {
                return true;
            }
        }
        false
    }

    fn acls(&self) -> zk::Acls<'static> {
        if self.auth.is_some() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        }
    }

    fn dir(ns: &str, key: &str) -> Result<String> {
        let p = format!("/{ns}/{key}");
        if p.split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..")
            || p.contains('\0')
        {
            return Err(usage(format!(
                "{p:?} is not a usable ZooKeeper path (empty, '.' or '..' components)"
            )));
        }
        Ok(p)
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, zk::Error>>,
    ) -> Result<T> {
        let service = format!("ZooKeeper {}", self.shown);
        kit::bounded(&service, what, self.timeout, f, kind).await
    }

    /// The children of a node (none if it does not exist), or why this
    /// client may not list them (its ACL).
    async fn list(&self, c: &zk::Client, path: &str) -> Result<Listing> {
        match tokio::time::timeout(self.timeout, c.list_children(path)).await {
            Ok(Ok(n)) => Ok(Listing::Children(n)),
            Ok(Err(zk::Error::NoNode)) => Ok(Listing::Children(vec![])),
            Ok(Err(e @ (zk::Error::NoAuth | zk::Error::AuthFailed))) => Ok(Listing::Unreadable(
                format!("cannot list {path}: {e} (its ACL does not let this client read it)"),
            )),
            Ok(Err(e)) => Err(zk_err(&self.shown, &format!("list {path}"), e)),
            Err(_) => Err(unavailable(format!(
                "ZooKeeper {}: list {path} timed out",
                self.shown
            ))),
        }
    }

    /// The contenders of a lock directory, in lock order.
    async fn contenders(&self, c: &zk::Client, dir: &str) -> Result<Vec<Contender>> {
        match self.list(c, dir).await? {
            Listing::Children(names) => Ok(contenders_of(names)),
            Listing::Unreadable(why) => {
                Err(Error::Unavailable(format!("ZooKeeper {}: {why}", self.shown)).into())
            }
        }
    }
}

impl ZkBackend {
    /// The status of one key from its lock directory's children; nodes
    /// found expired are deleted first.
    async fn key_status(
        &self,
        c: &zk::Client,
        key: String,
        dir: &str,
        mut contenders: Vec<Contender>,
    ) -> Result<KeyStatus> {
        let names: Vec<&str> = contenders.iter().map(|ct| ct.name.as_str()).collect();
        let (gone, _) = self.reap(c, dir, &names, &mut HashSet::new()).await?;
        if gone {
            contenders = self.contenders(c, dir).await?;
        }
        let limit = self.limit_of(c, dir, &contenders).await;
        let holders = self.holders(c, dir, &contenders, limit).await;
        let waiters = contenders.len().saturating_sub(holders.len()) as u64;
        Ok(KeyStatus {
            key,
            limit,
            holders,
            waiters: Some(waiters),
            queue: vec![],
            unreadable: None,
        })
    }

    /// A queue's `--limit`: the one its first exclusive contender was
    /// taken with (1 if it says none, or there is none).
    async fn limit_of(&self, c: &zk::Client, dir: &str, contenders: &[Contender]) -> u32 {
        let Some(first) = contenders.iter().find(|ct| !ct.shared) else {
            return 1;
        };
        match self
            .bounded("read", c.get_data(&format!("{dir}/{}", first.name)))
            .await
        {
            Ok((data, stat)) => holder_from(&data, &stat).1.unwrap_or(1).max(1),
            Err(_) => 1,
        }
    }

    /// The holders of a queue: the contenders the admission rule admits.
    async fn holders(
        &self,
        c: &zk::Client,
        dir: &str,
        contenders: &[Contender],
        limit: u32,
    ) -> Vec<Holder> {
        let n = kit::holding(&modes(contenders, limit));
        self.holders_among(c, dir, &contenders[..n]).await
    }

    /// What the nodes of `holding` (children of `dir`) say of their holders.
    async fn holders_among(&self, c: &zk::Client, dir: &str, holding: &[Contender]) -> Vec<Holder> {
        let mut out = Vec::new();
        for ct in holding {
            if let Ok(Ok((data, stat))) =
                tokio::time::timeout(self.timeout, c.get_data(&format!("{dir}/{}", ct.name))).await
            {
                let mut h = holder_from(&data, &stat).0;
                h.shared = ct.shared;
                out.push(h);
            }
        }
        out
    }

    /// The path of a lease's node: ours from this process, else found by
    /// the lease id in its name (in either recipe's naming, so a handle is
    /// found whichever `?recipe=` renews it).
    async fn find_mine(&self, c: &zk::Client, lease: &Lease) -> Result<Option<String>> {
        if let Some(p) = self
            .mine
            .lock()
            .await
            .get(&(lease.namespace.clone(), lease.key.clone()))
        {
            return Ok(Some(p.0.clone()));
        }
        let dir = Self::dir(&lease.namespace, &lease.key)?;
        let tags = [Recipe::Curator, Recipe::Kazoo].map(|r| r.tag(&lease.id, lease.shared));
        Ok(self
            .contenders(c, &dir)
            .await?
            .into_iter()
            .find(|ct| tags.iter().any(|t| ct.name.starts_with(t.as_str())))
            .map(|ct| format!("{dir}/{}", ct.name)))
    }

    /// The server's clock now (milliseconds since the epoch): the `mtime`
    /// of a write made now, to the lock directory `dir` (its data written
    /// back unchanged). None if this client may not write it.
    async fn server_now(&self, c: &zk::Client, dir: &str) -> Option<i64> {
        for _ in 0..3 {
            let (data, stat) = tokio::time::timeout(self.timeout, c.get_data(dir))
                .await
                .ok()?
                .ok()?;
            match tokio::time::timeout(self.timeout, c.set_data(dir, &data, Some(stat.version)))
                .await
                .ok()?
            {
                Ok(s) => return Some(s.mtime),
                Err(zk::Error::BadVersion) => continue,
                Err(e) => {
                    tracing::debug!("cannot read the server's clock by writing {dir}: {e}");
                    return None;
                }
            }
        }
        None
    }

    /// Delete the nodes among `names` (children of `dir`) that outlive
    /// their session and have gone unmodified for their TTL, judged on the
    /// server's clock; each only if unchanged since it was judged.
    /// `lasting` remembers the names that need no second look (ephemeral
    /// nodes, foreign clients' nodes). Returns whether any node went or
    /// changed (list again), and how long until the next one expires.
    async fn reap(
        &self,
        c: &zk::Client,
        dir: &str,
        names: &[&str],
        lasting: &mut HashSet<String>,
    ) -> Result<(bool, Option<Duration>)> {
        let mut changed = false;
        let mut expiring = Vec::new();
        for n in names {
            if lasting.contains(*n) {
                continue;
            }
            let path = format!("{dir}/{n}");
            match tokio::time::timeout(self.timeout, c.get_data(&path)).await {
                Ok(Ok((data, stat))) => match expiry_of(&data, &stat) {
                    Some(at) => expiring.push((path, at, stat.version)),
                    None => {
                        lasting.insert(n.to_string());
                    }
                },
                Ok(Err(zk::Error::NoNode)) => changed = true,
                // Not ours to judge (an ACL): leave it.
                Ok(Err(_)) => {
                    lasting.insert(n.to_string());
                }
                Err(_) => {
                    return Err(kit::no_answer(
                        &format!("ZooKeeper {}", self.shown),
                        &format!("read {path}"),
                        self.timeout,
                    ));
                }
            }
        }
        if expiring.is_empty() {
            return Ok((changed, None));
        }
        let Some(now) = self.server_now(c, dir).await else {
            return Ok((changed, None));
        };
        let mut next: Option<i64> = None;
        for (path, at, version) in expiring {
            if now < at {
                next = Some(next.map_or(at - now, |n| n.min(at - now)));
                continue;
            }
            match tokio::time::timeout(self.timeout, c.delete(&path, Some(version))).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        event = "expired",
                        node = path,
                        "deleted a lock node whose TTL ran out on the server's clock"
                    );
                    changed = true;
                }
                // Gone, or renewed since it was judged: look again.
                Ok(Err(zk::Error::NoNode | zk::Error::BadVersion)) => changed = true,
                Ok(Err(e)) => tracing::debug!("cannot delete expired {path}: {e}"),
                Err(_) => {}
            }
        }
        Ok((
            changed,
            next.map(|ms| Duration::from_millis(ms.max(0) as u64)),
        ))
    }

    /// Create a persistent sequential node at `prefix` that expires after
    /// `ttl` unmodified: a TTL node where the server has them, else a plain
    /// persistent node whose TTL (in its data) dlock judges.
    /// Its data is `data` marked as a TTL node's or not; returned with it.
    async fn create_outliving(
        &self,
        c: &zk::Client,
        prefix: &str,
        mut data: NodeData,
        ttl: Duration,
    ) -> Result<(zk::Stat, zk::CreateSequence, Vec<u8>)> {
        let acls = self.acls();
        let what = format!("create a lock node at {prefix}");
        if !self.no_ttl_nodes.load(Ordering::Relaxed) {
            let opts = zk::CreateMode::PersistentSequential
                .with_acls(acls)
                .with_ttl(ttl);
            data.ttl_node = true;
            let bytes = encode(&data);
            let created = self
                .bounded(&what, async {
                    match c.create(prefix, &bytes, &opts).await {
                        // No TTL nodes on this server.
                        Err(zk::Error::Unimplemented) => Ok(None),
                        r => r.map(Some),
                    }
                })
                .await?;
            if let Some((stat, seq)) = created {
                return Ok((stat, seq, bytes));
            }
            tracing::debug!("the server has no TTL nodes: dlock judges expiry itself");
            self.no_ttl_nodes.store(true, Ordering::Relaxed);
        }
        let opts = zk::CreateMode::PersistentSequential.with_acls(acls);
        data.ttl_node = false;
        let bytes = encode(&data);
        let (stat, seq) = self.bounded(&what, c.create(prefix, &bytes, &opts)).await?;
        Ok((stat, seq, bytes))
    }

    /// Rewrite a node that outlives its session, unchanged, so that its
    /// TTL starts again (a handle's node while it waits). When the write
    /// was sent, or None if the node is gone.
    async fn touch(&self, c: &zk::Client, path: &str, data: &[u8]) -> Result<Option<Instant>> {
        let t = Instant::now();
        match tokio::time::timeout(self.timeout, c.set_data(path, data, None)).await {
            Ok(Ok(_)) => Ok(Some(t)),
            Ok(Err(zk::Error::NoNode)) => Ok(None),
            Ok(Err(e)) => Err(zk_err(&self.shown, &format!("touch {path}"), e)),
            Err(_) => Err(kit::no_answer(
                &format!("ZooKeeper {}", self.shown),
                &format!("touch {path}"),
                self.timeout,
            )),
        }
    }

    /// Delete the queue nodes of attempts that were interrupted or failed:
    /// every child of a registered directory that carries our prefix. An
    /// outage ends it with its error: what is left stays registered, for
    /// the next attempt (whose node must never queue behind our own).
    async fn drop_queued(&self, c: &zk::Client) -> Result<()> {
        let mut left = self.queued.take().into_iter();
        while let Some((dir, tag)) = left.next() {
            let dropped = async {
                let contenders = self.contenders(c, &dir).await?;
                for ct in contenders.iter().filter(|ct| ct.name.starts_with(&tag)) {
                    let path = format!("{dir}/{}", ct.name);
                    self.bounded("delete an earlier queue node", async {
                        match c.delete(&path, None).await {
                            Err(zk::Error::NoNode) => Ok(()),
                            r => r,
                        }
                    })
                    .await?;
                    tracing::info!(
                        event = "dropped_queued",
                        node = path,
                        "deleted the queue node of an earlier attempt"
                    );
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            if let Err(e) = dropped {
                self.queued.add((dir, tag));
                left.for_each(|q| self.queued.add(q));
                return Err(e);
            }
        }
        Ok(())
    }
}

impl ZkBackend {
    /// Release our node at `path` through the session `c`.
    async fn release_on(&self, c: &zk::Client, path: &str) -> Result<bool> {
        let what = format!("release {path}");
        let timed_out = || {
            unavailable(format!(
                "ZooKeeper {}: release {path} timed out",
                self.shown
            ))
        };
        // A node already gone (broken with --force, session expired,
        // deleted when found expired) is a lease we no longer held: not an
        // error.
        let mut version = None;
        let mut ours = true;
        for _ in 0..5 {
            let (data, stat) = match tokio::time::timeout(self.timeout, c.get_data(path)).await {
                Ok(Ok(r)) => r,
                Ok(Err(zk::Error::NoNode)) => return Ok(false),
                Ok(Err(e)) => return Err(zk_err(&self.shown, &what, e)),
                Err(_) => return Err(timed_out()),
            };
            let Some(at) = expiry_of(&data, &stat) else {
                break;
            };
            // A node that outlives its session may have expired without
            // anyone deleting it yet: judge on the server's clock, by
            // writing it (unchanged) and reading the write's time.
            match tokio::time::timeout(self.timeout, c.set_data(path, &data, Some(stat.version)))
                .await
            {
                Ok(Ok(s)) => {
                    ours = s.mtime <= at;
                    version = Some(s.version);
                    break;
                }
                Ok(Err(zk::Error::NoNode)) => return Ok(false),
                Ok(Err(zk::Error::BadVersion)) => continue,
                Ok(Err(e)) => return Err(zk_err(&self.shown, &what, e)),
                Err(_) => return Err(timed_out()),
            }
        }
        match tokio::time::timeout(self.timeout, c.delete(path, version)).await {
            Ok(Ok(())) => Ok(ours),
            Ok(Err(zk::Error::NoNode | zk::Error::BadVersion)) => Ok(false),
            Ok(Err(e)) => Err(zk_err(&self.shown, &what, e)),
            Err(_) => Err(timed_out()),
        }
    }

    /// Delete our node at `path` through a session of its own to each
    /// other listed server at once (the first that answers does it): for a
    /// release whose session's server does not answer. None if no server
    /// answered; a node already gone counts as deleted (the first try may
    /// have done it).
    async fn delete_elsewhere(&self, path: &str) -> Option<()> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let (hosts, chroot) = match self.cluster.find('/') {
            Some(i) => self.cluster.split_at(i),
            None => (self.cluster.as_str(), ""),
        };
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if hosts.len() < 2 {
            return None;
        }
        tracing::warn!(
            event = "release_elsewhere",
            node = path,
            "the server of our session does not answer: deleting our node through another"
        );
        let mut tries: FuturesUnordered<_> = hosts
            .iter()
            .map(|h| async move {
                let mut c = zk::Client::connector()
                    .with_session_timeout(Duration::from_secs(2))
                    .with_connection_timeout(self.timeout)
                    .with_fail_eagerly();
                if let Some(a) = &self.auth {
                    c = c.with_auth("digest", a);
                }
                let one = format!("{h}{chroot}");
                let c = tokio::time::timeout(self.timeout, c.connect(&one))
                    .await
                    .ok()?
                    .ok()?;
                match tokio::time::timeout(self.timeout, c.delete(path, None)).await {
                    Ok(Ok(()) | Err(zk::Error::NoNode)) => Some(()),
                    _ => None,
                }
            })
            .collect();
        while let Some(r) = tries.next().await {
            if r.is_some() {
                return r;
            }
        }
        None
    }
}

/// One `acquire`'s node in its lock directory, waiting its turn.
struct ZkTurn<'a> {
    b: &'a ZkBackend,
    c: Arc<zk::Client>,
    spec: &'a LockSpec,
    me: &'a Owner,
    dir: String,
    name: String,
    path: String,
    /// Our entry in the backend's registry of queue entries.
    entry: (String, String),
    token: u64,
    /// Our node's data, written back unchanged to touch a handle's node.
    data: Vec<u8>,
    /// A handle's node (it outlives the session, and lives from its last
    /// write: `touched`).
    handle: bool,
    touched: Instant,
    /// When the listing that found us holding was sent.
    checked: Instant,
    waited: bool,
    /// Nodes that need no look for expiry (see `reap`).
    lasting: HashSet<String>,
    /// The records of nodes ahead, read once each: (record, version).
    records: HashMap<String, (Option<Record>, i32)>,
    /// When the next node ahead expires.
    next_expiry: Option<Duration>,
}

impl ZkTurn<'_> {
    /// Rewrite a handle's node so that its TTL starts again.
    async fn touch(&mut self) -> Result<()> {
        match self.b.touch(&self.c, &self.path, &self.data).await? {
            Some(t) => self.touched = t,
            None => return Err(queue::Turn::vanished(self).await),
        }
        Ok(())
    }
}

#[async_trait]
impl queue::Turn for ZkTurn<'_> {
    type Entry = Contender;

    async fn entries(&mut self) -> Result<(Vec<Contender>, Option<usize>)> {
        self.checked = Instant::now();
        let contenders = self.b.contenders(&self.c, &self.dir).await?;
        let ours = contenders.iter().position(|ct| ct.name == self.name);
        Ok((contenders, ours))
    }

    fn mode(&self, ct: &Contender) -> kit::Mode {
        ct.mode(self.spec.limit)
    }

    async fn record(&mut self, ct: &Contender) -> Result<Option<Record>> {
        if let Some((r, _)) = self.records.get(&ct.name) {
            return Ok(r.clone());
        }
        let path = format!("{}/{}", self.dir, ct.name);
        match tokio::time::timeout(self.b.timeout, self.c.get_data(&path)).await {
            Ok(Ok((data, stat))) => {
                // A node's liveness never changes (one that outlives its
                // session has none): read once.
                let r = record_of(&data, &stat);
                if !outlives_session(&stat) {
                    // An ephemeral node: never expires by its TTL (`reap`).
                    self.lasting.insert(ct.name.clone());
                }
                self.records
                    .insert(ct.name.clone(), (r.clone(), stat.version));
                Ok(r)
            }
            // Gone, or not ours to read (an ACL).
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(kit::no_answer(
                &format!("ZooKeeper {}", self.b.shown),
                &format!("read {path}"),
                self.b.timeout,
            )),
        }
    }

    async fn remove_dead(&mut self, ct: &Contender) -> Result<bool> {
        let Some((_, version)) = self.records.remove(&ct.name) else {
            return Ok(false);
        };
        let path = format!("{}/{}", self.dir, ct.name);
        match tokio::time::timeout(self.b.timeout, self.c.delete(&path, Some(version))).await {
            // Gone, or changed since it was read: look again.
            Ok(Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion)) => Ok(true),
            Ok(Err(e)) => Err(zk_err(&self.b.shown, &format!("delete {path}"), e)),
            Err(_) => Err(kit::no_answer(
                &format!("ZooKeeper {}", self.b.shown),
                &format!("delete {path}"),
                self.b.timeout,
            )),
        }
    }

    async fn vanished(&mut self) -> anyhow::Error {
        unavailable(format!(
            "ZooKeeper {}: our queue node {} vanished (the session expired, or it went \
             untouched past its TTL?)",
            self.b.shown, self.path
        ))
    }

    async fn admitted(&mut self, _: &[Contender], _: usize) -> Result<Lease> {
        if self.handle && self.waited {
            // Its full TTL from now on, not what the wait left of it.
            self.touch().await?;
        }
        let spec = self.spec;
        self.b.mine.lock().await.insert(
            (spec.namespace.clone(), spec.key.clone()),
            (self.path.clone(), self.handle),
        );
        self.b.queued.resolved(&self.entry);
        let (ttl, granted_at) = if self.handle {
            (spec.ttl, self.touched)
        } else {
            (self.c.session_timeout().min(spec.ttl), self.checked)
        };
        Ok(Lease {
            namespace: spec.namespace.clone(),
            key: spec.key.clone(),
            token: self.token,
            id: self.me.id.clone(),
            ttl,
            granted_at,
            shared: spec.shared,
            slot: spec.fixed_slot(),
        })
    }

    /// A node ahead of us whose TTL ran out (a handle nobody renewed, a
    /// `--lock-at-least` lapse) is deleted; then look again.
    async fn tidy(&mut self, ahead: &[Contender]) -> Result<bool> {
        let names: Vec<&str> = ahead.iter().map(|ct| ct.name.as_str()).collect();
        let (changed, next_expiry) = self
            .b
            .reap(&self.c, &self.dir, &names, &mut self.lasting)
            .await?;
        self.next_expiry = next_expiry;
        Ok(changed)
    }

    async fn give_up(&mut self, holding: &[Contender]) -> Result<Vec<Holder>> {
        let holders = self.b.holders_among(&self.c, &self.dir, holding).await;
        if self
            .b
            .bounded("delete", self.c.delete(&self.path, None))
            .await
            .is_ok()
        {
            self.b.queued.resolved(&self.entry);
        }
        Ok(holders)
    }

    async fn wait(&mut self, blocker: &Contender, deadline: Option<Instant>) -> Result<()> {
        let ttl = self.spec.ttl;
        if self.handle && self.touched.elapsed() >= ttl / 3 {
            self.touch().await?;
        }
        let pred = format!("{}/{}", self.dir, blocker.name);
        let watcher = match self
            .b
            .bounded(&format!("watch {pred}"), self.c.check_and_watch_stat(&pred))
            .await?
        {
            (Some(_), w) => w,
            (None, _) => return Ok(()),
        };
        // Wake on the blocker's change, the deadline, or a periodic
        // re-check (a session event can end the watch silently; a node
        // ahead may expire; a handle's own node needs touching).
        let mut recheck = Instant::now() + Duration::from_secs(2);
        if let Some(d) = self.next_expiry {
            recheck = recheck.min(Instant::now() + d + Duration::from_millis(20));
        }
        if self.handle {
            recheck = recheck.min(self.touched + ttl / 3);
        }
        let until = deadline.map_or(recheck, |d| d.min(recheck));
        let _ = tokio::time::timeout_at(until.into(), watcher.changed()).await;
        self.waited = true;
        Ok(())
    }
}

#[async_trait]
impl Backend for ZkBackend {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn shares(&self) -> bool {
        true
    }

    async fn effective_ttl(&self, ttl: Duration) -> Result<Duration> {
        let session = self.client(ttl).await?;
        let c = &*session;
        let negotiated = c.session_timeout();
        if negotiated < ttl {
            tracing::warn!(
                "the ZooKeeper server clamped the session timeout to {negotiated:?}: the lease follows it"
            );
        }
        Ok(negotiated.min(ttl))
    }

    async fn acquire(
        &self,
        spec: &LockSpec,
        me: &Owner,
        deadline: Option<Instant>,
    ) -> Result<Attempt> {
        let session = self.client(spec.ttl).await?;
        let c = &*session;
        let dir = Self::dir(&spec.namespace, &spec.key)?;
        // What an earlier, failed attempt left in this queue goes first: our
        // own node ahead of us would keep us waiting for ourselves.
        self.drop_queued(c).await?;
        let acls = self.acls();
        let parent = zk::CreateMode::Persistent.with_acls(acls);
        self.bounded(&format!("create the lock directory {dir}"), async {
            match c.mkdir(&dir, &parent).await {
                Err(zk::Error::NodeExists) => Ok(()),
                r => r,
            }
        })
        .await?;
        let handle = me.kind == LeaseKind::Handle;
        let data = NodeData {
            limit: Some(spec.limit),
            ttl_ms: handle.then(|| ms_of(spec.ttl)),
            ..Record::new(me.id.clone(), me)
        };
        let tag = self.recipe.tag(&me.id, spec.shared);
        let prefix = format!("{dir}/{tag}");
        let entry = (dir.clone(), tag.clone());
        self.queued.add(entry.clone());
        // A handle's node lives from the last write to it: when that write
        // was sent is when its lease can have started, at the earliest.
        let touched = Instant::now();
        let (stat, seq, data) = if handle {
            self.create_outliving(c, &prefix, data, spec.ttl).await?
        } else {
            let data = encode(&data);
            let opts = zk::CreateMode::EphemeralSequential.with_acls(acls);
            let (stat, seq) = self
                .bounded(
                    &format!("create a lock node in {dir}"),
                    c.create(&prefix, &data, &opts),
                )
                .await?;
            (stat, seq, data)
        };
        let name = format!("{tag}{seq}");
        let path = format!("{dir}/{name}");
        let mut turn = ZkTurn {
            b: self,
            c: session.clone(),
            spec,
            me,
            dir,
            name,
            path,
            entry,
            token: stat.czxid as u64,
            data,
            handle,
            touched,
            checked: Instant::now(),
            waited: false,
            lasting: HashSet::new(),
            records: HashMap::new(),
            next_expiry: None,
        };
        queue::wait_turn(&mut turn, spec.mode(), deadline).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        let session = self.client(ttl).await?;
        let c = &*session;
        let Some(path) = self.find_mine(c, lease).await? else {
            return Ok(Renewal::Lost);
        };
        let what = format!("renew {path}");
        for _ in 0..5 {
            let (data, stat) = match tokio::time::timeout(self.timeout, c.get_data(&path)).await {
                Ok(Ok(r)) => r,
                Ok(Err(zk::Error::NoNode | zk::Error::SessionExpired)) => {
                    return Ok(Renewal::Lost);
                }
                Ok(Err(e)) => return Err(zk_err(&self.shown, &what, e)),
                Err(_) => {
                    return Err(unavailable(format!(
                        "ZooKeeper {}: renew timed out",
                        self.shown
                    )));
                }
            };
            // A run's ephemeral node lives while the session does.
            if !outlives_session(&stat) {
                return Ok(Renewal::Renewed);
            }
            // A TTL node restarts the TTL it was created with when touched;
            // ZooKeeper cannot change it, so a different one is refused,
            // never ignored. A plain node carries its TTL in its data.
            let parsed = node_data(&data);
            let ttl_node = parsed.as_ref().is_some_and(|d| d.ttl_node);
            if ttl_node && ttl != lease.ttl {
                return Err(usage(format!(
                    "ZooKeeper cannot change a TTL node's TTL: the lease of {:?} was created with {}, \
                     and renewing restarts that; renew without --ttl (or with --ttl {}), or acquire \
                     anew with the TTL you want",
                    lease.key,
                    humantime::format_duration(lease.ttl),
                    humantime::format_duration(lease.ttl)
                )));
            }
            let expiry = expiry_of(&data, &stat);
            let new = match parsed {
                Some(mut d) if !ttl_node => {
                    d.ttl_ms = Some(ms_of(ttl));
                    encode(&d)
                }
                _ => data.clone(),
            };
            match tokio::time::timeout(self.timeout, c.set_data(&path, &new, Some(stat.version)))
                .await
            {
                // Written after its TTL ran out (nobody had deleted it
                // yet): the lease had ended, so this is no renewal.
                Ok(Ok(s)) if expiry.is_some_and(|at| s.mtime > at) => {
                    let _ =
                        tokio::time::timeout(self.timeout, c.delete(&path, Some(s.version))).await;
                    return Ok(Renewal::Lost);
                }
                Ok(Ok(_)) => return Ok(Renewal::Renewed),
                Ok(Err(zk::Error::NoNode)) => return Ok(Renewal::Lost),
                Ok(Err(zk::Error::BadVersion)) => continue,
                Ok(Err(e)) => return Err(zk_err(&self.shown, &what, e)),
                Err(_) => {
                    return Err(unavailable(format!(
                        "ZooKeeper {}: renew timed out",
                        self.shown
                    )));
                }
            }
        }
        Err(unavailable(format!(
            "ZooKeeper {}: renew {path}: the node kept changing under us",
            self.shown
        )))
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let session = self.client(lease.ttl).await?;
        let c = &*session;
        let Some(path) = self.find_mine(c, lease).await? else {
            return Ok(false);
        };
        let ours = self
            .mine
            .lock()
            .await
            .remove(&(lease.namespace.clone(), lease.key.clone()));
        match self.release_on(c, &path).await {
            // The server of our session does not answer (frozen, cut off):
            // our session's node is deleted through another server.
            Err(e)
                if matches!(ours, Some((_, false)))
                    && crate::error::retry_of(&e) == crate::error::Retry::Outage =>
            {
                match self.delete_elsewhere(&path).await {
                    Some(()) => Ok(true),
                    None => Err(e),
                }
            }
            r => r,
        }
    }

    /// `--lock-at-least`: our ephemeral node is replaced, in one
    /// transaction, by a node that outlives the session and expires after
    /// `remaining`, with the same sequence number (so it keeps our place
    /// ahead of every waiter, for Curator and kazoo too) and our fencing
    /// token in its data.
    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        let Some(session) = self.session().await else {
            return Ok(false);
        };
        let c = &*session;
        let k = (lease.namespace.clone(), lease.key.clone());
        let Some((path, false)) = self.mine.lock().await.get(&k).cloned() else {
            return Ok(false);
        };
        let (data, stat) = self.bounded("read", c.get_data(&path)).await?;
        let Some(mut d) = node_data(&data) else {
            return Ok(false);
        };
        let Some((dir, name)) = path.rsplit_once('/') else {
            return Ok(false);
        };
        let Some((_, shared)) = entry_of(name) else {
            return Ok(false);
        };
        if outlives_session(&stat) {
            return Ok(false);
        }
        let seq = &name[name.len() - 10..];
        d.ttl_ms = Some(ms_of(remaining));
        d.token = Some(lease.token);
        // It outlives this process by design: no process's liveness.
        d.live = None;
        let new_path = format!("{dir}/{}{seq}", self.recipe.tag(&fresh_id(), shared));
        let acls = self.acls();
        for with_ttl in [true, false] {
            if with_ttl && self.no_ttl_nodes.load(Ordering::Relaxed) {
                continue;
            }
            let opts = zk::CreateMode::Persistent.with_acls(acls);
            let opts = if with_ttl {
                opts.with_ttl(remaining)
            } else {
                opts
            };
            d.ttl_node = with_ttl;
            let mut m = c.new_multi_writer();
            m.add_create(&new_path, &encode(&d), &opts)?;
            m.add_delete(&path, Some(stat.version))?;
            match tokio::time::timeout(self.timeout, m.commit()).await {
                Ok(Ok(_)) => {
                    self.mine.lock().await.remove(&k);
                    return Ok(true);
                }
                Ok(Err(e)) => {
                    let e = zk::Error::from(e);
                    if with_ttl && e == zk::Error::Unimplemented {
                        self.no_ttl_nodes.store(true, Ordering::Relaxed);
                        continue;
                    }
                    tracing::debug!("cannot leave {path} to lapse: {e}");
                    return Ok(false);
                }
                Err(_) => return Ok(false),
            }
        }
        Ok(false)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let session = self.client(Duration::from_secs(30)).await?;
        let c = &*session;
        let dir = Self::dir(namespace, key)?;
        let contenders = self.contenders(c, &dir).await?;
        let mut n = 0;
        // Break the holders, as the admission rule counts them (every
        // shared one; exclusive ones by their own limit, else one);
        // waiters stay queued.
        let limit = self.limit_of(c, &dir, &contenders).await;
        let holding = kit::holding(&modes(&contenders, limit));
        for ct in &contenders[..holding] {
            if self
                .bounded("delete", c.delete(&format!("{dir}/{}", ct.name), None))
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let session = self.client(Duration::from_secs(30)).await?;
        let c = &*session;
        let mut out = Vec::new();
        if !keys.is_empty() {
            for k in keys {
                let dir = Self::dir(namespace, k)?;
                out.push(match self.list(c, &dir).await? {
                    Listing::Children(names) => {
                        self.key_status(c, k.clone(), &dir, contenders_of(names))
                            .await?
                    }
                    Listing::Unreadable(why) => unreadable(k, why),
                });
            }
            return Ok(out);
        }
        // Every held key of the namespace, nested ones (`a/b`) included: a
        // lock directory's children that are not contenders are the
        // directories of nested keys. A key this client may not read is
        // listed as unreadable; the others are listed all the same.
        let root = format!("/{namespace}");
        let mut todo: Vec<String> = match self.list(c, &root).await? {
            Listing::Children(names) => names,
            Listing::Unreadable(why) => {
                return Err(Error::Unavailable(format!("ZooKeeper {}: {why}", self.shown)).into());
            }
        };
        while let Some(k) = todo.pop() {
            let dir = format!("{root}/{k}");
            match self.list(c, &dir).await? {
                Listing::Children(names) => {
                    let (mine, nested): (Vec<String>, Vec<String>) =
                        names.into_iter().partition(|n| seq_of(n).is_some());
                    todo.extend(nested.into_iter().map(|n| format!("{k}/{n}")));
                    let contenders = contenders_of(mine);
                    if contenders.is_empty() {
                        continue;
                    }
                    let st = self.key_status(c, k, &dir, contenders).await?;
                    if !st.holders.is_empty() {
                        out.push(st);
                    }
                }
                Listing::Unreadable(why) => out.push(unreadable(&k, why)),
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn ping(&self) -> Result<PingInfo> {
        let session = self.client(Duration::from_secs(30)).await?;
        let c = &*session;
        self.bounded("ping", c.check_stat("/")).await?;
        Ok(PingInfo {
            kind: "zookeeper",
            version: format!("session {:?}", c.session_timeout()),
            detail: self.shown.clone(),
        })
    }

    async fn doctor(&self, ttl: Duration, timeout: Duration) -> Vec<Check> {
        let mut out = Vec::new();
        if let Ok(session) = self.client(ttl).await {
            let c = &*session;
            let granted = c.session_timeout();
            if granted > ttl {
                out.push(
                    Check::new(
                        Level::Warn,
                        "session",
                        format!(
                            "the server raises the session timeout to {granted:?} (its minSessionTimeout) where --ttl {ttl:?} was asked: a crashed holder's lock lingers that long"
                        ),
                    )
                    .fix("choose a --ttl of at least minSessionTimeout (default 2 x tickTime), or lower it in zoo.cfg"),
                );
            } else if granted == ttl {
                out.push(Check::ok(
                    "session",
                    format!("the server grants the session timeout asked, {granted:?}"),
                ));
            }
        }
        // Every member of the ensemble, each on its own.
        let hosts = self.cluster.split('/').next().unwrap_or_default();
        let members: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        let mut answered = 0;
        for m in &members {
            let mut c = zk::Client::connector()
                .with_session_timeout(ttl.max(Duration::from_millis(100)))
                .with_connection_timeout(timeout)
                .with_fail_eagerly();
            if let Some(a) = &self.auth {
                c = c.with_auth("digest", a);
            }
            match tokio::time::timeout(timeout, c.connect(m)).await {
                Ok(Ok(_client)) => answered += 1,
                Ok(Err(e)) => out.push(
                    Check::new(Level::Fail, "member", format!("{m} does not answer: {e}")).fix(
                        "bring it back: every member down is one fault less the ensemble survives",
                    ),
                ),
                Err(_) => out.push(
                    Check::new(
                        Level::Fail,
                        "member",
                        format!("{m} did not answer within {timeout:?}"),
                    )
                    .fix(
                        "bring it back: every member down is one fault less the ensemble survives",
                    ),
                ),
            }
        }
        if answered == members.len() {
            out.push(Check::ok(
                "members",
                format!("all {answered} listed servers answer"),
            ));
        }
        if members.len() == 1 {
            out.push(
                Check::new(
                    Level::Info,
                    "members",
                    "one server is listed: if it is part of an ensemble, list them all so dlock can fail over",
                ),
            );
        }
        out
    }

    async fn close(&self) {
        let Some(session) = self.session().await else {
            return;
        };
        let c = &*session;
        // A waiter that was interrupted or gave up leaves no queue entry to
        // hold up the waiters behind it.
        let _ = self.drop_queued(c).await;
        // Delete what we still hold before the session goes, so waiters
        // wake now rather than when the session expires.
        let mine: Vec<String> = self
            .mine
            .lock()
            .await
            .drain()
            .filter(|(_, (_, handle))| !handle)
            .map(|(_, (p, _))| p)
            .collect();
        for p in mine {
            let _ = tokio::time::timeout(self.timeout, c.delete(&p, None)).await;
        }
    }
}

#[cfg(test)]
mod tests {
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
