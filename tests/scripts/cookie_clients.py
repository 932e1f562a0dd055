#!/usr/bin/env python3
"""Many HTTP clients with real cookie jars (the standard library's http.cookiejar: Max-Age,
Path and expiry handled as a user agent does), each on its own keep-alive connection
(http.client).

usage: cookie_clients.py SPEC_JSON

SPEC: {"host": "127.0.0.1", "port": 8080, "path": "/", "clients": N, "rounds": R,
       "interval": seconds between rounds (default 0),
       "pause_after": [round numbers after which to print "PAUSE k" and wait for a line on stdin],
       "headers": {"name": "value"} (sent with every request),
       "method": "GET"}

Rounds run one after the other; in a round, client 0, 1, ... N-1 each send one request, in
that order, one at a time (so the proxy sees a known sequence). Prints "ROUND k" after each
round and, at the end, one line "RESULT <json>": for each client a list of requests, each
{"status", "body", "sent" (the Cookie header sent, or null), "set" (Set-Cookie headers
received), "port" (the client's local port: the same port means the same connection),
"t" (seconds since start)}.
"""
import http.client
import http.cookiejar
import json
import sys
import time
import urllib.request


def main():
    spec = json.loads(sys.argv[1])
    host, port = spec["host"], spec["port"]
    path = spec.get("path", "/")
    method = spec.get("method", "GET")
    extra = spec.get("headers", {})
    url = f"http://{host}:{port}{path}"
    n, rounds = spec["clients"], spec["rounds"]
    pause_after = set(spec.get("pause_after", []))
    jars = [http.cookiejar.CookieJar() for _ in range(n)]
    conns = [None] * n
    out = [[] for _ in range(n)]
    start = time.monotonic()
    for r in range(1, rounds + 1):
        for c in range(n):
            if conns[c] is None:
                conns[c] = http.client.HTTPConnection(host, port, timeout=15)
            req = urllib.request.Request(url, method=method)
            jars[c].add_cookie_header(req)
            headers = dict(req.header_items())
            headers.update(extra)
            conns[c].request(method, path, headers=headers)
            resp = conns[c].getresponse()
            body = resp.read().decode("utf-8", "replace").strip()
            jars[c].extract_cookies(resp, req)
            out[c].append({
                "status": resp.status,
                "body": body,
                "sent": headers.get("Cookie"),
                "set": resp.headers.get_all("Set-Cookie") or [],
                "port": conns[c].sock.getsockname()[1] if conns[c].sock else None,
                "t": round(time.monotonic() - start, 4),
            })
            if resp.getheader("Connection", "").lower() == "close":
                conns[c].close()
                conns[c] = None
        print(f"ROUND {r}", flush=True)
        if r in pause_after:
            print(f"PAUSE {r}", flush=True)
            sys.stdin.readline()
        if r < rounds and spec.get("interval", 0) > 0:
            time.sleep(spec["interval"])
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
