"""The queue's Lua scripts: each makes a check-then-write atomic inside Redis.

Every script touches the keys of one partition only (one ``{q:N}`` hash tag), the workers set
alone, or the keys of one chat (one ``{chat}`` tag: APPEND_TURNS), so all of them run unchanged on
Redis Cluster.
"""

from __future__ import annotations

#: KEYS: jobs stream, seen key. ARGV: chat, payload JSON, seen TTL (ms), then any more fields of
#: the entry as name, value pairs (the trace context: bot/observe/messaging.py).
#: Enqueue once per idempotency key: a repeated update returns the entry id it got the first time,
#: as a one-element list (so the caller can count duplicates).
ENQUEUE_ONCE = """
local known = redis.call('GET', KEYS[2])
if known then return {known} end
local id = redis.call('XADD', KEYS[1], '*', 'chat', ARGV[1], 'payload', ARGV[2], unpack(ARGV, 4))
redis.call('SET', KEYS[2], id, 'PX', ARGV[3])
return id
"""

#: KEYS: lease. ARGV: token, TTL (ms). Extend our lease (1), take a free one (2: a new tenure,
#: even if we held it before: it lapsed or Redis lost it meanwhile), or not (0: someone else's).
CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if owner then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""

#: KEYS: lease. ARGV: token. Give the lease up only if it is still ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS: workers sorted set. ARGV: worker name, TTL (ms), "1" when leaving.
#: Scores are deadlines on the Redis clock, so workers' clocks need not agree. Returns live names.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

#: Lua: whether stream entry id ``last`` ("ms-seq") is ``id`` or a later one, compared as
#: numbers (as strings, "10-0" would come before "9-0").
_ENTRY = """
local function entry(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms or id) or 0, tonumber(seq or 0) or 0
end
local function reached(last, id)
  local lms, lseq = entry(last)
  local ms, seq = entry(id)
  return lms > ms or (lms == ms and lseq >= seq)
end
"""

#: KEYS: the chat's turns list, state hash, answered marker (one ``{chat}`` slot).
#: ARGV: job id, marker TTL (s), max turns (0: keep all), chat TTL (s, 0: none), number of
#: turns N, the N turns (JSON), then counter name/amount pairs.
#: The journaled append (bot/queue/journal.py): RedisStore.append's writes plus the marker, in
#: one atomic step. Idempotent per job: when the marker already names this job or a later one of
#: the chat (a retried handler, a resent request) it writes nothing and returns {-1, -1}; the
#: marker only ever moves forward. Otherwise returns {whether the turns list existed before,
#: its length after}, so the worker's copy of the chat (bot/queue/cache.py) can tell whether
#: Redis still holds what it remembers. Keep in step with RedisStore._queue_append.
APPEND_TURNS = (
    _ENTRY
    + """
local last = redis.call('GET', KEYS[3])
if last and reached(last, ARGV[1]) then return {-1, -1} end
local existed = redis.call('EXISTS', KEYS[1])
local n = tonumber(ARGV[5])
if n > 0 then redis.call('RPUSH', KEYS[1], unpack(ARGV, 6, 5 + n)) end
local max = tonumber(ARGV[3])
if max > 0 then redis.call('LTRIM', KEYS[1], -max, -1) end
for i = 6 + n, #ARGV - 1, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2])
return {existed, redis.call('LLEN', KEYS[1])}
"""
)

#: KEYS: the chat's delivered marker. ARGV: the job id a delivered turn is stored as, TTL (s).
#: A channel delivered the reply of the turn journaled as that job (for a merged turn, its newest
#: message, whichever job delivered it): the marker names it, never moving back. Named by the
#: handler that delivered the turn, not copied from the answered marker: with overlapping jobs
#: (busy policies merge, interrupt) a later turn may be stored, and not yet delivered, when an
#: earlier one's delivery ends. Returns 1 if it moved.
MARK_DELIVERED = (
    _ENTRY
    + """
local last = redis.call('GET', KEYS[1])
if last and reached(last, ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
)
