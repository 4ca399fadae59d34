//! The Lua scripts: every change to a key's entries is one of them, so
//! each is atomic on its server and judged by the server's clock (`TIME`).

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
pub(super) const ACQUIRE: &str = concat!(
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
pub(super) const FENCE: &str = r"
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

pub(super) const RENEW: &str = r"
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
pub(super) const RELEASE: &str = concat!(
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
pub(super) const SHARED_RENEW: &str = concat!(
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
pub(super) const SHARED_RELEASE: &str = concat!(
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
pub(super) const WAITING: &str = r"
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

/// Remove the entries of holders known dead, named by their record ids
/// (ARGV), wherever they are: the main key, the semaphore or the shared
/// set. An id names one acquisition, so a live entry is never removed.
/// KEYS: main, sem, released, shared. Returns how many were removed.
pub(super) const BREAK_DEAD: &str = concat!(
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
pub(super) const FORCE: &str = concat!(
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
pub(super) const INSPECT: &str = concat!(
    lua_common!(),
    r"
local out = {tostring(now), tostring(redis.call('ZCOUNT', KEYS[3], now, '+inf'))}
main_holder(out, KEYS[1])
members(out, KEYS[2], 'x')
members(out, KEYS[4], 's')
return out
"
);
