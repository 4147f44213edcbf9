-- wrk script for benches/compare.sh: GET manifests, rotating over the request paths listed
-- in a file (wrk ... -s manifests.lua URL -- PATHS_FILE), with the Accept header containerd
-- sends. Counts every response whose status is not 2xx (wrk itself only counts >= 400) and
-- prints one machine-readable line at the end:
--   RESULT requests=N duration_us=N non2xx=N connect=N read=N write=N timeout=N

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

function init(args)
   paths = {}
   for line in io.lines(args[1]) do
      if #line > 0 then paths[#paths + 1] = line end
   end
   -- each thread starts at a different place in the list
   i = ((id or 1) * 7) % #paths
   bad = 0
   wrk.headers["Accept"] = "application/vnd.docker.distribution.manifest.v2+json, "
      .. "application/vnd.docker.distribution.manifest.list.v2+json, "
      .. "application/vnd.oci.image.manifest.v1+json, "
      .. "application/vnd.oci.image.index.v1+json, */*"
end

function request()
   i = i % #paths + 1
   return wrk.format("GET", paths[i])
end

function response(status, headers, body)
   if status < 200 or status > 299 then bad = bad + 1 end
end

function done(summary, latency, requests)
   local non2xx = 0
   for _, t in ipairs(threads) do non2xx = non2xx + (t:get("bad") or 0) end
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
      summary.requests, summary.duration, non2xx, e.connect, e.read, e.write, e.timeout))
end
