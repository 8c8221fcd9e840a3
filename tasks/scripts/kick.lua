-- A producer's kick. KEYS: the kicked set, the mark of its drain, the drain's wake-up list.
-- ARGV: the mark's TTL in seconds, then the run ids.
-- Returns 1 when this call set the mark: no drain of the set was queued or running, so the
-- caller queues one. Otherwise it wakes the drain, which may be waiting for more kicks.
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[1]) then
  return 1
end
redis.call('LPUSH', KEYS[3], 1)
redis.call('LTRIM', KEYS[3], 0, 0)
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 0
