"""`mlci runs [--limit N]` and `mlci runs show <ref>`: the registry at a glance, newest first.

A rich table on a terminal, plain aligned text otherwise (a CI log, a pipe), so the output is greppable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from mlci.commands import config_of, parse, parser
from mlci.errors import EXIT_OK, UsageError


def run(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["show"]:
        return _show(argv[1:])
    p = parser("runs", "Every run of the registry, newest first: status, commit, data, metrics, gates, champion.")
    p.add_argument("--limit", type=int, metavar="N", help="show only the newest N runs")
    args = parse(p, argv)
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"mlci runs: --limit = {args.limit}: must be at least 1")
    config = config_of(args)

    from mlci.commands.evaluate import open_registry
    from mlci.overview import summaries

    with open_registry(config) as registry:
        rows = summaries(registry, args.limit)
    header = ["", "run", "status", "created", "commit", "data", "accuracy", "macro-F1", "gates"]
    table = []
    for s in rows:
        gates = s.verdict + (f" ({', '.join(g['name'] for g in s.failed_gates)})" if s.failed_gates else "")
        table.append(
            ["*" if s.champion else "", s.id, s.run.status, s.run.created_at[:19].replace("T", " "), s.commit,
             s.data_hash, *(s.metrics[k].text() if k in s.metrics else "—" for k in ("accuracy", "macro-F1")), gates]
        )  # fmt: skip
    _table(header, table, title=f"{len(rows)} run(s), newest first (* = champion)")
    return EXIT_OK


def _show(argv: Sequence[str]) -> int:
    p = parser("runs show", "One run: params, environment, artifacts, metrics, gates and its ledger entries.")
    p.add_argument("ref", help="run id, id prefix, 'latest' or 'champion'")
    args = parse(p, argv)
    config = config_of(args)

    from mlci.commands.evaluate import open_registry
    from mlci.overview import ledger_of, reason, summarize

    with open_registry(config) as registry:
        target = registry.run(args.ref)
        champion = registry.champion()
        s = summarize(registry, target, champion.id if champion else None)
        evaluation = registry.latest_evaluation(target.id)
        entries = ledger_of(registry, target.id)
    r = s.run
    facts = [
        ["run", f"{r.id}{' (champion)' if s.champion else ''}"],
        ["status", r.status + (f": {r.error}" if r.error else "")],
        ["key", r.key],
        ["git commit", (r.git_commit or "—") + (" (dirty)" if r.dirty else "")],
        ["data hash", r.data_hash or "—"],
        ["created", r.created_at],
        ["finished", r.finished_at or "—"],
        ["gates", s.verdict],
    ]
    _table(["", ""], facts, title=f"run {r.id}")
    _table(["param", "value"], [[k, _value(v)] for k, v in _flat(r.params)], title="params (resolved config)")
    _table(["environment", "value"], [[k, _value(v)] for k, v in _flat(r.environment)], title="environment")
    _table(
        ["kind", "path", "sha256", "bytes"],
        [[a.kind, a.path, a.sha256, str(a.bytes)] for a in r.artifacts],
        title="artifacts",
    )
    _table(["metric", "value"], [[k, f"{v:.6g}"] for k, v in sorted(r.metrics.items())], title="metrics (final)")
    gates = (evaluation or {}).get("results", {}).get("gates", [])
    _table(
        ["gate", "verdict", "value", "limit", "detail"],
        [[g["name"], g["status"], _value(g.get("value")), _value(g.get("limit")), g.get("message", "")] for g in gates],
        title="gates" + (f" (vs champion {evaluation['champion']})" if evaluation and evaluation["champion"] else ""),
    )
    _table(
        ["#", "at", "outcome", "hosts", "who", "why"],
        [[str(e.seq), e.at[:19].replace("T", " "), e.outcome, ", ".join(e.hosts) or "—", e.who, reason(e)]
         for e in entries],
        title="ledger",
    )  # fmt: skip
    return EXIT_OK


def _flat(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in sorted(d.items()):
        if isinstance(v, dict) and v:
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _value(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.6g}"
    return v if isinstance(v, str) else json.dumps(v)


def _table(header: list[str], rows: list[list[str]], *, title: str) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left", show_header=any(header))
        for h in header:
            t.add_column(h, overflow="fold")
        for row in rows or [["(none)", *[""] * (len(header) - 1)]]:
            t.add_row(*row)
        Console().print(t)
        return
    print(f"{title}:")
    if not rows:
        print("  (none)\n")
        return
    lines = ([header] if any(header) else []) + rows
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    print()
