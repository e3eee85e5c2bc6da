"""`mlci evaluate [--run REF]`: evaluate a run against the champion, print every gate's verdict, exit 1 on failure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlci.commands import config_of, parse, parser
from mlci.errors import EXIT_GATE_FAILED, EXIT_OK

if TYPE_CHECKING:
    from mlci.config import Config
    from mlci.evaluate import Evaluation, Interval
    from mlci.registry import Registry


def run(argv: Sequence[str]) -> int:
    p = parser("evaluate", "Evaluate a run against the champion on the evaluation split and apply the gates.")
    p.add_argument("--run", default="latest", help="run id, id prefix, 'latest' or 'champion' (default: %(default)s)")
    args = parse(p, argv)
    config = config_of(args)

    from mlci.evaluate import evaluate_run

    with open_registry(config) as registry:
        target = registry.run(args.run)
        evaluation = evaluate_run(config, registry, target)
    print_evaluation(evaluation)
    return EXIT_OK if evaluation.passed else EXIT_GATE_FAILED


def open_registry(config: Config) -> Registry:
    """The existing registry; a missing one is an error with a hint instead of a new empty database."""
    from mlci import registry
    from mlci.errors import RegistryError

    if not registry.exists(config):
        raise RegistryError(
            f"{registry.location(config)}: no registry yet (registry.path): "
            "train a run first with `python -m mlci train`"
        )
    return registry.open_registry(config)


def print_evaluation(evaluation: Evaluation) -> None:
    """The headline figures and one line per gate: verdict, name, value and limit."""
    from rich.console import Console
    from rich.markup import escape

    out = Console(highlight=False, soft_wrap=True)
    c, pct = evaluation.candidate, f"{evaluation.confidence:.0%}"
    out.print(
        f"run {evaluation.run_id} on {evaluation.n_eval} evaluation rows ({pct} bootstrap intervals, "
        f"{evaluation.resamples} resamples):"
    )
    out.print(f"  accuracy {_ci(c.accuracy)}   macro-F1 {_ci(c.macro_f1)}")
    if evaluation.champion is not None and evaluation.difference is not None:
        ch, d = evaluation.champion, evaluation.difference
        out.print(f"  champion {evaluation.champion_id}: accuracy {_ci(ch.accuracy)}   macro-F1 {_ci(ch.macro_f1)}")
        out.print(f"  difference: accuracy {_ci(d.accuracy, signed=True)}   macro-F1 {_ci(d.macro_f1, signed=True)}")
    style = {"passed": "green", "failed": "bold red", "skipped": "dim"}
    for g in evaluation.gates:
        verdict = f"[{style[g.status]}]{g.status.upper():7}[/]"
        value = "n/a" if g.value is None else f"{g.value:.4f}"
        limit = "n/a" if g.limit is None else f"{g.limit:.4f}"
        out.print(f"  {verdict} {g.name:<13} value {value:>8}  limit {limit:>8}  {escape(g.message)}")
    if evaluation.promoted:
        out.print(f"run {evaluation.run_id} is the first champion")
    out.print("[green]gates passed[/]" if evaluation.passed else "[bold red]gates FAILED[/]")


def _ci(i: Interval, signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(i.point)} [{f.format(i.low)}, {f.format(i.high)}]"
