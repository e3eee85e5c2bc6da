"""No-op benchmark: `mlci train` and `mlci periodic` with nothing changed, directly and through nox.

    python3 bench/noop.py [--repeat 5] [section.key=value ...]

Works on a snapshot of this checkout in a temporary directory (tracked and untracked-but-not-ignored files,
committed into a fresh git repository), so edits made to the checkout meanwhile cannot change the run key
and the repository's .mlci/ is never touched. mlci is imported from the snapshot (PYTHONPATH). The nox session
uses the checkout's .venv when its stamp matches pyproject.toml, else a venv that sees this interpreter's
packages, so no pip runs during the timing.

Steps: train once (the run the no-ops find; overrides pass through, e.g. train.epochs=5 for a quick
setup), then time N runs of each command and of the baseline `python -c "import torch"` (what any no-op that
imports torch would cost at least), all in this invocation. Prints the medians and the ratios to the
baseline, with the CPU time of each process tree next to it (on a loaded machine wall time waits for the
CPU; CPU time is close to what an idle machine's wall time would be). Targets: median <= 0.3 s direct and
<= 0.5 s via nox. For reference, DVC's no-op `dvc repro` on a 3-stage pipeline takes 0.60 s on this kind of
machine. Timings on a shared machine are noisy: compare ratios from one run, not runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_DIRECT_S = 0.3
TARGET_NOX_S = 0.5
DVC_REPRO_NOOP_S = 0.60


def _git(where: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=mlci bench", "-c", "user.email=bench@mlci.invalid", *args],
        cwd=where, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def snapshot(target: Path) -> Path:
    """Copy the checkout's tracked and untracked-but-not-ignored files into `target`, as one commit."""
    listed = _git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file() and not src.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / name)
    _git(target, "init", "-q")
    _git(target, "add", "-A")
    _git(target, "commit", "-q", "-m", "bench snapshot")
    return target


def venv_for(project: Path) -> str:
    """Give the snapshot a .venv whose stamp matches, so `nox -s train` never runs pip here."""
    stamp = hashlib.sha256((project / "pyproject.toml").read_bytes()).hexdigest()
    own = ROOT / ".venv"
    marker = own / ".mlci-installed"
    if (own / "bin/python").exists() and marker.is_file() and marker.read_text() == stamp:
        (project / ".venv").symlink_to(own)
        return f"the checkout's .venv ({own})"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(project / ".venv")], check=True
    )
    (project / ".venv/.mlci-installed").write_text(stamp)
    return "a venv over this interpreter's packages"


def _cpu() -> float:
    """CPU seconds (user + system) used so far by this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process tree) of one run."""
    cpu, start = _cpu(), time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, check=True)
    return time.perf_counter() - start, _cpu() - cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="timed runs of each command (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides for every run")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlci-bench-noop-") as tmp:
        project = snapshot(Path(tmp))
        venv = venv_for(project)
        env = dict(os.environ, PYTHONPATH=str(project / "python"))
        python = sys.executable
        direct = [python, "-m", "mlci", "train", *args.overrides]
        via_nox = [python, "-m", "nox", "-s", "train", "--", *args.overrides]
        periodic = [python, "-m", "mlci", "periodic", *args.overrides]
        periodic_nox = [python, "-m", "nox", "-s", "periodic", "--", *args.overrides]

        print(f"snapshot of {ROOT} in {project}; nox uses {venv}")
        print("training once so that a run exists ...", flush=True)
        start = time.perf_counter()
        setup = subprocess.run(direct, cwd=project, env=env, capture_output=True, text=True, check=False)
        if setup.returncode not in (0, 1):
            raise SystemExit(f"bench: the first training failed (exit {setup.returncode}):\n{setup.stderr}")
        print(f"  trained in {time.perf_counter() - start:.1f} s (gates exit code {setup.returncode})")
        # A failed gate still no-ops (exit 1); accept either code below by expecting the message only.
        ok = {0, setup.returncode}

        samples: dict[str, list[tuple[float, float]]] = {
            "direct": [], "nox": [], "periodic": [], "periodic_nox": [], "baseline": []
        }  # fmt: skip
        for _ in range(args.repeat):  # interleaved, so load changes hit them all alike
            samples["direct"].append(_noop(direct, project, env, ok))
            samples["nox"].append(_noop(via_nox, project, env, ok))
            samples["periodic"].append(_noop(periodic, project, env, ok))
            samples["periodic_nox"].append(_noop(periodic_nox, project, env, ok))
            samples["baseline"].append(timed([python, "-c", "import torch"], project, env))
        wall = {k: statistics.median(s[0] for s in v) for k, v in samples.items()}
        cpu = {k: statistics.median(s[1] for s in v) for k, v in samples.items()}

    base = wall["baseline"]
    print(f"\nmedian of {args.repeat} runs each ({python}); wall time, and CPU time of the process tree:")
    labels = (
        ("direct", "python -m mlci train (no-op)"),
        ("nox", "nox -s train (no-op)"),
        ("periodic", "python -m mlci periodic (no-op)"),
        ("periodic_nox", "nox -s periodic (no-op)"),
    )
    for name, label in labels:
        print(
            f"  {label:<32} {wall[name]:.3f} s  = {wall[name] / base:.3f}x the baseline"
            f"   (CPU {cpu[name]:.3f} s = {cpu[name] / cpu['baseline']:.3f}x)"
        )
    print(f"  {'baseline: python -c import torch':<32} {base:.3f} s   (CPU {cpu['baseline']:.3f} s)")
    print(f"  wall samples: { {k: [round(s[0], 3) for s in v] for k, v in samples.items()} }")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(
        f"targets: direct <= {TARGET_DIRECT_S} s ({'met' if wall['direct'] <= TARGET_DIRECT_S else 'MISSED'}), "
        f"nox <= {TARGET_NOX_S} s ({'met' if wall['nox'] <= TARGET_NOX_S else 'MISSED'}), "
        f"nox -s periodic <= {TARGET_NOX_S} s ({'met' if wall['periodic_nox'] <= TARGET_NOX_S else 'MISSED'}); "
        f"reference: DVC no-op `dvc repro` {DVC_REPRO_NOOP_S} s on this kind of machine "
        f"(direct = {wall['direct'] / DVC_REPRO_NOOP_S:.2f}x, nox = {wall['nox'] / DVC_REPRO_NOOP_S:.2f}x of it)"
    )
    return 0


def _noop(cmd: list[str], cwd: Path, env: dict[str, str], ok: set[int]) -> tuple[float, float]:
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in ok or "up to date: run" not in done.stdout:
        raise SystemExit(f"bench: {' '.join(cmd)} did not no-op (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed, _cpu() - cpu


if __name__ == "__main__":
    raise SystemExit(main())
