"""A driver reboot on real sandbox hosts, one of which never comes back (no GPU and no real reboot exist here).

playbooks/targets.yml runs its nvidia_driver role on the three serving hosts in batches of 2 then the rest,
with max_fail_percentage 0, after a driver install that does not load until a reboot. The hosts reboot at the
OS level as far as ansible.builtin.reboot can tell: a stand-in shutdown(8) drops every SSH session, gives the
host a new boot id (a file bind-mounted over /proc/sys/kernel/random/boot_id), "loads" the driver the stand-in
nvidia-smi answers for, and starts sshd again; on the host that never comes back it stops sshd for good.

- The host that does not come back fails with the reboot timeout's message and stays drained.
- The other host of its batch rebooted (its boot id changed), answers nvidia-smi and was brought back into
  service before that failure counted.
- The later batch never ran: its host has no driver, no drain and its old boot id.
- Run again with max_fail_percentage 50 and the failed host asked to reboot again: it fails again (1 of 2 in
  its batch, allowed), so the later batch runs: its host gets the driver, reboots and comes back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ansible_json import ansible_playbook
from apt_mirror import SERVE_MIRROR, UNSERVE_MIRROR, flat_repo, gnupg_home, signing_key
from test_gpu_roles_support import hosts_in_group, playbook, task_results

from mlci.sandbox import connect

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

BRANCH = "535"
DRIVER = "535.309.01-1"
MIRROR_PORT = 8093
MIRROR = f"http://127.0.0.1:{MIRROR_PORT}"
REBOOT_TIMEOUT = 20
PACKAGES = ["nvidia-driver", "nvidia-smi", "nvidia-persistenced"]
HELD = ["nvidia-driver", "nvidia-smi"]
PLAY = "Provision the serving hosts"
NOT_BACK = "Fail when the host did not come back with the driver loaded"

BOOT_ID = "/proc/sys/kernel/random/boot_id"
FAKE_BOOT_ID = "/run/mlci-test-boot-id"
LOADED = "/run/mlci-test-driver-loaded"  # /run is a tmpfs: a real reboot empties it too
SHUTDOWN = "/usr/sbin/shutdown"  # /sbin is /usr/sbin on Debian 12; the reboot module finds it there
REBOOT_SCRIPT = "/usr/local/sbin/mlci-test-reboot"
SHUTDOWN_LOG = "/var/tmp/mlci-test-shutdown"
REBOOT_REQUIRED = "/var/run/reboot-required"
DRAINED = "/var/tmp/mlci-test-drained"
UNDRAINED = "/var/tmp/mlci-test-undrained"

# Answers like nvidia-smi once the stand-in reboot "loaded" the driver, and like a driver not loaded before.
SMI = f"""#!/bin/sh
if [ -e {LOADED} ]; then echo 'NVIDIA-SMI {DRIVER.split("-")[0]} (stand-in)'; exit 0; fi
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
exit 9
"""

# shutdown(8) as the reboot module calls it (`shutdown -r 0 "msg"`): it returns at once and the "reboot"
# runs as a unit of its own, outside the SSH session it kills.
STAND_IN_SHUTDOWN = f"""#!/bin/sh
echo "$*" >> {SHUTDOWN_LOG}
exec systemd-run --quiet --collect --unit=mlci-test-reboot {REBOOT_SCRIPT}
"""

# What a reboot does to a host that comes back, as far as Ansible can see.
COMES_BACK = f"""#!/bin/sh
sleep 2
systemctl kill --signal=KILL ssh.service
cat /proc/sys/kernel/random/uuid > {FAKE_BOOT_ID}
touch {LOADED}
systemctl reset-failed ssh.service
systemctl restart ssh.service
"""

# A host that never comes back: sshd stops for good and every session ends.
STAYS_DOWN = """#!/bin/sh
sleep 2
systemctl stop ssh.service
systemctl kill --signal=KILL ssh.service
"""


def build_mirror(root: Path) -> Path:
    """NVIDIA's repository layout with the driver, nvidia-smi and the persistence daemon as stand-ins."""
    mirror = root / "mirror"
    mirror.mkdir(parents=True)
    unit = "[Unit]\nDescription=stand-in nvidia-persistenced\n[Service]\nExecStart=/bin/true\n"
    unit += "[Install]\nWantedBy=multi-user.target\n"
    with gnupg_home() as gnupghome:
        (mirror / "mirror-key.asc").write_bytes(signing_key(gnupghome, "mlci reboot mirror"))
        debs = [
            ("nvidia-driver", DRIVER, {}),
            ("nvidia-smi", DRIVER, {"usr/bin/nvidia-smi": SMI}),
            ("nvidia-persistenced", DRIVER, {"lib/systemd/system/nvidia-persistenced.service": unit}),
        ]
        flat_repo(mirror / "compute/cuda/repos/debian12/x86_64", debs, gnupghome)
    return mirror


