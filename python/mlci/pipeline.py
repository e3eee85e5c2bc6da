"""The pipeline: data check -> train (or reuse) -> evaluate -> gates -> report (-> deploy).

`mlci train` and `mlci periodic` (and CI, through them) run this one flow. It prints nothing and knows no
command line: it tells a `Hooks` object what happened and returns an `Outcome`; commands/ print.

The up-to-date path (a succeeded, evaluated run with the same run key exists) reads only the config, the data
files' stat (their bytes when the stat changed), git and the registry, and imports neither torch, numpy nor
rich. The reused run's data passed the same check: the key covers the data, the schema and the checking code.

A run's whole life is guarded: it holds its lock (runlock.py) until it is finished, SIGTERM and SIGINT unwind
it as failures ("interrupted by SIGTERM", interrupt.py), and one training per registry runs at a time.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlci.errors import EXIT_GATE_FAILED, EXIT_OK

if TYPE_CHECKING:
    from mlci.config import Config
    from mlci.data import Dataset
    from mlci.deploy.rollout import Outcome as DeployOutcome
    from mlci.evaluate import Evaluation
    from mlci.registry import Registry, Run
    from mlci.runkey import RunKey

OnEpoch = Callable[[Any], None]


def _ignore(*_args: Any) -> None:
    return None


def _no_bar(_total: int, _description: str, _enabled: bool | None) -> AbstractContextManager[OnEpoch]:
    return nullcontext(_ignore)


@dataclass(frozen=True)
class Hooks:
    """What the pipeline reports as it goes (commands print; the defaults stay silent)."""

    up_to_date: Callable[[Run, dict[str, Any]], None] = _ignore  # (run, its stored evaluation)
    # (epochs, description, enabled: None = on a terminal) -> a context yielding advance(EpochStats)
    epoch_bar: Callable[[int, str, bool | None], AbstractContextManager[OnEpoch]] = _no_bar
    trained: Callable[[Run, float], None] = _ignore  # (run, seconds)
    evaluated: Callable[[Evaluation], None] = _ignore
    reported: Callable[[Path], None] = _ignore  # the report folder


SILENT = Hooks()


@dataclass(frozen=True)
class Outcome:
    run: Run
    passed: bool
    up_to_date: bool  # nothing was done: an evaluated run with the same key exists
    gates: list[dict[str, Any]] = field(default_factory=list)  # each gate's name, status, value, limit, message
    metrics: dict[str, float] = field(default_factory=dict)  # the run's final metrics
    report: Path | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)  # as stored: champion, passed, results, created_at

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_GATE_FAILED


def run_key(config: Config) -> RunKey:
    """The run key of the current code, data and config (cheap: no torch, no numpy)."""
    from mlci import data, runkey

    return runkey.compute(config, data.data_files(config))


def up_to_date(config: Config, key: RunKey) -> Outcome | None:
    """The stored outcome of an evaluated run with this key, or None (train, or evaluate, it then)."""
    from mlci.registry import exists, open_registry

    if not exists(config):
        return None
    with open_registry(config) as registry:
        return _stored(registry, key.key)


def run(config: Config, *, force: bool = False, key: RunKey | None = None, hooks: Hooks = SILENT) -> Outcome:
    """The whole flow up to the report. `force` trains even when a run with the same key exists."""
    from mlci import data

    key = key or run_key(config)
    if not force:
        found = up_to_date(config, key)
        if found is not None:
            key.save_data_hashes()  # the data a run already checked
            hooks.up_to_date(found.run, found.evaluation)
            return found

    # Before anything is written: bad data leaves the registry untouched. The eval split is kept for evaluating.
    train_ds, eval_ds = data.load_splits(config)
    key.save_data_hashes()

    from mlci.interrupt import interruptible
    from mlci.registry import open_registry

    # The lock is this runner's (next to where its SQLite file is or would be); across runners the
    # registry's own transactions keep records whole, and two runners training one key both record a run.
    with interruptible(), exclusive(config.path(config.registry.path)), open_registry(config) as registry:
        # Another `mlci train` may have trained this key while we waited for the lock.
        found = None if force else _stored(registry, key.key)
        if found is not None:
            hooks.up_to_date(found.run, found.evaluation)
            return found
        existing = None if force else reusable(registry, key.key)  # trained, never evaluated
        target = existing or _train(config, train_ds, registry, key, hooks)
        del train_ds  # its memory goes back before evaluating
        return evaluate_and_report(config, registry, target, hooks, eval_ds)


def reusable(registry: Registry, key: str) -> Run | None:
    """The newest succeeded run with this key whose model artifact is still on disk."""
    found = registry.find_run(key)
    model = found.artifact("model") if found is not None else None
    if model is None or not Path(model.path).is_dir():  # none, or its artifact was deleted: train again
        return None
    return found


def _stored(registry: Registry, key: str) -> Outcome | None:
    found = reusable(registry, key)
    evaluation = registry.latest_evaluation(found.id) if found is not None else None
    if found is None or evaluation is None:
        return None
    gates = evaluation["results"].get("gates", [])
    return Outcome(
        found, bool(evaluation["passed"]), True, gates=gates, metrics=dict(found.metrics), evaluation=evaluation
    )


# --- training ------------------------------------------------------------------------------------------------


def _train(config: Config, train_ds: Dataset, registry: Registry, key: RunKey, hooks: Hooks) -> Run:
    started = time.perf_counter()
    t = config.train
    what = f"training ({t.epochs} epochs" + (f", {t.nproc} processes)" if t.nproc > 1 else ")")
    # With torchrun, rank 0 draws its own bar (the epochs happen in the workers).
    with hooks.epoch_bar(t.epochs, what, None if t.nproc == 1 else False) as bar:
        trained = train_run(config, train_ds, registry, key, on_epoch=bar)
    hooks.trained(trained, time.perf_counter() - started)
    return trained


def train_run(
    config: Config, train_ds: Dataset, registry: Registry, key: RunKey, *, on_epoch: OnEpoch | None = None
) -> Run:
    """Create a run for `key`, train it on `train_ds` (the training split: data.load_splits) in this process, or
    through torchrun when train.nproc > 1, record metrics and the model artifact, and mark it succeeded. Any failure,
    SIGTERM and SIGINT included, marks it failed with the reason and re-raises; the run's lock is held until then."""
    from mlci import device as devices
    from mlci import runlock, train

    train.check_model(config, train_ds)  # a config error, before any run is recorded
    if config.train.fleet:  # the runners choose their own devices; this machine only coordinates
        from mlci import fleet_train

        where = fleet_train.runners(config)
        env = fleet_train.environment(config, where)
    else:
        device = devices.choose(config.train.device)
        env = train.environment(device, config.train.nproc)
    with runlock.held(registry, lambda: train.new_run(config, registry, key, env)) as run:
        try:
            nproc = config.train.nproc
            if config.train.fleet:
                fleet_train.train(config, registry, run, where)
            elif nproc > 1:
                from mlci import ddp

                ddp.launch(config, registry.path, run.id, nproc, device.kind)
                if registry.run(run.id).artifact("model") is None:
                    raise RuntimeError(f"the {nproc} training processes exited without writing the model artifact")
            else:
                train.fit_and_record(config, registry, run, train_ds, device, on_epoch=on_epoch)
            registry.finish_run(run.id, "succeeded")
        except BaseException as exc:
            registry.finish_run(run.id, "failed", error=failure(exc))
            raise
    return registry.run(run.id)


