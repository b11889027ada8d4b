-- What the wrk scripts of bench/http_load.py share: the data file the bench writes, API keys,
-- random picks, status counts, and one JSON line of figures when the run is done.
--
-- A script starts with
--   dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")
-- and is run as `wrk ... -s <script> <url> -- <data file>`. The data file has one item a
-- line: a word, then its values ("key gpb_...", "path /api/v1/organization", "seed 7").
-- The bench gives each run of wrk a seed of its own.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads) -- 1, 2, ...: seeds and disjoint request numbers
end

-- Per thread: responses by status, counters a script adds (summed over the threads), and
-- figures whose maximum over the threads is reported.
statuses = {}
tally = {}
highest = {}

function load_data(path)
   local data = {}
   for line in io.lines(path) do
      local words = {}
      for word in line:gmatch("%S+") do
         words[#words + 1] = word
      end
      if #words > 0 then
         local name = table.remove(words, 1)
         data[name] = data[name] or {}
         table.insert(data[name], words)
      end
   end
   return data
end

-- The first value of each "name" line.
function firsts(data, name)
   local values = {}
   for _, words in ipairs(data[name] or {}) do
      values[#values + 1] = words[1]
   end
   return values
end

function number(data, name, index)
   return tonumber(data[name][1][index or 1])
end

local keys = {}

-- Every script calls this from init(): random seed per thread, and the API keys.
function start(data)
   math.randomseed(number(data, "seed") * 1000 + thread_number)
   keys = firsts(data, "key")
end

function pick(list)
   return list[math.random(#list)]
end

-- A request's headers: one of the keys at random (several labs share the load, as they would).
function headers(extra)
   local result = { ["Authorization"] = "Bearer " .. pick(keys) }
   for name, value in pairs(extra or {}) do
      result[name] = value
   end
   return result
end

function utc(epoch)
   return os.date("!%Y-%m-%dT%H:%M:%SZ", epoch)
end

function count(name, n)
   tally[name] = (tally[name] or 0) + (n or 1)
end

function raise(name, value)
   if value > (highest[name] or value - 1) then
      highest[name] = value
   end
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if check then
      check(status, body)
   end
end

local function object(values)
   local names = {}
   for name in pairs(values) do
      names[#names + 1] = name
   end
   table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
   local parts = {}
   for _, name in ipairs(names) do
      parts[#parts + 1] = string.format('"%s":%s', tostring(name), string.format("%.17g", values[name]))
   end
   return "{" .. table.concat(parts, ",") .. "}"
end

-- Latency quantiles as [percentile, microseconds] pairs, so that the bench can merge runs:
-- every percent, then every 0.1 percent from 98 (each one scans the histogram), and the maximum.
local function quantiles(latency)
   local pairs_ = {}
   for tenth = 10, 1000, 10 do
      if tenth > 980 then
         break
      end
      pairs_[#pairs_ + 1] = string.format("[%g,%d]", tenth / 10, latency:percentile(tenth / 10))
   end
   for tenth = 981, 999 do
      pairs_[#pairs_ + 1] = string.format("[%g,%d]", tenth / 10, latency:percentile(tenth / 10))
   end
   pairs_[#pairs_ + 1] = string.format("[100,%d]", latency.max)
   return "[" .. table.concat(pairs_, ",") .. "]"
end

function done(summary, latency, requests)
   local all_statuses, all_tally, all_highest = {}, {}, {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         all_statuses[status] = (all_statuses[status] or 0) + n
      end
      for name, n in pairs(thread:get("tally")) do
         all_tally[name] = (all_tally[name] or 0) + n
      end
      for name, value in pairs(thread:get("highest")) do
         all_highest[name] = math.max(all_highest[name] or value, value)
      end
   end
   local errors = summary.errors
   io.write(string.format(
      '{"requests":%d,"duration_us":%d,"bytes":%d,"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"statuses":%s,"tally":%s,"highest":%s,"latency_quantiles_us":%s}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      object(all_statuses), object(all_tally), object(all_highest), quantiles(latency)
   ))
end
