"""The sandbox fixture: real SSH test hosts on the local Docker engine, once per test session.

Without a Docker engine sandbox tests skip with the reason; under CI=true that skip is a failure. A sandbox
that is already up (a developer's `nox -s sandbox -- up`) is reused and left running; one this session
started is torn down at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import under_ci

from mlci.errors import SandboxError
from mlci.sandbox import Sandbox, SandboxHost, connect

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_HOSTS = 5  # 1 runner, 3 serving hosts (the deploy tests), 1 load balancer


@dataclass(frozen=True)
class SandboxFleet:
    inventory: Path  # inventories/sandbox
    hosts: list[SandboxHost]

    def group(self, name: str) -> list[SandboxHost]:
        return [h for h in self.hosts if name in h.groups]


def _unavailable(why: str) -> None:
    if under_ci():
        pytest.fail(f"CI=true and the sandbox cannot run: {why}")
    pytest.skip(f"sandbox unavailable: {why}")


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxFleet]:
    try:
        connect()
    except SandboxError as exc:
        _unavailable(str(exc))
    box = Sandbox(ROOT)
    running = [h for h in box.status() if h.state == "running"]
    reuse = len(running) >= SANDBOX_HOSTS and (box.inventory_dir / "hosts.yml").exists()
    try:
        hosts = running if reuse else box.up(SANDBOX_HOSTS)
    except SandboxError as exc:
        box.down()
        _unavailable(str(exc))
    try:
        yield SandboxFleet(box.inventory_dir, hosts)
    finally:
        if not reuse:
            box.down()
