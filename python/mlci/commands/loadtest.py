"""`python -m mlci loadtest [--url URL] [--artifact DIR] ...`: Locust against a model server, SLO-gated.

Exit 0 when every SLO check passes, 1 when one fails (each failed check named with its value and limit),
2 for bad arguments, an unreachable server or bad inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mlci.commands import config_of, parse, parser
from mlci.errors import GateFailed, UsageError


def _number(kind: type, minimum: float, *, strict: bool) -> Any:
    """An argparse type: a finite `kind` (int or float) >= minimum, or > minimum when strict."""
    noun = "a whole number" if kind is int else "a number"
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
        in_range = value > minimum if strict else value >= minimum  # False for NaN too
        if not in_range or value == float("inf"):
            finite = "a finite number " if kind is float else ""
            raise argparse.ArgumentTypeError(f"must be {finite}{bound}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 0, strict=True)
_non_negative_int = _number(int, 0, strict=False)
_positive_float = _number(float, 0, strict=True)


def _parser() -> argparse.ArgumentParser:
    p = parser("loadtest", "Locust load test against a model server's URL, gated on [loadtest] in mlci.toml.")
    p.add_argument("--url", help="the server's base URL (default: http://serving.host:serving.port)")
    p.add_argument("--artifact", type=Path, help="the served artifact: its smoke input is sent, its run recorded")
    p.add_argument("--model", help="served model name (default: the artifact's, else serving.model_name)")
    p.add_argument("--users", type=_positive_int, help="concurrent users (loadtest.users)")
    p.add_argument("--spawn-rate", type=_positive_float, help="users started per second (loadtest.spawn_rate)")
    p.add_argument("--duration", type=_positive_int, help="seconds of load (loadtest.duration_s)")
    p.add_argument("--workers", type=_non_negative_int, help="Locust worker processes; 0 = one process")
    p.add_argument("--rows", type=_positive_int, help="rows per request (loadtest.rows_per_request)")
    p.add_argument("--output", type=Path, help="folder for CSV, HTML, JSON summary, PNG (loadtest.output)")
    p.add_argument("--record", action="store_true", help="store this run's figures in the registry")
    p.add_argument("--run-id", help="registry run to --record into (default: the artifact's run)")
    p.add_argument(
        "--baseline-version",
        help="a version the server still has loaded (the previous model): alternate requests between it and "
        "--artifact's version and compare their p95 from the same window",
    )
    return p


def _default_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):  # a wildcard bind is reached through loopback
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(argv: list[str]) -> int:
    from mlci.loadtest import Target, run_loadtest

    args = parse(_parser(), argv)
    config = config_of(args)
    cli = {"users": args.users, "spawn_rate": args.spawn_rate, "duration_s": args.duration,
           "workers": args.workers, "rows_per_request": args.rows}  # fmt: skip
    loadtest = dataclasses.replace(config.loadtest, **{k: v for k, v in cli.items() if v is not None})
    config = dataclasses.replace(config, loadtest=loadtest)
    if args.run_id is not None and not args.run_id.strip():
        raise UsageError("--run-id: must not be empty")
    url = args.url if args.url is not None else _default_url(config.serving.host, config.serving.port)
    if args.baseline_version is not None and args.artifact is None:
        raise UsageError("--baseline-version needs --artifact (the version to compare it with)")
    target = Target(url=url, artifact=args.artifact, model_name=args.model, run_id=args.run_id)
    target = dataclasses.replace(target, baseline_version=args.baseline_version)
    summary = run_loadtest(config, target, output=args.output, record=args.record)
    _print(summary)
    if not summary["passed"]:
        raise GateFailed("load test SLO failed: " + "; ".join(summary["failed"]))
    return 0


def _print(summary: dict[str, Any]) -> None:
    f, load = summary["figures"], summary["load"]
    console = Console()
    workers = f", {load['workers']} workers" if load["workers"] else ""
    console.print(
        f"[bold]{summary['model']}[/] at {summary['url']}: {load['users']} users x {load['duration_s']} s"
        f"{workers}; {f['requests']} requests, {f['failures']} failed, {f['rps']:.1f} req/s"
    )
    table = Table("check", "value", "limit", "verdict")
    for c in summary["checks"]:
        value = "-" if c["value"] is None else f"{c['value']:g}"
        limit = "-" if c["limit"] is None else f"{c['op']} {c['limit']:g}"
        verdict = "[dim]skipped[/]" if c["skipped"] else ("[green]pass[/]" if c["passed"] else "[red]FAIL[/]")
        table.add_row(c["name"], value, limit, verdict + (f" [dim]({c['note']})[/]" if c["note"] else ""))
    console.print(table)
    console.print(f"outputs: {summary['dir']} (summary.json, locust.html, locust_stats.csv, latency.png)")
    if summary["recorded"]:
        console.print(f"recorded as loadtest_* metrics of run {summary['run_id']}")
