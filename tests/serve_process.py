"""A real `mlci serve` process on free 127.0.0.1 ports, for the unit and integration serving tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "mlci.toml"
READY = re.compile(r"^mlci serve ready (\{.*\})$", re.M)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    log: Path

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def management_url(self) -> str:
        return str(self.info["management_url"])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"mlci serve ignored SIGTERM for {timeout} s:\n{self.output()[-3000:]}")


def start(artifact: Path | None, workdir: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`mlci serve` in the background, output to workdir/serve.log; no artifact: the registry champion."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlci", "serve", "--config", str(CONFIG),
        "serving.port=0", "serving.management_port=0", *overrides,
    ]  # fmt: skip
    if artifact is not None:
        cmd += ["--artifact", str(artifact)]
    with open(workdir / "serve.log", "wb") as log:  # the child keeps its own copy of the descriptor
        full_env = {**os.environ, **(env or {})}
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=full_env)


@contextlib.contextmanager
def serving(
    artifact: Path | None, workdir: Path, *overrides: str, env: dict[str, str] | None = None, timeout: float = 90.0
) -> Iterator[Server]:
    """`mlci serve` on free loopback ports until the block ends (SIGTERM, then kill if it hangs)."""
    proc = start(artifact, workdir, *overrides, env=env)
    log = workdir / "serve.log"
    server = None
    try:
        deadline = time.monotonic() + timeout
        while True:
            match = READY.search(log.read_text(errors="replace"))
            if match:
                server = Server(proc, json.loads(match.group(1)), log)
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlci serve did not become ready (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
