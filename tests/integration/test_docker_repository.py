"""The docker role with `docker_source: docker`: docker-ce from Docker's apt repository, here a signed mirror of
its layout built by the test (stand-in packages: an engine unit that only sleeps), served on the load
balancer's loopback. The load balancer has no Docker, so nothing the fleet runs is touched; the test puts the
host back as it found it.

It checks what a site with a mirror relies on: the rendered apt source names only the mirror, the key is the
mirror's, the new source triggers the apt refresh that finds docker-ce, the engine unit runs, and a second run
changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from apt_mirror import SERVE_MIRROR, gnupg_home, packages_index, release, signing_key, stand_in_deb
from test_gpu_roles_support import host_in_group, playbook, sandbox_inventory, task_results

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

PORT = 8090
REPOSITORY = f"http://127.0.0.1:{PORT}/linux/debian"
VERSION = "5:27.5.1-1~debian.12~bookworm"
PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io"]
ENGINE_UNIT = """[Unit]
Description=stand-in Docker engine (mlci tests)

[Service]
ExecStart=/usr/bin/dockerd

[Install]
WantedBy=multi-user.target
"""


def build_docker_mirror(root: Path) -> Path:
    """Docker's repository layout (linux/debian: dists/bookworm/stable, its key at gpg), signed by a new key."""
    root.mkdir(parents=True)
    with gnupg_home() as gnupghome:
        repo = root / "mirror" / "linux" / "debian"
        pool = repo / "pool" / "stable"
        pool.mkdir(parents=True)
        (repo / "gpg").write_bytes(signing_key(gnupghome, "mlci docker mirror"))
        debs = [
            stand_in_deb(pool, "containerd.io", VERSION, {}),
            stand_in_deb(
                pool,
                "docker-ce-cli",
                VERSION,
                {"usr/bin/docker": "#!/bin/sh\necho 'Docker version 27.5.1 (stand-in)'\n"},
            ),
            stand_in_deb(
                pool,
                "docker-ce",
                VERSION,
                {
                    "usr/bin/dockerd": "#!/bin/sh\nexec sleep infinity\n",
                    "lib/systemd/system/docker.service": ENGINE_UNIT,
                },
                depends="docker-ce-cli, containerd.io",
            ),
        ]
        dist = repo / "dists" / "bookworm"
        index = dist / "stable" / "binary-amd64" / "Packages"
        index.parent.mkdir(parents=True)
        index.write_text(packages_index(debs, repo))
        fields = "Origin: mlci tests\nSuite: bookworm\nCodename: bookworm\nArchitectures: amd64\nComponents: stable\n"
        release(dist, [index], gnupghome, fields)
    return root / "mirror"


DOCKER = """
- name: Docker engine from Docker's repository (the test mirror)
  hosts: "{{ target }}"
  become: true
  roles:
    - role: docker
"""

INSPECT = """
- name: Inspect the host
  hosts: "{{ target }}"
  gather_facts: false
  become: true
  tasks:
    - name: Read the apt source
      ansible.builtin.command: cat /etc/apt/sources.list.d/docker.sources
      changed_when: false
    - name: Read the key
      ansible.builtin.command: cat /etc/apt/keyrings/docker.asc
      changed_when: false
    - name: Read the installed versions
      ansible.builtin.command: dpkg-query -W -f '${Package} ${Version}\\n' docker-ce docker-ce-cli containerd.io
      changed_when: false
    - name: Ask systemd about the engine
      ansible.builtin.command: systemctl is-active docker
      changed_when: false
"""

