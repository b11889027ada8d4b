-- POST /api/v1/usage: batches of usage records that are all new and all valid.
--
-- Request number r (numbers start at the data file's "base"; thread t of "threads" sends
-- base + t - 1, then every "threads"-th) reports contract r mod C (C "contract" lines: id,
-- then its nodes' hostnames) for "batch_hours" hours, block r div C of the "month" (its
-- first hour in seconds since 1970, and its hours): one record per node and hour, so no
-- node-hour is ever reported twice. Concurrent requests report different contracts.
-- "highest.next_base" is the first number not used; "exhausted" counts requests past the
-- month's last block (sent again from its start: duplicates).
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local contracts, month_start, month_hours, batch_hours, base, thread_count
local sent = 0

function init(args)
   local data = load_data(args[1])
   start(data)
   contracts = data.contract
   month_start, month_hours = number(data, "month", 1), number(data, "month", 2)
   batch_hours, base, thread_count = number(data, "batch_hours"), number(data, "base"), number(data, "threads")
end

function request()
   local r = base + sent * thread_count + thread_number - 1
   sent = sent + 1
   raise("next_base", r + 1)
   local contract = contracts[r % #contracts + 1]
   local blocks = math.floor(month_hours / batch_hours)
   local block = math.floor(r / #contracts)
   if block >= blocks then
      count("exhausted")
      block = block % blocks
   end
   local records = {}
   for hour = block * batch_hours, (block + 1) * batch_hours - 1 do
      local started_at = month_start + 3600 * hour
      local from, to = utc(started_at), utc(started_at + 3600)
      for node = 2, #contract do
         records[#records + 1] = string.format(
            '{"id":"%s-%d-%d","contract":%s,"node":"%s","started_at":"%s","ended_at":"%s","gpu_seconds":%d}',
            contract[1], hour, node - 1, contract[1], contract[node], from, to, math.random(14400, 28800)
         )
      end
   end
   local body = '{"records":[' .. table.concat(records, ",") .. "]}"
   return wrk.format("POST", "/api/v1/usage", headers({ ["Content-Type"] = "application/json" }), body)
end

-- Every record new and valid: a 200 with nothing duplicate or rejected.
function check(status, body)
   if status == 200 then
      if not body:find('"duplicates":[]', 1, true) then
         count("batches_with_duplicates")
      end
      if not body:find('"rejected":[]', 1, true) then
         count("batches_with_rejections")
      end
   end
end