def failure(exc: BaseException) -> str:
    """The error a failed run records: "interrupted by SIGTERM" for a signal, else the exception."""
    from mlci.interrupt import Interrupted

    if isinstance(exc, Interrupted):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT"
    return f"{type(exc).__name__}: {exc}"[:2000]


# --- evaluate, gates, report -------------------------------------------------------------------------------------


def evaluate_and_report(
    config: Config, registry: Registry, target: Run, hooks: Hooks = SILENT, eval_ds: Dataset | None = None
) -> Outcome:
    """Evaluate `target` on `eval_ds` (default: the configured data's eval split), apply the gates, report."""
    from mlci.evaluate import evaluate_run
    from mlci.report import write_report

    evaluation = evaluate_run(config, registry, target, eval_ds)
    hooks.evaluated(evaluation)
    run = registry.run(target.id)
    folder = write_report(config, registry, run)
    hooks.reported(folder)
    stored = registry.latest_evaluation(run.id) or {}
    gates = stored.get("results", {}).get("gates", [])
    return Outcome(
        run, evaluation.passed, False, gates=gates, metrics=dict(run.metrics), report=folder, evaluation=stored
    )


# --- deploy --------------------------------------------------------------------------------------------------


def deploy(
    config: Config, run: Run, *, overrides: list[str] | None = None, progress: Callable[[str], None] = _ignore
) -> DeployOutcome:
    """The gated rolling deploy of `run` to deploy.inventory: the code path of `mlci deploy --run ID`."""
    from mlci.deploy.rollout import deploy as rollout

    return rollout(config, run_ref=run.id, overrides=overrides, progress=progress)


# --- one training per registry at a time ------------------------------------------------------------------------


@contextmanager
def exclusive(registry_path: Path) -> Iterator[None]:
    """Hold an OS lock next to the registry, so two `mlci train` started at once run one after the other
    (the second then finds the first's run). Released by the kernel even if the process dies."""
    lock_path = Path(f"{registry_path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
