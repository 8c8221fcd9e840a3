-- Adds one run's batch to its stream, in seq order, each entry with the explicit id <seq>-0.
-- KEYS[1]: the run's stream. ARGV: seq, type, payload, event id; four values per entry.
-- Returns {added, present}.
--
-- Redis refuses an id at or below the stream's top ("equal or smaller than the target stream
-- top item"). That is this very event only if the entry at that id is it; if the entry is
-- gone (a consumer trimmed it), only if a later entry is a later event of this run (event
-- ids grow with seq within a run, and a run created again gets larger ids than its
-- predecessor's). Anything else is a conflict, never "already published".
-- Any error stops the script at that entry, so a failed entry is never followed by a later
-- one and the stream never gets a gap a retry could not fill. The error keeps Redis's own
-- code in front (OOM, READONLY, WRONGTYPE, ...), so the caller can tell an answer about the
-- sink from an answer about this run.

local key = KEYS[1]

local function fields(flat)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map
end

local function holds(id, etype, payload, event)
  local at = redis.call('XRANGE', key, id, id)
  if #at == 1 then
    local found = fields(at[1][2])
    return (found.event == nil or found.event == event)
      and found.type == etype and found.payload == payload, 'other'
  end
  local later = redis.call('XRANGE', key, '(' .. id, '+', 'COUNT', 1)
  if #later == 1 then
    local found = fields(later[1][2])
    if found.event ~= nil and tonumber(found.event) > tonumber(event) then
      return true, nil
    end
  end
  return false, 'gone'
end

local added, present = 0, 0
for i = 1, #ARGV, 4 do
  local id = ARGV[i] .. '-0'
  local reply = redis.pcall('XADD', key, id, 'type', ARGV[i + 1], 'payload', ARGV[i + 2],
                            'event', ARGV[i + 3])
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'equal or smaller', 1, true) then
      return redis.error_reply(reply.err .. ' (entry ' .. id .. ')')
    end
    local same, why = holds(id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    if not same then
      return redis.error_reply('CONFLICT ' .. ARGV[i] .. ' ' .. why)
    end
    present = present + 1
  else
    added = added + 1
  end
end
return {added, present}
