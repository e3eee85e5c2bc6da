"""The SLO gate: each check compares one figure of the run with its limit from [loadtest] in mlci.toml."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mlci.config import LoadtestConfig
from mlci.loadtest.figures import Figures

AT_MOST, AT_LEAST = "<=", ">="


@dataclass(frozen=True)
class Check:
    name: str  # e.g. "p95_ms"
    value: float | None  # None: nothing to measure (no request completed)
    op: str  # AT_MOST or AT_LEAST
    limit: float | None  # None when skipped without a limit
    passed: bool
    skipped: bool = False
    note: str = ""

    def describe(self) -> str:
        if self.skipped:
            return f"{self.name}: skipped ({self.note})"
        value = "n/a" if self.value is None else f"{self.value:g}"
        verdict = "ok" if self.passed else "FAILED"
        extra = f" ({self.note})" if self.note else ""
        return f"{self.name} = {value}, limit {self.op} {self.limit:g}: {verdict}{extra}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _limit(name: str, value: float | None, op: str, limit: float, note: str = "") -> Check:
    if value is None:
        return Check(name, None, op, limit, passed=False, note="no request completed")
    passed = value <= limit if op == AT_MOST else value >= limit
    return Check(name, value, op, limit, passed=passed, note=note)


def evaluate(figures: Figures, slo: LoadtestConfig, champion_p95_ms: float | None, champion_note: str) -> list[Check]:
    """Every check, passed or not; the gate passes when none failed (skipped ones do not fail it)."""
    checks = [
        _limit("p50_ms", figures.p50_ms, AT_MOST, slo.p50_ms),
        _limit("p95_ms", figures.p95_ms, AT_MOST, slo.p95_ms),
        _limit("p99_ms", figures.p99_ms, AT_MOST, slo.p99_ms),
        _limit("error_ratio", figures.error_ratio, AT_MOST, slo.max_error_ratio,
               note=f"{figures.failures} of {figures.requests} requests failed"),
        _limit("rps", figures.rps, AT_LEAST, slo.min_rps),
    ]  # fmt: skip
    k = slo.max_p95_vs_champion
    if k == 0:
        checks.append(Check("p95_vs_champion", None, AT_MOST, None, True, skipped=True, note="disabled"))
    elif champion_p95_ms is None or champion_p95_ms <= 0:
        checks.append(Check("p95_vs_champion", None, AT_MOST, None, True, skipped=True, note=champion_note))
    else:
        step = resolution_ms(champion_p95_ms)
        checks.append(
            _limit("p95_vs_champion", figures.p95_ms, AT_MOST, k * champion_p95_ms + step,
                   note=f"{k:g} x the champion's p95 of {champion_p95_ms:g} ms, + {step:g} ms of Locust's resolution")
        )  # fmt: skip
    return checks


def resolution_ms(latency_ms: float) -> float:
    """How finely Locust measures a latency of this size: it rounds response times to whole milliseconds below
    100 ms, to 10 ms below 1 s and to 100 ms above. Two runs of the same model may differ by one such step, so
    the comparison with the champion allows one: at a 1 ms champion, 1.5 x alone would fail a 2 ms candidate."""
    return 1.0 if latency_ms < 100 else 10.0 if latency_ms < 1000 else 100.0


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed and not c.skipped]
