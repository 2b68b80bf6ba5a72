-- Applies one request's per-key changes to a stored Flask-Session value
-- (a msgpack map) atomically, editing the map at the byte level so that
-- entries the request did not touch keep their exact bytes.
--
-- KEYS[1]  the session key
-- ARGV[1]  TTL in seconds
-- ARGV[2]  flags, each a letter: "c" if the request cleared the session
--          first, "r" to refuse changes to keys changed since they were
--          loaded, "b" to read the key after writing it and "o" when the
--          changes are left out (both below)
-- ARGV[3]  the value the caller believes is stored, or empty
-- ARGV[4]  the caller's own merge of the changes into ARGV[3]
-- then per change, four arguments:
--   the key as msgpack bytes, "s" (set) or "d" (delete),
--   the new value as msgpack bytes (empty for delete),
--   the value as loaded: "a" (absent) or "p" followed by its msgpack bytes
-- Returns {1, the stored value} when merged here, 2 when the caller's merge
-- was stored, 3 when the changes were left out and are needed (nothing
-- changed), 0 when the session no longer exists, and -1 on a conflict (the
-- stored value unchanged). The stored value's TTL is ARGV[1], as the caller
-- knows.
--
-- Redis makes a Lua string of every argument before the script starts,
-- about a thousand of its instructions each: the flags share one argument,
-- and the usual save (the caller's merge over the bytes it expects) needs
-- none of the changes: a caller that sends its merge leaves them out, and
-- sends them in a second call only when the stored bytes were not the
-- expected ones.
--
-- A caller with client tracking on (it caches sessions) asks for a read
-- after the write: the write ended Redis' tracking of the key for it, and
-- the read starts it again, so it keeps hearing of later changes. Others do
-- not need it, and it was a fifth of the script's cost to Redis.

local function flag(letter)
  return string.find(ARGV[2], letter, 1, true) ~= nil
end

local function written()
  if flag('b') then
    redis.call('PTTL', KEYS[1])
  end
end

local cur
if ARGV[3] ~= '' then
  -- The caller merged against what it believes is stored. Stored first and
  -- compared after, with the bytes SET ... GET returns: one call to Redis
  -- instead of a GET and a SET, a ninth less of the script's cost to Redis
  -- in the usual save. The script runs atomically, so nobody sees the
  -- caller's bytes when they were wrong: they are taken back at once and the
  -- save goes on from what was stored, as without the caller's merge.
  cur = redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[1], 'GET')
  if cur == ARGV[3] then
    written()
    return 2
  end
  if not cur then
    redis.call('DEL', KEYS[1])
    return 0
  end
  -- Taken back with the new TTL, as the old one is gone: a conflict or an
  -- unreadable value below leaves the session's bytes as they were, and its
  -- expiry where this save asked for it.
  redis.call('SET', KEYS[1], cur, 'KEEPTTL')
  if flag('o') then
    return 3
  end
else
  cur = redis.call('GET', KEYS[1])
  if not cur then
    return 0
  end
end

local function be(p, n)
  local v = 0
  for i = 0, n - 1 do
    v = v * 256 + string.byte(cur, p + i)
  end
  return v
end

local skip

local function skip_n(p, n)
  for _ = 1, n do
    p = skip(p)
  end
  return p
end

-- The position just after the msgpack object that starts at p.
skip = function(p)
  local m = string.byte(cur, p)
  if m == nil then error('truncated session') end
  if m <= 0x7f or m >= 0xe0 or m == 0xc0 or m == 0xc2 or m == 0xc3 then return p + 1 end
  if m <= 0x8f then return skip_n(p + 1, (m - 0x80) * 2) end
  if m <= 0x9f then return skip_n(p + 1, m - 0x90) end
  if m <= 0xbf then return p + 1 + (m - 0xa0) end
  if m == 0xc4 or m == 0xd9 then return p + 2 + be(p + 1, 1) end
  if m == 0xc5 or m == 0xda then return p + 3 + be(p + 1, 2) end
  if m == 0xc6 or m == 0xdb then return p + 5 + be(p + 1, 4) end
  if m == 0xc7 then return p + 3 + be(p + 1, 1) end
  if m == 0xc8 then return p + 4 + be(p + 1, 2) end
  if m == 0xc9 then return p + 6 + be(p + 1, 4) end
  if m == 0xca then return p + 5 end
  if m == 0xcb then return p + 9 end
  if m == 0xcc or m == 0xd0 then return p + 2 end
  if m == 0xcd or m == 0xd1 then return p + 3 end
  if m == 0xce or m == 0xd2 then return p + 5 end
  if m == 0xcf or m == 0xd3 then return p + 9 end
  if m == 0xd4 then return p + 3 end
  if m == 0xd5 then return p + 4 end
  if m == 0xd6 then return p + 6 end
  if m == 0xd7 then return p + 10 end
  if m == 0xd8 then return p + 18 end
  if m == 0xdc then return skip_n(p + 3, be(p + 1, 2)) end
  if m == 0xdd then return skip_n(p + 5, be(p + 1, 4)) end
  if m == 0xde then return skip_n(p + 3, be(p + 1, 2) * 2) end
  if m == 0xdf then return skip_n(p + 5, be(p + 1, 4) * 2) end
  error('not msgpack')
end

local m = string.byte(cur, 1)
local count, p
if m and m >= 0x80 and m <= 0x8f then
  count, p = m - 0x80, 2
elseif m == 0xde then
  count, p = be(2, 2), 4
elseif m == 0xdf then
  count, p = be(2, 4), 6
else
  return redis.error_reply('the stored session is not a msgpack map')
end

local keys, vals, index = {}, {}, {}
-- Entries are numbered by keys, which never has holes: vals has holes once
-- a key is deleted, and # of a table with holes may stop at any of them.
for n = 1, count do
  local ke = skip(p)
  local ve = skip(ke)
  local k = string.sub(cur, p, ke - 1)
  keys[n] = k
  vals[n] = string.sub(cur, ke, ve - 1)
  index[k] = n
  p = ve
end

local i = 5
if flag('r') then
  while i <= #ARGV do
    local k, loaded = ARGV[i], ARGV[i + 3]
    local at = index[k]
    if loaded == 'a' then
      if at and vals[at] ~= nil then return -1 end
    elseif not at or vals[at] ~= string.sub(loaded, 2) then
      return -1
    end
    i = i + 4
  end
  i = 5
end

if flag('c') then
  keys, vals, index = {}, {}, {}
end

while i <= #ARGV do
  local k, op, v = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local at = index[k]
  if op == 's' then
    if at then
      vals[at] = v
    else
      local n = #keys + 1
      keys[n] = k
      vals[n] = v
      index[k] = n
    end
  elseif at then
    vals[at] = nil
  end
  i = i + 4
end

local parts, n = {}, 0
for j = 1, #keys do
  if vals[j] ~= nil then
    parts[#parts + 1] = keys[j] .. vals[j]
    n = n + 1
  end
end
local header
if n <= 15 then
  header = string.char(0x80 + n)
elseif n <= 0xffff then
  header = string.char(0xde, math.floor(n / 256), n % 256)
else
  header = string.char(0xdf, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
end
local value = header .. table.concat(parts)
redis.call('SET', KEYS[1], value, 'EX', ARGV[1])
written()
return {1, value}
