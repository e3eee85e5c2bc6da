"""serving.workers > 1: a supervisor process and N inference worker processes (serve/worker.py) on one port.

The supervisor pins the inference port (bound with SO_REUSEPORT, never listening, so port 0 resolves once and
no other program takes it), starts the workers (each listens on that port with SO_REUSEPORT: the kernel
spreads connections over them) and serves the one management API. A hot swap reaches every worker or none:
`prepare` in all (load, warm, smoke test beside the current model), then `commit` in all when every one
succeeded, else `abort` in all; the API answers 200 once every worker has flipped. Rollback flips all.
/metrics (any worker) sums over workers: that worker asks the supervisor, which gathers every worker's samples.

SIGTERM/SIGINT: every worker drains (a second signal: they stop at once), then the supervisor exits. A worker
that dies stops the whole server (exit 1): the process manager restarts it with every worker on one model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import signal
import socket
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from mlci.config import Config
from mlci.errors import ArtifactError, ConfigError, MlciError
from mlci.serve import runner, worker
from mlci.serve.auth import token_from_env
from mlci.serve.management import management_app
from mlci.serve.manager import SwapBusy

log = logging.getLogger("mlci.serve")
DRAIN_MARGIN_S = 5.0  # beyond serving.graceful_timeout_s before a worker that does not exit is killed (the
# deploy's stop waits 40 s, systemd 45 s)


class WorkerError(MlciError):
    """A worker could not start (its own error, with its exit code), or died."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Worker:
    """One worker process and its pipe: commands out, answers matched by id."""

    def __init__(self, index: int, process: BaseProcess, conn: Connection, fleet: Fleet) -> None:
        self.index = index
        self.fleet = fleet
        self.process = process
        self.conn = conn
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[tuple[str, Any]]] = {0: asyncio.get_running_loop().create_future()}
        asyncio.get_running_loop().add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            rid, kind, payload = self.conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self._fail_all(WorkerError(f"worker {self.index} (pid {self.process.pid}) exited"))
            return
        if kind == "collect":  # this worker answers /metrics: it wants every worker's samples
            task = asyncio.ensure_future(self.fleet.collect(self, rid))
            self.fleet.tasks.add(task)
            task.add_done_callback(self.fleet.tasks.discard)
            return
        future = self.waiting.pop(rid, None)
        if future is not None and not future.done():
            future.set_result((kind, payload))

    def _fail_all(self, exc: BaseException) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)
        self.waiting.clear()

    async def ready(self) -> dict[str, Any]:
        kind, payload = await self.waiting[0]
        if kind == "error":
            exit_code, message = payload
            raise WorkerError(message, exit_code)
        return payload

    async def ask(self, op: str, *args: Any) -> tuple[str, Any]:
        rid = next(self.ids)
        future = self.waiting[rid] = asyncio.get_running_loop().create_future()
        try:
            self.conn.send((rid, op, *args))
        except OSError:
            self.waiting.pop(rid, None)
            raise WorkerError(f"worker {self.index} (pid {self.process.pid}) is gone") from None
        return await future

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
        self._fail_all(WorkerError(f"worker {self.index} stopped"))
        self.conn.close()


class Fleet:
    """What the management API drives when there are workers: the ModelManager's load/rollback/status, for all."""

    def __init__(self, name: str, workers: list[_Worker], status: dict[str, Any]) -> None:
        self.name = name
        self.workers = workers
        self.loading: str | None = None
        self.last_error: str | None = None
        self._status = status  # worker 0's after the last change (the workers flip together)
        self.tasks: set[asyncio.Task[None]] = set()

    def set_status(self, status: dict[str, Any]) -> None:
        self._status = status

    def status(self) -> dict[str, Any]:
        return {**self._status, "loading": self.loading, "last_error": self.last_error, "workers": len(self.workers)}

    async def _all(self, op: str, *args: Any) -> list[tuple[str, Any]]:
        return list(await asyncio.gather(*(w.ask(op, *args) for w in self.workers)))

    async def load(
        self, path: str | Path, *, sha256: str | None = None, signature_change: bool = False
    ) -> dict[str, Any]:
        if self.loading is not None:
            raise SwapBusy(f"already loading {self.loading}")
        self.loading = str(path)
        try:
            answers = await self._all("prepare", str(path), sha256, signature_change)
            refusal = next((a for a in answers if a[0] != "ok"), None)
            if refusal is not None:
                await self._all("abort")  # every worker keeps serving the current model
                kind, message = refusal
                if kind == "busy":
                    raise SwapBusy(message)
                self.last_error = message
                raise ArtifactError(message)
            answers = await self._all("commit")
            self._status = _checked(answers, "commit")
            self.last_error = None
            return self.status()
        finally:
            self.loading = None

    async def collect(self, requester: _Worker, rid: int) -> None:
        """Answer a worker's `collect`: every worker's metric samples (a worker that fails to answer is left out)."""
        answers = await asyncio.gather(*(w.ask("samples") for w in self.workers), return_exceptions=True)
        samples = [a[1] for a in answers if isinstance(a, tuple) and a[0] == "ok"]
        with contextlib.suppress(OSError, ValueError):
            requester.conn.send((rid, "collected", samples))

    async def rollback(self) -> dict[str, Any]:
        if self._status.get("previous") is None:
            raise ArtifactError("no previous model is loaded; nothing to roll back to")
        self._status = _checked(await self._all("rollback"), "rollback")
        return self.status()


