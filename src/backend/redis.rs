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
//! scored by expiry, for `--limit` > 1), `:shared` (the same for shared
//! holders), `:waiters` (a sorted set of waiting processes scored by when
//! each entry lapses, for `status` and writer preference) and the
//! `:released` pub/sub channel.
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
//! readers out. Admission (in `ACQUIRE`, atomically) is the server-side
//! spelling of `kit::admits`: a holder of the main key other than the guard
//! keeps every request out; otherwise the semaphore and shared members are
//! the entries ahead, plus, for a shared request, the exclusive requests
//! waiting, whose `:waiters` entries are the bare waiter id (a shared
//! waiter's is `s|ID`). A waiter writes its entry right after its first
//! failed attempt, so once a writer waits, later readers wait behind it.
//! Every acquisition, shared or not, takes its token from `:fence`.
//! `:released` is published when the last reader leaves, and when a waiter
//! removes its entry (readers may have waited behind it).
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

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::SelectAll;
use std::sync::Arc;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSubStream,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{
    AsyncCommands, AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Script, Value,
};
use tokio::sync::Mutex;

mod doctor;

use super::kit;
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LockSpec, Owner, PingInfo, Poll, Renewal, Waiting,
    redact_url,
};
use crate::error::{unavailable, usage};

/// What the scripts that touch shared holders have in common: the server's
/// clock, the readers' guard, the admission rule and the listing of holders.
macro_rules! lua_common {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The main key's value while dlock readers hold: it keeps SET-NX clients
-- (redis-py Lock, redsync) out, and lasts as long as the last reader.
local GUARD = 'dlock-shared'
-- The admission rule: the server-side spelling of kit::admits
-- (src/backend/kit.rs); keep the two identical. `ahead` entries, of
-- which `shared_ahead` are shared.
local function admits(shared, limit, ahead, shared_ahead)
  if shared then return shared_ahead == ahead end
  return ahead < math.max(limit, 1) and shared_ahead == 0
end
-- After the shared holders in `sh` (pruned) changed: the guard in `main`
-- lasts exactly as long as the last of them, or goes with the last one.
-- A value other than the guard is never touched.
local function reguard(main, sh)
  local cur = redis.call('GET', main)
  if cur and cur ~= GUARD then return end
  local top = redis.call('ZRANGE', sh, -1, -1, 'WITHSCORES')
  if #top == 0 then
    if cur then redis.call('DEL', main) end
    return
  end
  local left = tonumber(top[2]) - now
  redis.call('SET', main, GUARD, 'PX', left)
  redis.call('PEXPIRE', sh, left)
end
-- Append the live members of the sorted set `z` to `out` as
-- (value, ms left, mode) triples.
local function members(out, z, mode)
  local m = redis.call('ZRANGEBYSCORE', z, '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #m, 2 do
    table.insert(out, m[i])
    table.insert(out, tostring(tonumber(m[i + 1]) - now))
    table.insert(out, mode)
  end
end
-- The main key's holder, unless it is the readers' guard.
local function main_holder(out, main)
  local v = redis.call('GET', main)
  if v and v ~= GUARD then
    table.insert(out, v)
    table.insert(out, tostring(redis.call('PTTL', main)))
    table.insert(out, 'x')
  end
end
"
    };
}

/// The common part of the scripts, for the test that its admission rule
/// is [`kit::admits`] (tests/redis.rs).
#[doc(hidden)]
pub const LUA_COMMON: &str = lua_common!();

/// KEYS: main, fence, sem, waiters, shared. ARGV: id, ttl ms, limit,
/// '1' (single server: INCR the fence) or '2' (Redlock: read it), user,
/// host, pid, our waiter entry, '1' for a shared request, the record's
/// liveness suffix ([`kit::Record::live_suffix`], maybe empty).
const ACQUIRE: &str = concat!(
    lua_common!(),
    r"
local limit = tonumber(ARGV[3])
local shared = ARGV[9] == '1'
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local readers = redis.call('ZCARD', KEYS[5])
local main = redis.call('GET', KEYS[1])
if main == GUARD and readers == 0 then
  redis.call('DEL', KEYS[1])
  main = false
end
local function busy()
  local out = {0}
  main_holder(out, KEYS[1])
  members(out, KEYS[3], 'x')
  members(out, KEYS[5], 's')
  return out
end
-- A holder of the main key itself (dlock's exclusive holder, or a SET-NX
-- client such as redis-py's Lock, which knows no other mode) keeps every
-- request out.
if main and main ~= GUARD then return busy() end
local ahead = redis.call('ZCARD', KEYS[3]) + readers
if shared then
  -- No writer starvation: exclusive requests that wait are ahead of a
  -- shared one. Shared waiters' entries are marked 's|'.
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  for _, w in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    if string.sub(w, 1, 2) ~= 's|' then ahead = ahead + 1 end
  end
end
if not admits(shared, limit, ahead, readers) then return busy() end
local token
if ARGV[4] == '1' then
  token = redis.call('INCR', KEYS[2])
else
  token = tonumber(redis.call('GET', KEYS[2]) or '0')
end
local v = 'dlock1|' .. ARGV[1] .. '|' .. (ARGV[4] == '1' and token or 0) .. '|' .. ARGV[5] .. '|' .. ARGV[6] .. '|' .. ARGV[7] .. '|' .. now .. (ARGV[10] or '')
if shared then
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), v)
  reguard(KEYS[1], KEYS[5])
