"""Drives Switchyard's toxiproxy API with toxiproxy's own Python client (toxiproxy-python),
unchanged: create a proxy, add toxics and see their effect through it, take it down and up,
populate, reset, destroy. Usage: toxiproxy_client.py ADMIN_HOST:PORT UPSTREAM_HOST:PORT.
Prints "ok" and exits 0 when every step behaved as toxiproxy documents."""
import socket
import sys
import time

from toxiproxy import Toxiproxy
from toxiproxy.exceptions import NotFound, ProxyExists


def roundtrip(addr, msg=b"hello"):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - t0


def main():
    admin, upstream = sys.argv[1], sys.argv[2]
    host, port = admin.rsplit(":", 1)
    server = Toxiproxy()
    server.update_api_consumer(host, int(port))
    assert server.running(), "API not reachable"
    assert b"version" in server.version(), server.version()

    proxy = server.create(upstream=upstream, name="echo")
    assert proxy.listen.startswith("127.0.0.1:") and not proxy.listen.endswith(":0"), proxy.listen
    try:
        server.create(upstream=upstream, name="echo")
        raise AssertionError("a second create must fail")
    except ProxyExists:
        pass
    got, base = roundtrip(proxy.listen)
    assert got == b"hello", got

    proxy.add_toxic(type="latency", attributes={"latency": 300})
    toxics = proxy.toxics()
    assert list(toxics) == ["latency_downstream"], toxics
    t = toxics["latency_downstream"]
    assert t.type == "latency" and t.stream == "downstream" and t.attributes["latency"] == 300
    got, took = roundtrip(proxy.listen)
    assert got == b"hello" and took >= 0.28, took

    proxy.destroy_toxic("latency_downstream")
    got, took = roundtrip(proxy.listen)
    assert took < 0.25, took

    with proxy.down():
        try:
            roundtrip(proxy.listen)
            raise AssertionError("a proxy that is down must refuse")
        except ConnectionRefusedError:
            pass
    got, _ = roundtrip(proxy.listen)
    assert got == b"hello"

    proxy.add_toxic(type="limit_data", stream="upstream", attributes={"bytes": 3})
    got, _ = roundtrip(proxy.listen, b"abcdef")
    assert got == b"abc", got
    assert server.reset()
    assert proxy.toxics() == {}
    got, _ = roundtrip(proxy.listen)
    assert got == b"hello"

    populated = server.populate([{"name": "two", "upstream": upstream, "listen": "127.0.0.1:0"}])
    assert [p.name for p in populated] == ["two"], populated
    assert sorted(server.proxies()) == ["echo", "two"]
    got, _ = roundtrip(server.get_proxy("two").listen)
    assert got == b"hello"

    server.destroy_all()
    assert server.proxies() == {}
    try:
        proxy.toxics()
        raise AssertionError("toxics of a deleted proxy")
    except NotFound:
        pass
    print("ok")


if __name__ == "__main__":
    main()
