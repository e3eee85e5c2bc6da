"""reports/<run>/: report.md, report.html (self-contained), PNG plots, gates.xml (JUnit), evaluation.json.

The report is built once as a list of blocks (headings, paragraphs, tables, images) and rendered twice, to
Markdown and to HTML, so the two always say the same thing.
"""

from __future__ import annotations

import base64
import html
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlci import dashboard, plots
from mlci.atomic import write_text
from mlci.config import Config
from mlci.errors import UsageError
from mlci.evaluate import Difference, Evaluation, Interval, Metrics, difference, evaluate, score, stored
from mlci.junit import write_gates_xml
from mlci.registry import Registry, Run

LOADTEST_SUMMARY = "summary.json"


# --- resolving --compare -----------------------------------------------------------------------------------


def resolve_ref(config: Config, registry: Registry, ref: str) -> Run:
    """A run id/prefix (`latest`, `champion`), else a git revision -> the newest succeeded run of that commit."""
    from mlci.errors import RegistryError

    try:
        return registry.run(ref)
    except RegistryError as exc:
        if "ambiguous" in str(exc):
            raise UsageError(f"--compare {ref!r}: {exc}") from None
    commit = _git_commit(config.root, ref)
    if commit is None:
        raise UsageError(f"--compare {ref!r}: neither a run id nor a git revision in {config.root}")
    runs = [r for r in registry.runs() if r.git_commit == commit and r.status == "succeeded" and r.artifact("model")]
    if not runs:
        raise UsageError(f"--compare {ref!r}: git revision {commit[:12]} has no succeeded run with a model")
    return runs[-1]


def _git_commit(root: Path, ref: str) -> str | None:
    if ref.startswith("-"):  # never let a ref become an option of git
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --- blocks ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    alt: str
    file: Path  # absolute; Markdown links it relative to the report folder, HTML embeds it


Block = Heading | Para | Table | Image


def _ci(i: Interval, digits: int = 4, signed: bool = False) -> str:
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(i.point)} [{f.format(i.low)}, {f.format(i.high)}]"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def _run_table(run: Run) -> Table:
    env = run.environment
    commit = (run.git_commit or "—")[:12] + (" (dirty)" if run.dirty else "")
    rows = [
        ["run", f"{run.id} (status {run.status})"],
        ["git commit", commit],
        ["created", run.created_at],
        ["data hash", (run.data_hash or "—")[:16]],
        ["trained on", " ".join(str(env[k]) for k in ("device", "precision", "device_name") if env.get(k)) or "—"],
    ]
    return Table(["", ""], rows)


def _gates_blocks(ev: Evaluation) -> list[Block]:
    rows = [[g.name, g.status.upper(), _num(g.value), _num(g.limit), g.message] for g in ev.gates]
    return [Heading(2, "Gates"), Table(["gate", "verdict", "value", "limit", "detail"], rows)]


def _metrics_blocks(ev: Evaluation, extra: tuple[str, Metrics, Difference] | None) -> list[Block]:
    pct = f"{ev.confidence:.0%}"
    columns: list[tuple[str, Metrics, Difference | None]] = [(f"{ev.run_id} (candidate)", ev.candidate, None)]
    if ev.champion is not None:
        columns.append((f"champion {ev.champion_id}", ev.champion, ev.difference))
    if extra is not None and extra[1].run_id not in (ev.run_id, ev.champion_id):
        columns.append(extra)
    header = ["metric", *[c[0] for c in columns]]
    diffs = [(name, d) for name, _, d in columns if d is not None]
    header += [f"candidate − {d.b}" for _, d in diffs]
    rows = []
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        row = [label, *[_ci(getattr(m, key)) for _, m, _ in columns]]
        row += [_ci(getattr(d, key), signed=True) for _, d in diffs]
        rows.append(row)
    intro = (
        f"{ev.n_eval} rows of the frozen evaluation split; point estimate [{pct} bootstrap interval], "
        f"{ev.resamples} resamples (seed {ev.seed}), differences paired on the same resamples."
    )
    blocks: list[Block] = [Heading(2, "Metrics"), Para(intro), Table(header, rows)]
    if ev.champion is None:
        why = "No champion yet" if ev.champion_id is None else f"{ev.run_id} is the champion"
        blocks.append(Para(f"{why}: nothing to compare with."))
    if extra is not None and extra not in columns:
        role = "the candidate itself" if extra[1].run_id == ev.run_id else "the champion"
        blocks.append(Para(f"{extra[0]} is {role}: see its column above."))
    return blocks


