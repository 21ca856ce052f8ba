"""The Lua scripts that change or read a channel's keys atomically (keys.py).

Sequence numbers are kept in the metadata hash, not taken from stream ids, so
that they stay contiguous whatever the stream has trimmed: a reader's
distance to the oldest retained entry is the exact number of messages it
missed. The epoch lives beside them; if Redis loses the metadata (a flush, an
eviction, a new empty Redis), the next script to run starts a new epoch with
the random name the caller passes, deletes any orphaned stream, and every
cursor of the old epoch gets an ``epoch`` gap instead of a silent mix-up.

Redis may also come back with *older* data: a snapshot, an AOF that lost its
last second, a replica promoted before it caught up. Its sequence numbers
would then be given a second time to other messages. Every way of coming
back with older data is a new Redis process (a restart, or another server
taking over), and each has its own ``run_id``. So the metadata also keeps
the ``run_id`` of the Redis that last wrote it, and each script compares it
with the ``run_id`` of the Redis running it: if they differ, the data may be
older than what was acknowledged, and the script starts a new epoch, whoever
calls it, even a node that never read the channel. The first script of the
new run does it, atomically, so no later script deletes what was published
in the new epoch. docs/topics/redis.md has the argument.

Each script also takes the position the calling node has seen in the
channel (its replica's end); if that is further into the same epoch than
Redis holds, the script starts a new epoch too (a second line of defence).

In a Redis Cluster the ``run_id`` rule cannot hold: moving a slot to another
node (resharding) carries the keys, intact, to a process with another
``run_id``, and starting a new epoch there would delete acknowledged
messages. So in a cluster a script adopts the new ``run_id`` and keeps the
epoch, and only the position check guards against a node restored from an
older snapshot (docs/topics/redis.md says what that leaves open).

``PUBLISH`` also keeps idempotency keys (core/idempotency.py): a string key
per (channel, key) holding ``EPOCH SEQ TIME FINGERPRINT``, expiring after the
window. It is read and written in the same script as the append, so two nodes
racing with one key store one message. A record of another epoch is ignored.
"""

from __future__ import annotations

from tidings.brokers.redis.commands import Script

# Shared prologue: start an epoch if the channel has none, if its metadata was
# written by another Redis process (a restart or a failover: the data may be
# older than what was acknowledged), or if Redis holds less of it than the
# caller has seen (ARGV[3], ARGV[4]: epoch and seq known).
_ENSURE_EPOCH = """
local info = redis.call('INFO', 'server')
local run = string.match(info, 'run_id:(%x+)')
local cluster = string.find(info, 'redis_mode:cluster', 1, true)
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'seq', 'run')
local epoch = meta[1]
if epoch and ((meta[3] ~= run and not cluster)
    or (epoch == ARGV[3] and tonumber(meta[2]) < tonumber(ARGV[4]))) then
  epoch = false
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0, 't', 0, 'run', run)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
elseif meta[3] ~= run then
  redis.call('HSET', KEYS[2], 'run', run)
end
"""

#: KEYS: log, meta, notify, idempotency record.  ARGV: new epoch, unused-meta ttl (ms),
#: epoch known, seq known, data, size, ttl (ms), idempotency key ('' for none),
#: fingerprint, window (ms).
#: Appends the message, trims by count and age, notifies, returns {epoch, seq, time, 0};
#: or, if the key names a message of this epoch, stores nothing and returns
#: {epoch, seq, time, 1} for that message (same fingerprint) or {..., 2} (another).
PUBLISH = Script(_ENSURE_EPOCH + """
if ARGV[8] ~= '' then
  local record = redis.call('GET', KEYS[4])
  if record then
    local e, s, t, f = string.match(record, '^(%S+) (%d+) (%d+) (%S+)$')
    if e == epoch then
      if f == ARGV[9] then return {epoch, tonumber(s), tonumber(t), 1} end
      return {epoch, tonumber(s), tonumber(t), 2}
    end
  end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local last_time = tonumber(redis.call('HGET', KEYS[2], 't') or '0')
if now < last_time then now = last_time end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('HSET', KEYS[2], 't', now)
redis.call('PERSIST', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[6], seq .. '-0', 't', now, 'd', ARGV[5])
local ttl = tonumber(ARGV[7])
local cutoff = now - ttl
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 and tonumber(head[1][2][2]) <= cutoff then
  while true do
    local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 64)
    local fresh = nil
    for _, entry in ipairs(entries) do
      if tonumber(entry[2][2]) > cutoff then fresh = entry[1]; break end
    end
    if fresh then redis.call('XTRIM', KEYS[1], 'MINID', fresh); break end
    local newest = entries[#entries][1]
    redis.call('XTRIM', KEYS[1], 'MINID', (tonumber(string.match(newest, '^%d+')) + 1) .. '-0')
    if #entries < 64 then break end
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SPUBLISH', KEYS[3], epoch .. '-' .. seq .. ' ' .. now .. ' ' .. ARGV[5])
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[4], epoch .. ' ' .. seq .. ' ' .. now .. ' ' .. ARGV[9], 'PX', ARGV[10])
end
return {epoch, seq, now, 0}
""")

#: KEYS: log, meta.  ARGV: new epoch, unused-meta ttl (ms), epoch known, seq known, count.
#: Returns {epoch, last seq, entries newest first}: the entries after the known
#: position if the epoch is the known one, else the newest; at most ``count``.
SYNC = Script(_ENSURE_EPOCH + """
local last = tonumber(redis.call('HGET', KEYS[2], 'seq'))
if last == 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end  -- still read, keep it
local after = 0
if epoch == ARGV[3] then after = tonumber(ARGV[4]) end
local entries = {}
if last > after then
  entries = redis.call('XREVRANGE', KEYS[1], '+', (after + 1) .. '-0', 'COUNT', ARGV[5])
end
return {epoch, last, entries}
""")
