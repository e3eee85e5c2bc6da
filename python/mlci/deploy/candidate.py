"""Which run a deploy ships, and whether it may: its gates, the staging rule, and the champion history.

Ledger outcomes written by deploys: `promoted` (became the champion), `passed staging`, `refused` (never
reached a host), `failed` (stopped during the rollout; hosts back on their previous model), `rolled back`
(`mlci rollback`: the champion moved back). `first champion` comes from the first evaluation.
"""

from __future__ import annotations

from mlci.errors import RegistryError
from mlci.registry import Registry, Run

PROMOTED = "promoted"
PASSED_STAGING = "passed staging"
REFUSED = "refused"
FAILED = "failed"
ROLLED_BACK = "rolled back"
# Outcomes after which the entry's run is the champion.
CHAMPION_OUTCOMES = (PROMOTED, ROLLED_BACK, "first champion")


def gates_passed(registry: Registry, run: Run) -> bool:
    evaluation = registry.latest_evaluation(run.id)
    return bool(evaluation and evaluation["passed"])


def choose(registry: Registry, ref: str | None) -> Run:
    """`ref` (id, prefix, latest, champion), or the newest succeeded run whose latest evaluation passed."""
    if ref is not None:
        return registry.run(ref)
    # A run someone rolled back is not shipped again by the next periodic or `train deploy` (only by --run).
    rolled_back = {e.evidence.get("from_run") for e in registry.ledger() if e.outcome == ROLLED_BACK}
    for run in reversed(registry.runs()):
        if run.status == "succeeded" and run.id not in rolled_back and gates_passed(registry, run):
            return run
    raise RegistryError(f"{registry.path}: no run has passed its gates yet; train one first (nox -s train)")


def refusal(registry: Registry, run: Run, *, env: str, staging_env: str, require_staging: bool) -> str | None:
    """Why `run` may not go to `env`, or None when it may."""
    if run.status != "succeeded":
        return f"run {run.id} is {run.status}, not succeeded"
    if run.artifact("model") is None:
        return f"run {run.id} has no model artifact"
    evaluation = registry.latest_evaluation(run.id)
    if evaluation is None:
        return f"run {run.id} was never evaluated (mlci evaluate --run {run.id})"
    if not evaluation["passed"]:
        failed = [g.get("name") for g in evaluation["results"].get("gates", []) if g.get("status") == "failed"]
        return f"run {run.id} failed its gates ({', '.join(map(str, failed)) or 'see its report'})"
    if require_staging and env != staging_env and not passed_staging(registry, run.id):
        return (
            f"run {run.id} has not passed {staging_env} (deploy.require_staging is true): "
            f"deploy it with --env {staging_env} first"
        )
    return None


def passed_staging(registry: Registry, run_id: str) -> bool:
    return any(e.run_id == run_id and e.outcome == PASSED_STAGING for e in registry.ledger())


def previous_champion(registry: Registry) -> Run | None:
    """The champion before the current one (None: there was none).

    The ledger's champions form a stack: a promotion pushes, a rollback pops back to the run it restored, so
    rolling back twice goes two champions back instead of returning to the model just rolled away from.
    """
    stack: list[str] = []
    for entry in registry.ledger():
        if entry.outcome == ROLLED_BACK and entry.run_id in stack:
            del stack[stack.index(entry.run_id) + 1 :]
        elif entry.outcome in CHAMPION_OUTCOMES and (not stack or stack[-1] != entry.run_id):
            stack.append(entry.run_id)
    return registry.run(stack[-2]) if len(stack) >= 2 else None
