-- perf/post1k.lua: wrk script for perf/compare's HTTP mode.
-- Every request is `POST <url path>` with a 1 KiB body (Content-Length framing; wrk adds the
-- Content-Length header itself). The demo backend reads the body and answers `<id>\n`.
--
--   wrk -t2 -c100 -d10s --latency -s perf/post1k.lua http://127.0.0.1:PORT/
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
