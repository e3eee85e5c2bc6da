"""The gated rolling deploy on real hosts: 3 sandbox serving hosts (systemd runtime, reached over SSH) behind
the sandbox's nginx load balancer, deployed from a throw-away copy of this project.

A module fixture trains the first run and deploys it (the first deploy installs each host's venv from the
wheelhouse); the tests then roll models under a real Locust load through the load balancer, send bad
candidates, stop a host mid-rollout, and roll back. Every check of what a host serves asks the host itself
(its management API through SSH), never the registry.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import Project, copy_project, set_keys, tail, wait_for
from test_gpu_roles_support import playbook

from artifact_factory import FEATURES, build_artifact
from mlci.sandbox import connect

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

ENV = "sandbox"
KEEP_ARTIFACTS = 2
LOADBALANCER = "- name: Load balancer\n  hosts: loadbalancer\n  roles: [loadbalancer]\n"
REMOVE_SERVER = """
- name: Remove the model server the deploy tests installed
  hosts: serving
  gather_facts: false
  tasks:
    - name: Stop and remove the unit, the venvs and the artifacts
      ansible.builtin.shell: |
        systemctl disable --now mlci-model-server 2>/dev/null || true
        rm -f /etc/systemd/system/mlci-model-server.service
        systemctl daemon-reload
        rm -rf /opt/mlci-serve
      changed_when: true
