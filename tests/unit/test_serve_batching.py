"""The batcher on a real event loop: same-tick requests share a forward pass, the queue is bounded."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlci.serve.batching import Batcher
from mlci.serve.metrics import Metrics


class Doubler:
    """A stand-in model: logits = 2x; records the batch sizes it was called with."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.fail = fail

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x.shape[0])
        if self.fail:
            raise RuntimeError("broken model")
        return x * 2


def run_requests(batcher: Batcher, model: Doubler, rows: list[int], *, spread: bool = False):
    """Submit one request per entry of `rows` (in one tick, or one per tick when spread); gather answers."""

    async def main():
        loop = asyncio.get_running_loop()
        futures = []
        for i, n in enumerate(rows):
            fut = loop.create_future()
            x = np.full((n, 2), float(i), dtype=np.float32)

            def done(logits, error, fut=fut):
                fut.set_result((logits, error))

            if not batcher.submit(model, x, done):
                fut.set_result(("shed", None))
            futures.append(fut)
            if spread:
                await asyncio.wait_for(fut, 1)
        return await asyncio.wait_for(asyncio.gather(*futures), 5)

    return asyncio.run(main())


def make(**kw: float) -> Batcher:
    args = {"max_rows": 8, "max_delay_s": 0.0, "queue_size": 100} | kw
    return Batcher(metrics=Metrics("t"), **args)  # type: ignore[arg-type]


def test_requests_of_one_tick_share_a_forward_pass_and_get_their_own_rows() -> None:
    model = Doubler()
    answers = run_requests(make(), model, [1, 2, 3])
    assert model.calls == [6]
    for i, (logits, error) in enumerate(answers):
        assert error is None
        assert logits.shape[0] == [1, 2, 3][i] and (logits == 2.0 * i).all()


def test_batches_respect_max_rows_and_a_big_request_runs_alone() -> None:
    model = Doubler()
    run_requests(make(max_rows=4), model, [3, 2, 9, 1, 1])
    assert model.calls == [3, 2, 9, 2]


def test_a_lone_request_does_not_wait_for_max_delay() -> None:
    model = Doubler()
    batcher = make(max_delay_s=30.0)  # a wait would time the test out
    answers = run_requests(batcher, model, [1, 1, 1], spread=True)
    assert model.calls == [1, 1, 1] and all(e is None for _, e in answers)


def test_max_delay_waits_to_fill_a_batch_of_several() -> None:
    model = Doubler()

    async def main():
        batcher = make(max_rows=4, max_delay_s=30.0)
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        results = []

        def done(logits, error):
            results.append(logits.shape[0])
            if len(results) == 3:
                got.set_result(None)

        batcher.submit(model, np.zeros((1, 2), np.float32), done)
        batcher.submit(model, np.zeros((1, 2), np.float32), done)
        await asyncio.sleep(0.05)
        assert model.calls == []  # two of four rows: waiting for more
        batcher.submit(model, np.zeros((2, 2), np.float32), done)  # now full: runs at once
        await asyncio.wait_for(got, 2)

    asyncio.run(main())
    assert model.calls == [4]


def test_a_full_queue_sheds() -> None:
    model = Doubler()
    answers = run_requests(make(queue_size=3), model, [1, 1, 1, 1, 1])
    assert sum(isinstance(logits, str) for logits, _ in answers) == 2
    assert model.calls == [3]


def test_a_model_error_reaches_every_request_of_the_batch() -> None:
    answers = run_requests(make(), Doubler(fail=True), [1, 1])
    assert all(logits is None and isinstance(error, RuntimeError) for logits, error in answers)


@pytest.mark.parametrize("n", [1, 50])
def test_queue_depth_metric_returns_to_zero(n: int) -> None:
    batcher = make()
    run_requests(batcher, Doubler(), [1] * n)
    assert batcher.depth == 0 and batcher.metrics.queue_depth._value.get() == 0


class SlowDoubler(Doubler):
    """Doubler with a worker thread (as a slow or GPU LoadedModel has); its forward pass waits for `gate`."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(fail)
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.gate = threading.Event()
        self.threads: set[str] = set()
        self.started: list[int] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.started.append(x.shape[0])
        assert self.gate.wait(10)
        return super().predict(x)


@pytest.mark.parametrize("fail", [False, True])
def test_a_model_with_a_worker_thread_leaves_the_loop_free_and_batches_what_waits(fail: bool) -> None:
    model = SlowDoubler(fail=fail)

    async def main():
        batcher = make(max_rows=8)
        loop = asyncio.get_running_loop()

        def submit(rows: int) -> asyncio.Future:
            fut = loop.create_future()
            batcher.submit(model, np.full((rows, 2), 1.0, np.float32), lambda lo, err: fut.set_result((lo, err)))
            return fut

        first = submit(1)
        await asyncio.sleep(0.05)  # the first forward pass is running (blocked on the gate) in its thread
        assert model.started == [1] and not first.done()
        later = [submit(2), submit(3)]  # the loop still runs: these queue for the next batch
        await asyncio.sleep(0.05)
        assert model.started == [1]
        model.gate.set()
        return await asyncio.wait_for(asyncio.gather(first, *later), 5)

    answers = asyncio.run(main())
    assert model.started == [1, 5]  # the two that waited shared one forward pass
    assert model.threads and threading.current_thread().name not in model.threads
    for (logits, error), rows in zip(answers, [1, 2, 3], strict=True):
        if fail:
            assert logits is None and isinstance(error, RuntimeError)
        else:
            assert error is None and logits.shape == (rows, 2) and (logits == 2.0).all()
