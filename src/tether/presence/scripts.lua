-- Cluster presence scripts for Redis >= 7 and Valkey. Each script is split from the others by a
-- line "--- NAME"; tether.presence.cluster loads them with SCRIPT LOAD and runs them by SHA.
--
-- Keys (PREFIX is "tether:" by default):
--   PREFIX p:<user>      hash: "dev:<device>" = "<gateway>\t<epoch>\t<connection>\t<activity>",
--                        "mode", "status" (last published), "seen" (last seen, Unix ms),
--                        "ver" (version of the published presence), "off_at" (pending offline)
--   PREFIX g:<gw>:<ep>   set of "<user>\t<device>" that gateway epoch reported online
--   PREFIX leases        sorted set of "<gateway>\t<epoch>", scored by lease expiry (Unix ms)
--   PREFIX grace         sorted set of users whose OFFLINE is pending, scored by its due time
--
-- Status numbers are tether.v1.Status: 1 offline, 2 online, 3 away, 4 busy. Activity: 1 active,
-- 2 idle. Mode: 1 available, 2 busy, 3 invisible.

--- common
local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end

-- Encode tether.bus.v1.Envelope{presence_change{presence{user_id, status, last_seen_ms, version}}}.
-- Timestamps stay below 2^53, so Lua's doubles hold them exactly.
local function encode_change(user, status, seen, version)
  local inner = "\10" .. varint(#user) .. user .. "\16" .. varint(status)
  if seen > 0 then inner = inner .. "\24" .. varint(seen) end
  inner = inner .. "\32" .. varint(version)
  local change = "\10" .. varint(#inner) .. inner
  return "\130\1" .. varint(#change) .. change
end

-- Return the visible status and the number of devices of a user hash.
local function visible(hash)
  local all = redis.call("HGETALL", hash)
  local devices, active, mode = 0, false, 1
  for i = 1, #all, 2 do
    local key, value = all[i], all[i + 1]
    if string.sub(key, 1, 4) == "dev:" then
      devices = devices + 1
      if tonumber(string.match(value, "(%d+)$")) ~= 2 then active = true end
    elseif key == "mode" then
      mode = tonumber(value)
    end
  end
  if devices == 0 or mode == 3 then return 1, devices end
  if mode == 2 then return 4, devices end
  if active then return 2, devices end
  return 3, devices
end

local function publish(hash, user, status, devices, now, channel_prefix, grace_key)
  local seen = tonumber(redis.call("HGET", hash, "seen") or "0")
  if status ~= 1 or devices > 0 then
    -- Online, or invisible: last seen is now. A user whose last device left keeps the time
    -- that device was last heard from.
    seen = now
  end
  redis.call("HSET", hash, "status", status, "seen", seen)
  redis.call("HDEL", hash, "off_at")
  redis.call("ZREM", grace_key, user)
  -- Versions follow the clock, so they keep growing after Redis loses its data.
  local version = math.max(tonumber(redis.call("HGET", hash, "ver") or "0") + 1, now)
  redis.call("HSET", hash, "ver", version)
  redis.call("PUBLISH", channel_prefix .. user, encode_change(user, status, seen, version))
  return 1
end

-- Publish the user's new visible status if it changed; delay OFFLINE by grace_ms.
local function settle(hash, user, now, grace_ms, channel_prefix, grace_key)
  local status, devices = visible(hash)
  local old = tonumber(redis.call("HGET", hash, "status") or "1")
  if status == old then
    if redis.call("HDEL", hash, "off_at") == 1 then redis.call("ZREM", grace_key, user) end
    return 0
  end
  if status == 1 and devices == 0 and grace_ms > 0 then
    if redis.call("HEXISTS", hash, "off_at") == 0 then
      redis.call("HSET", hash, "off_at", now + grace_ms)
      redis.call("ZADD", grace_key, now + grace_ms, user)
    end
    return 0
  end
  return publish(hash, user, status, devices, now, channel_prefix, grace_key)
end

-- Remove a device if the given owner ("<gateway>\t<epoch>\t<connection>") still owns it.
local function remove_device(hash, device, owner, seen_at)
  local field = "dev:" .. device
  local current = redis.call("HGET", hash, field)
  if not current or string.sub(current, 1, #owner + 1) ~= owner .. "\t" then return false end
  redis.call("HDEL", hash, field)
  if tonumber(redis.call("HGET", hash, "mode") or "1") ~= 3 then
    local seen = tonumber(redis.call("HGET", hash, "seen") or "0")
    if seen_at > seen then redis.call("HSET", hash, "seen", seen_at) end
  end
  return true
end

--- transition
-- KEYS: user hash, gateway epoch set, grace zset
-- ARGV: kind (online|offline|status), user, device, gateway, epoch, connection, activity,
--       mode, at_ms, now_ms, grace_ms, channel prefix
local hash, members, grace_key = KEYS[1], KEYS[2], KEYS[3]
local kind, user, device = ARGV[1], ARGV[2], ARGV[3]
local owner = ARGV[4] .. "\t" .. ARGV[5] .. "\t" .. ARGV[6]
local activity, mode = tonumber(ARGV[7]), tonumber(ARGV[8])
local at, now, grace_ms = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local field = "dev:" .. device

if kind == "online" then
  if activity == 0 then activity = 1 end
  redis.call("HSET", hash, field, owner .. "\t" .. activity)
  redis.call("SADD", members, user .. "\t" .. device)
  if mode > 0 then redis.call("HSET", hash, "mode", mode) end
elseif kind == "offline" then
  if not remove_device(hash, device, owner, math.min(at, now)) then return 0 end
  redis.call("SREM", members, user .. "\t" .. device)
else
  local current = redis.call("HGET", hash, field)
  if not current or string.sub(current, 1, #owner + 1) ~= owner .. "\t" then return 0 end
  if activity > 0 then redis.call("HSET", hash, field, owner .. "\t" .. activity) end
  if mode > 0 then redis.call("HSET", hash, "mode", mode) end
end
return settle(hash, user, now, grace_ms, ARGV[12], grace_key)

--- finish_grace
-- KEYS: grace zset
-- ARGV: now_ms, key prefix, channel prefix, max users
local now = tonumber(ARGV[1])
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "LIMIT", 0, tonumber(ARGV[4]))
local published = 0
for _, user in ipairs(due) do
  redis.call("ZREM", KEYS[1], user)
  local hash = ARGV[2] .. "p:" .. user
  local off_at = tonumber(redis.call("HGET", hash, "off_at") or "-1")
  if off_at >= 0 and off_at <= now then
    redis.call("HDEL", hash, "off_at")
    local status, devices = visible(hash)
    local old = tonumber(redis.call("HGET", hash, "status") or "1")
    if status ~= old then
      published = published + publish(hash, user, status, devices, now, ARGV[3], KEYS[1])
    end
  end
end
return published

--- renew
-- KEYS: leases zset; ARGV: member "<gateway>\t<epoch>", expiry ms, register (1 or 0)
-- Return 1 if the lease is held, 0 if it had lapsed and was reaped.
if ARGV[3] == "1" or redis.call("ZSCORE", KEYS[1], ARGV[1]) then
  redis.call("ZADD", KEYS[1], tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0

--- reap
-- KEYS: leases zset, grace zset
-- ARGV: now_ms, key prefix, channel prefix, max gateways, lease_ms
-- Remove every device of each gateway epoch whose lease lapsed, and publish the changes at
-- once: the lease timeout already gave the devices time to come back elsewhere.
local now = tonumber(ARGV[1])
local lapsed = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "LIMIT", 0, tonumber(ARGV[4]))
local removed = 0
for _, member in ipairs(lapsed) do
  -- The gateway last renewed its lease one lease time before expiry: its devices were last
  -- known alive then.
  local renewed_at = tonumber(redis.call("ZSCORE", KEYS[1], member)) - tonumber(ARGV[5])
  redis.call("ZREM", KEYS[1], member)
  local gateway, epoch = string.match(member, "^(.-)\t(.*)$")
  local set_key = ARGV[2] .. "g:" .. gateway .. ":" .. epoch
  for _, entry in ipairs(redis.call("SMEMBERS", set_key)) do
    local user, device = string.match(entry, "^(.-)\t(.*)$")
    local hash = ARGV[2] .. "p:" .. user
    local current = redis.call("HGET", hash, "dev:" .. device)
    local prefix = gateway .. "\t" .. epoch .. "\t"
    if current and string.sub(current, 1, #prefix) == prefix then
      redis.call("HDEL", hash, "dev:" .. device)
      if tonumber(redis.call("HGET", hash, "mode") or "1") ~= 3 then
        local seen = tonumber(redis.call("HGET", hash, "seen") or "0")
        if renewed_at > seen then redis.call("HSET", hash, "seen", renewed_at) end
      end
      removed = removed + 1
      settle(hash, user, now, 0, ARGV[3], KEYS[2])
    end
  end
  redis.call("DEL", set_key)
end
return removed
