"""Serving benchmark: a naive per-request FastAPI handler vs `mlci serve`, both driven by wrk.

    python3 bench/serve.py [--duration 5] [--artifact DIR]
    python3 bench/serve.py --workers 1,2,4 [--duration 5]
    python3 bench/serve.py --rows 64 [--duration 5]

(a) naive (bench/serve_naive.py): what a user writes without mlci: a FastAPI app with a pydantic body and a
    sync `def` endpoint that runs one torch forward per request (FastAPI runs it in its thread pool).
(b) mlci serve with the project's mlci.toml ([serving] section).

Both serve the same artifact (an untrained digits-shaped MLP unless --artifact is given) and get the same
KServe v2 request body; wrk runs at concurrency 1 and 64 for a fixed time each (after a short warm-up).
Prints RPS, p50, p99 and the server's CPU time per request (user + system, all threads: steadier than
wall-clock figures on a busy machine) per server and concurrency, and mlci's ratios to the naive server.
--workers: mlci only, at c=64, once per serving.workers value, with wrk pinned to a core of its own and the
server to the others (taskset); prints requests/s per worker count, the ratio to one worker and the cores
each side had. N workers should reach 0.8 x N x one worker's throughput when the server has N cores.
--rows N: mlci only, at c=64, requests of N rows sent as JSON and as binary tensor data (what tritonclient
sends); prints both and the ratio: big inputs should not pay for JSON.
Targets (2-core machine, client on the same machine): c=64 >= 10x naive RPS with p99 <= 20 ms; c=1
p50 <= 0.3 ms. Timings on a shared machine are noisy: compare ratios from one run, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RPS_RATIO = 10.0
TARGET_P99_MS_C64 = 20.0
TARGET_P50_MS_C1 = 0.3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_artifact(root: Path) -> Path:
    import torch

    from mlci.artifacts import package
    from mlci.model import build_model

    torch.manual_seed(0)
    features = [f"px_{r}_{c}" for r in range(8) for c in range(8)]
    model = build_model("mlci.model:mlp", {"hidden": [128, 128]}, len(features), 10)
    smoke = torch.randint(0, 17, (4, len(features))).float().tolist()
    ref = package(
        root,
        model,
        model_name="digits",
        version=1,
        run_id="bench",
        factory="mlci.model:mlp",
        params={"hidden": [128, 128]},
        features=features,
        classes=list(range(10)),
        smoke_input=smoke,
        config={},
    )
    return ref.path


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready ({url})")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server not ready after {timeout:.0f} s ({url})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (worker processes)."""
    total = _cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):  # it just exited
                total += _cpu_seconds(int(child))
    return total


