"""`mlci train [--force] [--rehash] [--nproc N] [--fleet NAME]`: data check -> train (or reuse) -> evaluate ->
report; exit code of the gates. The flow is pipeline.py's; this module parses and prints.

The no-op path (a succeeded run with the same run key exists) imports neither torch nor numpy nor rich: it
prints `up to date: run <id>` and exits with that run's stored gate verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlci.commands import config_of, parse, parser

if TYPE_CHECKING:
    from mlci.evaluate import Evaluation
    from mlci.pipeline import Hooks
    from mlci.registry import Run


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

    from mlci import pipeline

    return pipeline.run(config, force=args.force, hooks=printing_hooks()).exit_code


def printing_hooks() -> Hooks:
    """The pipeline's progress as `mlci train` prints it (periodic prints the same)."""
    from mlci.pipeline import Hooks

    return Hooks(up_to_date=print_up_to_date, epoch_bar=_epoch_bar, trained=_trained, evaluated=_evaluated,
                 reported=_reported)  # fmt: skip


def print_up_to_date(run: Run, evaluation: dict[str, Any]) -> None:
    passed = bool(evaluation.get("passed"))
    print(f"up to date: run {run.id} (finished {run.finished_at}; gates {'passed' if passed else 'FAILED'})")
    if not passed:
        for gate in evaluation.get("results", {}).get("gates", []):
            if gate.get("status") == "failed":
                print(f"  failed gate {gate.get('name')}: {gate.get('message')}")


def _epoch_bar(total: int, description: str, enabled: bool | None) -> Any:
    from mlci.progress import epoch_bar

    return epoch_bar(total, description, enabled=enabled)


def _trained(trained: Run, seconds: float) -> None:
    env = trained.environment
    nproc = int(env.get("nproc") or 1)
    loss, accuracy = (trained.metrics.get(k, float("nan")) for k in ("train_loss", "train_accuracy"))
    artifact = trained.artifact("model")
    if env.get("fleet"):
        print(
            f"trained run {trained.id} in {seconds:.1f} s on fleet {env['fleet']}"
            f" ({', '.join(env.get('nodes', []))}; {env.get('world_size')} processes):"
            f" train loss {loss:.4f}, train accuracy {accuracy:.4f}"
        )
    else:
        print(
            f"trained run {trained.id} in {seconds:.1f} s on {env.get('device')}"
            f" ({env.get('precision')}, {nproc} process{'es' if nproc > 1 else ''}):"
            f" train loss {loss:.4f}, train accuracy {accuracy:.4f}"
        )
        print(f"device: {env.get('device')} ({env.get('device_why')})")
    if artifact is not None:
        print(f"model artifact: {shown(artifact.path)} (sha256 {artifact.sha256[:12]}, {artifact.bytes} bytes)")


def _evaluated(evaluation: Evaluation) -> None:
    from mlci.commands.evaluate import print_evaluation

    print_evaluation(evaluation)


def _reported(folder: Path) -> None:
    print(f"report: {shown(folder / 'report.html')} (also report.md, gates.xml)")


def shown(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
