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

/// The keys of the scripts that read or change the line, in this order
/// (`KEYS`, see [`super::Keys::all`]), and the record helpers.
macro_rules! lua_line {
    () => {
        r"
local MAIN, FENCE, SEM, WAITERS, SHARED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local QUEUE, QREC, LIMIT, CHAN = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
"
    };
}

/// A record's fields (kit::Record's layout), and its semaphore slot, the
/// 13th field.
macro_rules! lua_record {
    () => {
        r"
local function fields(v)
  local f = {}
  for p in string.gmatch(v .. '|', '([^|]*)|') do table.insert(f, p) end
  return f
end
local function slot_of(v)
  return tonumber(fields(v)[13] or '')
end
-- `v` with slot `s`: the fields between SINCE and SLOT kept, or made empty.
local function with_slot(v, s)
  local f = fields(v)
  for i = #f + 1, 12 do f[i] = '' end
  f[13] = tostring(s)
  return table.concat(f, '|', 1, 13)
end
"
    };
}

/// Wake the waiters that may go in now, and only them: each is told on its
/// own channel, `:released:ENTRY`, which only it listens to, so a release
/// wakes one process rather than the whole line (each woken process costs
/// a scheduling and a read on two busy cores, the next in line's among
/// them). The message on the shared `:released` names them too (`q:` then
/// their entries, comma-separated, first in line first), for waiters of
/// older dlock builds, which listen there only. Needs `lua_common`,
/// `lua_line` and `lua_record`.
macro_rules! lua_wake {
    () => {
        r"
local function wake()
  local names = {}
  local main = redis.call('GET', MAIN)
  if not (main and main ~= GUARD) then
    local readers = redis.call('ZCOUNT', SHARED, '(' .. now, '+inf')
    local ahead = redis.call('ZCOUNT', SEM, '(' .. now, '+inf') + readers
    local shared_ahead = readers
    local from, stop = 0, false
    while not stop do
      local batch = redis.call('ZRANGE', QUEUE, from, from + 31)
      if #batch == 0 then break end
      for _, m in ipairs(batch) do
        local lapse = redis.call('ZSCORE', WAITERS, m)
        if lapse and tonumber(lapse) > now then
          local sh = string.sub(m, 1, 2) == 's|'
          local limit = tonumber(fields(redis.call('HGET', QREC, m) or '')[3] or '') or 1
          if not admits(sh, limit, ahead, shared_ahead) then
            stop = true
            break
          end
          table.insert(names, m)
          ahead = ahead + 1
          if sh then shared_ahead = shared_ahead + 1 end
        end
      end
      from = from + 32
    end
  end
  redis.call('PUBLISH', CHAN, 'q:' .. table.concat(names, ','))
  for _, m in ipairs(names) do redis.call('PUBLISH', CHAN .. ':' .. m, 'q') end
end
"
    };
}

