"""Soak: `mlci serve` under a steady Locust load for a fixed time; memory and descriptors must stay flat.

    python3 bench/soak.py [--minutes 10] [--users 16] [--interval 60] [--artifact DIR] [section.key=value ...]

Locust (bench/soak_locustfile.py, its own process) keeps --users users posting one KServe v2 infer request
each as fast as answers come. Every --interval seconds (default: a minute) this prints the interval's
requests/s, p50 and p99, failed requests, and the server's resident memory (RSS) and open file descriptors
(the server process plus its worker processes). The first interval is the warm-up: at the end, RSS may have
grown at most 10 % and descriptors at most 10 % over their values after it, and no request may fail.
Prints PASS or FAIL (exit 0 or 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from serve import ROOT, _free_port, _make_artifact, _mlci_cmd, _stop, _wait_ready

MAX_GROWTH = 0.10


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    return pids


def _rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def _fds(pids: list[int]) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default %(default)s)")
    ap.add_argument("--users", type=int, default=16, help="Locust users, each one request at a time")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per printed line (default a minute)")
    ap.add_argument("--artifact", type=Path, help="artifact directory (default: a fresh untrained MLP)")
    ap.add_argument("--config", default=str(ROOT / "mlci.toml"))
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides for mlci serve")
    args = ap.parse_args()
    seconds = args.minutes * 60
    if seconds < 2 * args.interval:
        raise SystemExit(f"--minutes {args.minutes}: run at least two intervals of {args.interval:g} s (warm-up + one)")

    tmp = Path(tempfile.mkdtemp(prefix="mlci-bench-soak-"))
    server = locust = None
    try:
        artifact = args.artifact or _make_artifact(tmp / "artifacts")
        row = json.loads((artifact / "manifest.json").read_text())["smoke"]["input"][0]
        body = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
        port = _free_port()
        with open(tmp / "serve.log", "wb") as out:
            server = subprocess.Popen(
                _mlci_cmd(artifact, args.config, port, args.overrides), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/v2/health/ready", server, timeout=180)
        pids = _tree(server.pid)
        start_rss, start_fds = _rss_mib(pids), _fds(pids)
        print(f"server pids {pids}: RSS {start_rss:.1f} MiB, {start_fds} open fds at start", flush=True)

        env = {
            **os.environ,
            "SOAK_BODY": json.dumps(body),
            "SOAK_PATH": "/v2/models/digits/infer",
            "SOAK_INTERVAL_S": str(args.interval),
        }
        # A few seconds past the last interval, so that its line is printed before Locust stops.
        cmd = [
            sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("soak_locustfile.py")),
            "--headless", "--users", str(args.users), "--spawn-rate", str(args.users),
            "--run-time", f"{int(seconds) + 10}s", "--host", base, "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        with open(tmp / "locust.log", "wb") as log:
            locust = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=tmp)
        rows = []
        assert locust.stdout is not None
        for line in locust.stdout:
            if not line.startswith("SOAK "):
                continue
            r = json.loads(line[5:]) | {"rss_mib": _rss_mib(pids), "fds": _fds(pids)}
            rows.append(r)
            print(
                f"{len(rows) * args.interval / 60:6.1f} min  {r['rps']:>8.0f} RPS  p50 {r['p50_ms']:>7.2f} ms  "
                f"p99 {r['p99_ms']:>7.2f} ms  failed {r['failures']:>4}  RSS {r['rss_mib']:>7.1f} MiB  fds {r['fds']}",
                flush=True,
            )
            if len(rows) * args.interval >= seconds - 0.5:
                break
        locust.terminate()
        locust.wait(timeout=60)
        if len(rows) < 2:
            print(Path(tmp / "locust.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise SystemExit("Locust reported fewer than two intervals")
        return _verdict(rows, start_rss, start_fds)
    finally:
        if locust is not None and locust.poll() is None:
            locust.kill()
            locust.wait()
        if server is not None:
            _stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


def _verdict(rows: list[dict], start_rss: float, start_fds: int) -> int:
    warm, end = rows[0], rows[-1]
    rss_growth = end["rss_mib"] / warm["rss_mib"] - 1
    fds_growth = end["fds"] / warm["fds"] - 1
    failed = sum(r["failures"] for r in rows)
    print(f"RSS: {start_rss:.1f} MiB at start, {warm['rss_mib']:.1f} after warm-up, {end['rss_mib']:.1f} at the end")
    print(f"fds: {start_fds} at start, {warm['fds']} after warm-up, {end['fds']} at the end")
    problems = []
    if rss_growth > MAX_GROWTH:
        problems.append(f"RSS grew {rss_growth:.1%} after warm-up (limit {MAX_GROWTH:.0%})")
    if fds_growth > MAX_GROWTH:
        problems.append(f"open fds grew {fds_growth:.1%} after warm-up (limit {MAX_GROWTH:.0%})")
    if failed:
        problems.append(f"{failed} requests failed")
    if problems:
        print("FAIL: " + "; ".join(problems))
        return 1
    print(f"PASS: RSS {rss_growth:+.1%}, fds {fds_growth:+.1%} after warm-up; no failed request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
