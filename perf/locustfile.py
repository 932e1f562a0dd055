"""The chaos broker project's Gatling scenario, as a Locust scenario.

Each user logs in, creates an item, then acts in a loop: 60% view one of its items, 20%
create another, 20% update (POST a JSON body to /echo, which answers it back), with a pause
of 0.5-2 s between actions. Every answer is checked (status and JSON shape), so corrupted
(salted), dropped or duplicated traffic shows up as failures.

Load shape: the original ramped *arrivals* from 20 to 200 new users per second over 20 s
(Gatling's `rampUsersPerSec(20) to 200 during 20s`) towards 400k users. Locust keeps a
population of users instead, so the shape below adds users at that rising rate: at time t
(0..RAMP) the rate is r0 + (r1 - r0) t / RAMP users per second and the population is its
integral; after the ramp it holds. Everything scales with SCENARIO_SCALE (1.0 = the
original's rates) and SCENARIO_RAMP / SCENARIO_HOLD (seconds), so CI runs a few seconds at a
small scale and a cluster of Locust workers runs the real thing (see README, "Load testing").

Run: locust -f perf/locustfile.py --headless --host http://127.0.0.1:8080 \\
         --csv out/run --html out/run.html      (or: make loadtest)
"""
import json
import os
import random

from locust import HttpUser, LoadTestShape, between, task

SCALE = float(os.environ.get("SCENARIO_SCALE", "1.0"))
RAMP = float(os.environ.get("SCENARIO_RAMP", "20"))
HOLD = float(os.environ.get("SCENARIO_HOLD", "10"))
RATE_FROM = 20.0 * SCALE
RATE_TO = 200.0 * SCALE
MAX_USERS = int(os.environ.get("SCENARIO_MAX_USERS", "400000"))


def check_json(resp, *keys):
    """Marks the request failed unless it answered 2xx with JSON holding `keys`."""
    if resp.status_code // 100 != 2:
        resp.failure(f"status {resp.status_code}")
        return None
    try:
        body = resp.json()
    except (ValueError, json.JSONDecodeError):
        resp.failure("body is not JSON (corrupted?)")
        return None
    missing = [k for k in keys if k not in body]
    if missing:
        resp.failure(f"missing {missing}")
        return None
    resp.success()
    return body


class ShopUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self):
        self.items = []
        with self.client.post("/shop/login", json={"user": "u%d" % random.randrange(1 << 30)},
                              name="login", catch_response=True) as r:
            body = check_json(r, "token")
            self.token = body["token"] if body else ""
        self.create()

    def headers(self):
        return {"Authorization": "Bearer " + self.token} if self.token else {}

    def create(self):
        with self.client.post("/shop/items", json={"name": "thing"}, headers=self.headers(),
                              name="create", catch_response=True) as r:
            body = check_json(r, "id")
            if body:
                self.items.append(body["id"])

    @task(60)
    def view(self):
        if not self.items:
            return self.create()
        item = random.choice(self.items)
        with self.client.get("/shop/items/%d" % item, headers=self.headers(),
                             name="view", catch_response=True) as r:
            body = check_json(r, "id", "name")
            if body and body["id"] != item:
                r.failure("wrong item %r" % body["id"])

    @task(20)
    def create_more(self):
        self.create()

    @task(20)
    def update(self):
        payload = json.dumps({"id": random.choice(self.items or [0]), "name": "renamed"})
        with self.client.post("/echo", data=payload, headers=self.headers(),
                              name="update", catch_response=True) as r:
            body = check_json(r, "body_len")
            if body and body["body_len"] != len(payload):
                r.failure("echoed %r bytes of %d" % (body["body_len"], len(payload)))


class GatlingRamp(LoadTestShape):
    """Arrivals rising linearly from RATE_FROM to RATE_TO users/s over RAMP s, then HOLD s."""

    def tick(self):
        t = self.get_run_time()
        if t > RAMP + HOLD:
            return None
        tr = min(t, RAMP)
        rate = RATE_FROM + (RATE_TO - RATE_FROM) * tr / RAMP
        users = RATE_FROM * tr + (RATE_TO - RATE_FROM) * tr * tr / (2 * RAMP)
        return (max(1, min(MAX_USERS, int(users))), max(1.0, rate))
