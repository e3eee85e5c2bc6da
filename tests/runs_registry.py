"""A registry filled by the real code paths, for the tests of `mlci runs` and the dashboard.

Three short real trainings of the bundled digits data (train -> evaluate_run -> write_report, as `mlci train`
does): r0001 passes and becomes the first champion, r0002 passes, r0003 fails its gates (min_accuracy raised
for it). Then the ledger gets a promotion of r0002, a refusal of r0003 and a rollback to r0001 through the
registry's API, with the evidence deploys write. Plus r0004, a run that failed while training.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlci import dashboard, data, runkey
from mlci.config import Config, load_config
from mlci.evaluate import evaluate_run
from mlci.pipeline import train_run
from mlci.registry import Registry
from mlci.report import write_report

ROOT = Path(__file__).resolve().parents[1]

SHORT = [
    "train.epochs=2",
    "train.device=cpu",
    "evaluate.bootstrap=100",
    "gates.min_accuracy=0.5",
    "gates.min_macro_f1=0.5",
]


@dataclass(frozen=True)
class Filled:
    config_path: Path
    config: Config
    evil: str  # a reason with HTML in it, which every view must escape


def fill(where: Path) -> Filled:
    where.mkdir(parents=True, exist_ok=True)
    toml = (ROOT / "mlci.toml").read_text()
    toml = toml.replace('"data/digits.csv"', f'"{ROOT / "data/digits.csv"}"')
    toml = toml.replace('"data/schema.toml"', f'"{ROOT / "data/schema.toml"}"')
    (where / "mlci.toml").write_text(toml)
    (where / ".gitignore").write_text(".mlci/\nreports/\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "project"]):  # runs record the commit
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args], cwd=where, check=True)
    evil = "<script>alert('refused')</script>"

    def one(*overrides: str) -> str:
        config = load_config(where / "mlci.toml", [*SHORT, *overrides])
        key = runkey.compute(config, data.data_files(config))
        train_ds, _ = data.load_splits(config)
        with Registry(config.path(config.registry.path)) as registry:
            run = train_run(config, train_ds, registry, key)
            evaluate_run(config, registry, run)
            write_report(config, registry, registry.run(run.id))
        return run.id

    first = one("train.seed=1")
    second = one("train.seed=2")
    third = one("train.seed=3", "gates.min_accuracy=0.999")
    config = load_config(where / "mlci.toml", SHORT)
    # As a deploy and a rollback do: the dashboard is rewritten when they end.
    with dashboard.rewritten(config), Registry(config.path(config.registry.path)) as registry:
        gates = registry.latest_evaluation(second)["results"]["gates"]  # type: ignore[index]
        registry.promote(second, evidence={"env": "local", "gates": gates}, hosts=["localhost"], outcome="promoted")
        registry.record(third, evidence={"env": "local", "reason": evil}, hosts=[], outcome="refused")
        registry.promote(
            first, evidence={"env": "local", "from_run": second}, hosts=["localhost"], outcome="rolled back"
        )
        broken = registry.create_run("k-broken", params={}, environment={"device": "cpu"})
        registry.finish_run(broken.id, "failed", error="RuntimeError: out of memory")
    assert (first, second, third) == ("r0001", "r0002", "r0003")
    return Filled(where / "mlci.toml", config, evil)
