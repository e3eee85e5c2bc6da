"""`mlci train [--force] [--rehash] [--nproc N] [--fleet NAME]`: data check -> train (or reuse) -> evaluate ->
report; exit code of the gates.

The no-op path (a succeeded run with the same run key exists) reads only the config, the data files' stat (their
bytes only when the stat changed, or with --rehash), git and the registry, and imports neither torch nor numpy nor
rich: it prints `up to date: run <id>` and exits with that run's stored gate verdict. The reused run's data passed
the same check: the key covers the data, the schema and the checking code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlci.commands import config_of, parse, parser
from mlci.errors import EXIT_GATE_FAILED, EXIT_OK

if TYPE_CHECKING:
    from mlci.config import Config
    from mlci.data import Dataset
    from mlci.registry import Registry, Run
    from mlci.runkey import RunKey


def run(argv: Sequence[str]) -> int:
    p = parser("train", "Data check, train (skipped when nothing changed), evaluate, report; exit code of the gates.")
    p.add_argument("--force", action="store_true", help="train even when a run with the same run key exists")
    p.add_argument(
        "--rehash",
        action="store_true",
        help="hash every data file again, even those whose stat is unchanged since the last run (= data.rehash=true)",
    )
    p.add_argument("--nproc", type=int, metavar="N", help="data-parallel processes via torchrun (= train.nproc=N)")
    p.add_argument(
        "--fleet", metavar="NAME", help="train on all gpu_runners of inventories/NAME at once (= train.fleet=NAME)"
    )
    args = parse(p, argv)
    if args.fleet is not None:
        args.overrides.append(f"train.fleet={args.fleet}")
    if args.nproc is not None:
        args.overrides.append(f"train.nproc={args.nproc}")
    if args.rehash:
        args.overrides.append("data.rehash=true")
    config = config_of(args)

    from mlci import data, runkey

    key = runkey.compute(config, data.data_files(config))
    db = config.path(config.registry.path)
    if not args.force and db.exists():
        from mlci.registry import Registry

        with Registry(db) as registry:
            verdict = _reuse(registry, key.key)
        if verdict is not None:
            key.save_data_hashes()  # the data a run already checked
            return verdict

    # Before anything is written: bad data leaves the registry untouched. The eval split is kept for evaluating.
    train_ds, eval_ds = data.load_splits(config)
    key.save_data_hashes()

    from mlci.registry import Registry
    from mlci.train import exclusive

    with exclusive(db), Registry(db) as registry:
        # Another `mlci train` may have trained this key while we waited for the lock.
        verdict = None if args.force else _reuse(registry, key.key)
        if verdict is not None:
            return verdict
        existing = None if args.force else _reusable(registry, key.key)  # trained, never evaluated
        target = existing or _train(config, train_ds, registry, key)
        del train_ds  # its memory goes back before evaluating
        return _evaluate_and_report(config, registry, target, eval_ds)


def _reusable(registry: Registry, key: str) -> Run | None:
    """The newest succeeded run with this key whose model artifact is still on disk."""
    found = registry.find_run(key)
    model = found.artifact("model") if found is not None else None
    if model is None or not Path(model.path).is_dir():  # none, or its artifact was deleted: train again
        return None
    return found


def _reuse(registry: Registry, key: str) -> int | None:
    """Print `up to date` and return the stored verdict, or None when there is nothing (evaluated) to reuse."""
    found = _reusable(registry, key)
    if found is None:
        return None
    evaluation = registry.latest_evaluation(found.id)
    if evaluation is None:
        return None
    passed = evaluation["passed"]
    print(f"up to date: run {found.id} (finished {found.finished_at}; gates {'passed' if passed else 'FAILED'})")
    if not passed:
        for gate in evaluation["results"].get("gates", []):
            if gate.get("status") == "failed":
                print(f"  failed gate {gate.get('name')}: {gate.get('message')}")
    return EXIT_OK if passed else EXIT_GATE_FAILED


def _train(config: Config, train_ds: Dataset, registry: Registry, key: RunKey) -> Run:
    from mlci.progress import epoch_bar
    from mlci.train import train

    started = time.perf_counter()
    t = config.train
    what = f"training ({t.epochs} epochs" + (f", {t.nproc} processes)" if t.nproc > 1 else ")")
    # With torchrun, rank 0 draws its own bar (the epochs happen in the workers); a fleet's are on its runners.
    with epoch_bar(t.epochs, what, enabled=None if t.nproc == 1 and not t.fleet else False) as bar:
        trained = train(config, train_ds, registry, key, on_epoch=bar)
    loss, accuracy = (trained.metrics.get(k, float("nan")) for k in ("train_loss", "train_accuracy"))
    artifact = trained.artifact("model")
    env = trained.environment
    if t.fleet:
        print(
            f"trained run {trained.id} in {time.perf_counter() - started:.1f} s on fleet {env.get('fleet')}"
            f" ({', '.join(env.get('nodes', []))}; {env.get('world_size')} processes):"
            f" train loss {loss:.4f}, train accuracy {accuracy:.4f}"
        )
    else:
        print(
            f"trained run {trained.id} in {time.perf_counter() - started:.1f} s on {env.get('device')}"
            f" ({env.get('precision')}, {t.nproc} process{'es' if t.nproc > 1 else ''}):"
            f" train loss {loss:.4f}, train accuracy {accuracy:.4f}"
        )
        print(f"device: {env.get('device')} ({env.get('device_why')})")
    if artifact is not None:
        print(f"model artifact: {_shown(artifact.path)} (sha256 {artifact.sha256[:12]}, {artifact.bytes} bytes)")
    return trained


def _evaluate_and_report(config: Config, registry: Registry, target: Run, eval_ds: Dataset) -> int:
    from mlci.commands.evaluate import print_evaluation
    from mlci.evaluate import evaluate_run
    from mlci.report import write_report

    evaluation = evaluate_run(config, registry, target, eval_ds)
    print_evaluation(evaluation)
    folder = write_report(config, registry, registry.run(target.id))
    print(f"report: {_shown(folder / 'report.html')} (also report.md, gates.xml)")
    return EXIT_OK if evaluation.passed else EXIT_GATE_FAILED


def _shown(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
