"""The pull-request comparison: this checkout against a base git revision, as a markdown comment.

Both sides are trained or reused through `mlci train` into this checkout's registry: this side as it stands,
the base in a temporary git worktree at that commit, with the base's own code (its `python/` first on the
path) and its own mlci.toml, but this checkout's registry, artifacts and reports. A base commit that already has
a succeeded run (a main branch CI trained it) is reused without a worktree. Both models are then scored on this
side's evaluation split, on the same bootstrap resamples, so the deltas and their intervals are paired.

Verdict: this side's own gates (its stored evaluation against the champion) and the base gate, the champion gate's
rule held against the base: fail when the upper end of the paired interval of (this - base) accuracy is below
-gates.max_drop_vs_champion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlci import plots
from mlci.config import Config
from mlci.errors import MlciError, UsageError
from mlci.evaluate import Difference, Metrics, difference, score, stored
from mlci.gates import GateResult, not_worse_than_champion
from mlci.registry import Registry, Run, open_registry
from mlci.report import Heading, Image, Para, Table, _ci, _git_commit, _num, render_markdown

COMMENT = "comment.md"


class SideFailed(MlciError):
    """`mlci train` on one side exited with an error (not a gate verdict)."""


@dataclass(frozen=True)
class Comparison:
    head: Run
    base: Run
    head_metrics: Metrics
    base_metrics: Metrics
    difference: Difference
    n_eval: int  # rows of this side's evaluation split
    gates: list[GateResult]  # the head's own gates, then the base gate
    comment: Path  # the markdown file

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def compare(config: Config, base_rev: str, overrides: list[str]) -> Comparison:
    commit = _git_commit(config.root, base_rev)
    if commit is None:
        raise UsageError(f"compare {base_rev!r}: not a git revision in {config.root}")
    head_commit = _git_commit(config.root, "HEAD")
    _train(config.root, config.path(config.source), overrides, env=None, what="this checkout")
    from mlci import data, runkey

    key = runkey.compute(config, data.data_files(config))
    with open_registry(config) as registry:
        head = registry.find_run(key.key)
        base = _base_run(registry, commit)
    if head is None:
        raise SideFailed(f"compare: `mlci train` left no succeeded run for this checkout (key {key.key[:12]})")
    if base is None:
        _train_base(config, commit)
        with open_registry(config) as registry:
            base = _base_run(registry, commit)
        if base is None:
            raise SideFailed(f"compare: training the base {commit[:12]} left no succeeded run with a model")

    with open_registry(config) as registry:
        head_eval = stored(registry, head)
        ds, metrics, samples = score(config, [head, base])
        confidence = config.evaluate.confidence
        diff = difference(metrics[head.id], samples[head.id], metrics[base.id], samples[base.id], confidence)
        base_gate = not_worse_than_champion(
            base.id, diff.accuracy.point, diff.accuracy.low, diff.accuracy.high,
            config.gates.max_drop_vs_champion, confidence,
        )  # fmt: skip
        base_gate = GateResult("base", base_gate.status, base_gate.value, base_gate.limit,
                               base_gate.message.replace("champion", "base"))  # fmt: skip
        own = list(head_eval.gates) if head_eval is not None else []
        folder = config.path(config.registry.reports) / "compare" / f"{head.id}-vs-{base.id}"
        folder.mkdir(parents=True, exist_ok=True)
        result = Comparison(
            head, base, metrics[head.id], metrics[base.id], diff, len(ds.y), [*own, base_gate], folder / COMMENT
        )
        _write(config, registry, result, base_rev, head_commit)
    return result


def _base_run(registry: Registry, commit: str) -> Run | None:
    """The newest succeeded run of the base commit, trained from a clean tree, with a model."""
    runs = [r for r in registry.runs() if r.git_commit == commit and not r.dirty and r.status == "succeeded"]
    runs = [r for r in runs if r.artifact("model") is not None]
    return runs[-1] if runs else None


def _train(root: Path, source: Path, overrides: list[str], *, env: dict[str, str] | None, what: str) -> None:
    """`mlci train` in `root`, its output on this terminal; exit 0 or 1 (a gate verdict) are both results."""
    print(f"compare: training or reusing {what}", flush=True)
    command = [sys.executable, "-m", "mlci", "train", "--config", str(source), *overrides]
    code = subprocess.run(command, cwd=root, env=env, check=False).returncode
    if code not in (0, 1):
        raise SideFailed(f"compare: `mlci train` for {what} exited {code}")


def _train_base(config: Config, commit: str) -> None:
    """Train the base commit with its own code and config, into this checkout's registry."""
    scratch = Path(tempfile.mkdtemp(prefix="compare-", dir=config.path(".mlci")))
    tree = scratch / "base"
    git = ["git", "-C", str(config.root)]
    try:
        subprocess.run([*git, "worktree", "add", "--detach", "--quiet", str(tree), commit], check=True)
        stores = {k: str(config.path(getattr(config.registry, k)).resolve()) for k in ("path", "artifacts", "reports")}
        path = os.pathsep.join(filter(None, [str(tree / "python"), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        overrides = [f"registry.{k}={v}" for k, v in stores.items()]
        if config.registry.url:  # a shared registry: the base records into it too
            overrides.append(f"registry.url={json.dumps(config.registry.url)}")
        _train(tree, tree / "mlci.toml", overrides, env=env, what=f"the base {commit[:12]}")
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _write(config: Config, registry: Registry, c: Comparison, base_rev: str, head_commit: str | None) -> None:
    folder = c.comment.parent
    pct = f"{config.evaluate.confidence:.0%}"
    failed = "; ".join(f"{g.name}: {g.message}" for g in c.gates if not g.passed)
    verdict = "PASSED: every gate passed." if c.passed else f"FAILED: {failed}"
    rows = [
        [label, _ci(getattr(c.base_metrics, key)), _ci(getattr(c.head_metrics, key)),
         _ci(getattr(c.difference, key), signed=True)]
        for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))
    ]  # fmt: skip
    title = f"mlci: {(head_commit or 'this checkout')[:12]} against {base_rev} ({(c.base.git_commit or '')[:12]})"
    blocks = [
        Heading(2, title),
        Para(verdict, strong=True),
        Para(
            f"Run {c.head.id} (this change) against run {c.base.id} (the base) on the {c.n_eval} rows of this "
            f"change's evaluation split; point estimate [{pct} bootstrap interval], {config.evaluate.bootstrap} "
            f"resamples, the delta paired on the same resamples."
        ),
        Table(["metric", f"base {c.base.id}", f"change {c.head.id}", "change − base"], rows),
        Heading(3, "Gates"),
        Table(
            ["gate", "verdict", "value", "limit", "detail"],
            [[g.name, g.status.upper(), _num(g.value), _num(g.limit), g.message] for g in c.gates],
        ),
    ]
    for name in ("metrics.png", "loss.png"):
        (folder / name).unlink(missing_ok=True)
    sides = ((f"base {c.base.id}", c.base_metrics), (f"change {c.head.id}", c.head_metrics))
    shown = {
        label: [(side, *getattr(m, key).to_list()) for side, m in sides]
        for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))
    }
    limits = {"accuracy": config.gates.min_accuracy, "macro-F1": config.gates.min_macro_f1}
    made = [plots.over_runs(folder / "metrics.png", shown, limits, title="base and change on the evaluation split")]
    losses = {
        f"{side} {r.id}": registry.history(r.id, "train_loss") for side, r in (("base", c.base), ("change", c.head))
    }
    made.append(plots.curves(folder / "loss.png", losses, title="training loss", ylabel="loss"))
    blocks += [Heading(3, "Plots")] + [Image(p.stem, p) for p in made if p is not None]
    c.comment.write_text(render_markdown(blocks, folder), encoding="utf-8")