elseif limit <= 1 then
  redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
else
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), v)
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
end
redis.call('ZREM', KEYS[4], ARGV[8])
return {1, token}
"
);

/// Redlock, second round: raise the counter to the chosen token and put the
/// token into our value. KEYS: main, fence, sem, shared.
const FENCE: &str = r"
local prefix = 'dlock1|' .. ARGV[1] .. '|'
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('SET', KEYS[2], ARGV[2]) end
local function retoken(v)
  local rest = string.sub(v, #prefix + 1)
  local bar = string.find(rest, '|', 1, true)
  return prefix .. ARGV[2] .. string.sub(rest, bar)
end
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #prefix) == prefix then
  redis.call('SET', KEYS[1], retoken(v), 'KEEPTTL')
  return 1
end
for _, z in ipairs({KEYS[3], KEYS[4]}) do
  local m = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
  for i = 1, #m, 2 do
    if string.sub(m[i], 1, #prefix) == prefix then
      redis.call('ZREM', z, m[i])
      redis.call('ZADD', z, m[i + 1], retoken(m[i]))
      return 1
    end
  end
end
return 0
";

const RENEW: &str = r"
local prefix = 'dlock1|' .. ARGV[1] .. '|'
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #prefix) == prefix then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #m, 2 do
  if string.sub(m[i], 1, #prefix) == prefix and tonumber(m[i + 1]) > now then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), m[i])
    if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
    return 1
  end
end
return 0
";

/// The record without its liveness fields: kept past its process
/// (`--lock-at-least`), it must not be taken for a dead process's.
macro_rules! lua_disowned {
    () => {
        r"
local function disowned(v)
  return string.match(v, '^[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*') or v
end
"
    };
}

/// Release if ours (ARGV[2] = 'release'), or keep it exactly ARGV[3] ms
/// more and let it lapse (`--lock-at-least`), as no process's.
const RELEASE: &str = concat!(
    lua_disowned!(),
    r"
local prefix = 'dlock1|' .. ARGV[1] .. '|'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #prefix) == prefix then
  if ARGV[2] == 'release' then
    redis.call('DEL', KEYS[1])
    redis.call('PUBLISH', KEYS[3], '1')
  else
    redis.call('SET', KEYS[1], disowned(v), 'PX', ARGV[3])
  end
  return 1
end
local m = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #m, 2 do
  if string.sub(m[i], 1, #prefix) == prefix and tonumber(m[i + 1]) > now then
    redis.call('ZREM', KEYS[2], m[i])
    if ARGV[2] == 'release' then
      redis.call('PUBLISH', KEYS[3], '1')
    else
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), disowned(m[i]))
    end
    return 1
  end
end
return 0
"
);

/// Renew a shared lease. KEYS: main, shared. ARGV: id, ttl ms. A share
/// whose guard was replaced by another holder of the main key is lost.
const SHARED_RENEW: &str = concat!(
    lua_common!(),
    r"
local prefix = 'dlock1|' .. ARGV[1] .. '|'
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local main = redis.call('GET', KEYS[1])
for _, v in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(v, 1, #prefix) == prefix then
    if main and main ~= GUARD then
      redis.call('ZREM', KEYS[2], v)
      return 0
    end
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), v)
    reguard(KEYS[1], KEYS[2])
    return 1
  end
end
return 0
"
);

/// Release a shared lease (ARGV[2] = 'release'), or keep it exactly
/// ARGV[3] ms more (`--lock-at-least`). KEYS: main, shared, released.
/// Waiters are told when the last reader leaves: only exclusive requests
/// wait for readers.
const SHARED_RELEASE: &str = concat!(
    lua_common!(),
    lua_disowned!(),
    r"
local prefix = 'dlock1|' .. ARGV[1] .. '|'
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
for _, v in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(v, 1, #prefix) == prefix then
    if ARGV[2] == 'release' then
      redis.call('ZREM', KEYS[2], v)
      reguard(KEYS[1], KEYS[2])
      if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('PUBLISH', KEYS[3], '1') end
    else
      redis.call('ZREM', KEYS[2], v)
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), disowned(v))
      reguard(KEYS[1], KEYS[2])
    end
    return 1
  end
end
return 0
"
);