def wrk(
    url: str, lua: Path, connections: int, duration: int, pid: int, cores: list[int] | None = None
) -> dict[str, float]:
    cpu0 = _tree_cpu_seconds(pid)
    pin = ["taskset", "-c", ",".join(map(str, cores))] if cores else []
    out = subprocess.run(
        [*pin, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(lua), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {
        "cpu_us": (_tree_cpu_seconds(pid) - cpu0) / max(total, 1) * 1e6,
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def _lua(body: str, folder: Path) -> Path:
    path = folder / "post.lua"
    path.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {json.dumps(body)}\n'
    )
    return path


def _binary_lua(row: list[float], rows: int, folder: Path) -> Path:
    """A wrk script posting `rows` copies of `row` as binary tensor data (JSON request, then the FP32 bytes)."""
    import numpy as np

    blob = np.array([row] * rows, dtype="<f4").tobytes()
    params = {"binary_data_size": len(blob)}
    head = {"inputs": [{"name": "input", "shape": [rows, len(row)], "datatype": "FP32", "parameters": params}]}
    header = json.dumps(head).encode()
    body = "".join(f"\\{b}" for b in header + blob)  # Lua decimal escapes: any byte
    path = folder / "post-binary.lua"
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/octet-stream"\n'
        f'wrk.headers["Inference-Header-Content-Length"] = "{len(header)}"\nwrk.body = "{body}"\n'
    )
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each measured run")
    ap.add_argument("--artifact", type=Path, help="artifact directory (default: a fresh untrained MLP)")
    ap.add_argument("--config", default=str(ROOT / "mlci.toml"))
    ap.add_argument("--only", choices=["naive", "mlci"], help="run one server only")
    ap.add_argument("--workers", help="comma-separated serving.workers values to compare (mlci only, c=64)")
    ap.add_argument("--rows", type=int, default=1, help="> 1: compare N-row requests in JSON and in binary")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides for mlci serve")
    args = ap.parse_args()

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="mlci-bench-serve-"))
    try:
        artifact = args.artifact or _make_artifact(tmp / "artifacts")
        manifest = json.loads((artifact / "manifest.json").read_text())
        row = manifest["smoke"]["input"][0]
        body = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
        lua = _lua(json.dumps(body), tmp)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        if args.rows > 1:
            json_lua = _lua(json.dumps(_rows_body(row, args.rows)), tmp)
            _json_vs_binary(artifact, json_lua, _binary_lua(row, args.rows, tmp), args, env, tmp)
            return 0
        if args.workers:
            counts = [int(n) for n in args.workers.split(",")]
            _scaling(counts, artifact, lua, args, env, tmp)
            return 0
        servers: dict[str, list[str]] = {
            "naive": [sys.executable, str(Path(__file__).with_name("serve_naive.py")), str(artifact), "{port}"],
            "mlci": _mlci_cmd(artifact, args.config, "{port}", args.overrides),
        }
        results: dict[str, dict[int, dict[str, float]]] = {}
        for name, cmd in servers.items():
            if args.only and name != args.only:
                continue
            port = _free_port()
            argv = [c.replace("{port}", str(port)) for c in cmd]
            log = tmp / f"{name}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            try:
                base = f"http://127.0.0.1:{port}"
                try:
                    _wait_ready(f"{base}/health" if name == "naive" else f"{base}/v2/health/ready", proc)
                except SystemExit:
                    print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
                    raise
                url = f"{base}/v2/models/digits/infer"
                results[name] = {}
                for c in (1, 64):
                    if args.warmup:
                        wrk(url, lua, c, args.warmup, proc.pid)
                    results[name][c] = r = wrk(url, lua, c, args.duration, proc.pid)
                    print(
                        f"{name:>5} c={c:<3} {r['rps']:>9.0f} RPS  p50 {r['p50_ms']:>7.3f} ms  "
                        f"p99 {r['p99_ms']:>7.3f} ms  server CPU {r['cpu_us']:>6.0f} us/request  "
                        f"non-2xx {r['non_2xx']} {r['socket_errors']}",
                        flush=True,
                    )
            finally:
                _stop(proc)
        _summary(results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _mlci_cmd(artifact: Path, config: str, port: int | str, overrides: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "mlci", "serve", "--artifact", str(artifact), "--config", config,
        f"serving.port={port}", "serving.management_port=0", *overrides,
    ]  # fmt: skip


def _rows_body(row: list[float], rows: int) -> dict:
    return {"inputs": [{"name": "input", "shape": [rows, len(row)], "datatype": "FP32", "data": row * rows}]}


def _json_vs_binary(artifact: Path, json_lua: Path, binary_lua: Path, args: argparse.Namespace, env: dict, tmp: Path):
    port = _free_port()
    with open(tmp / "rows.log", "wb") as out:
        proc = subprocess.Popen(
            _mlci_cmd(artifact, args.config, port, args.overrides), env=env, cwd=ROOT, stdout=out, stderr=out
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", proc, timeout=180)
        url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
        results = {}
        for name, lua in (("JSON", json_lua), ("binary", binary_lua)):
            if args.warmup:
                wrk(url, lua, 64, args.warmup, proc.pid)
            results[name] = r = wrk(url, lua, 64, args.duration, proc.pid)
            print(
                f"{name:>6} {args.rows} rows c=64 {r['rps']:>8.0f} RPS  p50 {r['p50_ms']:>7.3f} ms  "
                f"p99 {r['p99_ms']:>7.3f} ms  server CPU {r['cpu_us']:>6.0f} us/request  non-2xx {r['non_2xx']}",
                flush=True,
            )
    finally:
        _stop(proc)
    print(f"binary / JSON throughput: {results['binary']['rps'] / results['JSON']['rps']:.1f}x")


def _scaling(counts: list[int], artifact: Path, lua: Path, args: argparse.Namespace, env: dict, tmp: Path) -> None:
    """Requests/s at c=64 per serving.workers value; wrk on a core of its own when there are two or more."""
    cores = sorted(os.sched_getaffinity(0))
    wrk_cores, server_cores = (cores[-1:], cores[:-1]) if len(cores) > 1 else (cores, cores)
    print(f"cores: server {server_cores}, wrk {wrk_cores}" + (" (shared)" if wrk_cores == server_cores else ""))
    base = None
    for n in counts:
        port = _free_port()
        cmd = ["taskset", "-c", ",".join(map(str, server_cores))]
        cmd += _mlci_cmd(artifact, args.config, port, [f"serving.workers={n}", *args.overrides])
        log = tmp / f"workers-{n}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            try:
                _wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", proc, timeout=180)
            except SystemExit:
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
            if args.warmup:
                wrk(url, lua, 64, args.warmup, proc.pid, wrk_cores)
            r = wrk(url, lua, 64, args.duration, proc.pid, wrk_cores)
        finally:
            _stop(proc)
        if base is None:  # one worker's throughput (the first count's, per worker)
            base = r["rps"] / n
        scale = r["rps"] / base
        print(
            f"workers={n:<2} c=64 {r['rps']:>9.0f} RPS  p50 {r['p50_ms']:>7.3f} ms  p99 {r['p99_ms']:>7.3f} ms  "
            f"server CPU {r['cpu_us']:>6.0f} us/request  = {scale:.2f} x one worker "
            f"(target >= {0.8 * min(n, len(server_cores)):.1f}: the server had {len(server_cores)} core(s))  "
            f"non-2xx {r['non_2xx']}",
            flush=True,
        )


def _summary(results: dict[str, dict[int, dict[str, float]]]) -> None:
    if "mlci" not in results:
        return
    m = results["mlci"]
    print()
    print(f"mlci c=64: p99 {m[64]['p99_ms']:.2f} ms (target <= {TARGET_P99_MS_C64} ms)")
    print(f"mlci c=1 : p50 {m[1]['p50_ms']:.3f} ms (target <= {TARGET_P50_MS_C1} ms)")
    if "naive" in results:
        n = results["naive"]
        ratio = m[64]["rps"] / n[64]["rps"]
        print(f"c=64 throughput: mlci / naive = {ratio:.1f}x (target >= {TARGET_RPS_RATIO:.0f}x)")
        print(f"c=64 p99: naive / mlci = {n[64]['p99_ms'] / m[64]['p99_ms']:.1f}x")
        print(f"c=64 server CPU per request: naive / mlci = {n[64]['cpu_us'] / m[64]['cpu_us']:.1f}x")
        print(f"c=1  p50: naive / mlci = {n[1]['p50_ms'] / m[1]['p50_ms']:.1f}x")
    print("(shared machine: figures are noisy; ratios come from one run)")


if __name__ == "__main__":
    raise SystemExit(main())