/// One attempt, which on failure with `join` takes or keeps our place in
/// the line. KEYS: [`super::Keys::all`]. ARGV: 1 id, 2 ttl ms, 3 limit,
/// 4 '1' (single server: INCR the fence) or '2' (Redlock: read it), 5 user,
/// 6 host, 7 pid, 8 our waiter entry (`ID` or `s|ID`), 9 '1' for a shared
/// request, 10 the holder record's liveness suffix
/// ([`kit::Record::live_suffix`], maybe empty), 11 '1' to join, 12 our
/// ticket (Redlock: the same on every server) or '' (single server: the
/// next one), 13 the waiter entry's lapse in ms, 14 our waiter record up
/// to its PID, 15 its liveness suffix. Returns {1, token, slot}, or {0,
/// then (value, ms left, mode) per holder (mode `x` or `s`) and per live
/// entry ahead of us in line that was looked at (its record, mode `q` or
/// `qs`)}.
pub(super) const ACQUIRE: &str = concat!(
    lua_common!(),
    lua_line!(),
    lua_record!(),
    r"
local limit = tonumber(ARGV[3])
local shared = ARGV[9] == '1'
local me = ARGV[8]
local lapse = tonumber(ARGV[13])
redis.call('ZREMRANGEBYSCORE', SEM, '-inf', now)
redis.call('ZREMRANGEBYSCORE', SHARED, '-inf', now)
redis.call('ZREMRANGEBYSCORE', WAITERS, '-inf', now)
local readers = redis.call('ZCARD', SHARED)
local main = redis.call('GET', MAIN)
if main == GUARD and readers == 0 then
  redis.call('DEL', MAIN)
  main = false
end
-- A holder of the main key itself (dlock's exclusive holder, or a SET-NX
-- client such as redis-py's Lock, which knows no other mode) keeps every
-- request out. Otherwise the entries ahead are the holders, then the live
-- entries of the line before ours (all of them while we have none),
-- looked at first in line first until one keeps us out: more entries
-- ahead never let a request in.
local blocked = main and main ~= GUARD
local ahead = redis.call('ZCARD', SEM) + readers
local shared_ahead = readers
local seen, gone = {}, {}
if not blocked and admits(shared, limit, ahead, shared_ahead) then
  local rank = redis.call('ZRANK', QUEUE, me)
  local last = rank and rank - 1 or redis.call('ZCARD', QUEUE) - 1
  local from, stop = 0, false
  while not stop and from <= last do
    local batch = redis.call('ZRANGE', QUEUE, from, math.min(from + 31, last))
    if #batch == 0 then break end
    for _, m in ipairs(batch) do
      -- An entry whose waiter stopped renewing it (gave up, died) is gone.
      if redis.call('ZSCORE', WAITERS, m) then
        ahead = ahead + 1
        if string.sub(m, 1, 2) == 's|' then shared_ahead = shared_ahead + 1 end
        table.insert(seen, m)
        if not admits(shared, limit, ahead, shared_ahead) then
          stop = true
          break
        end
      else
        table.insert(gone, m)
      end
    end
    from = from + 32
  end
  -- An older dlock's writer waits in WAITERS alone: still no writer
  -- starvation for it.
  if shared and not stop then
    for _, w in ipairs(redis.call('ZRANGE', WAITERS, 0, -1)) do
      if string.sub(w, 1, 2) ~= 's|' and not redis.call('ZSCORE', QUEUE, w) then
        ahead = ahead + 1
      end
    end
  end
end
for _, m in ipairs(gone) do
  redis.call('ZREM', QUEUE, m)
  redis.call('HDEL', QREC, m)
end
if blocked or not admits(shared, limit, ahead, shared_ahead) then
  if ARGV[11] == '1' then
    if not redis.call('ZSCORE', QUEUE, me) then
      local ticket = tonumber(ARGV[12])
      if not ticket then
        local top = redis.call('ZRANGE', QUEUE, -1, -1, 'WITHSCORES')
        ticket = #top > 0 and tonumber(top[2]) + 1 or 1
      end
      redis.call('ZADD', QUEUE, ticket, me)
    end
    -- Since when we wait: the first attempt's time, kept.
    redis.call('HSETNX', QREC, me, ARGV[14] .. '|' .. now .. ARGV[15])
    redis.call('ZADD', WAITERS, now + lapse, me)
    for _, k in ipairs({WAITERS, QUEUE, QREC}) do redis.call('PEXPIRE', k, lapse) end
  end
  local out = {0}
  main_holder(out, MAIN)
  members(out, SEM, 'x')
  members(out, SHARED, 's')
  for _, m in ipairs(seen) do
    local rec = redis.call('HGET', QREC, m)
    if rec then
      table.insert(out, rec)
      table.insert(out, tostring(tonumber(redis.call('ZSCORE', WAITERS, m)) - now))
      table.insert(out, string.sub(m, 1, 2) == 's|' and 'qs' or 'q')
    end
  end
  return out
end
redis.call('ZREM', QUEUE, me)
redis.call('HDEL', QREC, me)
redis.call('ZREM', WAITERS, me)
local token
if ARGV[4] == '1' then
  token = redis.call('INCR', FENCE)
else
  token = tonumber(redis.call('GET', FENCE) or '0')
end
local v = 'dlock1|' .. ARGV[1] .. '|' .. (ARGV[4] == '1' and token or 0) .. '|' .. ARGV[5] .. '|' .. ARGV[6] .. '|' .. ARGV[7] .. '|' .. now .. (ARGV[10] or '')
local slot = 0
if shared then
  redis.call('ZADD', SHARED, now + tonumber(ARGV[2]), v)
  reguard(MAIN, SHARED)
elseif limit <= 1 then
  redis.call('SET', MAIN, v, 'PX', ARGV[2])
else
  -- The lowest slot no live holder has.
  local used = {}
  for _, m in ipairs(redis.call('ZRANGE', SEM, 0, -1)) do
    local s = slot_of(m)
    if s then used[s] = true end
  end
  while used[slot] do slot = slot + 1 end
  redis.call('ZADD', SEM, now + tonumber(ARGV[2]), with_slot(v, slot))
  if redis.call('PTTL', SEM) < tonumber(ARGV[2]) then redis.call('PEXPIRE', SEM, ARGV[2]) end
  -- The --limit, for status, as long as the semaphore.
  redis.call('SET', LIMIT, limit, 'PX', redis.call('PTTL', SEM))
end
return {1, token, slot}
"
);

/// Redlock, second round: raise the counter to the chosen token and put the
/// token into our value; a semaphore holder's also the chosen slot
/// (ARGV[3]), unless another live holder has it here (0: the slot does not
/// agree). And take our waiter entry (ARGV[4]) out of the line, on every
/// server: one that did not admit us (still held there a moment longer,
/// or slow) keeps it otherwise, and the waiters behind us there would find
/// it ahead of them, live while we hold and then dead, until they remove
/// it. KEYS: main, fence, sem, shared, waiters, queue, qrec. ARGV: id,
/// token, slot or '', our waiter entry.
pub(super) const FENCE: &str = concat!(
    lua_record!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] and KEYS[7] then
  redis.call('ZREM', KEYS[5], ARGV[4])
  redis.call('ZREM', KEYS[6], ARGV[4])
  redis.call('HDEL', KEYS[7], ARGV[4])
end
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
      local nv = retoken(m[i])
      if z == KEYS[3] and ARGV[3] ~= '' then
        local want = tonumber(ARGV[3])
        for j = 1, #m, 2 do
          if j ~= i and tonumber(m[j + 1]) > now and slot_of(m[j]) == want then return 0 end
        end
        nv = with_slot(nv, want)
      end
      redis.call('ZREM', z, m[i])
      redis.call('ZADD', z, m[i + 1], nv)
      return 1
    end
  end
end
return 0
"
);

