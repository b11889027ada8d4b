-- POST /api/v1/listings/{id}/book: a listing of the data file's "listing" lines at random,
-- "gpus" GPUs for "hours" (min max) hours, starting at a random hour of the bookable
-- "window" (first start, in seconds since 1970, and its length in hours). With an
-- "idempotency" line, every request carries an Idempotency-Key of its own (the line's
-- value, the "invocation" of wrk, the thread and a counter).
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local listings, gpus, min_hours, max_hours, first, window, idempotency, invocation
local sent = 0

function init(args)
   local data = load_data(args[1])
   start(data)
   listings = firsts(data, "listing")
   gpus = number(data, "gpus")
   min_hours, max_hours = number(data, "hours", 1), number(data, "hours", 2)
   first, window = number(data, "window", 1), number(data, "window", 2)
   idempotency = data.idempotency and data.idempotency[1][1]
   invocation = number(data, "invocation")
end

function request()
   local hours = math.random(min_hours, max_hours)
   local starts_at = first + 3600 * math.random(0, window - hours)
   local body = string.format('{"gpu_count":%d,"starts_at":"%s","duration_hours":%d}', gpus, utc(starts_at), hours)
   local extra = { ["Content-Type"] = "application/json" }
   if idempotency then
      sent = sent + 1
      extra["Idempotency-Key"] = string.format("%s-%d-%d-%d", idempotency, invocation, thread_number, sent)
   end
   return wrk.format("POST", "/api/v1/listings/" .. pick(listings) .. "/book", headers(extra), body)
end

-- Conflicts by code: capacity sold meanwhile, or (not expected: the labs have no limit) credit.
function check(status, body)
   if status == 409 then
      count(body:find('"credit_limit_exceeded"', 1, true) and "conflicts_credit" or "conflicts_capacity")
   end
end
