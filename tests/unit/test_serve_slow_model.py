"""The event loop never waits on the model: a real `mlci serve` process serving a model whose forward pass
takes 200 ms (tests/slow_model.py) answers health checks within milliseconds meanwhile, batching kept."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import httpx

from artifact_factory import build_artifact
from serve_process import ROOT, serving

ROW = [3.0] * 64
INFER = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}


def test_health_answers_within_milliseconds_while_a_200_ms_forward_pass_runs(tmp_path: Path) -> None:
    artifact = build_artifact(tmp_path / "a", factory="slow_model:sleepy", params={"sleep_ms": 200.0}).path
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    options = ("serving.jit=false", 'serving.factories=["slow_model:sleepy"]')  # a trace would drop the sleep
    with serving(artifact, tmp_path / "serve", *options, env=env) as server:
        current = httpx.get(f"{server.management_url}/manage/status", timeout=30).json()["current"]
        assert current["forward_on"] == "worker thread" and current["forward_ms"] >= 150, current

        stop = threading.Event()
        infer_s: list[float] = []
        failures: list[str] = []

        def clients() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    response = c.post("/v2/models/digits/infer", json=INFER)
                    if response.status_code != 200:
                        failures.append(response.text)
                    infer_s.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=clients) for _ in range(4)]
        for t in threads:
            t.start()
        health_s: list[float] = []
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                time.sleep(0.3)  # forward passes are running
                for _ in range(200):
                    t0 = time.perf_counter()
                    assert c.get("/v2/health/ready").status_code == 200
                    health_s.append(time.perf_counter() - t0)
                    time.sleep(0.005)
                assert c.get("/v2/models/digits").status_code == 200
            assert httpx.get(f"{server.management_url}/manage/status", timeout=30).status_code == 200
        finally:
            stop.set()
            for t in threads:
                t.join()
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text

    assert not failures, failures[:3]
    # The health checks ran while forward passes did (each infer took at least one 200 ms pass).
    assert len(infer_s) >= 8 and min(infer_s) >= 0.2, (len(infer_s), min(infer_s))
    p99 = sorted(health_s)[int(len(health_s) * 0.99) - 1]
    assert p99 <= 0.020, f"/v2/health/ready p99 {p99 * 1000:.1f} ms while 200 ms forward passes ran"
    # Batching kept: requests that arrived during a pass shared the next one.
    rows = float(re.search(r"^mlci_batch_rows_sum (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    batches = float(re.search(r"^mlci_batch_rows_count (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    assert rows / batches > 1.5, (rows, batches)
