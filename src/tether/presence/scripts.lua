-- Cluster presence scripts for Redis >= 7 and Valkey >= 7.2. Each script is split from the
-- others by a line "--- NAME"; tether.presence.cluster loads them with SCRIPT LOAD and runs
-- them by SHA.
--
-- Every script touches the keys of one hash slot only, because Redis Cluster runs a script on
-- the primary of its keys' slot and rejects any other key: transition, finish_grace and
-- reap_device change one user's hash (and publish on that user's presence and user channels,
-- which have the same hash tag), renew and claim_leases the two lease sets (tag {leases}),
-- claim_grace and grace_done the grace set. The gateway writes its device index and the grace
-- set with plain commands before and after the transition scripts (see RedisPresence._apply).
--
-- Keys (PREFIX is "tether:" by default):
--   PREFIX p:{<user>}        hash: "dev:<device>" = "<gateway>\t<epoch>\t<connection>\t<activity>",
--                            "mode", "status" (last published), "seen" (last seen, Unix ms),
--                            "ver" (version of the published presence), "off_at" (pending offline)
--   PREFIX g:{<gw>}:<ep>     set of "<user>\t<device>\t<connection>" that gateway epoch reported
--                            online; it may hold extra entries, never fewer
--   PREFIX {leases}          sorted set of "<gateway>\t<epoch>", scored by lease expiry (Unix ms)
--   PREFIX {leases}:reaping  sorted set of "<gateway>\t<epoch>\t<last renewal ms>" of lapsed
--                            leases being reaped, scored by when the reaper's claim lapses
--   PREFIX grace             sorted set of users whose OFFLINE may be due, scored by when to
--                            check (Unix ms); it may hold extra entries, never fewer
--
-- Status numbers are tether.v1.Status: 1 offline, 2 online, 3 away, 4 busy. Activity: 1 active,
-- 2 idle. Mode: 1 available, 2 busy, 3 invisible. Scripts that publish take the channel and
-- the command: PUBLISH on a standalone server, SPUBLISH (sharded pub/sub) on a cluster.

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