def _per_class_blocks(ev: Evaluation) -> list[Block]:
    champ = {c.label: c for c in ev.champion.per_class} if ev.champion else {}
    header = ["class", "support", "precision", "recall", "F1"]
    if champ:
        header.append(f"F1 of champion {ev.champion_id}")
    rows = []
    for c in ev.candidate.per_class:
        row = [c.label, str(c.support), _ci(c.precision, 3), _ci(c.recall, 3), _ci(c.f1, 3)]
        if champ:
            row.append(_ci(champ[c.label].f1, 3) if c.label in champ else "—")
        rows.append(row)
    return [Heading(2, "Per class"), Table(header, rows)]


def _verdict(ev: Evaluation) -> Para:
    failed = ev.failed_gates
    if not failed:
        text = "PASSED: every gate passed."
    else:
        text = "FAILED: " + "; ".join(f"{g.name}: {g.message}" for g in failed)
    if ev.promoted:
        text += f" {ev.run_id} became the first champion."
    return Para(text, strong=True)


def _loadtest_blocks(config: Config, run: Run, folder: Path) -> list[Block]:
    """The run's load-test summary, when one was written for it (optional: none -> nothing)."""
    for candidate in (
        folder / "loadtest",
        config.path(config.loadtest.output) / run.id,
        config.path(config.loadtest.output),
    ):
        path = candidate / LOADTEST_SUMMARY
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(summary, dict) or summary.get("run_id") != run.id:
            continue
        blocks: list[Block] = [Heading(2, "Load test")]
        verdict = "PASSED" if summary.get("passed") else "FAILED"
        blocks.append(Para(f"{verdict}: {summary.get('model', '')} at {summary.get('url', '')} ({path})"))
        figures = summary.get("figures") or {}
        if isinstance(figures, dict):
            blocks.append(Table(["figure", "value"], [[str(k), _scalar(v)] for k, v in figures.items()]))
        checks = summary.get("checks") or []
        if isinstance(checks, list) and checks:
            rows = [
                [str(c.get("name")), "SKIPPED" if c.get("skipped") else ("PASSED" if c.get("passed") else "FAILED"),
                 _scalar(c.get("value")), f"{c.get('op', '')} {_scalar(c.get('limit'))}", str(c.get("note", ""))]
                for c in checks if isinstance(c, dict)
            ]  # fmt: skip
            blocks.append(Table(["check", "verdict", "value", "limit", "note"], rows))
        histogram = (summary.get("files") or {}).get("histogram")
        if isinstance(histogram, str) and (candidate / histogram).is_file():
            blocks.append(Image("latency histogram", (candidate / histogram).resolve()))
        return blocks
    return []


