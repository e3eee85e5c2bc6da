"""A rich progress bar over training epochs, silent when stdout is not a terminal (CI logs, pipes)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def epoch_bar(total: int, description: str, *, enabled: bool | None = None) -> Iterator[Callable[[Any], None]]:
    """Yield `advance(stats)`; `stats` has .epoch, .loss and .accuracy (train.EpochStats)."""
    if enabled is None:
        enabled = sys.stdout.isatty()
    if not enabled:
        yield lambda stats: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(stats: Any) -> None:
            status = f"loss {stats.loss:.4f}  acc {stats.accuracy:.4f}"
            bar.update(task, completed=stats.epoch, status=status)

        yield advance
