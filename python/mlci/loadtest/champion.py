"""The registry side of the load test: the champion's last measured p95, and recording this run's figures.

Reading is tolerant (no registry file, no champion or no measurement yet just skips the comparison, with
the reason); recording is not (asking to record into a run that does not exist is an error).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlci.errors import MlciError, UsageError
from mlci.loadtest.figures import Figures

METRIC_PREFIX = "loadtest_"
P95_METRIC = "loadtest_p95_ms"


@dataclass(frozen=True)
class ChampionP95:
    run_id: str | None
    p95_ms: float | None
    note: str  # why p95_ms is None, or where it came from


def champion_p95(registry_path: str | Path) -> ChampionP95:
    if (
        isinstance(registry_path, Path) and not registry_path.is_file()
    ):  # do not create a registry just to find it empty
        return ChampionP95(None, None, f"no registry at {registry_path}")
    try:
        from mlci.registry import Registry

        with Registry(registry_path) as registry:
            champion = registry.champion()
            if champion is None:
                return ChampionP95(None, None, "the registry has no champion")
            value = registry.metrics(champion.id).get(P95_METRIC)
    except (ImportError, MlciError) as exc:
        return ChampionP95(None, None, f"registry unusable ({exc})")
    if value is None:
        return ChampionP95(champion.id, None, f"champion {champion.id} has no {P95_METRIC} yet")
    return ChampionP95(champion.id, float(value), f"{P95_METRIC} of champion {champion.id}")


def figures_as_metrics(figures: Figures) -> dict[str, float]:
    values = {
        "p50_ms": figures.p50_ms,
        "p95_ms": figures.p95_ms,
        "p99_ms": figures.p99_ms,
        "rps": figures.rps,
        "error_ratio": figures.error_ratio,
    }
    return {METRIC_PREFIX + k: float(v) for k, v in values.items() if v is not None}


def record(registry_path: str | Path, run_id: str, figures: Figures) -> None:
    """Store this run's figures as final metrics of `run_id` (each replaces the previous measurement)."""
    from mlci.registry import Registry

    with Registry(registry_path) as registry:
        try:
            run = registry.run(run_id)
        except MlciError as exc:
            raise UsageError(f"--record: {exc}") from None
        registry.log_metrics(run.id, figures_as_metrics(figures))
