"""The registry at a glance: one summary per run (what `mlci runs` prints and the dashboard shows).

Reads the registry through its public methods only; it computes nothing that the evaluation did not store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlci.registry import LedgerEntry, Registry, Run

# The headline metrics an evaluation stores on its run (evaluate.headline): point, low and high.
KEY_METRICS: tuple[tuple[str, str], ...] = (("eval_accuracy", "accuracy"), ("eval_macro_f1", "macro-F1"))


@dataclass(frozen=True)
class Estimate:
    point: float
    low: float | None
    high: float | None

    def text(self, digits: int = 4) -> str:
        if self.low is None or self.high is None:
            return f"{self.point:.{digits}f}"
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class RunSummary:
    run: Run
    verdict: str  # "passed", "failed" or "not evaluated"
    failed_gates: list[dict[str, Any]]
    champion: bool
    metrics: dict[str, Estimate]  # label -> estimate, only those the run has

    @property
    def id(self) -> str:
        return self.run.id

    @property
    def commit(self) -> str:
        return (self.run.git_commit or "—")[:12] + ("+dirty" if self.run.dirty else "")

    @property
    def data_hash(self) -> str:
        return (self.run.data_hash or "—")[:12]


def estimates(run: Run) -> dict[str, Estimate]:
    out = {}
    for name, label in KEY_METRICS:
        if name in run.metrics:
            m = run.metrics
            out[label] = Estimate(m[name], m.get(f"{name}_low"), m.get(f"{name}_high"))
    return out


def summarize(registry: Registry, run: Run, champion_id: str | None) -> RunSummary:
    evaluation = registry.latest_evaluation(run.id)
    if evaluation is None:
        verdict, failed = "not evaluated", []
    else:
        gates = evaluation["results"].get("gates", [])
        failed = [g for g in gates if g.get("status") == "failed"]
        verdict = "passed" if evaluation["passed"] else "failed"
    return RunSummary(run, verdict, failed, run.id == champion_id, estimates(run))


def summaries(registry: Registry, limit: int | None = None) -> list[RunSummary]:
    """Every run (or the newest `limit`), newest first."""
    champion = registry.champion()
    runs = registry.runs()[::-1]
    if limit is not None:
        runs = runs[:limit]
    return [summarize(registry, run, champion.id if champion else None) for run in runs]


def ledger_of(registry: Registry, run_id: str) -> list[LedgerEntry]:
    return [e for e in registry.ledger() if e.run_id == run_id]


def reason(entry: LedgerEntry) -> str:
    """Why a ledger entry happened, in one line: the refusal or failure reason, a rollback's origin, the gates."""
    ev = entry.evidence
    if ev.get("reason"):
        return str(ev["reason"])
    if ev.get("from_run"):
        return f"rolled back from run {ev['from_run']}" + (f" on {ev['env']}" if ev.get("env") else "")
    gates = ev.get("gates") or []
    if gates:
        passed = sum(1 for g in gates if g.get("status") == "passed")
        where = f" on {ev['env']}" if ev.get("env") else ""
        return f"{passed}/{len(gates)} gates passed{where}"
    return ""