class Host:
    """A sandbox host reached through the Docker engine, which works while its sshd is down."""

    def __init__(self, name: str, container: Any) -> None:
        self.name = name
        self.container = container

    def sh(self, script: str) -> tuple[int, str]:
        code, out = self.container.exec_run(["sh", "-c", script])
        return code, out.decode(errors="replace").strip()

    def must(self, script: str) -> str:
        code, out = self.sh(script)
        if code != 0:
            pytest.fail(f"{self.name}: `{script}` exited {code}: {out}")
        return out

    def put(self, path: str, text: str) -> None:
        self.must(f"rm -f {path} && cat > {path} <<'MLCI_EOF'\n{text}MLCI_EOF\nchmod 0755 {path}")

    def boot_id(self) -> str:
        return self.must(f"cat {BOOT_ID}")

    def fake_reboot(self, script: str) -> None:
        """The stand-in shutdown and reboot, and a boot id of the host's own that the reboot can change."""
        self.put(REBOOT_SCRIPT, script)
        self.put(SHUTDOWN, STAND_IN_SHUTDOWN)
        self.must(f"rm -f {LOADED} {SHUTDOWN_LOG} {DRAINED} {UNDRAINED}")
        self.must(f"cat /proc/sys/kernel/random/uuid > {FAKE_BOOT_ID}")
        self.must(f"grep -q ' {BOOT_ID} ' /proc/self/mountinfo || mount --bind {FAKE_BOOT_ID} {BOOT_ID}")

    def clear_marks(self) -> None:
        """Forget the last run's drain and shutdown (a "loaded" driver stays loaded)."""
        self.must(f"rm -f {SHUTDOWN_LOG} {DRAINED} {UNDRAINED}")

    def restore(self) -> None:
        """sshd running, the real shutdown and boot id back, the stand-ins gone."""
        self.must("systemctl reset-failed ssh.service; systemctl start ssh.service")
        self.sh(f"grep -q ' {BOOT_ID} ' /proc/self/mountinfo && umount {BOOT_ID}")
        self.must(f"rm -f {SHUTDOWN} && ln -s /bin/systemctl {SHUTDOWN}")
        self.must(
            f"rm -f {REBOOT_SCRIPT} {FAKE_BOOT_ID} {LOADED} {REBOOT_REQUIRED} {SHUTDOWN_LOG} {DRAINED} {UNDRAINED}"
        )


@dataclass
class Converge:
    out: dict[str, Any]  # the JSON callback's output of playbooks/targets.yml
    boot_before: dict[str, str]
    boot_after: dict[str, str]
    state: dict[str, dict[str, str]]  # what each host shows after the run, read through the Docker engine


@dataclass
class RebootRun:
    back: str  # in the first batch, comes back
    down: str  # in the first batch, never comes back
    later: str  # the second batch
    stopped: Converge  # max_fail_percentage 0: the driver install reboots back and down
    tolerated: Converge  # then max_fail_percentage 50, down asked to reboot again (/var/run/reboot-required)


