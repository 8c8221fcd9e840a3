-- The kicked drain ends. KEYS: the kicked set, the mark of its drain, the wake-up list.
-- Clears the mark only if no run is waiting, and returns 1; atomic with kick.lua, so a kick
-- lands either before (the drain goes on) or after (the kick queues a new drain).
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
  return 1
end
return 0
