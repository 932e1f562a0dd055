-- perf/soak.lua: wrk script for perf/soak. Each connection sends one request, then waits
-- SOAK_DELAY_MS before the next (wrk's delay()), so the whole run holds a set rate. With
-- SOAK_POST=1 every request is a 1 KiB POST, otherwise a GET.
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "10")
if os.getenv("SOAK_POST") == "1" then
  wrk.method = "POST"
  wrk.body = string.rep("x", 1024)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
function delay()
  return delay_ms
end
