"""Which run a deploy ships and whether it may (mlci.deploy.candidate), on a real SQLite registry; then the
staging rule through `python -m mlci deploy` on a copy of the project, refused before any host is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.deploy_support import Project, copy_project, set_keys, tail

from mlci.deploy import candidate
from mlci.errors import RegistryError
from mlci.registry import Registry, Run

GATES_FAILED = {"gates": [{"name": "min_accuracy", "status": "failed"}, {"name": "min_macro_f1", "status": "passed"}]}


@pytest.fixture
def registry(tmp_path: Path):
    with Registry(tmp_path / "registry.db") as r:
        yield r


def _run(
    registry: Registry,
    *,
    status: str = "succeeded",
    artifact: bool = True,
    passed: bool | None = True,
    results: dict | None = None,
) -> Run:
    """A run as train leaves it: `passed` None means it was never evaluated."""
    run = registry.create_run(f"key-{len(registry.runs())}", params={}, environment={})
    if artifact:
        registry.add_artifact(run.id, "model", f"/artifacts/{run.id}", run.id.ljust(64, "0"), 10)
    if status != "running":
        registry.finish_run(run.id, status)
    if passed is not None:
        registry.add_evaluation(run.id, None, passed, results or {"gates": []})
    return registry.run(run.id)


def _refusal(registry: Registry, run: Run, env: str = "production", require_staging: bool = False) -> str | None:
    return candidate.refusal(registry, run, env=env, staging_env="staging", require_staging=require_staging)


# --- choose --------------------------------------------------------------------------------------------------


def test_choose_takes_the_newest_succeeded_run_whose_latest_evaluation_passed(registry: Registry) -> None:
    older = _run(registry)
    _run(registry, passed=False)  # newer, failed its gates
    _run(registry, status="failed", passed=None)  # newer, training failed
    _run(registry, passed=None)  # newest, never evaluated
    assert candidate.choose(registry, None).id == older.id


def test_choose_goes_by_the_latest_evaluation_not_any_passing_one(registry: Registry) -> None:
    first = _run(registry)
    second = _run(registry)
    registry.add_evaluation(second.id, first.id, False, GATES_FAILED)  # re-evaluated against a champion: failed
    assert candidate.choose(registry, None).id == first.id


def test_choose_takes_a_given_ref_even_one_that_did_not_pass(registry: Registry) -> None:
    first = _run(registry)
    failing = _run(registry, passed=False)
    assert candidate.choose(registry, failing.id).id == failing.id
    assert candidate.choose(registry, "r0001").id == first.id
    registry.promote(first.id, evidence={})
    assert candidate.choose(registry, "champion").id == first.id
    with pytest.raises(RegistryError, match="no run 'r0099'"):
        candidate.choose(registry, "r0099")


def test_choose_without_a_passing_run_says_to_train_one(registry: Registry) -> None:
    _run(registry, passed=False)
    with pytest.raises(RegistryError, match="no run has passed its gates yet"):
        candidate.choose(registry, None)


# --- refusal -------------------------------------------------------------------------------------------------


def test_refusal_names_a_run_that_did_not_succeed(registry: Registry) -> None:
    assert _refusal(registry, _run(registry, status="failed", passed=None)) == "run r0001 is failed, not succeeded"
    assert _refusal(registry, _run(registry, status="running", passed=None)) == "run r0002 is running, not succeeded"


def test_refusal_names_a_run_without_a_model_artifact(registry: Registry) -> None:
    assert _refusal(registry, _run(registry, artifact=False)) == "run r0001 has no model artifact"


def test_refusal_names_a_run_never_evaluated_and_how_to_evaluate_it(registry: Registry) -> None:
    why = _refusal(registry, _run(registry, passed=None))
    assert why is not None and "never evaluated" in why and "mlci evaluate --run r0001" in why


def test_refusal_names_the_failed_gate_and_only_that_one(registry: Registry) -> None:
    why = _refusal(registry, _run(registry, passed=False, results=GATES_FAILED))
    assert why == "run r0001 failed its gates (min_accuracy)"


def test_refusal_of_failed_gates_without_a_verdict_list_points_at_the_report(registry: Registry) -> None:
    assert _refusal(registry, _run(registry, passed=False)) == "run r0001 failed its gates (see its report)"


def test_a_run_that_passed_its_gates_may_go_anywhere_when_staging_is_not_required(registry: Registry) -> None:
    run = _run(registry)
    assert _refusal(registry, run, env="production", require_staging=False) is None


def test_require_staging_refuses_other_envs_until_the_run_passed_staging(registry: Registry) -> None:
    run = _run(registry)
    why = _refusal(registry, run, env="production", require_staging=True)
    assert why is not None and "has not passed staging" in why and "--env staging" in why
    # Staging itself is never refused for not having passed staging.
    assert _refusal(registry, run, env="staging", require_staging=True) is None
    # Another run's staging pass, or a staging attempt that failed, does not count.
    other = _run(registry)
    registry.record(other.id, evidence={}, hosts=["s1"], outcome=candidate.PASSED_STAGING)
    registry.record(run.id, evidence={}, hosts=["s1"], outcome=candidate.FAILED)
    assert _refusal(registry, run, env="production", require_staging=True) == why
    registry.record(run.id, evidence={}, hosts=["s1"], outcome=candidate.PASSED_STAGING)
    assert _refusal(registry, run, env="production", require_staging=True) is None


# --- previous_champion ---------------------------------------------------------------------------------------


def test_previous_champion_is_none_without_a_champion_or_with_only_the_first(registry: Registry) -> None:
    first = _run(registry)
    assert candidate.previous_champion(registry) is None
    registry.promote_first(first.id, evidence={})
    assert candidate.previous_champion(registry) is None


def test_previous_champion_walks_back_the_ledger_through_promotions_and_rollbacks(registry: Registry) -> None:
    r1, r2, r3 = _run(registry), _run(registry), _run(registry)
    registry.promote_first(r1.id, evidence={})
    registry.promote(r2.id, evidence={}, hosts=["h"])
    assert candidate.previous_champion(registry).id == r1.id
    # Entries that change no champion are not champions: a refusal, a failed deploy, a staging pass.
    registry.record(r3.id, evidence={}, hosts=[], outcome=candidate.REFUSED)
    registry.record(r3.id, evidence={}, hosts=["h"], outcome=candidate.FAILED)
    registry.record(r3.id, evidence={}, hosts=["s"], outcome=candidate.PASSED_STAGING)
    assert candidate.previous_champion(registry).id == r1.id
    registry.promote(r3.id, evidence={}, hosts=["h"])
    assert candidate.previous_champion(registry).id == r2.id


def test_after_a_rollback_and_a_new_promotion_the_previous_champion_is_the_one_rolled_back_to(
    registry: Registry,
) -> None:
    r1, r2, r3 = _run(registry), _run(registry), _run(registry)
    registry.promote_first(r1.id, evidence={})
    registry.promote(r2.id, evidence={}, hosts=["h"])
    registry.promote(r1.id, evidence={}, hosts=["h"], outcome=candidate.ROLLED_BACK)
    assert registry.champion().id == r1.id
    registry.promote(r3.id, evidence={}, hosts=["h"])
    assert candidate.previous_champion(registry).id == r1.id


def test_previous_champion_skips_repeated_promotions_of_the_current_champion(registry: Registry) -> None:
    r1, r2 = _run(registry), _run(registry)
    registry.promote_first(r1.id, evidence={})
    registry.promote(r2.id, evidence={}, hosts=["h"])
    registry.promote(r2.id, evidence={}, hosts=["h"])  # redeployed, e.g. after a server upgrade
    assert candidate.previous_champion(registry).id == r1.id


def test_a_second_rollback_goes_two_champions_back_instead_of_toggling(registry: Registry) -> None:
    r1, r2, r3 = _run(registry), _run(registry), _run(registry)
    registry.promote_first(r1.id, evidence={})
    registry.promote(r2.id, evidence={}, hosts=["h"])
    registry.promote(r3.id, evidence={}, hosts=["h"])
    registry.promote(r2.id, evidence={"from_run": r3.id}, hosts=["h"], outcome=candidate.ROLLED_BACK)
    assert candidate.previous_champion(registry).id == r1.id


def test_the_next_deploy_does_not_ship_a_run_that_was_rolled_back(registry: Registry) -> None:
    r1, r2 = _run(registry), _run(registry)
    registry.promote_first(r1.id, evidence={})
    registry.promote(r2.id, evidence={}, hosts=["h"])
    registry.promote(r1.id, evidence={"from_run": r2.id}, hosts=["h"], outcome=candidate.ROLLED_BACK)
    assert candidate.choose(registry, None).id == r1.id
    assert candidate.choose(registry, r2.id).id == r2.id  # still deployable when asked for by name


# --- the staging rule through the CLI ------------------------------------------------------------------------

PRODUCTION_INVENTORY = """\
all:
  children:
    serving:
      hosts:
        localhost:
          ansible_connection: local
          ansible_python_interpreter: "{{ ansible_playbook_python }}"
          mlci_manage_system: false