"""


@pytest.fixture(scope="module")
def project(sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = copy_project(tmp_path_factory.mktemp("deploy") / "project")
    shutil.copytree(sandbox.inventory, root / "inventories" / ENV)
    keep = {"model_server_keep_artifacts": KEEP_ARTIFACTS, "model_server_keep_servers": 1}
    (root / "inventories" / ENV / "group_vars" / "serving.yml").write_text(json.dumps(keep))
    set_keys(
        root / "mlci.toml",
        train={"epochs": 10},
        evaluate={"bootstrap": 200},
        loadtest={"duration_s": 4, "users": 8},
    )
    proj = Project(root)
    plays = root / ".plays"
    plays.mkdir()
    try:
        proj.mlci("train")
        playbook(root / "inventories" / ENV, LOADBALANCER, plays, {})
        first = proj.mlci("deploy", "--env", ENV, timeout=1200)
        assert "promoted: run r0001 serves on 3 host(s)" in first.stdout, tail(first)
        yield proj
    finally:
        playbook(root / "inventories" / ENV, REMOVE_SERVER, plays, {})


def _lb_url(sandbox) -> str:
    (lb,) = sandbox.group("loadbalancer")
    return f"http://{lb.address}"


def _serving(sandbox) -> list[str]:
    return [h.name for h in sandbox.group("serving")]


def _load_through_lb(project: Project, sandbox, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """Locust against the load balancer (the sandbox's own network), its figures kept in `out`."""
    return project.background(
        "loadtest", "--url", _lb_url(sandbox), "--duration", str(seconds), "--users", "8", "--output", str(out),
        "loadtest.max_p95_vs_champion=0", "loadtest.min_rps=0", log=out.with_suffix(".log"),
    )  # fmt: skip


def _figures(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["figures"]


def test_first_deploy_installs_the_server_and_serves_the_first_run_everywhere(project: Project, sandbox) -> None:
    assert project.served_runs(ENV) == dict.fromkeys(_serving(sandbox), "r0001")
    entry = project.last_ledger()
    assert (entry.run_id, entry.outcome, sorted(entry.hosts)) == ("r0001", "promoted", _serving(sandbox))
    assert set(entry.evidence["smoke"]) == set(_serving(sandbox))
    assert all(s["passed"] for s in entry.evidence["smoke"].values())


def test_rolling_update_under_load_through_the_lb_fails_no_request(project: Project, sandbox, tmp_path) -> None:
    candidate = project.train(seed=11)
    load = _load_through_lb(project, sandbox, 45, tmp_path / "during")
    time.sleep(5)  # the load is running before the first host changes
    deploy = project.mlci("deploy", "--env", ENV, "deploy.canary_rps=400")
    assert load.wait(timeout=120) in (0, 1)
    figures = _figures(tmp_path / "during")

    assert f"promoted: run {candidate} serves on 3 host(s)" in deploy.stdout, tail(deploy)
    assert figures["failures"] == 0 and figures["requests"] > 1000, figures
    assert project.served_runs(ENV) == dict.fromkeys(_serving(sandbox), candidate)
    assert project.champion() == candidate
    # The canary's load test compared the candidate with the previous model on the same host, same window.
    loadtest = project.last_ledger().evidence["loadtest"]
    assert loadtest["passed"] and loadtest["baseline"]["requests"] > 0, loadtest
    # At deploy.canary_rps (400) in all, never flat out: 8 users at 50 requests/s each. A closed loop of 8 users
    # reaches several times that here.
    assert loadtest["load"]["users"] * loadtest["load"]["user_rps"] == pytest.approx(400.0), loadtest["load"]
    assert loadtest["figures"]["rps"] <= 400 * 1.1, loadtest["figures"]


def _nan_candidate(project: Project, version: int):
    import torch

    from mlci.artifacts import package
    from mlci.model import build_model

    model = build_model("mlci.model:mlp", {"hidden": [128, 128]}, 64, 10)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    smoke = [[float(i % 17)] * 64 for i in range(4)]
    return package(
        project.root / ".mlci" / "artifacts", model, model_name="digits", version=version, run_id="nan",
        factory="mlci.model:mlp", params={"hidden": [128, 128]}, features=FEATURES,
        classes=list(range(10)), smoke_input=smoke, config={},
    )  # fmt: skip


def _crashing_candidate(project: Project, version: int):
    """Weights that are not a safetensors file; the registry's sha256 is theirs, so delivery passes."""
    from mlci.artifacts import ArtifactRef, sha256_file

    good = build_artifact(project.root / ".mlci" / "artifacts-src", version=version, seed=version)
    folder = project.root / ".mlci" / "artifacts" / f"broken-{version}"
    shutil.copytree(good.path, folder)
    (folder / "model.safetensors").write_bytes(b"\0garbage, not safetensors" * 100)
    digest = sha256_file(folder / "model.safetensors")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["weights"].update(sha256=digest, bytes=2600)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return ArtifactRef(folder, digest, 2600)


def _slow_candidate(project: Project, version: int):
    """A model of the same signature, far wider: correct answers, many times the champion's latency."""
    return build_artifact(project.root / ".mlci" / "artifacts", version=version, seed=version, hidden=(4096, 4096))


def _corrupted_on_delivery(project: Project, version: int):
    """A registered artifact whose weights change after registration (bit rot, a bad copy)."""
    return build_artifact(project.root / ".mlci" / "artifacts", version=version, seed=version)


BAD = {
    "nan_outputs": (_nan_candidate, "smoke test failed"),
    "crash_on_load": (_crashing_candidate, "cannot load"),
    "three_times_slower": (_slow_candidate, "p95"),
    "sha256_mismatch_on_delivery": (_corrupted_on_delivery, "sha256 mismatch on delivery"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_candidate_is_stopped_at_the_canary_and_every_host_keeps_the_champion(
    project: Project, sandbox, kind: str
) -> None:
    champion = project.champion()
    make, reason = BAD[kind]
    ref = make(project, project.next_version())
    run_id = project.register(ref)
    if kind == "sha256_mismatch_on_delivery":
        weights = ref.path / "model.safetensors"
        weights.chmod(0o644)
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))

    deploy = project.mlci("deploy", "--env", ENV, "--run", run_id, rc=1)

    assert project.served_runs(ENV) == dict.fromkeys(_serving(sandbox), champion), tail(deploy)
    assert project.champion() == champion
    entry = project.last_ledger()
    assert (entry.run_id, entry.outcome) == (run_id, "failed")
    assert reason in entry.evidence["reason"], entry.evidence["reason"]
    # Only the canary was touched: the other hosts never got the candidate.
    assert len(entry.evidence["swaps"]) <= 1


def test_a_candidate_that_failed_its_gates_is_refused_before_any_host(project: Project, sandbox) -> None:
    champion = project.champion()
    run = project.mlci("train", "train.epochs=1", "train.lr=0.00001", rc=1)
    assert "FAILED" in run.stdout
    with project.registry() as registry:
        regressed = registry.latest_run()
        assert regressed is not None
    deploy = project.mlci("deploy", "--env", ENV, "--run", regressed.id, rc=1)
    assert "failed its gates (min_accuracy" in deploy.stderr, tail(deploy)
    assert project.served_runs(ENV) == dict.fromkeys(_serving(sandbox), champion)
    entry = project.last_ledger()
    assert (entry.run_id, entry.outcome, entry.hosts) == (regressed.id, "refused", [])


@contextlib.contextmanager
def _last_host_paused_mid_rollout(project: Project, sandbox, log: Path) -> Iterator[str]:
    """Start `mlci deploy`, pause the last serving host once the canary has its new model (the rollout is
    under way), check the deploy fails, and yield the paused host's name; it is unpaused afterwards."""
    last = sandbox.group("serving")[-1]
    container = connect().containers.get(last.container)
    deploys = project.root / ".mlci" / "deploys"
    before = set(deploys.iterdir())
    proc = project.background("deploy", "--env", ENV, log=log)
    try:
        wait_for(lambda: any(p.glob("*.swap.json") for p in set(deploys.iterdir()) - before), 300, "the canary")
        container.pause()
        assert proc.wait(timeout=600) == 1, log.read_text()[-4000:]
        yield last.name
    finally:
        container.reload()
        if container.status == "paused":
            container.unpause()


def _reachable_runs(project: Project, paused: str) -> dict[str, str | None]:
    return {h: r for h, r in project.served_runs(ENV).items() if h != paused}


def test_a_host_stopped_mid_rollout_halts_it_and_a_rerun_converges(project: Project, sandbox, tmp_path) -> None:
    champion = project.champion()
    candidate = project.train(seed=12)
    with _last_host_paused_mid_rollout(project, sandbox, tmp_path / "deploy.log") as paused:
        reachable = _reachable_runs(project, paused)
        assert reachable == dict.fromkeys(reachable, champion)  # one consistent version: the champion's
        assert project.last_ledger().outcome == "failed"
    rerun = project.mlci("deploy", "--env", ENV)
    assert f"promoted: run {candidate}" in rerun.stdout, tail(rerun)
    assert project.served_runs(ENV) == dict.fromkeys(_serving(sandbox), candidate)


STOP_SERVERS = """
- name: Leave the serving hosts with no model, as before a first deploy (the venvs stay)
  hosts: serving
  gather_facts: false
  tasks:
    - name: Stop the server and forget its model
      ansible.builtin.shell: systemctl stop mlci-model-server; rm -f /opt/mlci-serve/artifacts/current
      changed_when: true
"""


def test_a_failed_first_deploy_stops_the_hosts_it_had_reached(project: Project, sandbox, tmp_path) -> None:
    playbook(project.root / "inventories" / ENV, STOP_SERVERS, tmp_path, {})
    assert project.served_runs(ENV) == dict.fromkeys(_serving(sandbox), None)
    candidate = project.train(seed=13)
    with _last_host_paused_mid_rollout(project, sandbox, tmp_path / "deploy.log") as paused:
        # No model served before, so none serves now: the hosts the rollout reached are stopped again.
        reachable = _reachable_runs(project, paused)
        assert reachable == dict.fromkeys(reachable, None), (tmp_path / "deploy.log").read_text()[-3000:]
        returned = project.last_ledger().evidence["returned"]
        assert set(returned.values()) == {"stopped"} and paused not in returned, returned
    rerun = project.mlci("deploy", "--env", ENV)
    assert f"promoted: run {candidate}" in rerun.stdout, tail(rerun)
    assert project.served_runs(ENV) == dict.fromkeys(_serving(sandbox), candidate)


def test_rollback_returns_every_host_to_the_previous_champion(project: Project, sandbox) -> None:
    current = project.champion()
    with project.registry() as registry:
        from mlci.deploy.candidate import previous_champion

        previous = previous_champion(registry)
        assert previous is not None and previous.id != current
    run = project.mlci("rollback", "--env", ENV)
    assert f"rolled back: run {previous.id} serves on 3 host(s)" in run.stdout, tail(run)
    assert project.served_runs(ENV) == dict.fromkeys(_serving(sandbox), previous.id)
    assert project.champion() == previous.id
    entry = project.last_ledger()
    assert (entry.run_id, entry.outcome) == (previous.id, "rolled back")


def _nginx_workers(sandbox) -> set[str]:
    """The load balancer's nginx worker pids: a reload replaces them all."""
    (lb,) = sandbox.group("loadbalancer")
    code, out = connect().containers.get(lb.container).exec_run(["pgrep", "-f", "nginx: worker"])
    assert code == 0, out
    return set(out.decode().split())


def test_server_upgrade_under_load_through_the_lb_fails_no_request_and_reloads_no_nginx(
    project: Project, sandbox, tmp_path
) -> None:
    before, workers = project.statuses(ENV), _nginx_workers(sandbox)
    # A serving setting changes the server (not the model): each host is replaced, one at a time.
    set_keys(project.config, serving={"keepalive_s": 14.0})
    load = _load_through_lb(project, sandbox, 60, tmp_path / "upgrade")
    time.sleep(5)
    deploy = project.mlci("deploy", "--env", ENV, "--run", "champion")
    assert load.wait(timeout=150) in (0, 1)
    summary = json.loads((tmp_path / "upgrade" / "summary.json").read_text())
    figures, after = summary["figures"], project.statuses(ENV)

    assert "promoted" in deploy.stdout, tail(deploy)
    for host, status in after.items():
        assert status is not None and status["server_version"] != before[host]["server_version"]
        assert status["current"]["sha256"] == before[host]["current"]["sha256"]
    # Each server's graceful stop and nginx's retries moved the traffic: nginx itself was never reloaded.
    assert _nginx_workers(sandbox) == workers
    assert figures["requests"] > 1000, figures
    assert (figures["failures"], summary["errors"]) == (0, []), summary["errors"]


def test_each_host_keeps_its_newest_artifacts_the_loaded_ones_and_only_the_server_in_use(
    project: Project, sandbox
) -> None:
    with project.registry() as registry:
        delivered = {r.artifact("model").sha256 for r in registry.runs() if r.artifact("model") is not None}
    assert len(delivered) > KEEP_ARTIFACTS + 2  # the tests above delivered more than a host keeps
    for host, status in project.statuses(ENV).items():
        assert status is not None
        loaded = {status["current"]["sha256"]} | ({status["previous"]["sha256"]} if status.get("previous") else set())
        container = connect().containers.get(next(h.container for h in sandbox.hosts if h.name == host))
        code, out = container.exec_run(["sh", "-c", "ls /opt/mlci-serve/artifacts; echo --; ls /opt/mlci-serve/venvs"])
        assert code == 0, out
        artifacts, venvs = (part.split() for part in out.decode().split("--"))
        kept = set(artifacts) - {"current"}
        assert loaded <= kept, (host, loaded, kept)
        assert len(kept - loaded) <= KEEP_ARTIFACTS and len(kept) < len(delivered), (host, kept)
        assert len(venvs) == 1, (host, venvs)  # the server upgrade above left a second one: it is gone
