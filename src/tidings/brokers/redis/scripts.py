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

In a Redis Cluster a slot moved to another node (resharding) carries its
keys, intact, to a process with another ``run_id``: that must not start a
new epoch, and a shard restored from an older snapshot or a promoted replica
must. So in a cluster the metadata also keeps the cluster id of the node
that wrote it (``node``) and that node's replication id (``repl``), and a
script on another process keeps the epoch only if all of these hold
(:data:`_MOVED_INTACT`): another node wrote it (this one did not restart);
this node did not replicate it (it was not that node's replica, since
promoted); the writer is still a healthy master (a failover leaves it
failed or a replica); and the keys arrived while this process ran (it loaded
nothing from disk at start, or the channel's last message is over a second
younger than the process: ``uptime_in_seconds`` is whole seconds, and the
nodes' clocks may differ by less than one). Anything else starts a new
epoch: at worst a reader is told of a gap that was not one, never given a
reused id.

Each script also takes the position the calling node has seen in the
channel (its replica's end); if that is further into the same epoch than
Redis holds, the script starts a new epoch too (a second line of defence,
the only one against older data written back inside a running Redis:
``RESTORE`` of an old dump).

``PUBLISH`` also keeps idempotency keys (core/idempotency.py): a string key
per (channel, key) holding ``EPOCH SEQ TIME FINGERPRINT``, expiring after the
window. It is read and written in the same script as the append, so two nodes
racing with one key store one message. A record of another epoch is ignored.
"""

from __future__ import annotations

from tidings.brokers.redis.commands import Script

# Whether a channel's metadata, written by another process of a Redis Cluster,
# came here intact by resharding (see the module docstring). meta: HMGET of
# epoch, seq, run, node, repl, t; info: INFO server of this process.
_MOVED_INTACT = """
local function moved_intact(meta, node, info)
  local writer = meta[4]
  if not writer or writer == node then return false end
  local replication = redis.call('INFO', 'replication')
  if meta[5] == string.match(replication, 'master_replid:(%x+)')
      or meta[5] == string.match(replication, 'master_replid2:(%x+)') then
    return false
  end
  local healthy = false
  for line in string.gmatch(redis.call('CLUSTER', 'NODES'), '[^\\n]+') do
    local id, _, flags = string.match(line, '^(%x+) (%S+) (%S+)')
    if id == writer then
      healthy = string.find(flags, 'master', 1, true) ~= nil
        and string.find(flags, 'fail', 1, true) == nil
    end
  end
  if not healthy then return false end
  local persistence = redis.call('INFO', 'persistence')
  if string.match(persistence, 'rdb_last_load_keys_loaded:(%d+)') == '0'
      and string.match(persistence, 'aof_enabled:(%d+)') == '0' then
    return true
  end
  local clock = redis.call('TIME')
  local uptime = tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
  return tonumber(meta[6] or '0') > (tonumber(clock[1]) - uptime + 1) * 1000
end
"""

# Shared prologue: start an epoch if the channel has none, if its metadata was
# written by another Redis process whose data this one may not have in full
# (a restart, a failover; in a cluster, not a slot moved here), or if Redis
# holds less of it than the caller has seen (ARGV[3], ARGV[4]: epoch and seq known).
_ENSURE_EPOCH = _MOVED_INTACT + """
local info = redis.call('INFO', 'server')
local run = string.match(info, 'run_id:(%x+)')
local cluster = string.find(info, 'redis_mode:cluster', 1, true)
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'seq', 'run', 'node', 'repl', 't')
local epoch = meta[1]
local node = false
if epoch and meta[3] ~= run then
  if cluster then node = redis.call('CLUSTER', 'MYID') end
  if not (cluster and moved_intact(meta, node, info)) then epoch = false end
end
if epoch and epoch == ARGV[3] and tonumber(meta[2]) < tonumber(ARGV[4]) then
  epoch = false
end
if not epoch or meta[3] ~= run then
  local origin = {'run', run}
  if cluster then
    node = node or redis.call('CLUSTER', 'MYID')
    local replication = redis.call('INFO', 'replication')
    origin = {'run', run, 'node', node,
              'repl', string.match(replication, 'master_replid:(%x+)')}
  end
  if not epoch then
    epoch = ARGV[1]
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0, 't', 0, unpack(origin))
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  else
    redis.call('HSET', KEYS[2], unpack(origin))
  end
end
"""

#: KEYS: log, meta, and the idempotency record if there is a key.  ARGV: new epoch,
#: unused-meta ttl (ms), epoch known, seq known, data, size, ttl (ms), idempotency key
#: ('' for none), fingerprint, window (ms), pub/sub channel. The pub/sub channel is not
#: among the keys: a key that does not exist makes a cluster answer ``TRYAGAIN`` while
#: its slot moves, and a pub/sub channel never exists as a key.
#: Appends the message, trims by count and age, notifies, returns {epoch, seq, time, 0};
#: or, if the key names a message of this epoch, stores nothing and returns
#: {epoch, seq, time, 1} for that message (same fingerprint) or {..., 2} (another).
PUBLISH = Script(_ENSURE_EPOCH + """
if ARGV[8] ~= '' then
  local record = redis.call('GET', KEYS[3])
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
redis.call('SPUBLISH', ARGV[11], epoch .. '-' .. seq .. ' ' .. now .. ' ' .. ARGV[5])
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[3], epoch .. ' ' .. seq .. ' ' .. now .. ' ' .. ARGV[9], 'PX', ARGV[10])
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

# Users' server-side channels (keys.user_channels_key): a hash channel -> start position.
# Every user's hash has the hash tag of keys.USERS, as has the pub/sub channel that tells
# every node of a change: one script adds and announces atomically, in a cluster too.

#: KEYS: the user's hash.  ARGV: channel, start, limit, pub/sub name, change payload.
#: Returns 1 (added), 0 (there already), -1 (the user has ``limit`` channels).
ADD_USER_CHANNEL = Script("""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SPUBLISH', ARGV[4], ARGV[5])
return 1
""")

#: KEYS: the user's hash.  ARGV: channel, pub/sub name, change payload.  Returns 1 or 0.
REMOVE_USER_CHANNEL = Script("""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SPUBLISH', ARGV[2], ARGV[3])
return 1
""")

#: KEYS: the user's hash.  Returns HGETALL's flat list.
USER_CHANNELS = Script("""
return redis.call('HGETALL', KEYS[1])
""")
