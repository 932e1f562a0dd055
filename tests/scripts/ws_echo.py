#!/usr/bin/env python3
"""WebSocket echo server and client for the proxy tests, using the `websockets` library.

  ws_echo.py server            prints "listening PORT", echoes every message
  ws_echo.py client URL N      sends N messages of varied sizes (text and binary), checks each
                               echo, then a 1 MiB binary message; prints "ok N"
  ws_echo.py session URL       one long-lived connection: prints "open", then for each line
                               read on stdin sends it and prints "echo <line>"; closes at EOF
"""
import asyncio
import os
import sys

import websockets


async def serve():
    async def echo(ws):
        async for msg in ws:
            await ws.send(msg)

    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await asyncio.Future()


async def client(url, n):
    async with websockets.connect(url, max_size=None, open_timeout=5) as ws:
        for i in range(n):
            msg = f"message {i} " + "x" * (i * 37 % 5000)
            await ws.send(msg)
            got = await asyncio.wait_for(ws.recv(), 5)
            assert got == msg, f"text echo {i} differs"
            data = os.urandom(i * 101 % 70000 + 1)
            await ws.send(data)
            got = await asyncio.wait_for(ws.recv(), 5)
            assert got == data, f"binary echo {i} differs"
        big = os.urandom(1 << 20)
        await ws.send(big)
        got = await asyncio.wait_for(ws.recv(), 10)
        assert got == big, "1 MiB echo differs"
    print(f"ok {n}", flush=True)


async def session(url):
    loop = asyncio.get_running_loop()
    async with websockets.connect(url, max_size=None, open_timeout=5) as ws:
        print("open", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            await ws.send(line.rstrip("\n"))
            got = await asyncio.wait_for(ws.recv(), 10)
            print(f"echo {got}", flush=True)
    print("closed", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(serve())
    elif sys.argv[1] == "session":
        asyncio.run(session(sys.argv[2]))
    else:
        asyncio.run(client(sys.argv[2], int(sys.argv[3])))
