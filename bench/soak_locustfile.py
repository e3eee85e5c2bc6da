"""Locust user for bench/soak.py (run by Locust in its own process, never imported by mlci).

Posts one infer body ($SOAK_BODY) to $SOAK_PATH as fast as answers come, and prints one line per interval
($SOAK_INTERVAL_S seconds) on stdout: `SOAK {"requests", "failures", "rps", "p50_ms", "p99_ms"}` over that
interval alone (Locust's own figures are cumulative or over its last 10 s).
"""

from __future__ import annotations

import json
import os
import time

import gevent
from locust import FastHttpUser, constant, events, task

BODY = os.environ["SOAK_BODY"].encode()
PATH = os.environ["SOAK_PATH"]
INTERVAL_S = float(os.environ["SOAK_INTERVAL_S"])
_HEADERS = {"Content-Type": "application/json"}
_times: list[float] = []
_failures = [0]


@events.request.add_listener
def _on_request(response_time: float, exception: Exception | None, **_: object) -> None:
    if exception is not None:
        _failures[0] += 1
    else:
        _times.append(response_time)


def _report() -> None:
    start = time.monotonic()
    n = 0
    while True:
        n += 1
        gevent.sleep(max(0.0, start + n * INTERVAL_S - time.monotonic()))
        times = sorted(_times)
        failures = _failures[0]
        _times.clear()
        _failures[0] = 0

        def pct(q: float, times: list[float] = times) -> float:
            return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")

        line = {"requests": len(times), "failures": failures, "rps": len(times) / INTERVAL_S}
        line |= {"p50_ms": pct(0.50), "p99_ms": pct(0.99)}
        print("SOAK " + json.dumps(line), flush=True)


@events.test_start.add_listener
def _start(**_: object) -> None:
    gevent.spawn(_report)


class SoakUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def infer(self) -> None:
        with self.client.post(PATH, data=BODY, headers=_HEADERS, name="infer", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
