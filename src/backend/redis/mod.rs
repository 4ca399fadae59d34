//! Redis: one server, or Redlock over several independent servers.
//!
//! Layout, shared with redis-py's `Lock` and redsync: the lock is the string
//! key `NAMESPACE:KEY`, taken with the equivalent of `SET key value NX PX ttl`
//! and renewed or released only by Lua scripts that compare the value first.
//! A redis-py or redsync client on the same key therefore excludes dlock and
//! is excluded by it. dlock's value is `dlock1|ID|TOKEN|USER|HOST|PID|SINCE`,
//! so `status` can say who holds it; any other value shows as a foreign
//! holder. Beside it, in the same cluster slot (`{NAMESPACE:KEY}` hash tag):
//! `:fence` (the fencing counter), `:sem` (a sorted set of semaphore holders
//! scored by expiry, for `--limit` > 1; each record ends with its slot),
//! `:limit` (the semaphore's `--limit`, for `status`), `:shared` (the same
//! as `:sem` for shared holders), `:waiters` (a sorted set of waiting
//! processes scored by when each entry lapses), `:queue` (the line: the
//! same entries scored by arrival ticket), `:qrec` (a hash of the waiters'
//! records), and the pub/sub channels `:released:ENTRY` (a waiter's own)
//! and `:released`.
//!
//! Shared locks (`--shared`): each reader is a member of the sorted set
//! `{NAMESPACE:KEY}:shared`, valued like the main key (`dlock1|ID|TOKEN|...`)
//! and scored by its expiry, so a killed reader's share lapses alone after
//! its TTL (every script prunes expired members by the server's `TIME`).
//! While any reader holds, the main key holds the guard value
//! `dlock-shared`, lasting exactly as long as the last reader (the scripts
//! reset its `PX` at every change, and delete it with the last reader): so
//! a SET-NX client (redis-py `Lock`, redsync) is kept out by dlock's
//! readers, as by its writers, and any other value in the main key keeps
//! readers out.
//!
//! Fair queues: admission (in `ACQUIRE`, atomically) is the server-side
//! spelling of `kit::admits`. A holder of the main key other than the guard
//! keeps every request out; otherwise the entries ahead are the semaphore
//! and shared members, then the live entries of the line before ours (all
//! of them for a request not in line yet). A request that is kept out with
//! `join` takes its place in the same script: a ticket (one server: the
//! next number; Redlock: the client's, the same on every server, see
//! `poll.rs`), its record, and its `:waiters` entry, which every attempt
//! renews; an entry whose `:waiters` entry lapsed (2 s) is out of the line.
//! The `:waiters` entries are still the bare waiter id for a writer and
//! `s|ID` for a reader, as older versions wrote them: an older dlock counts
//! our writers ahead of its readers, and we count its waiting writers (in
//! `:waiters` but not in line) ahead of ours. Every acquisition, shared or
//! not, takes its token from `:fence`. At every release, when the last
//! reader leaves, and when a waiter leaves the line or is found dead, the
//! entries that may go in now are told, each on its own channel
//! `:released:ENTRY`, which only it listens to: nobody else wakes. The
//! same names go out on `:released` (`q:ENTRY,...`) for older builds,
//! which listen there.
//!
//! Expiry is judged by the Redis server's clock (`TIME` inside the scripts,
//! and `PX`), never ours.
//!
//! Redlock (several URLs): every step goes to all servers in parallel with a
//! per-server timeout much shorter than the TTL, and counts only with a
//! majority. The fencing token is the highest counter seen on the granting
//! majority plus one, written back to a majority before the child starts:
//! any two majorities share a server, so tokens keep rising while servers
//! keep their data. Shared leases take the same two rounds: a reader holds
//! where a majority has its member (and so the guard).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::{BoxStream, SelectAll};

use redis::{Script, Value};
use tokio::sync::Mutex;

mod conn;
mod doctor;
mod errors;
mod poll;
mod scripts;
mod status;

use super::kit::Kind;
use super::{Backend, KeyStatus, Lease, PingInfo, Poll, Renewal, Waiting};
use conn::{Conn, Node};
use errors::{call, kind, why_failed};
pub use scripts::LUA_COMMON;
use scripts::{FORCE, LEAVE, RELEASE, RENEW, SHARED_RELEASE, SHARED_RENEW};

