"""The driver role on a sandbox host with a fake PCI bus: an HGX-like box (GPUs and an NVSwitch) and a
Blackwell GPU, with stand-in packages from a signed mirror in NVIDIA's repository layout (no GPU exists here).

- NVSwitch: nvidia-fabricmanager-<branch> is installed at the driver's exact version although the mirror
  offers a newer one, held, and its service enabled; nvidia-persistenced is enabled too.
- Blackwell (PCI device 0x2901) with the proprietary flavour: the role stops with what to set, before apt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from apt_mirror import SERVE_MIRROR, UNSERVE_MIRROR, flat_repo, gnupg_home, signing_key
from test_gpu_roles_support import host_in_group, playbook, sandbox_inventory, task_results

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

BRANCH = "535"
DRIVER = "535.309.01-1"
NEWER = "535.400.01-1"
MIRROR_PORT = 8091
MIRROR = f"http://127.0.0.1:{MIRROR_PORT}"
PCI_ROOT = "/srv/mlci-test-pci"
PACKAGES = ["nvidia-driver", "nvidia-smi", f"nvidia-fabricmanager-{BRANCH}", "nvidia-persistenced"]
HELD = ["nvidia-driver", "nvidia-smi", f"nvidia-fabricmanager-{BRANCH}"]

# (vendor, class, device) of each fake PCI function: 4 Hopper GPUs, an NVSwitch, and a network card.
HGX = {f"0000:{bus:02x}:00.0": ("0x10de", "0x030200", "0x2330") for bus in (0x18, 0x2A, 0x3A, 0x5D)}
HGX |= {"0000:c1:00.0": ("0x10de", "0x068000", "0x22a3"), "0000:0c:00.0": ("0x15b3", "0x020000", "0x1021")}
BLACKWELL = {"0000:18:00.0": ("0x10de", "0x030200", "0x2901")}


def _unit(name: str) -> dict[str, str]:
    body = (
        f"[Unit]\nDescription=stand-in {name}\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
    )
    return {f"lib/systemd/system/{name}.service": body}


def build_mirror(root: Path) -> Path:
    mirror = root / "mirror"
    mirror.mkdir(parents=True)
    smi = "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9\n"
    with gnupg_home() as gnupghome:
        (mirror / "mirror-key.asc").write_bytes(signing_key(gnupghome, "mlci nvswitch mirror"))
        debs = []
        for version in (DRIVER, NEWER):
            debs += [
                ("nvidia-driver", version, {}),
                ("nvidia-smi", version, {"usr/bin/nvidia-smi": smi}),
                (f"nvidia-fabricmanager-{BRANCH}", version, _unit("nvidia-fabricmanager")),
            ]
        debs.append(("nvidia-persistenced", DRIVER, _unit("nvidia-persistenced")))
        flat_repo(mirror / "compute/cuda/repos/debian12/x86_64", debs, gnupghome)
    return mirror


FAKE_PCI = """
- name: Lay out a fake PCI bus on the host
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Start from an empty bus
      ansible.builtin.file:
        path: "{{ pci_root }}"
        state: absent
    - name: Create each function's folder
      ansible.builtin.file:
        path: "{{ item }}"
        state: directory
        mode: "0755"
      loop: "{{ files | map(attribute='path') | map('dirname') | unique }}"
    - name: Write each function's vendor, class and device
      ansible.builtin.copy:
        content: "{{ item.content }}\\n"
        dest: "{{ item.path }}"
        mode: "0644"
      loop: "{{ files }}"
"""


def pci_files(devices: dict[str, tuple[str, str, str]]) -> list[dict[str, str]]:
    """The files of a /sys/bus/pci/devices-like tree under PCI_ROOT."""
    return [
        {"path": f"{PCI_ROOT}/{address}/{field}", "content": value}
        for address, ids in devices.items()
        for field, value in zip(("vendor", "class", "device"), ids, strict=True)
    ]


DRIVER_PLAY = """
- name: The NVIDIA driver from the test mirror
  hosts: "{{ target }}"
  roles:
    - role: nvidia_driver
