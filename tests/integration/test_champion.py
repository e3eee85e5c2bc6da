"""The champion gate end to end: real training on CPU (few epochs) in a temporary copy of the project.

A normal first run becomes the champion; a candidate trained on shuffled labels is rejected by the champion
gate (exit 1) with a report and gates.xml that say why; a failing first run never becomes champion.
"""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mlci.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 5
SHUFFLED = 'data.files=["data/shuffled.csv"]'

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _project(tmp_path: Path, name: str = "project") -> Path:
    """mlci.toml + data/ in a fresh git repository: registry and reports land inside it, never in the repo."""
    project = tmp_path / name
    shutil.copytree(ROOT / "data", project / "data")
    text = (ROOT / "mlci.toml").read_text()
    text = text.replace("epochs = 30", f"epochs = {EPOCHS}").replace('device = "auto"', 'device = "cpu"')
    assert f"epochs = {EPOCHS}" in text and 'device = "cpu"' in text
    (project / "mlci.toml").write_text(text)
    _shuffled_copy(project / "data" / "digits.csv", project / "data" / "shuffled.csv")
    git = ["git", "-c", "user.name=mlci-test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "."], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "example project"], cwd=project, check=True)
    return project


def _shuffled_copy(source: Path, target: Path) -> None:
    """The same rows with the label column permuted: a model trained on it learns nothing."""
    with source.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    col = header.index("label")
    labels = [r[col] for r in body]
    random.Random(0).shuffle(labels)
    for r, label in zip(body, labels, strict=True):
        r[col] = label
    with target.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *body])


def _mlci(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlci", *args], cwd=project, capture_output=True, text=True, timeout=600, check=False
    )


def _registry(project: Path) -> Registry:
    return Registry(project / ".mlci" / "registry.db")


def _gate_lines(stdout: str) -> dict[str, str]:
    """{'champion': 'FAILED', ...} from `mlci evaluate`'s one line per gate."""
    out = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("PASSED", "FAILED", "SKIPPED"):
            out[words[1]] = words[0]
    return out


def test_a_worse_candidate_fails_the_champion_gate_and_the_report_says_why(tmp_path: Path) -> None:
    project = _project(tmp_path)

    first = _mlci(project, "train")
    assert first.returncode == 0, first.stdout + first.stderr
    with _registry(project) as registry:
        champion = registry.champion()
        assert champion is not None and champion.id == "r0001"
        assert [e.outcome for e in registry.ledger()] == ["first champion"]
        assert registry.latest_evaluation("r0001")["passed"]

    # Trained on shuffled labels: evaluated by `train` on its own (shuffled) split it fails the minimums.
    bad = _mlci(project, "train", SHUFFLED)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    with _registry(project) as registry:
        assert registry.champion().id == "r0001"
        assert registry.run("r0002").status == "succeeded"

    # On the real evaluation split, with the minimums switched off, the champion gate alone rejects it.
    ev = _mlci(project, "evaluate", "--run", "r0002", "gates.min_accuracy=0", "gates.min_macro_f1=0")
    assert ev.returncode == 1, ev.stdout + ev.stderr
    assert _gate_lines(ev.stdout) == {"min_accuracy": "PASSED", "min_macro_f1": "PASSED", "champion": "FAILED"}
    assert "worse than the champion by more than 0.02" in ev.stdout
    with _registry(project) as registry:
        stored = registry.latest_evaluation("r0002")
        assert stored["champion"] == "r0001" and not stored["passed"]
        diff = stored["results"]["difference"]["accuracy"]  # [point, low, high]
        assert diff[2] < -0.02 and diff[1] <= diff[0] <= diff[2]
        assert registry.champion().id == "r0001"

    rep = _mlci(project, "report", "--run", "r0002", "--compare", "r0001")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    folder = project / "reports" / "r0002"
    md = (folder / "report.md").read_text()
    assert "FAILED" in md and "worse than the champion by more than 0.02" in md
    assert "| champion | FAILED |" in md
    suite = ET.parse(folder / "gates.xml").getroot().find("testsuite")
    failed = {c.get("name"): c.find("failure") for c in suite.findall("testcase")}
    assert suite.get("failures") == "1" and failed["champion"] is not None
    assert "upper bound" in failed["champion"].get("message")
    html = (folder / "report.html").read_text()
    assert "worse than the champion" in html and "data:image/png;base64," in html

    # A git revision resolves to the newest run of that commit (both runs share the one commit here).
    by_rev = _mlci(project, "report", "--run", "r0001", "--compare", "HEAD")
    assert by_rev.returncode == 0, by_rev.stdout + by_rev.stderr
    assert "r0002 (--compare HEAD)" in (project / "reports" / "r0001" / "report.md").read_text()
    unknown = _mlci(project, "report", "--compare", "no-such-rev")
    assert unknown.returncode == 2 and "no-such-rev" in unknown.stderr

    # A good candidate passes against the champion but is not promoted by evaluation.
    good = _mlci(project, "train", "train.seed=1")
    assert good.returncode == 0, good.stdout + good.stderr
    assert _gate_lines(good.stdout)["champion"] == "PASSED"
    with _registry(project) as registry:
        assert registry.champion().id == "r0001"
        assert len(registry.ledger()) == 1


def test_a_failing_first_run_does_not_become_champion(tmp_path: Path) -> None:
    project = _project(tmp_path)
    bad = _mlci(project, "train", SHUFFLED)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    gates = _gate_lines(bad.stdout)
    assert gates["min_accuracy"] == "FAILED" and gates["champion"] == "SKIPPED"
    with _registry(project) as registry:
        assert registry.champion() is None
        assert registry.ledger() == []
        assert not registry.latest_evaluation("r0001")["passed"]
    assert (project / "reports" / "r0001" / "gates.xml").is_file()