pub struct RedisBackend {
    nodes: Vec<Node>,
    quorum: usize,
    op_timeout: Duration,
    /// The keys this process waits in line for (its entries in the waiters
    /// sets and the lines), so that `close` can take them out.
    waiting: Waiting,
    /// Redlock: this process's ticket in each key's line, the same on every
    /// server (see [`poll`]).
    tickets: std::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
    /// Subscriptions for waiting: (channel key, merged message streams,
    /// each message with the index of the server it came from).
    subs: Mutex<Option<(String, Subs)>>,
}

/// The messages of every server's subscription, each with its server's
/// index in `nodes`.
type Subs = SelectAll<BoxStream<'static, (usize, redis::Msg)>>;

/// A key's Redis keys: the lock itself, and beside it in its cluster slot
/// (the `{NS:KEY}` hash tag) the rest (see the module's note).
struct Keys {
    main: String,
    fence: String,
    sem: String,
    chan: String,
    waiters: String,
    shared: String,
    queue: String,
    qrec: String,
    limit: String,
}

fn keys(ns: &str, key: &str) -> Keys {
    let main = format!("{ns}:{key}");
    Keys {
        fence: format!("{{{main}}}:fence"),
        sem: format!("{{{main}}}:sem"),
        waiters: format!("{{{main}}}:waiters"),
        shared: format!("{{{main}}}:shared"),
        chan: format!("{{{main}}}:released"),
        queue: format!("{{{main}}}:queue"),
        qrec: format!("{{{main}}}:qrec"),
        limit: format!("{{{main}}}:limit"),
        main,
    }
}

impl Keys {
    /// The `KEYS` of the scripts that read or change the line, in the
    /// order they name them (`lua_line!` in scripts.rs).
    fn all(&self) -> [&str; 9] {
        [
            &self.main,
            &self.fence,
            &self.sem,
            &self.waiters,
            &self.shared,
            &self.queue,
            &self.qrec,
            &self.limit,
            &self.chan,
        ]
    }
}

/// This process's entry in a key's waiters set: its id, marked `s|` when
/// it waits to share (exclusive entries are the bare id, as before).
fn waiter_entry(id: &str, shared: bool) -> String {
    if shared {
        format!("s|{id}")
    } else {
        id.to_string()
    }
}

fn clean(s: &str) -> String {
    s.replace('|', "_")
}

impl RedisBackend {
    pub async fn connect(urls: &[String], timeout: Duration) -> Result<RedisBackend> {
        let mut nodes = Vec::new();
        for url in urls {
            nodes.push(Node::open(url, timeout).await?);
        }
        let quorum = nodes.len() / 2 + 1;
        let b = RedisBackend {
            nodes,
            quorum,
            op_timeout: timeout,
            waiting: Waiting::new(),
            tickets: Default::default(),
            subs: Mutex::new(None),
        };
        // Reach a quorum now, so an unreachable backend is exit 69 at once,
        // a refusal of our credentials is said at once, and a full server
        // is told from an outage (see `why_failed`).
        let pings = join_all(b.nodes.iter().map(|n| {
            let mut c = n.conn.clone();
            let ping = async move {
                match redis::cmd("PING").query_async::<Value>(&mut c).await {
                    Err(e) if kind(&e) != Kind::Full => match c.pubsub_client().await {
                        Ok(client) => Err(why_failed(&client, e).await),
                        Err(_) => Err(e),
                    },
                    r => r,
                }
            };
            call(&n.shown, "PING", timeout, ping)
        }))
        .await;
        let failed: Vec<anyhow::Error> = pings.into_iter().filter_map(Result::err).collect();
        let n = b.nodes.len();
        if n - failed.len() < b.quorum {
            return Err(errors::too_few(
                true,
                n,
                b.quorum,
                n - failed.len(),
                &failed,
            ));
        }
        for f in &failed {
            tracing::warn!("Redis server unreachable, continuing with a majority: {f:#}");
        }
        Ok(b)
    }