-- Encode a length-delimited Protobuf field (wire type 2): a string or a message.
local function bytes_field(number, value)
  return varint(number * 8 + 2) .. varint(#value) .. value
end

-- Encode tether.bus.v1.Envelope{presence_change{presence{user_id, status, last_seen_ms, version}}}.
-- Timestamps stay below 2^53, so Lua's doubles hold them exactly.
local function encode_change(user, status, seen, version)
  local inner = bytes_field(1, user) .. "\16" .. varint(status)
  if seen > 0 then inner = inner .. "\24" .. varint(seen) end
  inner = inner .. "\32" .. varint(version)
  return bytes_field(16, bytes_field(1, inner))
end

-- Encode tether.bus.v1.Envelope{device_claim{device_id, connection_id, gateway_id,
-- replaced_gateway_id, replaced_connection_id}}.
local function encode_claim(device, gateway, connection, old_gateway, old_connection)
  local claim = bytes_field(1, device) .. bytes_field(2, connection) .. bytes_field(4, gateway)
    .. bytes_field(5, old_gateway) .. bytes_field(6, old_connection)
  return bytes_field(23, claim)
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

local function publish(hash, user, status, devices, now, channel, command)
  local seen = tonumber(redis.call("HGET", hash, "seen") or "0")
  if status ~= 1 or devices > 0 then
    -- Online, or invisible: last seen is now. A user whose last device left keeps the time
    -- that device was last heard from.
    seen = now
  end
  redis.call("HSET", hash, "status", status, "seen", seen)
  redis.call("HDEL", hash, "off_at")
  -- Versions follow the clock, so they keep growing after Redis loses its data.
  local version = math.max(tonumber(redis.call("HGET", hash, "ver") or "0") + 1, now)
  redis.call("HSET", hash, "ver", version)
  redis.call(command, channel, encode_change(user, status, seen, version))
  return 1
end

-- Publish the user's new visible status if it changed; delay OFFLINE by grace_ms.
local function settle(hash, user, now, grace_ms, channel, command)
  local status, devices = visible(hash)
  local old = tonumber(redis.call("HGET", hash, "status") or "1")
  if status == old then
    redis.call("HDEL", hash, "off_at")
    return 0
  end
  if status == 1 and devices == 0 and grace_ms > 0 then
    if redis.call("HEXISTS", hash, "off_at") == 0 then
      redis.call("HSET", hash, "off_at", now + grace_ms)
    end
    return 0
  end
  return publish(hash, user, status, devices, now, channel, command)
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
-- KEYS: user hash
-- ARGV: kind (online|restore|offline|status), user, device, gateway, epoch, connection,
--       activity, mode, at_ms, now_ms, grace_ms, presence channel, publish command, user channel
-- An ONLINE makes its connection the device's owner. If another gateway's connection owned
-- the device, a DeviceClaim naming that one goes to the user channel, and its gateway closes
-- it. A restore is an ONLINE reported again after a resync. It takes a free device, but when
-- another gateway owns the device, the claim names the restored connection instead.
-- Return the time the user's OFFLINE is due (Unix ms) if one is pending after this change,
-- else 1 if a change was published, else 0.
local hash = KEYS[1]
local kind, user, device = ARGV[1], ARGV[2], ARGV[3]
local owner = ARGV[4] .. "\t" .. ARGV[5] .. "\t" .. ARGV[6]
local activity, mode = tonumber(ARGV[7]), tonumber(ARGV[8])
local at, now, grace_ms = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local field = "dev:" .. device

if kind == "online" or kind == "restore" then
  if activity == 0 then activity = 1 end
  local previous = redis.call("HGET", hash, field)
  local old_gateway, old_connection
  if previous then
    old_gateway, old_connection = string.match(previous, "^([^\t]*)\t[^\t]*\t([^\t]*)\t")
  end
  -- A gateway replaces its own connections itself, and a restarted one has none left.
  if previous and old_gateway ~= ARGV[4] then
    if kind == "restore" then
      -- Another gateway's connection took the device while this gateway's state was lost
      -- from Redis: that one claimed later, so the restored connection yields.
      redis.call(ARGV[13], ARGV[14],
        encode_claim(device, old_gateway, old_connection, ARGV[4], ARGV[6]))
      return 0
    end
    redis.call(ARGV[13], ARGV[14],
      encode_claim(device, ARGV[4], ARGV[6], old_gateway, old_connection))
  end
  redis.call("HSET", hash, field, owner .. "\t" .. activity)
  if mode > 0 then redis.call("HSET", hash, "mode", mode) end
elseif kind == "offline" then
  if not remove_device(hash, device, owner, math.min(at, now)) then return 0 end
else
  local current = redis.call("HGET", hash, field)
  if not current or string.sub(current, 1, #owner + 1) ~= owner .. "\t" then return 0 end
  if activity > 0 then redis.call("HSET", hash, field, owner .. "\t" .. activity) end
  if mode > 0 then redis.call("HSET", hash, "mode", mode) end
end
local published = settle(hash, user, now, grace_ms, ARGV[12], ARGV[13])
local off_at = redis.call("HGET", hash, "off_at")
if off_at then return tonumber(off_at) end
return published

--- finish_grace
-- KEYS: user hash
-- ARGV: now_ms, user, channel, publish command
-- Publish the user's OFFLINE if its grace period is over and the user did not come back.
-- Return the time it is due (Unix ms) if it is pending but not due yet, else 0.
local hash, now = KEYS[1], tonumber(ARGV[1])
local off_at = tonumber(redis.call("HGET", hash, "off_at") or "-1")
if off_at < 0 then return 0 end
if off_at > now then return off_at end
redis.call("HDEL", hash, "off_at")
local status, devices = visible(hash)
local old = tonumber(redis.call("HGET", hash, "status") or "1")
if status ~= old then publish(hash, ARGV[2], status, devices, now, ARGV[3], ARGV[4]) end
return 0

--- renew
-- KEYS: leases zset; ARGV: member "<gateway>\t<epoch>", expiry ms, register (1 or 0)
-- Return 1 if the lease is held, 0 if it had lapsed and was claimed for reaping.
if ARGV[3] == "1" or redis.call("ZSCORE", KEYS[1], ARGV[1]) then
  redis.call("ZADD", KEYS[1], tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0

--- claim_leases
-- KEYS: leases zset, reaping zset
-- ARGV: now_ms, max gateways, lease_ms
-- Claim up to max gateway epochs to reap: lapsed leases, and claims of reapers that lapsed
-- before they finished (a reaper killed mid-way). Each claim lasts lease_ms. Return them as
-- "<gateway>\t<epoch>\t<last renewal ms>"; claims are atomic, so each goes to one reaper.
local now, max, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local claimed = redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", now, "LIMIT", 0, max)
for _, entry in ipairs(claimed) do
  redis.call("ZADD", KEYS[2], now + lease_ms, entry)
end
if #claimed < max then
  local lapsed = redis.call(
    "ZRANGEBYSCORE", KEYS[1], "-inf", now, "WITHSCORES", "LIMIT", 0, max - #claimed)
  for i = 1, #lapsed, 2 do
    -- The gateway last renewed its lease one lease time before expiry: its devices were last
    -- known alive then.
    local renewed_at = tonumber(lapsed[i + 1]) - lease_ms
    local entry = lapsed[i] .. "\t" .. string.format("%d", renewed_at)
    redis.call("ZREM", KEYS[1], lapsed[i])
    redis.call("ZADD", KEYS[2], now + lease_ms, entry)
    claimed[#claimed + 1] = entry
  end
end
return claimed

--- reap_device
-- KEYS: user hash
-- ARGV: device, owner prefix "<gateway>\t<epoch>\t", last renewal ms, now_ms, user, channel,
--       publish command
-- Remove the device if that gateway epoch still owns it, and publish the user's change at
-- once: the lease timeout already gave the device time to come back elsewhere. Return 1 if
-- the device was removed, else 0.
local hash, prefix = KEYS[1], ARGV[2]
local field = "dev:" .. ARGV[1]
local current = redis.call("HGET", hash, field)
if not current or string.sub(current, 1, #prefix) ~= prefix then return 0 end
redis.call("HDEL", hash, field)
if tonumber(redis.call("HGET", hash, "mode") or "1") ~= 3 then
  local seen = tonumber(redis.call("HGET", hash, "seen") or "0")
  local renewed_at = tonumber(ARGV[3])
  if renewed_at > seen then redis.call("HSET", hash, "seen", renewed_at) end
end
settle(hash, ARGV[5], tonumber(ARGV[4]), 0, ARGV[6], ARGV[7])
return 1

--- claim_grace
-- KEYS: grace zset
-- ARGV: now_ms, max users, claim score
-- Return up to max users whose check is due, each rescored to the claim score, so that no
-- other gateway checks them meanwhile and a check lost with its gateway is retried later.
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", tonumber(ARGV[1]), "LIMIT", 0,
  tonumber(ARGV[2]))
for _, user in ipairs(due) do
  redis.call("ZADD", KEYS[1], ARGV[3], user)
end
return due

--- grace_done
-- KEYS: grace zset
-- ARGV: claim score, then pairs of user and next check (Unix ms, 0 for none)
-- Remove each checked user, or move its check to the given time. A user whose score is no
-- longer the claim score got a new entry meanwhile (an OFFLINE on some gateway) and keeps it.
local claim = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local user, next_at = ARGV[i], tonumber(ARGV[i + 1])
  if tonumber(redis.call("ZSCORE", KEYS[1], user) or "-1") == claim then
    if next_at > 0 then
      redis.call("ZADD", KEYS[1], next_at, user)
    else
      redis.call("ZREM", KEYS[1], user)
    end
  end
end
return 0
