"""reports/index.html: every run with its verdict and key metrics, the champion's history from the ledger, a plot
of the gate metrics over runs and a link to each run's report. Static files only: any web server (a runner's
nginx, Jenkins' archive) serves it.

Rewritten after every report and every deploy or rollback. Each file is replaced atomically (written beside,
then renamed), so two runs finishing at once never leave a half-written page.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlci import plots
from mlci.config import Config
from mlci.overview import RunSummary, reason, summaries
from mlci.registry import LedgerEntry, Registry, open_registry

INDEX = "index.html"
PLOT = Path("dashboard") / "gate-metrics.png"  # beside the run folders (r0001/ ...), never one of them
PLOTTED = 100  # the newest evaluated runs in the plot (the table lists every run)

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 80rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.passed, .promoted, .first-champion, .passed-staging { color: #176b2c; font-weight: 600; }
.failed, .refused { color: #b00020; font-weight: 600; }
.rolled-back { color: #8a5a00; font-weight: 600; }
tr.champion { background: #f1f8f1; }
img { max-width: 100%; }
"""


def write(config: Config, registry: Registry) -> Path:
    """Write reports/index.html (and its plot) from the registry; return the page's path."""
    folder = config.path(config.registry.reports)
    folder.mkdir(parents=True, exist_ok=True)
    runs = summaries(registry)  # newest first
    ledger = registry.ledger()
    champion = next((s for s in runs if s.champion), None)

    plot = _plot(config, folder, runs)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<link rel='icon' href='data:,'>",  # no favicon request: the page makes none but its own files
        f"<title>{_e(config.project.name)}: runs</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(config.project.name)}: runs</h1>",
        f"<p>{len(runs)} run(s); champion: "
        + (f"<a href='#{_e(champion.id)}'>{_e(champion.id)}</a>" if champion else "none yet")
        + f". Updated {_e(_now())}.</p>",
        "<h2>Runs (newest first)</h2>",
        _runs_table(folder, runs),
        f"<h2>Gate metrics over runs (the newest {PLOTTED} evaluated)</h2>",
        f"<p><img id='gate-metrics' alt='gate metrics over runs' src='{_e(plot)}'></p>"
        if plot
        else "<p>No run has been evaluated yet.</p>",
        "<h2>Champion history (the promotion ledger, newest first)</h2>",
        _ledger_table(ledger),
        "</body></html>\n",
    ]
    page = folder / INDEX
    _replace(page, "\n".join(out).encode("utf-8"))
    return page


@contextlib.contextmanager
def rewritten(config: Config) -> Iterator[None]:
    """Rewrite the dashboard when the block ends, however it ends (a deploy refused, failed or done).
    A dashboard error never hides the block's own error."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            _write_from(config)
        raise
    _write_from(config)


def _write_from(config: Config) -> None:
    with open_registry(config) as registry:
        write(config, registry)


def _runs_table(folder: Path, runs: list[RunSummary]) -> str:
    header = ["", "run", "status", "created", "commit", "data", "accuracy", "macro-F1", "gates", "report"]
    rows = ["<table id='runs'><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    for s in runs:
        report = folder / s.id / "report.html"
        link = f"<a class='report' href='{_e(s.id)}/report.html'>report</a>" if report.is_file() else "—"
        why = "; ".join(g.get("message") or g["name"] for g in s.failed_gates)
        gates = s.verdict + (f": {why}" if why else "")
        status = s.run.status + (f": {s.run.error}" if s.run.error else "")
        cells = [
            "★ champion" if s.champion else "",
            s.id,
            status,
            s.run.created_at[:19].replace("T", " "),
            s.commit,
            s.data_hash,
            *(s.metrics[k].text() if k in s.metrics else "—" for k in ("accuracy", "macro-F1")),
        ]
        tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
        tds += f"<td class='{_cls(s.verdict)}'>{_e(gates)}</td><td>{link}</td>"
        rows.append(f"<tr id='{_e(s.id)}'{' class=champion' if s.champion else ''}>{tds}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _ledger_table(ledger: list[LedgerEntry]) -> str:
    if not ledger:
        return "<p>No promotion, refusal or rollback yet.</p>"
    header = ["#", "at", "run", "outcome", "hosts", "who", "why"]
    rows = ["<table id='ledger'><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    for e in reversed(ledger):
        cells = [str(e.seq), e.at[:19].replace("T", " "), e.run_id]
        tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
        tds += f"<td class='{_cls(e.outcome)}'>{_e(e.outcome)}</td>"
        tds += "".join(f"<td>{_e(c)}</td>" for c in (", ".join(e.hosts) or "—", e.who, reason(e)))
        rows.append(f"<tr>{tds}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _plot(config: Config, folder: Path, runs: list[RunSummary]) -> str | None:
    """Draw the gate metrics of evaluated runs, oldest first; the src to use (with a content version, so a
    browser never shows a stale cached plot), or None when there is nothing to draw."""
    ordered = [s for s in reversed(runs) if s.metrics][-PLOTTED:]
    series = {label: [(s.id, e.point, e.low, e.high) for s in ordered if (e := s.metrics.get(label))]
              for label in ("accuracy", "macro-F1")}  # fmt: skip
    limits = {"accuracy": config.gates.min_accuracy, "macro-F1": config.gates.min_macro_f1}
    target = folder / PLOT
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        drawn = plots.over_runs(
            Path(tmp) / "plot.png", series, limits, title="gate metrics (bars: intervals; dashed: gates now)"
        )
        if drawn is None:
            target.unlink(missing_ok=True)
            return None
        data = drawn.read_bytes()
    _replace(target, data)
    return f"{PLOT.as_posix()}?v={hashlib.sha256(data).hexdigest()[:12]}"


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cls(word: str) -> str:
    return word.replace(" ", "-")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _now() -> str:
    from mlci.registry import now

    return now()[:19].replace("T", " ") + " UTC"
