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
would then be given a second time to other messages. So each script takes
the position the calling node has seen in the channel (its replica's end);
if that is further into the same epoch than Redis holds, the script starts a
new epoch too.
"""

from __future__ import annotations

from tidings.brokers.redis.commands import Script

# Shared prologue: start an epoch if the channel has none, or if Redis holds
# less of it than the caller has seen (ARGV[3], ARGV[4]: epoch and seq known).
_ENSURE_EPOCH = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if epoch and epoch == ARGV[3]
    and tonumber(redis.call('HGET', KEYS[2], 'seq')) < tonumber(ARGV[4]) then
  epoch = false
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0, 't', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
"""

#: KEYS: log, meta, notify.  ARGV: new epoch, unused-meta ttl (ms), epoch known, seq known,
#: data, size, ttl (ms).
#: Appends the message, trims by count and age, notifies, returns {epoch, seq, time}.
PUBLISH = Script(_ENSURE_EPOCH + """
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
return {epoch, seq, now}
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