"""

INSPECT = """
- name: Inspect the host
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Read the installed versions
      ansible.builtin.command: dpkg-query -W -f '${Package} ${Version}\\n' {{ packages | join(' ') }}
      changed_when: false
    - name: Read the holds
      ansible.builtin.command: apt-mark showhold
      changed_when: false
    - name: Read the candidates apt offers
      ansible.builtin.command: apt-cache madison nvidia-fabricmanager-535
      changed_when: false
    - name: Read whether the services are enabled
      ansible.builtin.command: systemctl is-enabled nvidia-fabricmanager nvidia-persistenced
      changed_when: false
"""


@dataclass
class NvswitchRun:
    host: str
    converge: dict
    inspect: dict
    blackwell: dict


@pytest.fixture(scope="module")
def nvswitch_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    inventory = sandbox_inventory(request)
    tmp_path = tmp_path_factory.mktemp("nvswitch")
    host = host_in_group(inventory, "serving")
    mirror_dir = build_mirror(tmp_path / "build")
    base = {"target": host, "pci_root": PCI_ROOT, "packages": PACKAGES, "held": HELD}
    driver = {
        **base,
        "_nvidia_driver_pci_root": PCI_ROOT,
        "nvidia_driver_source": "nvidia",
        "nvidia_driver_branch": BRANCH,
        "nvidia_driver_version": DRIVER,
        "nvidia_driver_mirror_url": MIRROR,
        "nvidia_driver_repo_key_url": f"{MIRROR}/mirror-key.asc",
        "nvidia_driver_headers_package": "",
        "nvidia_driver_reboot": False,
    }
    playbook(inventory, SERVE_MIRROR, tmp_path, {"target": host, "mirror_dir": str(mirror_dir), "port": MIRROR_PORT})
    try:
        playbook(inventory, FAKE_PCI, tmp_path, {**base, "files": pci_files(HGX)})
        converge = playbook(inventory, DRIVER_PLAY, tmp_path, driver)
        inspect = playbook(inventory, INSPECT, tmp_path, base)
        playbook(inventory, FAKE_PCI, tmp_path, {**base, "files": pci_files(BLACKWELL)})
        blackwell = playbook(inventory, DRIVER_PLAY, tmp_path, driver, rc=2)
        yield NvswitchRun(host, converge, inspect, blackwell)
    finally:
        playbook(inventory, UNSERVE_MIRROR, tmp_path, {**base, "extra_paths": [PCI_ROOT]})


def test_an_nvswitch_host_gets_the_fabric_manager_at_the_drivers_version_and_both_services_enabled(
    nvswitch_run: NvswitchRun,
) -> None:
    host, out = nvswitch_run.host, nvswitch_run.inspect
    read = {
        name: task_results(out, host, name)[0]["stdout"]
        for name in (
            "Read the installed versions",
            "Read the holds",
            "Read the candidates apt offers",
            "Read whether the services are enabled",
        )
    }
    installed = dict(line.split() for line in read["Read the installed versions"].splitlines())
    assert installed == {
        "nvidia-driver": DRIVER,
        "nvidia-smi": DRIVER,
        f"nvidia-fabricmanager-{BRANCH}": DRIVER,
        "nvidia-persistenced": DRIVER,
    }
    assert NEWER in read["Read the candidates apt offers"]  # offered, yet the pin kept the driver's version
    assert sorted(read["Read the holds"].split()) == sorted(HELD)
    assert read["Read whether the services are enabled"].split() == ["enabled", "enabled"]
    # Detection saw the 4 GPUs and the switch, not the network card.
    (packages,) = task_results(nvswitch_run.converge, host, "Work out the driver packages and services")
    assert packages["ansible_facts"]["_nvidia_driver_services"] == ["nvidia-persistenced", "nvidia-fabricmanager"]


def test_a_blackwell_gpu_with_the_proprietary_flavour_stops_before_apt_with_what_to_set(
    nvswitch_run: NvswitchRun,
) -> None:
    host, out = nvswitch_run.host, nvswitch_run.blackwell
    (failure,) = task_results(out, host, "Refuse the proprietary flavour on GPUs that need the open kernel modules")
    assert failure["failed"] is True
    assert f"{host}: GPU 0000:18:00.0 (device 0x2901) is a Blackwell or newer GPU" in failure["msg"]
    assert "set nvidia_driver_flavor to open" in failure["msg"]
    assert not task_results(out, host, "Install the pinned driver version")