/// A waiter says it is still waiting: its entry in the waiters sorted set
/// (scored by when it lapses, by the server's clock) is renewed. Entries of
/// waiters that gave up or died lapse on their own. KEYS: waiters,
/// released. ARGV: the entry (the waiter's id, marked `s|` for a shared
/// request), its lapse in ms; or the id and '0' to remove either entry,
/// waking the waiters (shared ones may have waited behind this one).
const WAITING: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[2] == '0' then
  if redis.call('ZREM', KEYS[1], ARGV[1], 's|' .. ARGV[1]) > 0 then
    redis.call('PUBLISH', KEYS[2], '1')
  end
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// How long a waiter's entry lasts without being renewed (it is renewed
/// every third of this; polls are at most 250ms apart).
const WAITER_LAPSE: Duration = Duration::from_secs(2);

/// Remove the entries of holders known dead, named by their record ids
/// (ARGV), wherever they are: the main key, the semaphore or the shared
/// set. An id names one acquisition, so a live entry is never removed.
/// KEYS: main, sem, released, shared. Returns how many were removed.
const BREAK_DEAD: &str = concat!(
    lua_common!(),
    r"
local n = 0
for _, id in ipairs(ARGV) do
  local prefix = 'dlock1|' .. id .. '|'
  local v = redis.call('GET', KEYS[1])
  if v and string.sub(v, 1, #prefix) == prefix then
    redis.call('DEL', KEYS[1])
    n = n + 1
  end
  for _, z in ipairs({KEYS[2], KEYS[4]}) do
    for _, m in ipairs(redis.call('ZRANGE', z, 0, -1)) do
      if string.sub(m, 1, #prefix) == prefix then
        redis.call('ZREM', z, m)
        n = n + 1
      end
    end
  end
end
if n > 0 then
  reguard(KEYS[1], KEYS[4])
  redis.call('PUBLISH', KEYS[3], '1')
end
return n
"
);

/// Break every holder of a key: exclusive, semaphore and shared. KEYS:
/// main, sem, released, shared. The count leaves out the readers' guard.
const FORCE: &str = concat!(
    lua_common!(),
    r"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local v = redis.call('GET', KEYS[1])
local n = ((v and v ~= GUARD) and 1 or 0) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[4])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
redis.call('PUBLISH', KEYS[3], '1')
return n
"
);

/// Holders of one key on one server, with the server's `TIME` and the
/// number of live waiters, then (value, ms left, mode) per holder. KEYS:
/// main, sem, waiters, shared.
const INSPECT: &str = concat!(
    lua_common!(),
    r"
local out = {tostring(now), tostring(redis.call('ZCOUNT', KEYS[3], now, '+inf'))}
main_holder(out, KEYS[1])
members(out, KEYS[2], 'x')
members(out, KEYS[4], 's')
return out
"
);

struct Node {
    shown: String,
    db: i64,
    conn: Conn,
    /// Direct clients to SCAN (every node listed for a cluster).
    scan: Vec<redis::Client>,
}

/// One logical Redis server: a plain server, a Sentinel-managed primary
/// (re-resolved after a failover), or a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Direct(ConnectionManager, redis::Client),
    Cluster(ClusterConnection, redis::Client),
    Sentinel(Arc<SentinelConn>),
}

