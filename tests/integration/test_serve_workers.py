"""serving.workers > 1: a real `mlci serve` with worker processes on one port, swapped and stopped as one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from test_serve_support import CONFIG, infer_body, make_artifact, serving

from artifact_factory import with_factory

INFER = "/v2/models/digits/infer"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


class Load:
    """Client threads sending infer requests until stopped; each answer kept as (sent_at, version)."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.answers: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        body = infer_body()
        kept = httpx.Client(base_url=self.url, timeout=30)
        n = 0
        while not self._stop.is_set() and n < 20_000:
            n += 1
            # Half the threads open a fresh connection per request: the kernel spreads those over every worker.
            client = kept if i % 2 else httpx.Client(base_url=self.url, timeout=30)
            sent = time.monotonic()
            try:
                response = client.post(INFER, json=body)
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))
                continue
            finally:
                if client is not kept:
                    client.close()
            if response.status_code != 200:
                self.errors.append(f"{response.status_code} {response.text}")
                continue
            self.answers.append((sent, response.json()["model_version"]))
        kept.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def _wait_answers(load: Load, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    start = len(load.answers)
    while len(load.answers) < start + count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_swap_under_load_reaches_all_four_workers_before_the_200(tmp_path: Path) -> None:
    v1 = make_artifact(tmp_path / "a", version=1, seed=1)
    v2 = make_artifact(tmp_path / "a", version=2, seed=2)
    with serving(v1, tmp_path / "serve", "serving.workers=4") as server:
        assert server.info["workers"] == 4
        assert len(_children(server.proc.pid)) >= 4  # the worker processes (plus multiprocessing's helper)
        api = httpx.Client(base_url=server.management_url, timeout=120)
        with Load(server.url) as load:
            _wait_answers(load, 200)
            loaded = api.post("/manage/load", json={"artifact": str(v2)})
            flipped_at = time.monotonic()
            assert loaded.status_code == 200, loaded.text
            assert loaded.json()["current"]["version"] == "2" and loaded.json()["workers"] == 4
            _wait_answers(load, 400)
        assert not load.errors, load.errors[:5]
        before = [v for sent, v in load.answers if sent < flipped_at]
        after = [v for sent, v in load.answers if sent > flipped_at]
        assert "1" in before and len(after) >= 400
        assert set(after) == {"2"}, f"{after.count('1')} of {len(after)} answers after the 200 came from version 1"


def test_a_refusal_in_one_worker_leaves_every_worker_on_the_old_model(tmp_path: Path) -> None:
    v1 = make_artifact(tmp_path / "a", version=1, seed=1)
    v3 = make_artifact(tmp_path / "a", version=3, seed=3)
    # A factory that fails in the first worker to build it and works in the others.
    modules = tmp_path / "modules"
    modules.mkdir()
    mark = tmp_path / "refused-once"
    (modules / "refuse_once.py").write_text(
        "import os\n\nfrom mlci.model import mlp as _mlp\n\n\n"
        "def mlp(*args, **kwargs):\n"
        "    try:\n"
        f"        os.close(os.open({str(mark)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
        "    except FileExistsError:\n"
        "        return _mlp(*args, **kwargs)\n"
        "    raise RuntimeError('this worker refuses the model')\n"
    )
    v2 = with_factory(make_artifact(tmp_path / "b", version=2, seed=2), tmp_path / "v2", "refuse_once:mlp")
    factories = 'serving.factories=["mlci.model:mlp", "refuse_once:mlp"]'
    env = {"PYTHONPATH": str(modules)}
    with serving(v1, tmp_path / "serve", "serving.workers=4", factories, env=env) as server:
        api = httpx.Client(base_url=server.management_url, timeout=120)
        refused = api.post("/manage/load", json={"artifact": str(v2)})
        assert refused.status_code == 422, refused.text
        assert "this worker refuses the model" in refused.json()["error"]
        assert mark.exists()  # one worker refused; the others had prepared version 2 and dropped it
        status = api.get("/manage/status").json()
        assert status["current"]["version"] == "1" and status["previous"] is None
        versions = set()
        for _ in range(200):  # fresh connections: spread over every worker
            with httpx.Client(base_url=server.url, timeout=30) as client:
                versions.add(client.post(INFER, json=infer_body()).json()["model_version"])
        assert versions == {"1"}

        # The fleet is still whole: the next good artifact reaches every worker, and rollback returns all.
        assert api.post("/manage/load", json={"artifact": str(v3)}).status_code == 200
        assert api.post("/manage/rollback").json()["current"]["version"] == "1"
        with Load(server.url) as load:
            _wait_answers(load, 200)
        assert {v for _, v in load.answers} == {"1"} and not load.errors


def test_metrics_sum_over_workers_and_sigterm_drains_them_all(tmp_path: Path) -> None:
    v1 = make_artifact(tmp_path / "a", version=1, seed=1)
    with serving(v1, tmp_path / "serve", "serving.workers=3") as server:
        workers = [
            pid for pid in _children(server.proc.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        assert len(workers) == 3
        for _ in range(90):
            with httpx.Client(base_url=server.url, timeout=30) as client:
                assert client.post(INFER, json=infer_body()).status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        assert 'mlci_requests_total{route="infer",status="200"} 90.0' in text
        assert 'mlci_model_version{model="digits"} 1.0' in text

        port = int(server.url.rsplit(":", 1)[1])
        assert server.terminate() == 0
        assert not [pid for pid in workers if _alive(pid)]
        with socket.socket() as probe:  # the port is free again: every listener closed
            probe.bind(("127.0.0.1", port))


def test_second_sigterm_is_not_needed_when_every_process_gets_one(tmp_path: Path) -> None:
    """systemd signals every process of the unit: workers drain once and the server exits 0."""
    v1 = make_artifact(tmp_path / "a", version=1, seed=1)
    with serving(v1, tmp_path / "serve", "serving.workers=2") as server:
        for pid in [server.proc.pid, *_children(server.proc.pid)]:
            os.kill(pid, signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.output()[-2000:]


def test_a_worker_that_dies_stops_the_server_with_exit_1(tmp_path: Path) -> None:
    """Never half a fleet: the process manager (systemd, the local supervisor) restarts it whole."""
    v1 = make_artifact(tmp_path / "a", version=1, seed=1)
    with serving(v1, tmp_path / "serve", "serving.workers=2") as server:
        children = _children(server.proc.pid)
        workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        os.kill(workers[0], signal.SIGKILL)
        assert server.proc.wait(60) == 1
        assert "exited unexpectedly" in server.output()
        assert not _alive(workers[1])


def test_workers_zero_is_a_config_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mlci", "serve", "--config", str(CONFIG), "serving.workers=0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert 'serving.workers = 0: must be > 0 or "auto"' in proc.stderr
