"""One load test: preflight the target, run Locust, read its figures, apply the SLO, write the outputs.

The target is a black box over HTTP (the Open Inference Protocol); nothing of the server is imported.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlci.config import Config, LoadtestConfig
from mlci.errors import UsageError
from mlci.loadtest import champion, payload, slo
from mlci.loadtest.figures import Figures, read_figures
from mlci.loadtest.launcher import LocustFiles, LocustRun, run_locust
from mlci.loadtest.plot import latency_histogram
from mlci.loadtest.summary import FORMAT, HISTOGRAM_FILE, SUMMARY_FILE, read_summary, write_summary

PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class Target:
    url: str  # base URL of the server, e.g. http://127.0.0.1:8000
    artifact: Path | None = None  # the artifact being served, for its smoke rows and run id
    model_name: str | None = None  # default: the artifact's, else serving.model_name
    run_id: str | None = None  # the registry run to --record into (default: the artifact's)
    # A version the server still has loaded beside the target (the previous model after a hot swap): the
    # load alternates between the two in one-second windows, and the target's p95 is compared with this
    # one's from the same minute instead of a figure stored earlier. The target is addressed by its version.
    baseline_version: str | None = None


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url {url!r}: must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise UsageError(f"--url {url!r}: the port is not a number in 0-65535") from None
    return url.rstrip("/")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _headers(config: Config) -> dict[str, str]:
    env = config.serving.token_env
    return {"Authorization": f"Bearer {os.environ[env]}"} if env and os.environ.get(env) else {}


def resolve_input(config: Config, target: Target, url: str) -> payload.ModelInput:
    """The model's input spec and rows: --artifact's smoke input, else what the server publishes, else data."""
    from_artifact = payload.artifact_input(target.artifact) if target.artifact else None
    name = target.model_name or (from_artifact.model_name if from_artifact else "") or config.serving.model_name
    served = payload.from_metadata(payload.fetch_metadata(url, name, _headers(config)), name, url)
    if from_artifact is not None:
        if served.n_features is not None and from_artifact.n_features != served.n_features:
            raise UsageError(
                f"--artifact {target.artifact}: takes {from_artifact.n_features} features but model {name!r} "
                f"at {url} takes {served.n_features}"
            )
        if served.versions and from_artifact.versions and from_artifact.versions[0] not in served.versions:
            # Measuring one model and recording the figures as another's would poison the champion's p95.
            raise UsageError(
                f"--artifact {target.artifact}: is version {from_artifact.versions[0]} but {url} serves model "
                f"{name!r} in version(s) {', '.join(served.versions)}"
            )
        return dataclasses.replace(from_artifact, model_name=name)
    if served.rows:
        return served
    rows, source = payload.bundled_rows(config, served.features, served.n_features)
    return dataclasses.replace(served, rows=rows, source=source)


def run_loadtest(config: Config, target: Target, *, output: Path | None = None, record: bool = False) -> dict[str, Any]:
    """Run the load test described by `config.loadtest` against `target`; return (and write) the summary.

    Raises UsageError/DataError/ArtifactError (exit 2) before any load is sent when the target or the
    inputs are wrong. The caller decides what a failed SLO means (`summary["passed"]`).
    """
    lt: LoadtestConfig = config.loadtest
    url = check_url(target.url)
    if target.artifact is not None and not Path(target.artifact).exists():
        raise UsageError(f"--artifact {target.artifact}: no such file or directory")
    out = (output or config.path(lt.output)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)  # a failed run must not leave the previous verdict behind
    model_input = resolve_input(config, target, url)
    run_id = target.run_id or model_input.run_id
    if record and not run_id:
        raise UsageError("--record needs the run to record into: give --run-id or --artifact")
    from mlci.registry import location

    registry_path = location(config)

    baseline = target.baseline_version
    if baseline is not None and not model_input.versions:
        raise UsageError("a baseline version needs the target's own version: give --artifact")
    plan = {
        "path": payload.infer_path(model_input.model_name, model_input.versions[0] if baseline else None),
        "baseline_path": payload.infer_path(model_input.model_name, baseline) if baseline else None,
        "bodies": payload.bodies(model_input, lt.rows_per_request),
        "user_rps": lt.user_rps,
        "token_env": config.serving.token_env,
        "timeout_s": lt.request_timeout_s,
    }
    (out / PLAN_FILE).write_text(json.dumps(plan), encoding="utf-8")
    started = _now()
    files = run_locust(
        LocustRun(url=url, plan=out / PLAN_FILE, output=out, users=lt.users, spawn_rate=lt.spawn_rate,
                  duration_s=lt.duration_s, workers=lt.workers)
    )  # fmt: skip
    if baseline is None:
        figures = read_figures(files.stats_csv, files.json, files.failures_csv)
        enabled = lt.max_p95_vs_champion > 0
        best = champion.champion_p95(registry_path) if enabled else champion.ChampionP95(None, None, "")
        baseline_figures = None
    else:
        figures, baseline_figures, best = _paired_figures(files, baseline)
    checks = slo.evaluate(figures, lt, best.p95_ms, best.note)
    passed = not slo.failed(checks)
    latency_histogram(figures, checks, out / HISTOGRAM_FILE, f"{model_input.model_name} at {url}")
    if record and run_id is not None:
        champion.record(registry_path, run_id, figures)

    summary: dict[str, Any] = {
        "format": FORMAT,
        "passed": passed,
        "url": url,
        "model": model_input.model_name,
        "run_id": run_id,
        "recorded": bool(record),
        "started_at": started,
        "finished_at": _now(),
        "load": {
            "users": lt.users, "spawn_rate": lt.spawn_rate, "duration_s": lt.duration_s,
            "workers": lt.workers, "user_rps": lt.user_rps, "rows_per_request": lt.rows_per_request,
            "baseline_version": baseline,
        },
        "payload": {"source": model_input.source, "distinct_bodies": len(plan["bodies"])},
        "figures": {
            "requests": figures.requests, "failures": figures.failures, "error_ratio": figures.error_ratio,
            "rps": figures.rps, "p50_ms": figures.p50_ms, "p95_ms": figures.p95_ms, "p99_ms": figures.p99_ms,
            "mean_ms": figures.mean_ms, "max_ms": figures.max_ms,
        },
        "errors": figures.errors,
        "champion": {"run_id": best.run_id, "p95_ms": best.p95_ms, "note": best.note},
        "baseline": None
        if baseline_figures is None
        else {
            "version": baseline, "requests": baseline_figures.requests, "failures": baseline_figures.failures,
            "rps": baseline_figures.rps, "p50_ms": baseline_figures.p50_ms, "p95_ms": baseline_figures.p95_ms,
            "p99_ms": baseline_figures.p99_ms,
        },
        "checks": [c.to_dict() for c in checks],
        "failed": [c.describe() for c in slo.failed(checks)],
        "files": {
            "stats_csv": files.stats_csv.name, "history_csv": files.history_csv.name,
            "failures_csv": files.failures_csv.name, "html": files.html.name, "json": files.json.name,
            "histogram": HISTOGRAM_FILE, "log": "locust.log",
        },
    }  # fmt: skip
    write_summary(out, summary)
    return read_summary(out)


def _paired_figures(files: LocustFiles, baseline: str) -> tuple[Figures, Figures, champion.ChampionP95]:
    """The target's and the baseline's figures from one interleaved run.

    Latency and errors are the target's own; throughput is what the server answered in all (both versions
    shared the users), so the rps floor still measures the host under the configured load.
    """
    target = read_figures(files.stats_csv, files.json, files.failures_csv, name="infer")
    both = read_figures(files.stats_csv, name="Aggregated")
    base = read_figures(files.stats_csv, files.json, name="baseline")
    target = dataclasses.replace(target, rps=both.rps)
    note = f"p95 of version {baseline} on the same server, in alternating one-second windows of the same run"
    if base.p95_ms is None or base.failures:
        note = f"version {baseline} answered {base.requests - base.failures} of {base.requests} requests"
        return target, base, champion.ChampionP95(None, None, note)
    return target, base, champion.ChampionP95(None, base.p95_ms, note)
