-- GET one of the data file's "path" lines at random, as one of its "key"s at random.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local paths

function init(args)
   local data = load_data(args[1])
   start(data)
   paths = firsts(data, "path")
end

function request()
   return wrk.format("GET", pick(paths), headers())
end