"""


@pytest.mark.slow
def test_production_refuses_a_run_that_has_not_passed_staging_and_starts_nothing(tmp_path: Path, make_artifact) -> None:
    root = copy_project(tmp_path / "project")
    set_keys(root / "mlci.toml", deploy={"require_staging": True})
    (root / "inventories" / "production").mkdir()
    (root / "inventories" / "production" / "hosts.yml").write_text(PRODUCTION_INVENTORY)
    project = Project(root)
    run_id = project.register(make_artifact())

    refused = project.mlci("deploy", "--env", "production", rc=1)

    assert "has not passed staging" in refused.stderr and f"run {run_id}" in refused.stderr, tail(refused)
    entry = project.last_ledger()
    assert (entry.run_id, entry.outcome, entry.hosts) == (run_id, candidate.REFUSED, [])
    assert entry.evidence["env"] == "production" and "has not passed staging" in entry.evidence["reason"]
    assert not (root / ".mlci" / "serving" / "server.pid").exists()
    deploys = root / ".mlci" / "deploys"
    assert not [p for p in deploys.glob("*") if p.is_dir()]  # no playbook ran: no evidence folder was made

    from mlci.config import load_config

    config = load_config(root / "mlci.toml")
    assert config.deploy.require_staging is True
    with project.registry() as registry:
        registry.record(run_id, evidence={"env": "staging"}, hosts=["s1"], outcome=candidate.PASSED_STAGING)
        run = candidate.choose(registry, None)
        assert run.id == run_id
        why = candidate.refusal(
            registry, run, env="production", staging_env=config.deploy.staging_env,
            require_staging=config.deploy.require_staging,
        )  # fmt: skip
    assert why is None


@pytest.mark.slow
def test_a_second_deploy_of_the_same_environment_waits_for_none_and_says_who_holds_it(
    tmp_path: Path, make_artifact
) -> None:
    root = copy_project(tmp_path / "project")
    (root / "inventories" / "production").mkdir()
    (root / "inventories" / "production" / "hosts.yml").write_text(PRODUCTION_INVENTORY)
    project = Project(root)
    project.register(make_artifact())  # a deployable run: without the lock, this deploy would go ahead

    from mlci.config import load_config
    from mlci.deploy.rollout import exclusive

    with exclusive(load_config(root / "mlci.toml"), "production"):
        busy = project.mlci("deploy", "--env", "production", rc=2)
        rollback = project.mlci("rollback", "--env", "production", rc=2)
    assert "a deploy or rollback of production is already running (pid " in busy.stderr, tail(busy)
    assert "already running" in rollback.stderr, tail(rollback)
    with project.registry() as registry:
        assert [e.run_id for e in registry.ledger()] == []  # nothing was attempted, so nothing recorded