def _scalar(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --- rendering ---------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], folder: Path) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(f"**{b.text}**" if b.strong else b.text)
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        else:
            rel = Path(b.file).relative_to(folder) if Path(b.file).is_relative_to(folder) else b.file
            out.append(f"![{b.alt}]({rel})")
        out.append("")
    return "\n".join(out)


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.PASSED { color: #176b2c; font-weight: 600; } td.FAILED { color: #b00020; font-weight: 600; }
td.SKIPPED { color: #777; }
p.strong { font-weight: 600; padding: .5rem .8rem; border-left: 4px solid #888; background: #f7f7f7; }
img { max-width: 100%; }
"""


def render_html(blocks: list[Block], title: str) -> str:
    esc = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'>"]  # no favicon request
    out.append(f"<title>{esc(title)}</title><style>{_CSS}</style>")
    out.append("</head><body>")
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p class='strong'>{esc(b.text)}</p>" if b.strong else f"<p>{esc(b.text)}</p>")
        elif isinstance(b, Table):
            out.append("<table>")
            if any(b.header):
                out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in b.header) + "</tr>")
            for row in b.rows:
                cells = "".join(
                    f"<td class='{esc(c)}'>{esc(c)}</td>"
                    if c in ("PASSED", "FAILED", "SKIPPED")
                    else f"<td>{esc(c)}</td>"
                    for c in row
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
        else:
            data = base64.b64encode(Path(b.file).read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{esc(b.alt, quote=True)}' src='data:image/png;base64,{data}'></p>")
    out.append("</body></html>\n")
    return "\n".join(out)


# --- the report --------------------------------------------------------------------------------------------


def report_dir(config: Config, run: Run) -> Path:
    return config.path(config.registry.reports) / run.id


def _compare(config: Config, registry: Registry, run: Run, ref: str) -> tuple[str, Metrics, Difference]:
    other = resolve_ref(config, registry, ref)
    _, metrics, samples = score(config, [run, other] if other.id != run.id else [run])
    om, os_ = metrics[other.id], samples[other.id]
    diff = difference(metrics[run.id], samples[run.id], om, os_, config.evaluate.confidence)
    label = f"{other.id} (--compare {ref})" if ref != other.id else other.id
    return label, om, diff


def write_report(config: Config, registry: Registry, run: Run, *, compare: str | None = None) -> Path:
    """Write reports/<run>/ and return that folder. Uses the run's stored evaluation (else evaluates now,
    storing nothing); `compare` adds a paired comparison with another run or git revision."""
    ev = stored(registry, run) or evaluate(config, registry, run)
    extra = _compare(config, registry, run, compare) if compare else None
    folder = report_dir(config, run)
    folder.mkdir(parents=True, exist_ok=True)

    blocks: list[Block] = [Heading(1, f"{config.project.name}: run {run.id}"), _verdict(ev), _run_table(run)]
    blocks += _gates_blocks(ev)
    blocks += _metrics_blocks(ev, extra)
    blocks += _per_class_blocks(ev)
    blocks += _figure_blocks(registry, run, ev, folder)
    blocks += _loadtest_blocks(config, run, folder)

    write_gates_xml(
        folder / "gates.xml", ev.gates, suite=f"{config.project.name} gates {run.id}", classname="mlci.gates"
    )
    # Each file whole or not at all (atomic.py): a run stopped while reporting leaves no half-written report.
    write_text(folder / "evaluation.json", json.dumps(ev.to_dict(), indent=2, sort_keys=True) + "\n")
    write_text(folder / "report.md", render_markdown(blocks, folder))
    write_text(folder / "report.html", render_html(blocks, f"{config.project.name} {run.id}"))
    dashboard.write(config, registry)  # reports/index.html lists this report
    return folder


def _figure_blocks(registry: Registry, run: Run, ev: Evaluation, folder: Path) -> list[Block]:
    names = registry.curves(run.id)
    losses = {n: registry.history(run.id, n) for n in names if "loss" in n}
    others = {n: registry.history(run.id, n) for n in names if "loss" not in n}
    blocks: list[Block] = [Heading(2, "Training curves")]
    for stale in ("loss.png", "curves.png"):  # from an earlier report of the same run
        (folder / stale).unlink(missing_ok=True)
    made = [
        plots.curves(folder / "loss.png", losses, title=f"loss, run {run.id}", ylabel="loss"),
        plots.curves(folder / "curves.png", others, title=f"per-epoch metrics, run {run.id}", ylabel="value"),
    ]
    made = [p for p in made if p is not None]
    blocks += [Image(p.stem, p) for p in made] or [Para("No per-epoch metrics were logged for this run.")]
    cm = plots.confusion(folder / "confusion.png", ev.candidate.confusion, ev.classes, title=f"confusion, run {run.id}")
    blocks += [Heading(2, "Confusion matrix (rows: true, columns: predicted)"), Image("confusion matrix", cm)]
    return blocks
