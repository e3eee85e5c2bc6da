"""The JSON summary of a load test (figures + every check's verdict), and reading it back for the report.

File names inside the summary are relative to the output folder that holds it, so the folder can be
moved or archived as a whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlci.errors import MlciError

SUMMARY_FILE = "summary.json"
HISTOGRAM_FILE = "latency.png"
FORMAT = 1


def write_summary(output: Path, summary: dict[str, Any]) -> Path:
    path = output / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a summary
    return path


def read_summary(output: str | Path) -> dict[str, Any]:
    """The summary of the load test in `output` (a folder or its summary.json), for the report writer.

    Adds `dir` (the folder, absolute) and turns every entry of `files` into an absolute path, so that
    `summary["files"]["histogram"]` can be embedded as is. Raises MlciError when there is none.
    """
    path = Path(output)
    if path.is_dir():
        path = path / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MlciError(f"{path}: no load test summary (run `python -m mlci loadtest` first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MlciError(f"{path}: load test summary is not valid JSON ({exc})") from None
    if summary.get("format") != FORMAT:
        raise MlciError(f"{path}: format = {summary.get('format')!r}: this mlci reads format {FORMAT}")
    folder = path.parent.resolve()
    summary["dir"] = str(folder)
    summary["files"] = {k: str(folder / v) for k, v in summary.get("files", {}).items()}
    return summary
