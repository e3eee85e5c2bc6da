"""Both listeners on one uvloop event loop; SIGTERM/SIGINT shut down gracefully.

Inference: the lean HTTP layer (serve/http.py). Management: Starlette on uvicorn (rare requests).

The sockets are bound here, before uvicorn starts, so a busy port is a clear ConfigError and port 0 (any
free port) reports the port actually bound through `on_ready`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from mlci.config import Config
from mlci.errors import ConfigError
from mlci.serve.app import InferenceApp
from mlci.serve.auth import is_loopback, token_from_env
from mlci.serve.batching import Batcher
from mlci.serve.http import LeanServer
from mlci.serve.management import management_app
from mlci.serve.manager import ModelManager
from mlci.serve.metrics import Metrics

ReadyCallback = Callable[[dict[str, Any]], None]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the runner handles signals for both listeners
        yield


def listen(host: str, port: int, key: str, source: str, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048, reuse_port=reuse_port)
    except OSError as exc:
        raise ConfigError(source, key, port, f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def uvicorn_server(app: Any, config: Config) -> _Server:
    return _Server(
        uvicorn.Config(
            app,
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=int(config.serving.graceful_timeout_s) or 1,
        )
    )


def _device(preference: str, source: str) -> str:
    """serving.device -> "cpu" or "cuda" (auto: cuda when this host has one)."""
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError(source, "serving.device", preference, "no CUDA device is available here")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def worker_count(workers: int | str) -> int:
    """serving.workers -> a number ("auto": the CPU cores this process may run on)."""
    if workers == "auto":
        return len(os.sched_getaffinity(0))
    return int(workers)


def serve(config: Config, artifact: Path, *, on_ready: ReadyCallback | None = None, server_version: str = "") -> None:
    """Serve `artifact` until SIGTERM/SIGINT. Raises ConfigError/ArtifactError before listening."""
    import uvloop

    workers = worker_count(config.serving.workers)
    if workers > 1:
        from mlci.serve.fleet import serve_workers

        serve_workers(config, Path(artifact), workers, on_ready=on_ready, server_version=server_version)
        return
    uvloop.run(_serve(config, Path(artifact), on_ready, server_version))


def management_token(config: Config) -> bytes | None:
    s = config.serving
    return token_from_env(
        s.management_token_env,
        "serving.management_token_env",
        config.source,
        required=not is_loopback(s.management_host),
    )


def new_manager(config: Config, metrics: Metrics, server_version: str) -> ModelManager:
    """This process's model manager (torch threads set, device resolved); no model loaded yet."""
    import torch

    s = config.serving
    torch.set_num_threads(s.threads)
    manager = ModelManager(
        s.model_name,
        metrics,
        warm_rows=(1, s.max_batch_size),
        jit=s.jit,
        device=_device(s.device, config.source),
        factories=tuple(s.factories or [config.model.factory]),
        inline_forward_s=s.inline_forward_ms / 1000,
    )
    manager.server_version = server_version
    return manager


def freeze_gc() -> None:
    # Everything alive now (torch, the model, the app) lives as long as the process: keep it out of the
    # cyclic GC, whose full passes over torch's objects otherwise show up as multi-millisecond tail latency.
    gc.collect()
    gc.freeze()


def inference_server(
    config: Config, manager: ModelManager, metrics: Metrics, sock: socket.socket
) -> tuple[Batcher, LeanServer]:
    """The inference listener's batcher and server for `sock` (not started)."""
    s = config.serving
    token = token_from_env(s.token_env, "serving.token_env", config.source, required=bool(s.token_env))
    batcher = Batcher(
        max_rows=s.max_batch_size, max_delay_s=s.max_delay_ms / 1000, queue_size=s.queue_size, metrics=metrics
    )
    inference = InferenceApp(manager, batcher, metrics, max_rows=s.max_rows, token=token)
    inference.bind(sock.getsockname()[:2])
    lean = LeanServer(
        inference,
        max_body_bytes=s.max_body_bytes,
        max_connections=s.max_connections,
        keepalive_s=s.keepalive_s,
        head_timeout_s=s.head_timeout_s,
        body_timeout_s=s.body_timeout_s,
        max_url_bytes=s.max_url_bytes,
        max_header_bytes=s.max_header_bytes,
        max_headers=s.max_headers,
        on_refused=lambda status: metrics.count("http", status),
    )
    return batcher, lean


async def _serve(config: Config, artifact: Path, on_ready: ReadyCallback | None, server_version: str) -> None:
    s = config.serving
    src = config.source
    token_from_env(s.token_env, "serving.token_env", src, required=bool(s.token_env))
    mgmt_token = management_token(config)
    metrics = Metrics(s.model_name)
    manager = new_manager(config, metrics, server_version)
    await manager.load(artifact)  # an ArtifactError here stops the server before it listens
    freeze_gc()

    sock = listen(s.host, s.port, "serving.port", src)
    msock = listen(s.management_host, s.management_port, "serving.management_port", src)
    batcher, lean = inference_server(config, manager, metrics, sock)
    management = uvicorn_server(management_app(manager, mgmt_token), config)

    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def stop() -> None:
        if stopped.is_set():  # a second signal: stop waiting for in-flight requests
            management.force_exit = True
            lean.force_exit = True
        management.should_exit = True
        stopped.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await lean.start(sock)
    mtask = asyncio.ensure_future(management.serve(sockets=[msock]))
    try:
        while not management.started and not mtask.done():
            await asyncio.sleep(0.005)
        if mtask.done():
            await mtask  # raises what stopped it
            return
        if on_ready is not None:
            current = manager.current
            assert current is not None
            on_ready(
                {
                    "url": url_of(sock),
                    "management_url": url_of(msock),
                    "model": s.model_name,
                    "version": current.version,
                    "artifact": str(current.path),
                }
            )
        await stopped.wait()
        await asyncio.gather(lean.shutdown(s.graceful_timeout_s), mtask)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        batcher.fail_all(ConnectionError("server stopped"))