struct SentinelConn {
    sentinel: Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

/// A refusal of our credentials (a wrong password, or a user without the
/// rights): the server was reached, so this is no outage.
fn denied(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// Errors after which the primary may have moved: ask the sentinels again.
fn moved(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.to_string().contains("READONLY")
}

impl SentinelConn {
    async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref() {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let c = self
            .sentinel
            .lock()
            .await
            .get_async_connection_with_config(&cfg)
            .await?;
        *cur = Some(c.clone());
        Ok(c)
    }

    async fn client(&self) -> RedisResult<redis::Client> {
        self.sentinel.lock().await.async_get_client().await
    }

    /// Send to the primary; while the primary seems to have moved (a
    /// failover in progress), ask the sentinels again, within the timeout.
    async fn send(&self, req: Req<'_>) -> RedisResult<Resp> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let r = match self.conn().await {
                Ok(mut c) => match req {
                    Req::One(cmd) => c.req_packed_command(cmd).await.map(Resp::One),
                    Req::Many(p, offset, count) => c
                        .req_packed_commands(p, offset, count)
                        .await
                        .map(Resp::Many),
                },
                Err(e) => Err(e),
            };
            match r {
                Err(e) if moved(&e) && Instant::now() + Duration::from_millis(100) < deadline => {
                    *self.current.lock().await = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => return r,
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Req<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

enum Resp {
    One(Value),
    Many(Vec<Value>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Direct(c, _) => c.req_packed_command(cmd),
            Conn::Cluster(c, _) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                match s.send(Req::One(cmd)).await? {
                    Resp::One(v) => Ok(v),
                    Resp::Many(_) => unreachable!("one command, one reply"),
                }
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        p: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Direct(c, _) => c.req_packed_commands(p, offset, count),
            Conn::Cluster(c, _) => c.req_packed_commands(p, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                match s.send(Req::Many(p, offset, count)).await? {
                    Resp::Many(v) => Ok(v),
                    Resp::One(_) => unreachable!("a pipeline, many replies"),
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Direct(c, _) => c.get_db(),
            Conn::Cluster(c, _) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

impl Conn {
    /// A client to subscribe with. In a cluster, PUBLISH reaches every node.
    async fn pubsub_client(&self) -> RedisResult<redis::Client> {
        match self {
            Conn::Direct(_, c) | Conn::Cluster(_, c) => Ok(c.clone()),
            Conn::Sentinel(s) => s.client().await,
        }
    }
}

/// `redis+sentinel://h:p[,h:p]/MASTER[/DB]` and `redis+cluster://h:p[,h:p]`:
/// the hosts of the URL, as plain `redis://` URLs, and the path.
fn hosts_and_path(url: &str) -> (Vec<String>, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let hosts = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{userinfo}{h}"))
        .collect();
    (hosts, path.to_string())
}

pub struct RedisBackend {
    nodes: Vec<Node>,
    quorum: usize,
    op_timeout: Duration,
    /// This process's entries in the waiters sets of the keys it waits for.
    waiting: Waiting,
    /// Subscriptions for waiting: (channel key, merged message streams).
    subs: Mutex<Option<(String, SelectAll<PubSubStream>)>>,
}

struct Keys {
    main: String,
    fence: String,
    sem: String,
    chan: String,
    waiters: String,
    shared: String,
}

fn keys(ns: &str, key: &str) -> Keys {
    let main = format!("{ns}:{key}");
    Keys {
        fence: format!("{{{main}}}:fence"),
        sem: format!("{{{main}}}:sem"),
        waiters: format!("{{{main}}}:waiters"),
        shared: format!("{{{main}}}:shared"),
        chan: format!("{{{main}}}:released"),
        main,
    }
}

fn clean(s: &str) -> String {
    s.replace('|', "_")
}

/// A value as a holder: ours (`dlock1|...`) in full, anyone else's as a
/// foreign holder with only the expiry known.
fn parse_holder(value: &str, ttl_ms: i64, now: SystemTime) -> (Option<String>, Holder) {
    let expires_at = (ttl_ms >= 0).then(|| now + Duration::from_millis(ttl_ms as u64));
    // The scripts write the token as `N` (0 until Redlock fences it).
    match kit::Record::parse(value, kit::NField::Token) {
        Some(r) => (Some(r.id.clone()), r.holder(None, expires_at)),
        None => (
            None,
            Holder {
                expires_at,
                ..Holder::default()
            },
        ),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                Value::Int(n) => n.to_string(),
                _ => String::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Holders from a list of (value, ms left, mode) triples; the mode is `s`
/// for a shared holder, `x` for any other.
fn holders_from(triples: &[String]) -> Vec<(String, Holder)> {
    let now = SystemTime::now();
    triples
        .chunks(3)
        .filter(|c| c.len() == 3)
        .map(|c| {
            let (id, mut h) = parse_holder(&c[0], c[1].parse().unwrap_or(-1), now);
            h.shared = c[2] == "s";
            h.entry = id.clone();
            (id.unwrap_or_else(|| format!("foreign:{}", c[0])), h)
        })
        .collect()
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

fn db_of(url: &str) -> i64 {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split_once('/'))
        .and_then(|(_, p)| p.split(['?', '#']).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

impl RedisBackend {
    pub async fn connect(urls: &[String], timeout: Duration) -> Result<RedisBackend> {
        let mut nodes = Vec::new();
        for url in urls {
            nodes.push(Self::node(url, timeout).await?);
        }
        let quorum = nodes.len() / 2 + 1;
        let b = RedisBackend {
            nodes,
            quorum,
            op_timeout: timeout,
            waiting: Waiting::new(),
            subs: Mutex::new(None),
        };
        // Reach a quorum now, so an unreachable backend is exit 69 at once.
        // Each answer, and whether the server refused our credentials.
        let pings = join_all(b.nodes.iter().map(|n| {
            let mut c = n.conn.clone();
            async move {
                match tokio::time::timeout(
                    timeout,
                    redis::cmd("PING").query_async::<String>(&mut c),
                )
                .await
                {
                    Err(_) => Err(("timed out".to_string(), false)),
                    Ok(Err(e)) => Err((e.to_string(), denied(&e))),
                    Ok(Ok(_)) => Ok(()),
                }
            }
        }))
        .await;
        let failed: Vec<(String, bool)> = b
            .nodes
            .iter()
            .zip(&pings)
            .filter_map(|(n, p)| {
                p.as_ref()
                    .err()
                    .map(|(e, d)| (format!("{} ({e})", n.shown), *d))
            })
            .collect();
        if b.nodes.len() - failed.len() < b.quorum {
            let all: Vec<&str> = failed.iter().map(|(f, _)| f.as_str()).collect();
            // Reached, but refused: say so, and do not retry.
            if failed.iter().any(|(_, d)| *d) {
                return Err(crate::error::denied(format!(
                    "Redis refused the credentials in the URL: {}",
                    all.join(", ")
                )));
            }
            if b.nodes.len() == 1 {
                return Err(unavailable(format!(
                    "cannot reach the Redis server {}",
                    all.join(", ")
                )));
            }
            return Err(unavailable(format!(
                "cannot reach {} of {} Redis server(s): {}",
                failed.len(),
                b.nodes.len(),
                all.join(", ")
            )));
        }
        let failed: Vec<String> = failed.into_iter().map(|(f, _)| f).collect();
        for f in &failed {
            tracing::warn!("Redis server unreachable, continuing with a majority: {f}");
        }
        Ok(b)
    }

    async fn node(url: &str, timeout: Duration) -> Result<Node> {
        let shown = redact_url(url);
        let bad = |e: &dyn std::fmt::Display| {
            usage(format!(
                "bad Redis URL {shown}: {}",
                e.to_string().replace(url, &shown)
            ))
        };
        if let Some(_rest) = url.strip_prefix("redis+sentinel://") {
            let (hosts, path) = hosts_and_path(url);
            let mut parts = path.split('/');
            let master = parts.next().filter(|m| !m.is_empty()).ok_or_else(|| {
                usage(format!(
                    "{shown}: name the master: redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER"
                ))
            })?;
            let db: i64 = parts.next().and_then(|d| d.parse().ok()).unwrap_or(0);
            let node_info = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(db));
            let sentinel =
                SentinelClient::build(hosts, master, Some(node_info), SentinelServerType::Master)
                    .map_err(|e| bad(&e))?;
            let conn = Conn::Sentinel(Arc::new(SentinelConn {
                sentinel: Mutex::new(sentinel),
                current: Mutex::new(None),
                timeout,
            }));
            return Ok(Node {
                shown,
                db,
                conn,
                scan: vec![],
            });
        }
        if url.starts_with("redis+cluster://") {
            let (hosts, _) = hosts_and_path(url);
            let scan = hosts
                .iter()
                .map(|h| redis::Client::open(h.as_str()))
                .collect::<RedisResult<Vec<_>>>()
                .map_err(|e| bad(&e))?;
            let client = redis::cluster::ClusterClient::builder(hosts)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()
                .map_err(|e| bad(&e))?;
            let conn = tokio::time::timeout(timeout, client.get_async_connection())
                .await
                .map_err(|_| unavailable(format!("Redis Cluster {shown}: timed out")))?
                .map_err(|e| unavailable(format!("Redis Cluster {shown}: {e}")))?;
            return Ok(Node {
                shown,
                db: 0,
                conn: Conn::Cluster(conn, scan[0].clone()),
                scan,
            });
        }
        let client = redis::Client::open(url).map_err(|e| bad(&e))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), cfg)
            .map_err(|e| unavailable(format!("Redis {shown}: {e}")))?;
        Ok(Node {
            shown,
            db: db_of(url),
            conn: Conn::Direct(conn, client.clone()),
            scan: vec![client],
        })
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

    /// Run a script on every server in parallel; one result per server.
    async fn everywhere(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
        step: Duration,
    ) -> Vec<Result<Value, String>> {
        join_all(self.nodes.iter().map(|n| {
            let mut conn = n.conn.clone();
            let mut inv = script.prepare_invoke();
            for k in keys {
                inv.key(*k);
            }
            for a in args {
                inv.arg(a.as_str());
            }
            async move {
                match tokio::time::timeout(step, inv.invoke_async::<Value>(&mut conn)).await {
                    Err(_) => Err(format!("{}: timed out after {step:?}", n.shown)),
                    Ok(Err(e)) => Err(format!("{}: {e}", n.shown)),
                    Ok(Ok(v)) => Ok(v),
                }
            }
        }))
        .await
    }

    fn too_few(&self, errors: &[String]) -> anyhow::Error {
        // One server (or one Sentinel-managed primary) is no Redlock.
        if self.nodes.len() == 1 {
            return unavailable(format!(
                "the Redis server did not answer: {}",
                errors.join("; ")
            ));
        }
        unavailable(format!(
            "only {} of {} Redis servers answered (a majority of {} is needed): {}",
            self.nodes.len() - errors.len(),
            self.nodes.len(),
            self.quorum,
            errors.join("; ")
        ))
    }

    async fn release_on(
        &self,
        lease: &Lease,
        mode: &str,
        keep_ms: u64,
    ) -> Vec<Result<Value, String>> {
        let k = keys(&lease.namespace, &lease.key);
        let (script, set) = if lease.shared {
            (SHARED_RELEASE, &k.shared)
        } else {
            (RELEASE, &k.sem)
        };
        self.everywhere(
            &Script::new(script),
            &[&k.main, set, &k.chan],
            &[lease.id.clone(), mode.to_string(), keep_ms.to_string()],
            self.step_timeout(lease.ttl),
        )
        .await
    }

    async fn subscribe(&self, ns: &str, key: &str) -> Result<()> {
        let k = keys(ns, key);
        let mut subs = self.subs.lock().await;
        if subs.as_ref().is_some_and(|(c, _)| *c == k.chan) {
            return Ok(());
        }
        let mut all = SelectAll::new();
        for n in &self.nodes {
            let sub = async {
                let mut ps = n.conn.pubsub_client().await?.get_async_pubsub().await?;
                ps.subscribe(&k.chan).await?;
                // Keyspace events, where the server has them enabled, also
                // tell about releases by other clients and expiry.
                ps.subscribe(format!("__keyspace@{}__:{}", n.db, k.main))
                    .await?;
                Ok::<_, redis::RedisError>(ps.into_on_message())
            };
            match tokio::time::timeout(self.op_timeout, sub).await {
                Ok(Ok(stream)) => all.push(stream),
                Ok(Err(e)) => tracing::debug!("cannot subscribe on {}: {e}", n.shown),
                Err(_) => tracing::debug!("subscribing on {} timed out", n.shown),
            }
        }
        *subs = Some((k.chan, all));
        Ok(())
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

    fn shares(&self) -> bool {
        true
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
                &Script::new(script),
                &[&k.main, set],
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
            let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
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
            let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
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
            .everywhere(
                &Script::new(FORCE),
                &[&k.main, &k.sem, &k.chan, &k.shared],
                &[],
                self.op_timeout,
            )
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
        let mut names: Vec<String> = keys_in.to_vec();
        if names.is_empty() {
            // Every lock in the namespace: SCAN (never KEYS) each server, in
            // one pass of large batches, since a shared Redis may hold
            // millions of other keys. A server that cannot be read makes the
            // answer an error, never "nothing held".
            let prefix = format!("{namespace}:");
            let pattern = format!("*{}*", glob_escape(&prefix));
            let mut errors = Vec::new();
            let mut answered = 0;
            let mut need = 0;
            for n in &self.nodes {
                // A Sentinel-managed node is scanned on its current primary.
                let clients = match &n.conn {
                    Conn::Sentinel(sc) => {
                        match tokio::time::timeout(self.op_timeout, sc.client()).await {
                            Ok(Ok(c)) => vec![c],
                            Ok(Err(e)) => {
                                errors.push(format!("{}: {e}", n.shown));
                                vec![]
                            }
                            Err(_) => {
                                errors.push(format!("{}: the sentinels did not answer", n.shown));
                                vec![]
                            }
                        }
                    }
                    _ => n.scan.clone(),
                };
                need += clients.len().max(1);
                for client in &clients {
                    let scan = async {
                        let mut c = client.get_multiplexed_async_connection().await?;
                        let opts = redis::ScanOptions::default()
                            .with_pattern(pattern.as_str())
                            .with_count(20_000);
                        let mut it: redis::AsyncIter<String> = c.scan_options(opts).await?;
                        let mut found = Vec::new();
                        while let Some(k) = it.next_item().await {
                            found.push(k?);
                        }
                        Ok::<_, redis::RedisError>(found)
                    };
                    // Listing may take longer than one step: a few seconds
                    // per million keys.
                    match tokio::time::timeout(self.op_timeout * 4, scan).await {
                        Ok(Ok(found)) => {
                            answered += 1;
                            for k in &found {
                                // `NS:KEY` (held), or `{NS:KEY}:sem` (a
                                // semaphore) or `{NS:KEY}:shared` (readers).
                                let name = k.strip_prefix(&prefix).or_else(|| {
                                    let inner = k.strip_prefix('{')?;
                                    inner
                                        .strip_suffix("}:sem")
                                        .or_else(|| inner.strip_suffix("}:shared"))?
                                        .strip_prefix(&prefix)
                                });
                                if let Some(name) = name
                                    && !names.iter().any(|x| x == name)
                                {
                                    names.push(name.to_string());
                                }
                            }
                        }
                        Ok(Err(e)) => errors.push(format!("{}: SCAN: {e}", n.shown)),
                        Err(_) => errors.push(format!(
                            "{}: SCAN: no answer within {}",
                            n.shown,
                            crate::status::human_duration(self.op_timeout * 4)
                        )),
                    }
                }
            }
            // Redlock: a lock is held only on a majority, so a majority of
            // answers lists every lock; one server (or cluster node) must answer.
            if self.redlock() {
                need = self.quorum;
            }
            if answered < need {
                return Err(unavailable(format!(
                    "cannot list the locks in namespace {namespace:?}: {}",
                    errors.join("; ")
                )));
            }
            names.sort();
        }
        let mut out = Vec::new();
        for name in names {
            let k = keys(namespace, &name);
            let results = self
                .everywhere(
                    &Script::new(INSPECT),
                    &[&k.main, &k.sem, &k.waiters, &k.shared],
                    &[],
                    self.op_timeout,
                )
                .await;
            // A holder counts where a majority of servers agree on it.
            let mut seen: Vec<(String, Holder, usize)> = Vec::new();
            let mut answered = 0;
            let mut waiters = 0u64;
            for r in results.iter().flatten() {
                answered += 1;
                let s = strings(r);
                waiters = waiters.max(s.get(1).and_then(|w| w.parse().ok()).unwrap_or(0));
                for (id, h) in holders_from(&s[2.min(s.len())..]) {
                    match seen.iter_mut().find(|(i, _, _)| *i == id) {
                        Some(e) => e.2 += 1,
                        None => seen.push((id, h, 1)),
                    }
                }
            }
            if answered == 0 {
                let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
                return Err(self.too_few(&errors));
            }
            let holders: Vec<Holder> = seen
                .into_iter()
                .filter(|(_, _, c)| *c >= self.quorum)
                .map(|(_, h, _)| h)
                .collect();
            out.push(KeyStatus {
                key: name,
                // Readers are not slots of a limit.
                limit: holders.iter().filter(|h| !h.shared).count().max(1) as u32,
                holders,
                waiters: Some(waiters),
                queue: vec![],
                unreadable: None,
            });
        }
        if keys_in.is_empty() {
            out.retain(|k| !k.holders.is_empty());
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<PingInfo> {
        // Every server at once, each bounded: one that hangs must not hold
        // up (or hide) the others.
        let versions = join_all(self.nodes.iter().map(|n| async move {
            let mut c = n.conn.clone();
            let info = tokio::time::timeout(
                self.op_timeout,
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<Value>(&mut c),
            )
            .await;
            match info {
                Ok(Ok(v)) => info_text(&v)
                    .lines()
                    .find_map(|l| l.strip_prefix("redis_version:"))
                    .unwrap_or("?")
                    .trim()
                    .to_string(),
                _ => "unreachable".to_string(),
            }
        }))
        .await;
        if versions.iter().all(|v| v == "unreachable") {
            let none = vec!["no answer to INFO".to_string(); self.nodes.len()];
            return Err(self.too_few(&none));
        }
        let kind = if self.redlock() { "redlock" } else { "redis" };
        Ok(PingInfo {
            kind,
            version: versions.join(","),
            detail: self.describe(),
        })
    }

    async fn close(&self) {
        // A waiter that gave up takes its entry out now rather than letting
        // it lapse (one that died still lapses).
        for (ns, key) in self.waiting.clear() {
            let k = keys(&ns, &key);
            let _ = self
                .everywhere(
                    &Script::new(WAITING),
                    &[&k.waiters, &k.chan],
                    &[self.waiting.id.clone(), "0".to_string()],
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
            let t = tokio::time::timeout(
                self.op_timeout,
                redis::cmd("TIME").query_async::<(u64, u64)>(&mut c),
            )
            .await;
            match t {
                Ok(Ok((secs, micros))) => {
                    return Ok(Some(
                        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
                    ));
                }
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some(format!("{} did not answer TIME", n.shown)),
            }
        }
        Err(anyhow::anyhow!(last.unwrap_or_default()))
    }

    async fn doctor(&self, _ttl: Duration, timeout: Duration) -> Vec<crate::backend::probe::Check> {
        self.diagnose(timeout).await
    }
}

#[async_trait]
impl Poll for RedisBackend {
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner, _join: bool) -> Result<Attempt> {
        let k = keys(&spec.namespace, &spec.key);
        let step = self.step_timeout(spec.ttl);
        let granted_at = Instant::now();
        let mode = if self.redlock() { "2" } else { "1" };
        let args = [
            me.id.clone(),
            spec.ttl.as_millis().to_string(),
            spec.limit.to_string(),
            mode.to_string(),
            clean(&me.user),
            clean(&me.host),
            me.pid.to_string(),
            waiter_entry(&self.waiting.id, spec.shared),
            if spec.shared { "1" } else { "0" }.to_string(),
            kit::Record::live_suffix(me),
        ];
        let results = self
            .everywhere(
                &Script::new(ACQUIRE),
                &[&k.main, &k.fence, &k.sem, &k.waiters, &k.shared],
                &args,
                step,
            )
            .await;
        let mut counters = Vec::new();
        let mut busy: Vec<(String, Holder)> = Vec::new();
        let mut errors = Vec::new();
        for r in &results {
            match r {
                Ok(v) => {
                    let s = strings(v);
                    if s.first().map(String::as_str) == Some("1") {
                        counters.push(s.get(1).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0));
                    } else {
                        for (id, h) in holders_from(&s[1.min(s.len())..]) {
                            if !busy.iter().any(|(i, _)| *i == id) {
                                busy.push((id, h));
                            }
                        }
                    }
                }
                Err(e) => errors.push(e.clone()),
            }
        }
        let elapsed = granted_at.elapsed();
        let drift = spec.ttl / 100 + Duration::from_millis(2);
        let valid = spec.ttl.saturating_sub(elapsed + drift);
        let lease = |token| Lease {
            namespace: spec.namespace.clone(),
            key: spec.key.clone(),
            token,
            id: me.id.clone(),
            ttl: spec.ttl,
            granted_at,
            shared: spec.shared,
            slot: spec.fixed_slot(),
        };
        if counters.len() >= self.quorum && !valid.is_zero() {
            if !self.redlock() {
                self.waiting.done(&spec.namespace, &spec.key);
                return Ok(Attempt::Acquired(lease(counters[0])));
            }
            let token = counters.iter().max().copied().unwrap_or(0) + 1;
            let fenced = self
                .everywhere(
                    &Script::new(FENCE),
                    &[&k.main, &k.fence, &k.sem, &k.shared],
                    &[me.id.clone(), token.to_string()],
                    step,
                )
                .await;
            let ok = fenced
                .iter()
                .filter(|r| matches!(r, Ok(Value::Int(1))))
                .count();
            if ok >= self.quorum && granted_at.elapsed() + drift < spec.ttl {
                self.waiting.done(&spec.namespace, &spec.key);
                return Ok(Attempt::Acquired(lease(token)));
            }
            errors.extend(fenced.into_iter().filter_map(|r| r.err()));
        }
        // No majority (or no validity left): undo everywhere, then report.
        if !counters.is_empty() {
            self.release_on(&lease(0), "release", 0).await;
            // The granting servers dropped our waiter entry: write it
            // again at the next wait, not a third of its lapse later, so
            // that a waiting writer keeps later readers out.
            self.waiting.done(&spec.namespace, &spec.key);
        }
        if self.nodes.len() - errors.len() < self.quorum {
            return Err(self.too_few(&errors));
        }
        Ok(Attempt::Busy(busy.into_iter().map(|(_, h)| h).collect()))
    }

    async fn break_dead(&self, spec: &LockSpec, dead: &[Holder]) -> Result<bool> {
        let ids: Vec<String> = dead.iter().filter_map(|h| h.entry.clone()).collect();
        if ids.is_empty() {
            return Ok(false);
        }
        let k = keys(&spec.namespace, &spec.key);
        let results = self
            .everywhere(
                &Script::new(BREAK_DEAD),
                &[&k.main, &k.sem, &k.chan, &k.shared],
                &ids,
                self.step_timeout(spec.ttl),
            )
            .await;
        Ok(results
            .iter()
            .any(|r| matches!(r, Ok(Value::Int(n)) if *n > 0)))
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        // Our waiter entry, written first thing after a failed attempt: it
        // counts for `status`, and an exclusive one keeps shared requests
        // that come after it out (no writer starvation). Noted before it
        // is written, so an interrupted waiter's `close` removes it. Best
        // effort: an error here only makes the count low.
        if self.waiting.due(&spec.namespace, &spec.key, WAITER_LAPSE) {
            self.waiting.note(&spec.namespace, &spec.key);
            let k = keys(&spec.namespace, &spec.key);
            let _ = self
                .everywhere(
                    &Script::new(WAITING),
                    &[&k.waiters, &k.chan],
                    &[
                        waiter_entry(&self.waiting.id, spec.shared),
                        WAITER_LAPSE.as_millis().to_string(),
                    ],
                    self.step_timeout(spec.ttl),
                )
                .await;
        }
        self.subscribe(&spec.namespace, &spec.key).await?;
        // Wake on a release message, or poll: a holder that expires or a
        // foreign client that releases does not publish.
        let mut cap = Duration::from_millis(200);
        if self.redlock() {
            // Redlock: a random delay, so contenders do not collide in step.
            let mut b = [0u8; 1];
            let _ = getrandom::fill(&mut b);
            cap += Duration::from_millis(u64::from(b[0]) % 50);
        }
        let bound = until.map_or(Instant::now() + cap, |u| u.min(Instant::now() + cap));
        let mut subs = self.subs.lock().await;
        if let Some((_, streams)) = subs.as_mut() {
            let woke = if streams.is_empty() {
                None
            } else {
                tokio::time::timeout_at(bound.into(), streams.next())
                    .await
                    .ok()
            };
            // Every subscription ended (a server restarted): subscribe again
            // at the next wait, and poll until then rather than spin.
            if matches!(woke, None | Some(None)) {
                if woke.is_some() {
                    *subs = None;
                }
                drop(subs);
                tokio::time::sleep_until(bound.into()).await;
            }
        }
        Ok(())
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

fn glob_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

#[cfg(test)]
mod tests {
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