def _state(host: Host) -> dict[str, str]:
    return {
        "shutdown": host.sh(f"cat {SHUTDOWN_LOG}")[1] if host.sh(f"test -e {SHUTDOWN_LOG}")[0] == 0 else "",
        "drained": str(host.sh(f"test -e {DRAINED}")[0] == 0),
        "undrained": str(host.sh(f"test -e {UNDRAINED}")[0] == 0),
        "smi": str(host.sh("nvidia-smi")[0]),
        "driver": host.sh("dpkg-query -W -f '${Status} ${Version}' nvidia-driver 2>/dev/null")[1],
        "sshd": host.sh("systemctl is-active ssh.service")[1],
    }


def _extra(max_fail_percentage: int) -> dict[str, Any]:
    return {
        # What detect.yml finds on a host with one GPU (extra vars outrank its set_fact).
        "_nvidia_driver_gpus": ["0000:65:00.0"],
        "nvidia_driver_source": "nvidia",
        "nvidia_driver_branch": BRANCH,
        "nvidia_driver_version": DRIVER,
        "nvidia_driver_mirror_url": MIRROR,
        "nvidia_driver_repo_key_url": f"{MIRROR}/mirror-key.asc",
        "nvidia_driver_headers_package": "",
        "nvidia_driver_reboot": True,
        "nvidia_driver_reboot_timeout": REBOOT_TIMEOUT,
        "nvidia_driver_drain_command": f"touch {DRAINED}",
        "nvidia_driver_undrain_command": f"touch {UNDRAINED}",
        "mlci_provision_serial": [2, "100%"],
        "mlci_provision_max_fail_percentage": max_fail_percentage,
    }


@pytest.fixture(scope="module")
def reboot_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RebootRun]:
    fleet = request.getfixturevalue("sandbox")
    inventory = fleet.inventory
    tmp_path = tmp_path_factory.mktemp("gpu-reboot")
    names = hosts_in_group(inventory, "serving")[:3]
    if len(names) < 3:
        pytest.fail(f"{inventory}: the reboot test needs 3 serving hosts, has {names}")
    back, down, later = names
    client = connect()
    containers = {h.name: h.container for h in fleet.hosts}
    hosts = {name: Host(name, client.containers.get(containers[name])) for name in names}
    target = ":".join(names)

    def converge(max_fail_percentage: int) -> Converge:
        extra_file = tmp_path / f"reboot-extra-{max_fail_percentage}.json"
        extra_file.write_text(json.dumps(_extra(max_fail_percentage)))
        before = {name: host.boot_id() for name, host in hosts.items()}
        limit = ",".join(names)
        out = ansible_playbook(
            inventory,
            "-e",
            f"@{extra_file}",
            "--limit",
            limit,
            "--tags",
            "nvidia_driver",
            "playbooks/targets.yml",
            rc=2,
        )
        after = {name: host.boot_id() for name, host in hosts.items()}
        return Converge(out, before, after, {name: _state(host) for name, host in hosts.items()})

    mirror_dir = build_mirror(tmp_path / "build")
    try:
        serve = {"target": target, "mirror_dir": str(mirror_dir), "port": MIRROR_PORT}
        playbook(inventory, SERVE_MIRROR, tmp_path, serve)
        for name, host in hosts.items():
            host.fake_reboot(STAYS_DOWN if name == down else COMES_BACK)
        stopped = converge(0)
        # The host that did not come back is switched on again, with a reboot still asked for.
        hosts[down].must("systemctl reset-failed ssh.service; systemctl start ssh.service")
        hosts[back].clear_marks()
        hosts[down].clear_marks()
        hosts[down].must(f"touch {REBOOT_REQUIRED}")
        tolerated = converge(50)
        yield RebootRun(back, down, later, stopped, tolerated)
    finally:
        for host in hosts.values():
            host.restore()
        playbook(inventory, UNSERVE_MIRROR, tmp_path, {"target": target, "packages": PACKAGES, "held": HELD})


def _batches(out: dict[str, Any]) -> list[set[str]]:
    """The hosts of each batch of the serving play (the JSON callback starts a play entry per batch)."""
    return [{host for task in p["tasks"] for host in task["hosts"]} for p in out["plays"] if p["play"]["name"] == PLAY]