    fn redlock(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Per-server timeout for one step: Redlock wants it much shorter than
    /// the TTL so that a dead server costs little of the lease.
    fn step_timeout(&self, ttl: Duration) -> Duration {
        if self.redlock() {
            (ttl / 10).clamp(Duration::from_millis(20), self.op_timeout)
        } else {
            self.op_timeout
        }
    }

    /// Run a script (`what`, for messages) on every server in parallel,
    /// each call bounded by `step` and its error typed; one result per
    /// server.
    async fn everywhere(
        &self,
        what: &str,
        script: &Script,
        keys: &[&str],
        args: &[String],
        step: Duration,
    ) -> Vec<Result<Value>> {
        join_all(self.nodes.iter().map(|n| {
            let mut conn = n.conn.clone();
            let mut inv = script.prepare_invoke();
            for k in keys {
                inv.key(*k);
            }
            for a in args {
                inv.arg(a.as_str());
            }
            async move { call(&n.shown, what, step, inv.invoke_async::<Value>(&mut conn)).await }
        }))
        .await
    }

    /// The error of a round in which `errors` kept us from a majority
    /// (typed by what kept us: see [`errors::too_few`]).
    fn too_few(&self, errors: &[anyhow::Error]) -> anyhow::Error {
        let n = self.nodes.len();
        errors::too_few(false, n, self.quorum, n - errors.len().min(n), errors)
    }

    async fn release_on(&self, lease: &Lease, mode: &str, keep_ms: u64) -> Vec<Result<Value>> {
        let k = keys(&lease.namespace, &lease.key);
        let script = if lease.shared {
            SHARED_RELEASE
        } else {
            RELEASE
        };
        self.everywhere(
            "RELEASE",
            &Script::new(script),
            &k.all(),
            &[lease.id.clone(), mode.to_string(), keep_ms.to_string()],
            self.step_timeout(lease.ttl),
        )
        .await
    }

    /// Subscribe to the channels that wake the waiter `entry` of `key`,
    /// unless already subscribed; true if the subscription is new. A
    /// release published before it was in place reached nobody: a new
    /// subscriber must try once more before it waits (see `wait_change`).
    /// The channel is the waiter's own (`:released:ENTRY`): the shared
    /// `:released`, which every release also names its waiters on for
    /// older builds, would wake this process at every hand-off in the line.
    async fn subscribe(&self, ns: &str, key: &str, entry: &str) -> Result<bool> {
        let k = keys(ns, key);
        let mine = format!("{}:{entry}", k.chan);
        let mut subs = self.subs.lock().await;
        if subs.as_ref().is_some_and(|(c, _)| *c == mine) {
            return Ok(false);
        }
        // Every server at once (Redlock), each bounded; one SUBSCRIBE for
        // both channels, answered when both are in place. Keyspace events,
        // where the server has them enabled, also tell about releases by
        // other clients and expiry.
        let subscribed = join_all(self.nodes.iter().enumerate().map(|(i, n)| {
            let channels = [mine.clone(), format!("__keyspace@{}__:{}", n.db, k.main)];
            let sub = async move {
                let mut ps = n.conn.pubsub_client().await?.get_async_pubsub().await?;
                ps.subscribe(&channels).await?;
                Ok::<_, redis::RedisError>(ps.into_on_message().map(move |m| (i, m)).boxed())
            };
            async move {
                match call(&n.shown, "SUBSCRIBE", self.op_timeout, sub).await {
                    Ok(stream) => Some(stream),
                    // Polling covers it (a full server included: a
                    // subscription is a connection of its own).
                    Err(e) => {
                        tracing::debug!("cannot subscribe: {e:#}");
                        None
                    }
                }
            }
        }))
        .await;
        let all: Subs = subscribed.into_iter().flatten().collect();
        *subs = Some((mine, all));
        Ok(true)
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.shown.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn poller(&self) -> Option<&dyn Poll> {
        Some(self)
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::SHARES
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        let k = keys(&lease.namespace, &lease.key);
        let (script, set) = if lease.shared {
            (SHARED_RENEW, &k.shared)
        } else {
            (RENEW, &k.sem)
        };
        let results = self
            .everywhere(
                "RENEW",
                &Script::new(script),
                &[&k.main, set, &k.limit],
                &[lease.id.clone(), ttl.as_millis().to_string()],
                self.step_timeout(ttl),
            )
            .await;
        let ok = results
            .iter()
            .filter(|r| matches!(r, Ok(Value::Int(1))))
            .count();
        let gone = results
            .iter()
            .filter(|r| matches!(r, Ok(Value::Int(0))))
            .count();
        if ok >= self.quorum {
            Ok(Renewal::Renewed)
        } else if gone > self.nodes.len() - self.quorum {
            Ok(Renewal::Lost)
        } else {
            let errors: Vec<anyhow::Error> = results.into_iter().filter_map(|r| r.err()).collect();
            Err(self.too_few(&errors))
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let results = self.release_on(lease, "release", 0).await;
        let ok = results
            .iter()
            .filter(|r| matches!(r, Ok(Value::Int(1))))
            .count();
        if ok == 0 && results.iter().all(|r| r.is_err()) {
            let errors: Vec<anyhow::Error> = results.into_iter().filter_map(|r| r.err()).collect();
            return Err(self.too_few(&errors));
        }
        Ok(ok >= self.quorum)
    }

    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        let results = self
            .release_on(lease, "keep", remaining.as_millis().max(1) as u64)
            .await;
        Ok(results
            .iter()
            .filter(|r| matches!(r, Ok(Value::Int(1))))
            .count()
            >= self.quorum)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let k = keys(namespace, key);
        let results = self
            .everywhere("FORCE", &Script::new(FORCE), &k.all(), &[], self.op_timeout)
            .await;
        let mut n = 0;
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(Value::Int(c)) => n = n.max(c as u64),
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.len() == self.nodes.len() {
            return Err(self.too_few(&errors));
        }
        Ok(n)
    }

    async fn status(&self, namespace: &str, keys_in: &[String]) -> Result<Vec<KeyStatus>> {
        self.status_of(namespace, keys_in).await
    }

    async fn ping(&self) -> Result<PingInfo> {
        // Every server at once, each bounded: one that hangs must not hold
        // up (or hide) the others.
        let answers = join_all(self.nodes.iter().map(|n| async move {
            let mut c = n.conn.clone();
            let mut info = redis::cmd("INFO");
            info.arg("server");
            call(
                &n.shown,
                "INFO",
                self.op_timeout,
                info.query_async::<Value>(&mut c),
            )
            .await
        }))
        .await;
        let mut versions = Vec::new();
        let mut errors = Vec::new();
        for a in answers {
            match a {
                Ok(v) => versions.push(
                    info_text(&v)
                        .lines()
                        .find_map(|l| l.strip_prefix("redis_version:"))
                        .unwrap_or("?")
                        .trim()
                        .to_string(),
                ),
                Err(e) => {
                    versions.push("unreachable".to_string());
                    errors.push(e);
                }
            }
        }
        if errors.len() == self.nodes.len() {
            return Err(self.too_few(&errors));
        }
        let kind = if self.redlock() { "redlock" } else { "redis" };
        Ok(PingInfo {
            kind,
            version: versions.join(","),
            detail: self.describe(),
        })
    }

    async fn close(&self) {
        // A waiter that gave up takes its place in line out now rather
        // than letting it lapse (one that died still lapses, or is found
        // dead by a waiter on its machine).
        if let Ok(mut t) = self.tickets.lock() {
            t.clear();
        }
        for (ns, key) in self.waiting.clear() {
            let k = keys(&ns, &key);
            let _ = self
                .everywhere(
                    "LEAVE",
                    &Script::new(LEAVE),
                    &k.all(),
                    std::slice::from_ref(&self.waiting.id),
                    // Best effort: never hold up dlock's exit for long.
                    self.op_timeout.min(Duration::from_millis(500)),
                )
                .await;
        }
    }

    async fn server_time(&self) -> Result<Option<SystemTime>> {
        let mut last = None;
        for n in &self.nodes {
            let mut c = n.conn.clone();
            let time = redis::cmd("TIME");
            match call(
                &n.shown,
                "TIME",
                self.op_timeout,
                time.query_async::<(u64, u64)>(&mut c),
            )
            .await
            {
                Ok((secs, micros)) => {
                    return Ok(Some(
                        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
                    ));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no Redis server")))
    }

    async fn doctor(&self, _ttl: Duration, timeout: Duration) -> Vec<crate::backend::probe::Check> {
        self.diagnose(timeout).await
    }
}

/// The text of an `INFO` reply: a cluster answers with one per primary (a
/// map); any of them will do.
fn info_text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::SimpleString(s) => s.clone(),
        Value::Map(entries) => entries
            .first()
            .map(|(_, v)| info_text(v))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::conn::db_of;
    use super::status::parse_holder;
    use super::*;

    #[test]
    fn values_parse() {
        let now = SystemTime::now();
        let (id, h) = parse_holder("dlock1|abc|7|root|box|42|1700000000000", 5000, now);
        assert_eq!(id.as_deref(), Some("abc"));
        assert_eq!(h.token, Some(7));
        assert_eq!(h.pid, Some(42));
        let (id, h) = parse_holder("f3b2c1", 1000, now);
        assert!(id.is_none() && h.owner.is_none() && h.expires_at.is_some());
        assert_eq!(db_of("redis://h:1/3"), 3);
        assert_eq!(db_of("redis://h:1"), 0);
        assert_eq!(keys("ns", "k").fence, "{ns:k}:fence");
    }
}