def _checked(answers: list[tuple[str, Any]], op: str) -> dict[str, Any]:
    for i, (kind, payload) in enumerate(answers):
        if kind != "ok":  # cannot happen when every worker agreed before: a bug, and the workers now differ
            raise WorkerError(f"worker {i}: {op} failed after the others succeeded: {payload}")
    return answers[0][1]


def _pin_port(host: str, port: int, source: str) -> socket.socket:
    """Bind (never listen) the inference port with SO_REUSEPORT: resolves port 0 once and holds the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = f"cannot listen on {host}:{port} ({exc.strerror or exc})"
        raise ConfigError(source, "serving.port", port, why) from None
    return sock


def serve_workers(
    config: Config, artifact: Path, count: int, *, on_ready: runner.ReadyCallback | None, server_version: str
) -> None:
    import uvloop

    uvloop.run(_supervise(config, artifact, count, on_ready, server_version))


async def _supervise(
    config: Config, artifact: Path, count: int, on_ready: runner.ReadyCallback | None, server_version: str
) -> None:
    s = config.serving
    src = config.source
    token_from_env(s.token_env, "serving.token_env", src, required=bool(s.token_env))  # fail here, not N times
    mgmt_token = runner.management_token(config)
    pin = _pin_port(s.host, s.port, src)
    port = pin.getsockname()[1]
    msock = runner.listen(s.management_host, s.management_port, "serving.management_port", src)
    wconfig = _with_port(config, port)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch or event-loop state
    workers: list[_Worker] = []
    fleet = Fleet(s.model_name, workers, {})
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    signals = 0
    died: list[int] = []

    def drain(force: bool) -> None:
        for w in workers:
            with contextlib.suppress(OSError, ValueError):
                w.conn.send((-1, "force" if force else "drain"))

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        drain(force=signals > 1)  # the first signal drains, a second stops at once
        stopped.set()

    def on_exit(w: _Worker) -> None:
        loop.remove_reader(w.process.sentinel)
        if not stopped.is_set():  # not asked to stop: a crash (or a kill)
            died.append(w.index)
            log.error("worker %d (pid %s) exited with %s: stopping every worker", w.index, w.process.pid,
                      w.process.exitcode)  # fmt: skip
            drain(force=False)
            stopped.set()

    try:
        for i in range(count):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=worker.main,
                args=(wconfig, str(artifact), child, i, server_version),
                name=f"mlci-serve-worker-{i}",
            )
            process.start()
            child.close()
            workers.append(_Worker(i, process, parent, fleet))
        statuses = await asyncio.gather(*(w.ready() for w in workers))
        fleet.set_status(statuses[0])
        management = runner.uvicorn_server(management_app(fleet, mgmt_token), config)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        for w in workers:
            loop.add_reader(w.process.sentinel, on_exit, w)
        mtask = asyncio.ensure_future(management.serve(sockets=[msock]))
        while not management.started and not mtask.done():
            await asyncio.sleep(0.005)
        if mtask.done():
            await mtask
            return
        if on_ready is not None:
            current = statuses[0]["current"]
            on_ready(
                {
                    "url": runner.url_of(pin),
                    "management_url": runner.url_of(msock),
                    "model": s.model_name,
                    "version": current["version"],
                    "artifact": current["artifact"],
                    "workers": count,
                }
            )
        await stopped.wait()
        await _wait_exit(workers, s.graceful_timeout_s + DRAIN_MARGIN_S)
        management.should_exit = True
        await mtask
        if died:
            raise WorkerError(f"worker(s) {died} exited unexpectedly; the server stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for w in workers:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(w.process.sentinel)
            if w.process.is_alive():
                w.process.kill()
            w.process.join(5)
            w.close()
        pin.close()
        msock.close()


async def _wait_exit(workers: list[_Worker], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while any(w.process.is_alive() for w in workers) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)


def _with_port(config: Config, port: int) -> Config:
    import dataclasses

    return dataclasses.replace(config, serving=dataclasses.replace(config.serving, port=port))