def test_a_host_that_does_not_come_back_fails_with_the_timeout_and_stays_drained(reboot_run: RebootRun) -> None:
    run, down = reboot_run.stopped, reboot_run.down
    timeout = f"Timed out waiting for last boot time check (timeout={REBOOT_TIMEOUT})"
    (reboot,) = task_results(run.out, down, "Reboot to load the NVIDIA driver")
    assert reboot.get("failed") is True and reboot.get("msg") == timeout, reboot
    # The failure is raised once the batch's other hosts are back in service.
    failures = task_results(run.out, down, NOT_BACK)
    assert [r.get("failed") for r in failures] == [True], failures
    (failure,) = failures
    assert f"{down} did not come back from its reboot" in failure["msg"]
    assert timeout in failure["msg"], failure
    assert run.out["stats"][down]["failures"] == 1
    # It was asked to reboot, drained first, and never put back into service.
    assert run.state[down]["shutdown"].startswith("-r "), run.state[down]
    assert run.state[down]["drained"] == "True" and run.state[down]["undrained"] == "False"
    assert run.state[down]["sshd"] != "active"


def test_the_other_host_of_the_batch_rebooted_and_was_brought_back(reboot_run: RebootRun) -> None:
    run, back = reboot_run.stopped, reboot_run.back
    assert _batches(run.out)[0] == {back, reboot_run.down}
    (reboot,) = task_results(run.out, back, "Reboot to load the NVIDIA driver")
    assert reboot.get("rebooted") is True and not reboot.get("failed"), reboot
    assert run.boot_after[back] != run.boot_before[back]
    undrain = task_results(run.out, back, "Bring the host back with the given command")
    assert [r.get("changed") for r in undrain] == [True], f"{back} came back but was not brought back: {undrain}"
    assert task_results(run.out, back, NOT_BACK)[0].get("skipped") is True
    assert run.out["stats"][back]["failures"] == 0 and run.out["stats"][back]["unreachable"] == 0
    state = run.state[back]
    assert state["shutdown"].startswith("-r "), state  # asked to reboot through shutdown(8)
    assert (state["drained"], state["undrained"]) == ("True", "True"), state
    assert state["smi"] == "0" and state["sshd"] == "active", state  # the driver answers after the reboot
    assert run.state[back]["driver"] == f"hold ok installed {DRIVER}"


def test_max_fail_percentage_zero_stops_the_later_batches(reboot_run: RebootRun) -> None:
    run, later = reboot_run.stopped, reboot_run.later
    assert _batches(run.out) == [{reboot_run.back, reboot_run.down}], _batches(run.out)
    assert later not in run.out["stats"] or run.out["stats"][later]["changed"] == 0
    # Untouched: no driver, no drain, no shutdown, the same boot.
    assert run.boot_after[later] == run.boot_before[later]
    assert run.state[later]["driver"] in ("", "unknown ok not-installed "), run.state[later]
    assert run.state[later]["shutdown"] == "" and run.state[later]["drained"] == "False"
    assert run.state[later]["sshd"] == "active"


def test_a_tolerated_failure_lets_the_later_batches_go_on(reboot_run: RebootRun) -> None:
    run, back, down, later = reboot_run.tolerated, reboot_run.back, reboot_run.down, reboot_run.later
    # 1 host of 2 failed in the first batch: not more than max_fail_percentage 50, so the second batch ran.
    assert _batches(run.out) == [{back, down}, {later}], _batches(run.out)
    assert [r.get("failed") for r in task_results(run.out, down, NOT_BACK)] == [True]
    assert run.state[down]["shutdown"].startswith("-r ") and run.state[down]["undrained"] == "False"
    # The later host got the driver, rebooted and came back into service.
    assert run.out["stats"][later]["failures"] == 0 and run.out["stats"][later]["changed"] > 0
    assert run.boot_after[later] != run.boot_before[later]
    assert run.state[later]["driver"] == f"hold ok installed {DRIVER}"
    assert (run.state[later]["undrained"], run.state[later]["smi"]) == ("True", "0"), run.state[later]
    # The host whose driver is loaded and that nothing asked to reboot was left running.
    assert run.boot_after[back] == run.boot_before[back] and run.state[back]["shutdown"] == ""
    assert run.out["stats"][back]["failures"] == 0
