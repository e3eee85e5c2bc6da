"""The docker runtime on a real host: a sandbox host with its own Docker engine serves the model from a container
of an image built there, offline, from the sandbox's base image (loaded from a `docker save` archive: the host
pulls nothing) and the controller's wheelhouse.

The host is the sandbox's runner (its serving hosts run the systemd tests), in an inventory of its own where it
is the only serving host. What the container is (image, mounts, user, network) is read from the host's engine;
what it serves is asked of the server itself through SSH.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from deploy_support import Project, copy_project, set_keys, tail, wait_for
from test_gpu_roles_support import playbook

from mlci.sandbox import BASE_REPO, SUITE, connect

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

ENV = "docker"
ROOT_DIR = "/opt/mlci-serve"
CONTAINER = "mlci-model-server"
ENGINE = "- name: Docker engine\n  hosts: serving\n  become: true\n  roles: [docker]\n"
REMOVE = f"""
- name: Remove what the docker runtime test installed
  hosts: serving
  gather_facts: false
  tasks:
    - name: Remove the container, the server's images and its folder
      ansible.builtin.shell: |
        docker rm -f {CONTAINER} 2>/dev/null || true
        docker images --quiet mlci-model-server | xargs -r docker rmi -f
        rm -rf {ROOT_DIR}
      changed_when: true
"""


@dataclass
class DockerHost:
    project: Project
    name: str
    container: Any  # the sandbox host's container on this machine's engine

    def sh(self, command: str) -> str:
        code, out = self.container.exec_run(["sh", "-c", command])
        text = out.decode(errors="replace")
        assert code == 0, f"{command}: exit {code}: {text}"
        return text

    def inspect(self, what: str) -> dict[str, Any]:
        return json.loads(self.sh(f"docker inspect {what}"))[0]

    def served(self) -> dict[str, Any]:
        (status,) = self.project.statuses(ENV).values()
        assert status is not None, "the server does not answer"
        return status


@pytest.fixture(scope="module")
def docker_host(sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerHost]:
    host = sandbox.group("gpu_runners")[0]
    work = tmp_path_factory.mktemp("deploy-docker")
    root = copy_project(work / "project")
    base_archive = work / "base-image.tar"
    with base_archive.open("wb") as out:
        for chunk in connect().images.get(f"{BASE_REPO}:{SUITE}").save(named=True):
            out.write(chunk)
    inventory = root / "inventories" / ENV
    shutil.copytree(sandbox.inventory, inventory)
    hosts = {"ansible_port": host.ssh_port, "sandbox_address": host.address}
    layout = {"all": {"hosts": {host.name: hosts}, "children": {"serving": {"hosts": {host.name: None}}}}}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(layout))
    serving_vars = {
        "model_server_runtime": "docker",
        "model_server_docker_base_image": f"{BASE_REPO}:{SUITE}",
        "model_server_docker_base_archive": str(base_archive),
    }
    (inventory / "group_vars" / "serving.yml").write_text(yaml.safe_dump(serving_vars))
    set_keys(root / "mlci.toml", train={"epochs": 10}, evaluate={"bootstrap": 200}, loadtest={"duration_s": 4})
    project = Project(root)
    plays = work / "plays"
    plays.mkdir()
    try:
        playbook(inventory, ENGINE, plays, {})
        project.mlci("train")
        first = project.mlci("deploy", "--env", ENV, timeout=1800)
        assert "promoted: run r0001 serves on 1 host(s)" in first.stdout, tail(first)
        yield DockerHost(project, host.name, connect().containers.get(host.container))
    finally:
        playbook(inventory, REMOVE, plays, {})


def test_first_deploy_builds_the_image_offline_and_serves_from_a_locked_down_container(docker_host) -> None:
    assert docker_host.served()["current"]["run_id"] == "r0001"
    # The base image came from the archive (the host has no registry), the server's image was built on it.
    assert docker_host.inspect(f"{BASE_REPO}:{SUITE}")["Id"].startswith("sha256:")
    container = docker_host.inspect(CONTAINER)
    image = docker_host.inspect(container["Image"])
    assert container["Config"]["Image"] in image["RepoTags"]
    assert container["Config"]["Image"].startswith("mlci-model-server:")
    assert container["State"]["Running"] is True
    config, host_config = container["Config"], container["HostConfig"]
    uid, gid = docker_host.sh("id -u mlci-serve; id -g mlci-serve").split()
    assert config["User"] == f"{uid}:{gid}" and uid != "0"
    assert host_config["NetworkMode"] == "host"
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host_config["SecurityOpt"]
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    mounts = {m["Destination"]: m for m in container["Mounts"]}
    assert set(mounts) == {f"{ROOT_DIR}/artifacts", f"{ROOT_DIR}/config"}
    assert all(m["RW"] is False for m in mounts.values())
    # The wheels stayed in the build stage and the build context was removed from the host.
    assert docker_host.sh(f"ls {ROOT_DIR}/build").split() == []
    listing = docker_host.sh(f"docker run --rm --entrypoint ls {container['Config']['Image']} /")
    assert "wheels" not in listing.split()


def test_a_model_update_hot_swaps_in_the_same_container_with_no_rebuild(docker_host) -> None:
    before = docker_host.inspect(CONTAINER)
    images_before = docker_host.sh("docker images --quiet --no-trunc mlci-model-server").split()
    run_id = docker_host.project.train(seed=2)
    deploy = docker_host.project.mlci("deploy", "--env", ENV)
    assert f"promoted: run {run_id} serves on 1 host(s)" in deploy.stdout, tail(deploy)
    after = docker_host.inspect(CONTAINER)
    assert docker_host.served()["current"]["run_id"] == run_id
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    assert docker_host.sh("docker images --quiet --no-trunc mlci-model-server").split() == images_before


def test_a_serving_setting_recreates_the_container_on_the_same_image(docker_host) -> None:
    before, status_before = docker_host.inspect(CONTAINER), docker_host.served()
    set_keys(docker_host.project.config, serving={"keepalive_s": 14.0})
    deploy = docker_host.project.mlci("deploy", "--env", ENV, "--run", "champion")
    assert "promoted" in deploy.stdout, tail(deploy)
    after, status_after = docker_host.inspect(CONTAINER), docker_host.served()
    assert after["Id"] != before["Id"]
    assert after["Image"] == before["Image"]  # the config is mounted, not built in
    assert status_after["server_version"] != status_before["server_version"]
    assert status_after["current"]["sha256"] == status_before["current"]["sha256"]


def test_rollback_puts_the_previous_model_back_in_the_container(docker_host) -> None:
    served = docker_host.served()["current"]["run_id"]
    run = docker_host.project.mlci("rollback", "--env", ENV)
    previous = docker_host.project.champion()
    assert previous != served
    assert f"rolled back: run {previous} serves on 1 host(s)" in run.stdout, tail(run)
    assert docker_host.served()["current"]["run_id"] == previous


def test_the_container_comes_back_on_the_model_it_served_after_a_restart(docker_host) -> None:
    served = docker_host.served()["current"]["sha256"]
    docker_host.sh(f"docker restart --time 45 {CONTAINER}")
    wait_for(lambda: _answers(docker_host), 120, "the restarted container to answer")
    assert docker_host.served()["current"]["sha256"] == served


def _answers(docker_host: DockerHost) -> bool:
    (status,) = docker_host.project.statuses(ENV).values()
    return status is not None
