#!/usr/bin/env python3
"""Drives the /ui status page in real headless Chromium over the DevTools protocol.

Usage: ui_browser.py URL OUT_DIR CLUSTER BACKEND TOKEN WEIGHT

Loads URL at a wide and a phone size, takes a screenshot of each into OUT_DIR, samples the
live figures the page shows, then clicks the Drain button of BACKEND in CLUSTER, answering
the token prompt with TOKEN, and waits for the row to say "draining"; clicks Undrain and
waits for "up"; clicks Weight…, answers its prompt with WEIGHT and waits for the row to show
it. After each click it reads the backend from the admin API (GET /v1/clusters/CLUSTER).
Prints one JSON object with what it saw; exits non-zero (with the reason on stderr) when a
step fails. Every wait is bounded.
"""
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import websockets

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

STATE_JS = r"""
(() => {
  const cards = [...document.querySelectorAll('.card')].map(c => ({
    key: c.dataset.key,
    rate: Number(c.querySelector('.c-rate') && c.querySelector('.c-rate').dataset.rate),
    nums: c.querySelector('.nums').textContent,
  }));
  const rows = [...document.querySelectorAll('#backends tr')].map(r => ({
    cluster: r.dataset.cluster, backend: r.dataset.backend,
    cells: [...r.children].map(td => td.textContent),
    state: r.querySelector('.state') && r.querySelector('.state').textContent,
  }));
  return JSON.stringify({
    polls: Number(document.body.dataset.polls || 0),
    conn: document.getElementById('conn').textContent,
    msg: document.getElementById('msg').textContent,
    cards, rows,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    external: [...document.querySelectorAll('script[src],link[href],img[src]')].length,
  });
})()
"""


class Cdp:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events = []

    async def call(self, method, params=None, session=None, timeout=15):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{method}: no answer in {timeout}s")
            m = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)
                await self.on_event(m)

    async def on_event(self, m):
        pass


async def evaluate(cdp, session, expr):
    r = await cdp.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)
    return r.get("result", {}).get("value")


async def state(cdp, session):
    v = await evaluate(cdp, session, STATE_JS)
    if v is None:  # not our page yet (about:blank, or still loading)
        return {"polls": 0, "rows": [], "cards": [], "loading": True}
    return json.loads(v)


async def wait_for(cdp, session, what, pred, timeout=20):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await state(cdp, session)
        if pred(last):
            return last
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{what}: not seen in {timeout}s; last page state: {json.dumps(last)}")


async def screenshot(cdp, session, path):
    r = await cdp.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}, session)
    with open(path, "wb") as f:
        f.write(base64.b64decode(r["data"]))


def api_backend(url, cluster, backend):
    """The backend's status as the admin API reports it (the page's own origin)."""
    base = urllib.parse.urlsplit(url)
    api = f"{base.scheme}://{base.netloc}/v1/clusters/{urllib.parse.quote(cluster)}"
    with urllib.request.urlopen(api, timeout=10) as r:
        st = json.load(r)
    for b in st["status"]["backends"]:
        if b["addr"] == backend:
            return b
    raise RuntimeError(f"the API does not list {backend}: {st}")


async def click(cdp, session, sel, what):
    clicked = await evaluate(cdp, session,
                             f"(() => {{ const b = document.querySelector({json.dumps(sel)}); if (!b) return false; b.click(); return true; }})()")
    if not clicked:
        raise RuntimeError(f"no {what} button")


async def drive(port_file_dir, url, out_dir, cluster, backend, token, weight):
    port_file = os.path.join(port_file_dir, "DevToolsActivePort")
    deadline = time.monotonic() + 30
    while not os.path.exists(port_file) or len(open(port_file).read().split()) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("chromium did not open its DevTools port in 30s")
        await asyncio.sleep(0.1)
    port, path = open(port_file).read().split()[:2]
    out = {}
    async with websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=64 << 20) as ws:
        cdp = Cdp(ws)
        target = (await cdp.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        dialogs = []

        async def on_event(m):
            if m.get("method") == "Page.javascriptDialogOpening":
                message = m["params"].get("message", "")
                dialogs.append(message)
                answer = weight if message.startswith("New weight") else token
                await ws.send(json.dumps({
                    "id": 10_000 + len(dialogs), "sessionId": session,
                    "method": "Page.handleJavaScriptDialog",
                    "params": {"accept": True, "promptText": answer},
                }))
        cdp.on_event = on_event

        await cdp.call("Page.enable", session=session)
        await cdp.call("Runtime.enable", session=session)
        await cdp.call("Emulation.setDeviceMetricsOverride",
                       {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session)
        await cdp.call("Page.navigate", {"url": url}, session)
        first = await wait_for(cdp, session, "page polling /stats with backends shown",
                               lambda s: s["polls"] >= 2 and len(s["rows"]) > 0)
        # Live: the request rate shown moves while the test drives load.
        samples = [first]
        t_end = time.monotonic() + 4
        while time.monotonic() < t_end:
            await asyncio.sleep(1)
            samples.append(await state(cdp, session))
        out["samples"] = samples
        await screenshot(cdp, session, os.path.join(out_dir, "ui-wide.png"))

        await cdp.call("Emulation.setDeviceMetricsOverride",
                       {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}, session)
        await asyncio.sleep(1.5)
        out["phone"] = await state(cdp, session)
        await screenshot(cdp, session, os.path.join(out_dir, "ui-phone.png"))
        await cdp.call("Emulation.setDeviceMetricsOverride",
                       {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session)

        row = f'tr[data-cluster={json.dumps(cluster)}][data-backend={json.dumps(backend)}]'

        def shown(s):
            return next((r for r in s["rows"] if r["backend"] == backend), None)

        await click(cdp, session, row + " .act-drain", f"Drain for {cluster}/{backend}")
        after = await wait_for(cdp, session, f"{backend} shown as draining",
                               lambda s: (shown(s) or {}).get("state") == "draining")
        out["after_drain"] = after
        out["api_after_drain"] = api_backend(url, cluster, backend)
        await screenshot(cdp, session, os.path.join(out_dir, "ui-drained.png"))

        await click(cdp, session, row + " .act-drain", f"Undrain for {cluster}/{backend}")
        out["after_undrain"] = await wait_for(cdp, session, f"{backend} shown as up again",
                                              lambda s: (shown(s) or {}).get("state") == "up")
        out["api_after_undrain"] = api_backend(url, cluster, backend)

        await click(cdp, session, row + " .act-weight", f"Weight for {cluster}/{backend}")
        out["after_weight"] = await wait_for(cdp, session, f"{backend} shown with weight {weight}",
                                             lambda s: ((shown(s) or {}).get("cells") or [""] * 4)[3] == weight)
        out["api_after_weight"] = api_backend(url, cluster, backend)
        out["dialogs"] = dialogs
    return out


def main():
    url, out_dir, cluster, backend, token, weight = sys.argv[1:7]
    if not CHROMIUM:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        sys.exit(2)
    os.makedirs(out_dir, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="sy-ui-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--remote-debugging-address=127.0.0.1", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = asyncio.run(asyncio.wait_for(drive(profile, url, out_dir, cluster, backend, token, weight), 90))
        print(json.dumps(result))
    except Exception as e:  # noqa: BLE001 — report any failure as the test's reason
        print(f"ui_browser: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