/// Renew an exclusive lease. KEYS: main, sem, limit. ARGV: id, ttl ms.
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
    -- The --limit lasts as long as the semaphore (an older dlock's
    -- renewal does not extend it; the next acquisition writes it again).
    if KEYS[3] then redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', KEYS[2])) end
    return 1
  end
end
return 0
";

/// The record without its liveness fields: kept past its process
/// (`--lock-at-least`), it must not be taken for a dead process's. A
/// semaphore holder's slot stays taken until it lapses.
macro_rules! lua_disowned {
    () => {
        r"
local function disowned(v)
  local base = string.match(v, '^[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*|[^|]*') or v
  local s = slot_of(v)
  if s then return with_slot(base, s) end
  return base
end
"
    };
}

/// Release if ours (ARGV[2] = 'release'), or keep it exactly ARGV[3] ms
/// more and let it lapse (`--lock-at-least`), as no process's. KEYS:
/// [`super::Keys::all`].
pub(super) const RELEASE: &str = concat!(
    lua_common!(),
    lua_line!(),
    lua_record!(),
    lua_disowned!(),
    lua_wake!(),
    r"
local prefix = 'dlock1|' .. ARGV[1] .. '|'
local v = redis.call('GET', MAIN)
if v and string.sub(v, 1, #prefix) == prefix then
  if ARGV[2] == 'release' then
    redis.call('DEL', MAIN)
    wake()
  else
    redis.call('SET', MAIN, disowned(v), 'PX', ARGV[3])
  end
  return 1
end
local m = redis.call('ZRANGE', SEM, 0, -1, 'WITHSCORES')
for i = 1, #m, 2 do
  if string.sub(m[i], 1, #prefix) == prefix and tonumber(m[i + 1]) > now then
    redis.call('ZREM', SEM, m[i])
    if ARGV[2] == 'release' then
      wake()
    else
      redis.call('ZADD', SEM, now + tonumber(ARGV[3]), disowned(m[i]))
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
/// ARGV[3] ms more (`--lock-at-least`). KEYS: [`super::Keys::all`].
/// Waiters are told when the last reader leaves: only exclusive requests
/// wait for readers.
pub(super) const SHARED_RELEASE: &str = concat!(
    lua_common!(),
    lua_line!(),
    lua_record!(),
    lua_disowned!(),
    lua_wake!(),
    r"
local prefix = 'dlock1|' .. ARGV[1] .. '|'
redis.call('ZREMRANGEBYSCORE', SHARED, '-inf', now)
for _, v in ipairs(redis.call('ZRANGE', SHARED, 0, -1)) do
  if string.sub(v, 1, #prefix) == prefix then
    if ARGV[2] == 'release' then
      redis.call('ZREM', SHARED, v)
      reguard(MAIN, SHARED)
      if redis.call('ZCARD', SHARED) == 0 then wake() end
    else
      redis.call('ZREM', SHARED, v)
      redis.call('ZADD', SHARED, now + tonumber(ARGV[3]), disowned(v))
      reguard(MAIN, SHARED)
    end
    return 1
  end
end
return 0
"
);

/// A waiter leaves the line (it gave up, or was interrupted): its entries
/// go, both modes' (`ID`, `s|ID`), and the waiters are woken (those behind
/// it may go now). KEYS: [`super::Keys::all`]. ARGV: the waiter's id.
pub(super) const LEAVE: &str = concat!(
    lua_common!(),
    lua_line!(),
    lua_record!(),
    lua_wake!(),
    r"
local n = 0
for _, m in ipairs({ARGV[1], 's|' .. ARGV[1]}) do
  n = n + redis.call('ZREM', WAITERS, m) + redis.call('ZREM', QUEUE, m)
  redis.call('HDEL', QREC, m)
end
if n > 0 then wake() end
return n
"
);

/// Remove the entries of holders known dead, named by their record ids
/// (ARGV), wherever they are: the main key, the semaphore or the shared
/// set; and of waiters known dead, named `q:ENTRY`, from the line. An id
/// names one acquisition or one wait, so a live entry is never removed.
/// KEYS: [`super::Keys::all`]. Returns how many were removed.
pub(super) const BREAK_DEAD: &str = concat!(
    lua_common!(),
    lua_line!(),
    lua_record!(),
    lua_wake!(),
    r"
local n = 0
for _, id in ipairs(ARGV) do
  if string.sub(id, 1, 2) == 'q:' then
    local m = string.sub(id, 3)
    n = n + redis.call('ZREM', QUEUE, m)
    redis.call('HDEL', QREC, m)
    redis.call('ZREM', WAITERS, m)
  else
    local prefix = 'dlock1|' .. id .. '|'
    local v = redis.call('GET', MAIN)
    if v and string.sub(v, 1, #prefix) == prefix then
      redis.call('DEL', MAIN)
      n = n + 1
    end
    for _, z in ipairs({SEM, SHARED}) do
      for _, m in ipairs(redis.call('ZRANGE', z, 0, -1)) do
        if string.sub(m, 1, #prefix) == prefix then
          redis.call('ZREM', z, m)
          n = n + 1
        end
      end
    end
  end
end
if n > 0 then
  reguard(MAIN, SHARED)
  wake()
end
return n
"
);

/// Break every holder of a key: exclusive, semaphore and shared (the line
/// stays). KEYS: [`super::Keys::all`]. The count leaves out the readers'
/// guard.
pub(super) const FORCE: &str = concat!(
    lua_common!(),
    lua_line!(),
    lua_record!(),
    lua_wake!(),
    r"
redis.call('ZREMRANGEBYSCORE', SEM, '-inf', now)
redis.call('ZREMRANGEBYSCORE', SHARED, '-inf', now)
local v = redis.call('GET', MAIN)
local n = ((v and v ~= GUARD) and 1 or 0) + redis.call('ZCARD', SEM) + redis.call('ZCARD', SHARED)
redis.call('DEL', MAIN, SEM, SHARED, LIMIT)
wake()
return n
"
);

/// One key on one server, read only: the server's `TIME`, the number of
/// live waiters, the semaphore's `--limit` (or ''), the number of live
/// entries in line, then (entry, ticket, record, ms left) per entry in
/// line, first in line first, then (value, ms left, mode) per holder.
/// KEYS: [`super::Keys::all`].
pub(super) const INSPECT: &str = concat!(
    lua_common!(),
    lua_line!(),
    r"
local out = {tostring(now), tostring(redis.call('ZCOUNT', WAITERS, now, '+inf'))}
table.insert(out, redis.call('GET', LIMIT) or '')
local line = {}
local q = redis.call('ZRANGE', QUEUE, 0, -1, 'WITHSCORES')
for i = 1, #q, 2 do
  local lapse = redis.call('ZSCORE', WAITERS, q[i])
  if lapse and tonumber(lapse) > now then
    table.insert(line, q[i])
    table.insert(line, q[i + 1])
    table.insert(line, redis.call('HGET', QREC, q[i]) or '')
    table.insert(line, tostring(tonumber(lapse) - now))
  end
end
table.insert(out, tostring(#line / 4))
for _, x in ipairs(line) do table.insert(out, x) end
main_holder(out, MAIN)
members(out, SEM, 'x')
members(out, SHARED, 's')
return out
"
);