CLEANUP = """
- name: Take the test mirror, the stand-in engine and Docker's source off the host
  hosts: "{{ target }}"
  gather_facts: false
  become: true
  tasks:
    - name: Stop the mirror
      ansible.builtin.command: systemctl stop mlci-test-mirror
      changed_when: true
      failed_when: false
    - name: Remove the stand-in packages
      ansible.builtin.apt:
        name: [docker-ce, docker-ce-cli, containerd.io]
        state: absent
        purge: true
    - name: Remove the source, the key, the engine's settings and the mirror
      ansible.builtin.file:
        path: "{{ item }}"
        state: absent
      loop: [/etc/apt/sources.list.d/docker.sources, /etc/apt/keyrings/docker.asc, /etc/docker, /srv/mlci-test-mirror]
    - name: Refresh the apt cache without the mirror
      ansible.builtin.apt:
        update_cache: true
"""


DPKG_STATUS = """
    - name: Ask dpkg about the distribution's engine
      ansible.builtin.command: dpkg-query --show --showformat='${db:Status-Status}' docker.io
      changed_when: false
      failed_when: false
"""


@pytest.fixture(scope="module")
def docker_repository_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    inventory = sandbox_inventory(request)
    host = host_in_group(inventory, "loadbalancer")
    tmp_path = tmp_path_factory.mktemp("docker-repository")
    mirror = build_docker_mirror(tmp_path / "build")
    playbook(inventory, SERVE_MIRROR, tmp_path, {"target": host, "mirror_dir": str(mirror), "port": PORT})
    try:
        extra = {"target": host, "docker_source": "docker", "docker_repository_url": REPOSITORY}
        first = playbook(inventory, DOCKER, tmp_path, extra)
        second = playbook(inventory, DOCKER, tmp_path, extra)
        inspect = playbook(inventory, INSPECT, tmp_path, {"target": host})
        # The same host converged with the default (the distribution's docker.io) keeps the docker-ce it has.
        distribution = playbook(inventory, DOCKER, tmp_path, {"target": host})
        after = playbook(inventory, INSPECT + DPKG_STATUS, tmp_path, {"target": host})
        yield host, mirror, first, second, inspect, distribution, after
    finally:
        playbook(inventory, CLEANUP, tmp_path, {"target": host})


def test_docker_ce_comes_from_the_configured_repository_mirror(docker_repository_run) -> None:
    host, mirror, first, second, inspect, _distribution, _after = docker_repository_run
    assert first["stats"][host]["changed"] > 0
    # The new source is what made apt refresh: without it docker-ce would not have been found.
    (refresh,) = task_results(first, host, "Install the missing packages, for the Docker engine")
    assert refresh["changed"] is True, refresh
    assert second["stats"][host]["changed"] == 0, second["stats"]

    source = task_results(inspect, host, "Read the apt source")[0]["stdout"]
    assert f"URIs: {REPOSITORY}" in source and "Suites: bookworm" in source and "Components: stable" in source
    assert "download.docker.com" not in source
    assert "Signed-By: /etc/apt/keyrings/docker.asc" in source
    key = task_results(inspect, host, "Read the key")[0]["stdout"]
    assert key.strip() == (mirror / "linux" / "debian" / "gpg").read_text().strip()
    installed = task_results(inspect, host, "Read the installed versions")[0]["stdout"].splitlines()
    assert sorted(installed) == sorted(f"{p} {VERSION}" for p in PACKAGES)
    assert task_results(inspect, host, "Ask systemd about the engine")[0]["stdout"] == "active"


def test_an_engine_from_docker_ce_stays_when_the_role_wants_the_distributions(docker_repository_run) -> None:
    host, _mirror, _first, _second, _inspect, distribution, after = docker_repository_run
    (install,) = task_results(distribution, host, "Install the missing packages, for the Docker engine")
    assert install.get("skipped") is True, install  # docker.io (which conflicts with docker-ce) was never asked for
    assert distribution["stats"][host]["changed"] == 0, distribution["stats"]
    installed = task_results(after, host, "Read the installed versions")[0]["stdout"].splitlines()
    assert sorted(installed) == sorted(f"{p} {VERSION}" for p in PACKAGES)
    assert task_results(after, host, "Ask dpkg about the distribution's engine")[0]["stdout"] != "installed"
    assert task_results(after, host, "Ask systemd about the engine")[0]["stdout"] == "active"
