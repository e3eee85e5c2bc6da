"""Dynamic batching on the event loop, with a bounded queue.

Requests queue as (model, rows). A batch runs at the end of the event-loop tick in which its first request
arrived, so every request read in the same tick shares one forward pass and a lone request never waits
(the fast path for low load). When a tick leaves more than one request but less than max_batch_size rows
and max_delay is > 0, the batch waits up to max_delay (counted from its first request) to fill.

The forward pass runs inline on the event-loop thread when it is short: for the small models mlci serves
it takes tens of microseconds, less than handing the batch to a worker thread and back. One batch runs per
tick, so the loop keeps reading (and shedding) between batches under overload. A model with an `executor`
(a GPU model, or one measured slower than serving.inline_forward_ms at load) runs its forward passes there,
one batch at a time: the loop keeps answering health, metadata and management meanwhile, and the requests
that arrive during a pass queue up for the next batch. The queue holds at most queue_size requests;
`submit` returns False beyond that and the caller answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from mlci.serve.metrics import Metrics

# Called with (logits, None) or (None, the exception) once the batch ran; on the event-loop thread.
Done = Callable[[np.ndarray | None, BaseException | None], None]


class _Item:
    __slots__ = ("done", "model", "t0", "x")

    def __init__(self, model: Any, x: np.ndarray, done: Done, t0: float) -> None:
        self.model, self.x, self.done, self.t0 = model, x, done, t0


class Batcher:
    def __init__(self, *, max_rows: int, max_delay_s: float, queue_size: int, metrics: Metrics) -> None:
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.queue_size = queue_size
        self.metrics = metrics
        self._queue: deque[_Item] = deque()
        self._rows = 0  # rows queued
        self._scheduled = False  # a _run is pending, or a batch is in a worker thread
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def full(self) -> bool:
        return len(self._queue) >= self.queue_size

    def submit(self, model: Any, x: np.ndarray, done: Done) -> bool:
        """Queue x for `model`; `done` gets its logits. False when the queue is full (shed the request)."""
        if len(self._queue) >= self.queue_size:
            return False
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        self._queue.append(_Item(model, x, done, time.perf_counter()))
        self._rows += x.shape[0]
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._run)
        elif self._timer is not None and self._rows >= self.max_rows:
            self._timer.cancel()  # waiting to fill, and now full
            self._timer = None
            loop.call_soon(self._run)
        return True

    def _run(self) -> None:
        self._timer = None
        queue = self._queue
        if not queue:
            self._scheduled = False
            return
        if self.max_delay_s > 0 and len(queue) > 1 and self._rows < self.max_rows:
            wait = queue[0].t0 + self.max_delay_s - time.perf_counter()
            if wait > 0:
                assert self._loop is not None
                self._timer = self._loop.call_later(wait, self._run)
                return
        if self._run_one_batch():
            return  # in a worker thread: _offloaded_done goes on
        if queue:
            assert self._loop is not None
            self._loop.call_soon(self._run)  # next batch after the loop has read (and maybe shed) again
        else:
            self._scheduled = False

    def _run_one_batch(self) -> bool:
        """Run the next batch; True when it was handed to the model's worker thread (answers come later)."""
        queue = self._queue
        first = queue.popleft()
        batch = [first]
        rows = first.x.shape[0]
        # Same model only (a swap may leave requests for the old one queued); a big request runs alone.
        while queue and queue[0].model is first.model and rows + queue[0].x.shape[0] <= self.max_rows:
            item = queue.popleft()
            batch.append(item)
            rows += item.x.shape[0]
        self._rows -= rows
        self.metrics.queue_depth.set(len(queue))
        self.metrics.batch_size.observe(rows)
        model = first.model
        try:
            x = batch[0].x if len(batch) == 1 else np.concatenate([i.x for i in batch])
            executor = getattr(model, "executor", None)
            if executor is not None:
                loop = self._loop
                assert loop is not None
                future = executor.submit(model.predict, x)
                future.add_done_callback(lambda f: _call_soon_threadsafe(loop, self._offloaded_done, batch, f))
                return True
            logits = model.predict(x)
        except Exception as exc:  # a model bug: fail these requests (500), keep serving
            _answer(batch, None, exc)
            return False
        _answer(batch, logits, None)
        return False

    def _offloaded_done(self, batch: list[_Item], future: Future[np.ndarray]) -> None:
        """On the loop thread, after a worker thread's forward pass: answer, then run the next batch."""
        try:
            logits = future.result()
        except Exception as exc:  # a model bug (or the model was dropped): fail these requests, keep serving
            _answer(batch, None, exc)
        else:
            _answer(batch, logits, None)
        self._run()

    def fail_all(self, exc: BaseException) -> None:
        while self._queue:
            self._queue.popleft().done(None, exc)
        self._rows = 0


def _answer(batch: list[_Item], logits: np.ndarray | None, error: BaseException | None) -> None:
    if logits is None:
        for item in batch:
            item.done(None, error)
        return
    start = 0
    for item in batch:
        n = item.x.shape[0]
        item.done(logits[start : start + n], None)
        start += n


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped, nobody waits
        loop.call_soon_threadsafe(callback, *args)
