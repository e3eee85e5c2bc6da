"""One inference worker process (serving.workers > 1): its own event loop, model manager, batcher and listener
on the shared port (SO_REUSEPORT), driven by the supervisor (serve/fleet.py) through a pipe.

Messages from the supervisor are `(id, op, *args)`; every answer is `(id, kind, payload)` with kind "ok",
"refused" (ArtifactError), "busy" (a load in progress) or "failed". Ops: prepare (load, warm, smoke-test beside
the current model, not serving yet), commit (serve what was prepared), abort (drop it), rollback, status,
samples (this worker's metrics), drain (graceful stop) and force (stop waiting for in-flight requests). The
first message a worker sends is `(0, "ready", status)` or, when it cannot start, `(0, "error", (exit_code,
message))`. For /metrics a worker asks the other way: `(id, "collect", None)`, answered by
`(id, "collected", [every worker's samples])`.

SIGINT is ignored (Ctrl-C reaches the supervisor, which drains the workers); SIGTERM (systemd signals every
process of the unit) drains, a second one stops at once. A closed pipe (the supervisor died) drains too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mlci.config import Config
from mlci.errors import ArtifactError, MlciError
from mlci.serve.manager import SwapBusy

log = logging.getLogger("mlci.serve")
COLLECT_TIMEOUT_S = 5.0  # /metrics waits this long for the other workers' samples


def main(config: Config, artifact: str, conn: Connection, index: int, server_version: str) -> None:
    """The worker process's entry (multiprocessing, spawn)."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s"
    )
    try:
        uvloop.run(_serve(config, Path(artifact), conn, server_version))
    except MlciError as exc:
        conn.send((0, "error", (exc.exit_code, str(exc))))
        sys.exit(exc.exit_code)


async def _serve(config: Config, artifact: Path, conn: Connection, server_version: str) -> None:
    from mlci.serve import runner
    from mlci.serve.metrics import Metrics

    s = config.serving
    metrics = Metrics(s.model_name)
    manager = runner.new_manager(config, metrics, server_version)
    await manager.load(artifact)
    runner.freeze_gc()
    sock = runner.listen(s.host, s.port, "serving.port", config.source, reuse_port=True)
    batcher, lean = runner.inference_server(config, manager, metrics, sock)

    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def stop(force: bool) -> None:
        if force:
            lean.force_exit = True
        stopped.set()

    loop.add_signal_handler(signal.SIGTERM, lambda: stop(stopped.is_set()))  # a second SIGTERM: at once
    await lean.start(sock)
    channel = _Channel(conn, manager, metrics, stop)
    metrics.gather = channel.collect
    loop.add_reader(conn.fileno(), channel.readable)
    conn.send((0, "ready", manager.status()))
    try:
        await stopped.wait()
        await lean.shutdown(s.graceful_timeout_s)
    finally:
        loop.remove_reader(conn.fileno())
        loop.remove_signal_handler(signal.SIGTERM)
        batcher.fail_all(ConnectionError("server stopped"))


class _Channel:
    """The supervisor's commands, each answered on the pipe when done (a load runs while others are answered)."""

    def __init__(self, conn: Connection, manager: Any, metrics: Any, stop: Any) -> None:
        self.conn = conn
        self.manager = manager
        self.metrics = metrics
        self.stop = stop
        self.prepared: Any = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.collecting: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)

    async def collect(self) -> Any:
        """Every worker's metric samples, through the supervisor."""
        rid = next(self.ids)
        future = self.collecting[rid] = asyncio.get_running_loop().create_future()
        try:
            self.conn.send((rid, "collect", None))
            return await asyncio.wait_for(future, COLLECT_TIMEOUT_S)
        finally:
            self.collecting.pop(rid, None)

    def readable(self) -> None:
        try:
            message = self.conn.recv()
        except (EOFError, OSError):  # the supervisor is gone: nobody can swap or stop this worker any more
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            log.warning("supervisor gone: draining")
            self.stop(False)
            return
        if message[1] == "collected":  # the answer to this worker's own `collect`
            future = self.collecting.get(message[0])
            if future is not None and not future.done():
                future.set_result(message[2])
            return
        task = asyncio.ensure_future(self.handle(message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def handle(self, message: tuple[Any, ...]) -> None:
        rid, op, *args = message
        manager = self.manager
        try:
            if op == "prepare":
                path, sha256, signature_change = args
                self.prepared = await manager.prepare(Path(path), sha256=sha256, signature_change=signature_change)
                reply: tuple[str, Any] = ("ok", None)
            elif op == "commit":
                prepared, self.prepared = self.prepared, None
                reply = ("ok", manager.commit(prepared))
            elif op == "abort":
                self.prepared = None
                reply = ("ok", None)
            elif op == "rollback":
                reply = ("ok", manager.rollback())
            elif op == "status":
                reply = ("ok", manager.status())
            elif op == "samples":
                reply = ("ok", self.metrics.samples())
            elif op in ("drain", "force"):
                self.stop(op == "force")
                reply = ("ok", None)
            else:
                reply = ("failed", f"unknown command {op!r}")
        except SwapBusy as exc:
            reply = ("busy", str(exc))
        except ArtifactError as exc:
            reply = ("refused", str(exc))
        except Exception as exc:  # a bug, not a refusal: the supervisor reports it
            log.error("command %s failed: %s", op, exc, exc_info=exc)
            reply = ("failed", f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(OSError):  # the supervisor is gone
            self.conn.send((rid, *reply))
