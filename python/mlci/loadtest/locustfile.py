"""The Locust user that mlci's load test runs (in its own process: `locust -f <this file>`).

Standalone on purpose: Locust (gevent) monkey-patches the process that imports it, so mlci never imports
this file; it only reads the plan that mlci wrote. The plan is a JSON file named by $MLCI_LOADTEST_PLAN:

    path          the inference path, e.g. /v2/models/digits/infer
    bodies        ready JSON request bodies (strings); each user cycles through them from its own offset
    user_rps      each user's request rate (0 = send the next request as soon as the answer arrives)
    token_env     name of an environment variable holding a bearer token ("" = none)
    baseline_path optional: a second inference path (the previous model on the same server); every user then
                  sends to the target and to the baseline in alternating windows of WINDOW_S seconds, in step
                  (the windows follow the wall clock), so both are measured over the same minute under the same
                  load, yet never share the server's queue: a slow model cannot hide behind a fast one

A request counts as failed unless the server answers 200 with a body that carries "outputs".
"""

from __future__ import annotations

import itertools
import json
import os
import time

if "MLCI_LOADTEST_PLAN" not in os.environ:  # imported by accident: fail before gevent patches the importer
    raise ImportError("mlci/loadtest/locustfile.py is run by Locust (`mlci loadtest`), never imported")

import gevent
import locust.stats
from locust import FastHttpUser, constant, constant_throughput, events, task

with open(os.environ["MLCI_LOADTEST_PLAN"], encoding="utf-8") as _file:
    PLAN = json.load(_file)

_HEADERS = {"Content-Type": "application/json"}
if PLAN.get("token_env") and os.environ.get(PLAN["token_env"]):
    _HEADERS["Authorization"] = f"Bearer {os.environ[PLAN['token_env']]}"
_BODIES = [body.encode() for body in PLAN["bodies"]]
_OFFSETS = itertools.count()
_TARGETS = [(PLAN["path"], "infer")] + ([(PLAN["baseline_path"], "baseline")] if PLAN.get("baseline_path") else [])
WINDOW_S = 1.0


class InferUser(FastHttpUser):
    wait_time = constant_throughput(PLAN["user_rps"]) if PLAN["user_rps"] > 0 else constant(0)
    network_timeout = float(PLAN.get("timeout_s", 30.0))
    connection_timeout = float(PLAN.get("timeout_s", 30.0))

    def on_start(self) -> None:
        start = next(_OFFSETS) % len(_BODIES)
        self._bodies = itertools.cycle(_BODIES[start:] + _BODIES[:start])

    @task
    def infer(self) -> None:
        path, name = _TARGETS[int(time.time() / WINDOW_S) % len(_TARGETS)]
        body = next(self._bodies)
        with self.client.post(path, data=body, headers=_HEADERS, name=name, catch_response=True) as response:
            if response.status_code == 0:  # no HTTP answer at all: the connection failed
                response.failure(f"connection error: {response.error!r}")
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif b'"outputs"' not in (response.content or b""):
                response.failure("200 without 'outputs' in the body")


@events.quitting.add_listener
def _final_csv(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Let Locust's CSV writer take one more turn now that the stats are final.

    It rewrites locust_stats.csv every CSV_STATS_INTERVAL_SEC and not at exit, so without this the CSV
    misses up to the last second of the run (the HTML and JSON reports, written at exit, do not).
    """
    options = environment.parsed_options
    if options is not None and getattr(options, "csv_prefix", None) and not getattr(options, "worker", False):
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.25)
