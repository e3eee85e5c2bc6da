"""`periodic.keep_reports`: old run reports go, the champion's and each environment's serving run's stay, and
folders that are not run reports (the load test's) are never touched. Real registry, real folders."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mlci import periodic
from mlci.config import config_from_dict
from mlci.registry import Registry


def test_keep_reports_keeps_the_newest_the_champion_and_the_serving_runs(tmp_path: Path) -> None:
    raw = {"periodic": {"keep_reports": 1}, "registry": {"path": "reg.db", "reports": "reports"}}
    config = dataclasses.replace(config_from_dict(raw), root=tmp_path)
    with Registry(tmp_path / "reg.db") as registry:
        ids = []
        for i in range(6):
            run = registry.create_run(f"k{i}", params={}, environment={})
            registry.finish_run(run.id)
            ids.append(run.id)
        registry.promote(ids[1], evidence={"env": "production"}, outcome="promoted")
        registry.record(ids[2], evidence={"env": "staging"}, hosts=["a"], outcome="passed staging")
        registry.record(ids[3], evidence={"env": "production"}, hosts=["a"], outcome="failed")  # never served
        registry.promote(ids[0], evidence={"env": "canary"}, outcome="promoted")  # the champion now
        registry.promote(ids[4], evidence={"env": "canary"}, outcome="promoted")
        registry.promote(ids[0], evidence={"env": "canary", "from_run": ids[4]}, outcome="rolled back")
    for name in [*ids, "loadtest", "r12"]:
        (tmp_path / "reports" / name).mkdir(parents=True)
    deleted = periodic.prune_reports(config)
    left = sorted(p.name for p in (tmp_path / "reports").iterdir())
    # newest r0006, champion and canary's serving r0001, production's r0002, staging's r0003; the dashboard
    # (index.html and its plot folder) is rewritten so that it links only to reports that exist
    assert left == sorted(["r0006", "r0001", "r0002", "r0003", "loadtest", "r12", "index.html", "dashboard"])
    assert sorted(deleted) == ["r0004", "r0005"]


def test_keep_reports_zero_keeps_everything(tmp_path: Path) -> None:
    raw = {"periodic": {"keep_reports": 0}, "registry": {"path": "reg.db", "reports": "reports"}}
    config = dataclasses.replace(config_from_dict(raw), root=tmp_path)
    for i in range(1, 4):
        (tmp_path / "reports" / f"r{i:04d}").mkdir(parents=True)
    assert periodic.prune_reports(config) == []
    assert len(list((tmp_path / "reports").iterdir())) == 3
