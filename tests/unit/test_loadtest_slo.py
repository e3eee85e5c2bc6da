"""The load test's pure parts: SLO checks, request bodies, URL checks (no server, no Locust)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mlci.config import LoadtestConfig, load_config
from mlci.errors import DataError, UsageError
from mlci.loadtest import payload, slo
from mlci.loadtest.figures import Figures
from mlci.loadtest.gate import check_url

ROOT = Path(__file__).resolve().parents[2]
SLO = LoadtestConfig(p50_ms=20, p95_ms=50, p99_ms=100, max_error_ratio=0.01, min_rps=100, max_p95_vs_champion=1.5)


def figures(**kw: float | None) -> Figures:
    base: dict[str, float | None] = dict(requests=1000, failures=0, rps=500.0, p50_ms=5, p95_ms=10, p99_ms=20,
                                         mean_ms=6, max_ms=30)  # fmt: skip
    return Figures(**{**base, **kw})  # type: ignore[arg-type]


def verdicts(checks: list[slo.Check]) -> dict[str, str]:
    return {c.name: "skipped" if c.skipped else ("pass" if c.passed else "FAIL") for c in checks}


def test_a_healthy_run_passes_every_check() -> None:
    checks = slo.evaluate(figures(), SLO, champion_p95_ms=9.0, champion_note="")
    assert verdicts(checks) == dict.fromkeys(["p50_ms", "p95_ms", "p99_ms", "error_ratio", "rps", "p95_vs_champion"],
                                             "pass")  # fmt: skip
    assert slo.failed(checks) == []


@pytest.mark.parametrize(
    ("change", "failing", "described"),
    [
        ({"p50_ms": 21}, "p50_ms", "p50_ms = 21, limit <= 20: FAILED"),
        ({"p95_ms": 51}, "p95_ms", "p95_ms = 51, limit <= 50: FAILED"),
        ({"p99_ms": 101}, "p99_ms", "p99_ms = 101, limit <= 100: FAILED"),
        ({"failures": 11}, "error_ratio", "error_ratio = 0.011, limit <= 0.01: FAILED (11 of 1000 requests failed)"),
        ({"rps": 99.5}, "rps", "rps = 99.5, limit >= 100: FAILED"),
    ],
)
def test_each_limit_fails_alone_and_is_named_with_value_and_limit(change, failing, described) -> None:
    checks = slo.evaluate(figures(**change), SLO, None, "no champion")
    assert [c.name for c in slo.failed(checks)] == [failing]
    assert slo.failed(checks)[0].describe() == described


def test_limits_are_inclusive() -> None:
    at_limits = figures(p50_ms=20, p95_ms=50, p99_ms=100, failures=10, rps=100)
    assert slo.failed(slo.evaluate(at_limits, SLO, 50 / 1.5, "")) == []


def test_no_completed_request_fails_the_latency_checks_and_the_error_ratio() -> None:
    empty = figures(requests=0, failures=0, rps=0.0, p50_ms=None, p95_ms=None, p99_ms=None)
    failed = {c.name: c for c in slo.failed(slo.evaluate(empty, SLO, None, "none"))}
    assert set(failed) == {"p50_ms", "p95_ms", "p99_ms", "error_ratio", "rps"}
    assert failed["p95_ms"].note == "no request completed"


def test_champion_comparison_fails_skips_with_the_reason_or_is_disabled() -> None:
    checks = slo.evaluate(figures(p95_ms=17), SLO, champion_p95_ms=10.0, champion_note="")
    (check,) = slo.failed(checks)
    assert check.describe() == (
        "p95_vs_champion = 17, limit <= 16: FAILED (1.5 x the champion's p95 of 10 ms, + 1 ms of Locust's resolution)"
    )
    skipped = slo.evaluate(figures(), SLO, None, "the registry has no champion")[-1]
    assert (skipped.skipped, skipped.note) == (True, "the registry has no champion")
    off = LoadtestConfig(**{**SLO.__dict__, "max_p95_vs_champion": 0.0})
    assert slo.evaluate(figures(p95_ms=16), off, 10.0, "")[-1].note == "disabled"


def test_bodies_are_open_inference_protocol_requests_that_wrap_around() -> None:
    model_input = payload.ModelInput("digits", n_features=2, rows=[[1, 2], [3, 4], [5, 6]], source="test")
    bodies = [json.loads(b) for b in payload.bodies(model_input, rows_per_request=2)]
    assert len(bodies) == 3
    assert bodies[2] == {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [5, 6, 1, 2]}]}


def test_rows_of_the_wrong_width_are_refused() -> None:
    model_input = payload.ModelInput("digits", n_features=3, rows=[[1, 2]], source="smoke input of X")
    with pytest.raises(DataError, match="rows have 2 values but the model takes 3"):
        payload.bodies(model_input, 1)


def test_bundled_rows_follow_the_schema_feature_order() -> None:
    config = load_config(ROOT / "mlci.toml")
    rows, source = payload.bundled_rows(config, None, 64)
    with open(ROOT / "data" / "digits.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    from mlci.schema import load_schema

    assert rows[0] == [float(first[name]) for name in load_schema(config).feature_names]
    assert len(rows) == payload.MAX_ROWS and source == f"first {payload.MAX_ROWS} rows of data/digits.csv"
    with pytest.raises(DataError, match="the schema names 64 features but the model takes 10"):
        payload.bundled_rows(config, None, 10)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host", "http://", "http://host:notaport"])
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match="--url"):
        check_url(url)


def test_good_urls_lose_their_trailing_slash() -> None:
    assert check_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"


def test_the_locustfile_refuses_to_be_imported_into_mlci(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.delenv("MLCI_LOADTEST_PLAN", raising=False)
    with pytest.raises(ImportError, match="never imported"):
        importlib.import_module("mlci.loadtest.locustfile")
    assert "gevent.monkey" not in sys.modules or not sys.modules["gevent.monkey"].is_module_patched("socket")


def test_champion_comparison_allows_one_step_of_locusts_rounding_and_no_more() -> None:
    # Locust rounds to whole ms below 100 ms: a 1 ms champion and the same model measured at 2 ms must pass.
    same = slo.evaluate(figures(p95_ms=2), SLO, champion_p95_ms=1.0, champion_note="")[-1]
    assert (same.name, same.passed, same.limit) == ("p95_vs_champion", True, 2.5)
    slower = slo.evaluate(figures(p95_ms=3), SLO, champion_p95_ms=1.0, champion_note="")[-1]
    assert slower.passed is False  # three times the champion is a regression, rounding or not
    # Coarser steps above 100 ms and 1 s, as Locust's own.
    assert [slo.resolution_ms(v) for v in (99, 100, 999, 1000)] == [1, 10, 10, 100]
