-- wrk script of bench/bench.py: one request shape per run, every response's
-- status counted.  wrk runs a copy of this script in each of its threads
-- (plus one in the main thread for setup and done), so the counters live in
-- each thread's own state and done() adds them up through setup()'s thread
-- handles.
--
--   BENCH_BODY_FILE    a POST body (application/json); unset: GET
--   BENCH_BODIES_FILE  POST bodies, one a line, sent in turn (each thread
--                      starting at its own place); instead of BENCH_BODY_FILE
--   BENCH_BEARER_FILE  a bearer token for the Authorization header; unset: none
--   BENCH_REQUESTS_FILE  a mixed schedule (bench/soak.py): one request a line,
--                      METHOD <tab> PATH <tab> BODY (BODY may be empty: no
--                      body), sent in turn like BENCH_BODIES_FILE's bodies
--   BENCH_EXPECT_BODY  a Lua pattern a 200's body must match to count as
--                      served (POST /token/verify and /token/introspect
--                      answer 200 to a token they reject too: {"valid":
--                      false}, {"active": false}); a 200 that does not is
--                      counted in `unexpected'; unset: any 200 is served
--
-- done() prints one line that bench.py parses:
--   bench-wrk: responses=N non200=N unexpected=N requests=N duration_us=N p50_us=N p99_us=N
--              connect_errors=N read_errors=N write_errors=N timeouts=N first_non200=...
-- (first_non200: the first response that was not served, a non-200 or an
-- unexpected 200.)

local function slurp(name)
   local path = os.getenv(name)
   if path == nil or path == "" then
      return nil
   end
   local f = assert(io.open(path, "rb"))
   local text = f:read("*a")
   f:close()
   return text
end

local body = slurp("BENCH_BODY_FILE")
local bodies_text = slurp("BENCH_BODIES_FILE") or slurp("BENCH_REQUESTS_FILE")
local mixed = os.getenv("BENCH_REQUESTS_FILE") ~= nil and os.getenv("BENCH_REQUESTS_FILE") ~= ""
local bearer = slurp("BENCH_BEARER_FILE")
local expect = os.getenv("BENCH_EXPECT_BODY")
if expect == "" then
   expect = nil
end
if (body ~= nil or bodies_text ~= nil) and not mixed then
   wrk.method = "POST"
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
end
if bearer ~= nil then
   wrk.headers["Authorization"] = "Bearer " .. bearer:gsub("%s+$", "")
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   -- Where this thread starts in the bodies: half the list apart (bench.py
   -- runs 2 threads), so a body comes back only after about half the list
   -- was sent — with 60,000 tokens, ~15,000 other tokens per worker, which
   -- leaves a token in hsmjwtd's 4096-slot memo with a chance of
   -- (1 - 1/4096)^15000, under 3%.
   local count = 0
   if bodies_text ~= nil then
      for _ in bodies_text:gmatch("[^\n]+") do
         count = count + 1
      end
   end
   thread:set("start", (#threads - 1) * math.floor(count / 2))
end

if bodies_text ~= nil then
   local bodies = {}
   for line in bodies_text:gmatch("[^\n]+") do
      table.insert(bodies, line)
   end
   assert(#bodies > 0, "BENCH_BODIES_FILE holds no body")
   local i = nil
   -- A schedule line becomes the whole request, its own method, path and
   -- body with the shared headers, formatted at its first use: wrk.init has
   -- set the Host header by then, not yet when this chunk runs.
   local formatted = {}
   local function format_line(n)
      local method, path, b = bodies[n]:match("^(%u+)\t([^\t]+)\t?(.*)$")
      assert(method ~= nil, "BENCH_REQUESTS_FILE line " .. n .. " is not METHOD<tab>PATH<tab>BODY")
      local headers = {}
      for k, v in pairs(wrk.headers) do
         headers[k] = v
      end
      if b ~= "" then
         headers["Content-Type"] = "application/json"
      else
         b = nil
      end
      formatted[n] = wrk.format(method, path, headers, b)
      return formatted[n]
   end

   function request()
      if i == nil then
         i = (start or 0) % #bodies
      end
      i = i % #bodies + 1
      if mixed then
         return formatted[i] or format_line(i)
      end
      return wrk.format(nil, nil, nil, bodies[i])
   end
end

responses = 0
non200 = 0
unexpected = 0
first_non200 = ""

function response(status, headers, resp_body)
   responses = responses + 1
   local bad = false
   if status ~= 200 then
      non200 = non200 + 1
      bad = true
   elseif expect ~= nil and not string.find(resp_body or "", expect) then
      unexpected = unexpected + 1
      bad = true
   end
   if bad and first_non200 == "" then
      -- The status and the start of the body say what went wrong; never
      -- a whole body, which could be long.
      first_non200 = status .. " " .. string.sub(resp_body or "", 1, 160):gsub("[%c\"]", " ")
   end
end

function done(summary, latency, requests)
   local total, bad, odd, first = 0, 0, 0, ""
   for _, thread in ipairs(threads) do
      total = total + thread:get("responses")
      bad = bad + thread:get("non200")
      odd = odd + thread:get("unexpected")
      if first == "" then
         first = thread:get("first_non200")
      end
   end
   local e = summary.errors
   io.write(string.format(
      "bench-wrk: responses=%d non200=%d unexpected=%d requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f " ..
      "connect_errors=%d read_errors=%d write_errors=%d timeouts=%d first_non200=\"%s\"\n",
      total, bad, odd, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect, e.read, e.write, e.timeout, first))
end
