"""Two runners, one registry: two checkouts run `python -m mlci train` at the same time against one shared
registry (a PostgreSQL server; and a SQLite file both can reach) and one shared artifact directory, then
both promote their run at once. Nothing is lost, exactly one run became the first champion, and every
runner reads the same champion: the one the ledger's last promotion names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import make_project
from tests.integration.deploy_support import set_keys

from mlci.artifacts import verify
from mlci.registry import Registry

pytestmark = pytest.mark.slow

PROMOTE = """
import sys
from mlci.registry import Registry
with Registry(sys.argv[1]) as registry:
    registry.promote(sys.argv[2], evidence={"by": sys.argv[3]}, hosts=[sys.argv[3]], who=sys.argv[3])
    print(registry.champion().id)
"""


def _start(project: Path, *argv: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(project / "python"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.Popen(
        [sys.executable, *argv], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out + err
        outs.append(out)
    return outs


def test_two_runners_training_and_promoting_at_once_agree_on_one_champion(
    registry_location: str | Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-artifacts"  # stands for the NFS mount both runners see
    where = {"url": registry_location} if isinstance(registry_location, str) else {"path": str(registry_location)}
    runners = []
    for name, seed in (("runner-a", 1), ("runner-b", 2)):
        project = make_project(tmp_path / name)
        set_keys(project / "mlci.toml", registry={**where, "artifacts": str(shared)}, train={"seed": seed})
        runners.append(project)

    _finish([_start(p, "-m", "mlci", "train") for p in runners])

    with Registry(registry_location) as registry:
        runs = registry.runs()
        assert [r.status for r in runs] == ["succeeded", "succeeded"]
        assert {r.params["train"]["seed"] for r in runs} == {1, 2}, "each runner's run is there"
        ledger = registry.ledger()
        assert [e.outcome for e in ledger] == ["first champion"], "only one became the first champion"
        assert registry.champion().id == ledger[0].run_id
    for run in runs:
        model = run.artifact("model")
        assert model is not None and Path(model.path).parent == shared
        assert verify(Path(model.path))["weights"]["sha256"] == model.sha256

    # Both runners promote their own run at the same moment: the ledger orders them, the last one wins.
    promoters = [
        _start(p, "-c", PROMOTE, str(registry_location), run.id, p.name)
        for p, run in zip(runners, sorted(runs, key=lambda r: r.params["train"]["seed"]), strict=True)
    ]
    _finish(promoters)
    with Registry(registry_location) as registry:
        ledger = registry.ledger()
        assert [e.outcome for e in ledger] == ["first champion", "promoted", "promoted"]
        assert sorted(e.who for e in ledger[1:]) == ["runner-a", "runner-b"]
        champion = registry.champion().id
        assert champion == ledger[-1].run_id
    seen = _finish([_start(p, "-c", _READ_CHAMPION, str(registry_location)) for p in runners])
    assert [json.loads(s) for s in seen] == [champion, champion], "every runner reads the same champion"


_READ_CHAMPION = """
import json, sys
from mlci.registry import Registry
with Registry(sys.argv[1]) as registry:
    print(json.dumps(registry.champion().id))
"""
