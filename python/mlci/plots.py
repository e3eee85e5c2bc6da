"""PNG figures for the report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from mlci.atomic import replacing

_DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def curves(path: Path, series: dict[str, list[tuple[int, float]]], *, title: str, ylabel: str) -> Path | None:
    """One line per named (step, value) series; None (and no file) when there is nothing to draw."""
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    try:
        for name, points in series.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) < 40 else None, label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with replacing(path) as tmp:  # a stopped run leaves no half-written image
            fig.savefig(tmp, dpi=_DPI)
    finally:
        plt.close(fig)
    return path


def confusion(path: Path, matrix: list[list[int]], classes: list[str], *, title: str) -> Path:
    """Heat map of [true, predicted] counts with each cell's count written in it."""
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(matrix)
    k = len(classes)
    size = min(3.0 + 0.45 * k, 14.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    try:
        im = ax.imshow(cm, cmap="Blues")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(k), classes, rotation=90 if k > 12 else 0)
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if k <= 30:
            threshold = cm.max() / 2 if cm.size else 0
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        color = "white" if cm[i, j] > threshold else "black"
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
        fig.tight_layout()
        with replacing(path) as tmp:  # a stopped run leaves no half-written image
            fig.savefig(tmp, dpi=_DPI)
    finally:
        plt.close(fig)
    return path


def over_runs(
    path: Path,
    series: dict[str, list[tuple[str, float, float | None, float | None]]],
    limits: dict[str, float],
    *,
    title: str,
) -> Path | None:
    """Each named series as (run id, point, low, high) in run order, intervals as error bars, and each gate's
    limit as a dashed line of the same colour; None (and no file) when there is nothing to draw."""
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    plt = _pyplot()
    runs = list(dict.fromkeys(p[0] for points in series.values() for p in points))  # callers give run order
    x = {run: i for i, run in enumerate(runs)}
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.4, 0.2 * len(runs))), 3.6))
    try:
        for name, points in series.items():
            xs = [x[p[0]] for p in points]
            ys = [p[1] for p in points]
            below = [p[1] - p[2] if p[2] is not None else 0.0 for p in points]
            above = [p[3] - p[1] if p[3] is not None else 0.0 for p in points]
            line = ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=name)
            if name in limits:
                ax.axhline(limits[name], linestyle="--", color=line[0].get_color(), label=f"{name} gate")
        every = -(-len(runs) // 24)  # at most 24 labels, however many runs
        shown = range(len(runs) - 1, -1, -every)[::-1]  # always label the newest
        ax.set_xticks(list(shown), [runs[i] for i in shown], rotation=90 if len(shown) > 12 else 0)
        ax.set_xlabel("run")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)
    return path
