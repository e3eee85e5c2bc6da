"""reports/<run>/ from a stored evaluation: files, escaping, self-contained HTML, JUnit, load-test hook, --compare."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from mlci import evaluate as ev
from mlci.config import Config, config_from_dict
from mlci.errors import UsageError
from mlci.gates import GateResult
from mlci.registry import Registry, Run
from mlci.report import resolve_ref, write_report

EVIL = "<script>alert(1)</script>"


def _config(tmp_path: Path) -> Config:
    raw = {"registry": {"path": "reg/registry.db", "artifacts": "reg/artifacts", "reports": "out"}}
    return dataclasses.replace(config_from_dict(raw), root=tmp_path)


def _run(registry: Registry, commit: str | None = None) -> Run:
    run = registry.create_run("key", params={}, environment={"device_kind": "cpu"}, git_commit=commit)
    registry.add_artifact(run.id, "model", "/nonexistent", "0" * 64, 1)
    registry.finish_run(run.id)
    return registry.run(run.id)


def _evaluation(run_id: str, *, failed: bool) -> ev.Evaluation:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    pred = np.where(rng.random(90) < 0.8, y, (y + 1) % 3)
    classes = ["0", "1", EVIL]
    s = ev.bootstrap(y, {"a": pred}, 3, resamples=100, seed=0)["a"]
    m = ev.summarize(run_id, y, pred, s, classes, 0.95)
    gates = [
        GateResult("min_accuracy", "passed", m.accuracy.point, 0.5, "accuracy ok"),
        GateResult("champion", "failed" if failed else "passed", -0.3, -0.02, f"worse than {EVIL}"),
    ]
    return ev.Evaluation(run_id, "r0000", 90, classes, 0.95, 100, 0, m, None, None, gates)


def test_report_writes_every_file_escapes_values_and_embeds_images(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with Registry(config.path(config.registry.path)) as registry:
        run = _run(registry)
        for epoch, loss in enumerate([2.0, 1.0, 0.5]):
            registry.log_metrics(run.id, {"train_loss": loss, "val_accuracy": 0.5 + epoch / 10}, step=epoch)
        e = _evaluation(run.id, failed=True)
        registry.add_evaluation(run.id, e.champion_id, e.passed, e.to_dict())
        folder = write_report(config, registry, run)

    assert folder == tmp_path / "out" / run.id
    for name in ("report.md", "report.html", "gates.xml", "loss.png", "curves.png", "confusion.png"):
        assert (folder / name).is_file(), name
    page = (folder / "report.html").read_text()
    assert EVIL not in page and html_escaped(EVIL) in page
    assert page.count("data:image/png;base64,") == 3  # loss, curves, confusion: no file links
    assert "src='loss.png'" not in page
    md = (folder / "report.md").read_text()
    assert "FAILED" in md and "champion" in md and "![confusion matrix](confusion.png)" in md
    suite = ET.parse(folder / "gates.xml").getroot().find("testsuite")
    assert suite.get("failures") == "1" and suite.get("tests") == "2"


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


def test_report_without_curves_says_so(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with Registry(config.path(config.registry.path)) as registry:
        run = _run(registry)
        e = _evaluation(run.id, failed=False)
        registry.add_evaluation(run.id, e.champion_id, e.passed, e.to_dict())
        folder = write_report(config, registry, run)
    assert not (folder / "loss.png").exists()
    assert "No per-epoch metrics" in (folder / "report.md").read_text()
    assert "PASSED" in (folder / "report.md").read_text()


def test_a_load_test_summary_for_the_run_is_embedded(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with Registry(config.path(config.registry.path)) as registry:
        run = _run(registry)
        e = _evaluation(run.id, failed=False)
        registry.add_evaluation(run.id, e.champion_id, e.passed, e.to_dict())
        lt = config.path(config.loadtest.output)
        lt.mkdir(parents=True)
        shutil.copy(write_report(config, registry, run) / "confusion.png", lt / "latency.png")
        summary = {
            "format": 1, "passed": False, "run_id": run.id, "model": "digits", "url": "http://127.0.0.1:1",
            "figures": {"p95_ms": 12.5, "rps": 900.0},
            "checks": [{"name": "p95_ms", "value": 12.5, "op": "<=", "limit": 10.0, "passed": False, "note": ""}],
            "files": {"histogram": "latency.png"},
        }  # fmt: skip
        (lt / "summary.json").write_text(json.dumps(summary))
        md = (write_report(config, registry, run) / "report.md").read_text()
        assert "## Load test" in md and "p95_ms" in md and "latency.png" in md

        summary["run_id"] = "r9999"  # another run's load test is not this run's evidence
        (lt / "summary.json").write_text(json.dumps(summary))
        assert "## Load test" not in (write_report(config, registry, run) / "report.md").read_text()


def test_compare_resolves_runs_and_git_revisions_and_names_unknown_refs(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    config = _config(tmp_path)
    with Registry(config.path(config.registry.path)) as registry:
        old = _run(registry, commit=head)
        newer = _run(registry, commit=head)
        _run(registry, commit="f" * 40)
        assert resolve_ref(config, registry, old.id).id == old.id
        assert resolve_ref(config, registry, "HEAD").id == newer.id  # the newest run of that commit
        assert resolve_ref(config, registry, head[:10]).id == newer.id
        for bad in ("no-such-ref", "--output=x"):
            with pytest.raises(UsageError, match=f"'{bad}'"):
                resolve_ref(config, registry, bad)
        subprocess.run([*git, "commit", "-qm", "two", "--allow-empty"], check=True)
        with pytest.raises(UsageError, match="no succeeded run"):
            resolve_ref(config, registry, "HEAD")


def test_commands_without_a_registry_or_with_an_unknown_run_exit_2(tmp_path: Path, capsys) -> None:
    from mlci.cli import main

    toml = tmp_path / "mlci.toml"
    toml.write_text('[registry]\npath = "reg/registry.db"\nreports = "out"\n')
    assert main(["evaluate", "--config", str(toml)]) == 2
    assert "no registry yet" in capsys.readouterr().err
    assert not (tmp_path / "reg").exists()  # nothing created on the way

    with Registry(tmp_path / "reg" / "registry.db") as registry:
        _run(registry)
    assert main(["report", "--config", str(toml), "--run", "r0042"]) == 2
    assert "'r0042'" in capsys.readouterr().err
    assert main(["evaluate", "--config", str(toml), "--bogus"]) == 2
