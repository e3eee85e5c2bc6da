"""The GPU roles on each supported platform, as far as no real Ubuntu host or GPU is needed.

ansible-playbook runs the nvidia_driver role's platform, detect, packages and repository task files and the
cuda_toolkit role against this machine in check mode with --diff, with Ansible's facts replaced by those of
Debian 12 and Ubuntu 22.04/24.04 on x86_64 and aarch64, and detection pointed at a fake PCI bus (a folder
laid out as /sys/bus/pci/devices). What is asserted is what would reach the host: the packages and versions
apt would be asked for, the apt source file's diff (or its absence), the services, and the errors.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLATFORMS = {
    "debian12-amd64": ("Debian", "12", "bookworm", "12.8", "x86_64"),
    "ubuntu2204-amd64": ("Ubuntu", "22", "jammy", "22.04", "x86_64"),
    "ubuntu2204-arm64": ("Ubuntu", "22", "jammy", "22.04", "aarch64"),
    "ubuntu2404-amd64": ("Ubuntu", "24", "noble", "24.04", "x86_64"),
    "ubuntu2404-arm64": ("Ubuntu", "24", "noble", "24.04", "aarch64"),
}

PLAY = """
- name: The NVIDIA roles' decisions on a platform
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Check the platform and load its settings
      ansible.builtin.include_role:
        name: nvidia_driver
        tasks_from: platform
        public: true
    - name: Read the fake PCI bus
      ansible.builtin.include_role:
        name: nvidia_driver
        tasks_from: detect
    - name: Work out the packages
      ansible.builtin.include_role:
        name: nvidia_driver
        tasks_from: packages
    - name: Render the apt source
      ansible.builtin.include_role:
        name: nvidia_driver
        tasks_from: repository
    - name: Show the decisions
      ansible.builtin.debug:
        msg:
          packages: "{{ _nvidia_driver_install_packages | map('regex_replace', '$', '=' ~ _nvidia_driver_version) }}"
          services: "{{ _nvidia_driver_services }}"
          source_needed: "{{ _nvidia_driver_source_needed }}"
"""

CUDA_PLAY = """
- name: The CUDA toolkit's version on a platform
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Check the platform and load the release's version (the install's first steps)
      ansible.builtin.include_role:
        name: cuda_toolkit
        tasks_from: settings
        public: true
    - name: Show the version
      ansible.builtin.debug:
        msg: "{{ _cuda_toolkit_version }}"
"""


def facts(platform: str) -> dict[str, str]:
    distribution, major, release, version, arch = PLATFORMS[platform]
    return {
        "distribution": distribution,
        "distribution_major_version": major,
        "distribution_release": release,
        "distribution_version": version,
        "architecture": arch,
        "kernel": "6.8.0-48-generic",
        "os_family": "Debian",
    }


def fake_pci(root: Path, devices: dict[str, tuple[str, str, str]]) -> Path:
    """A folder laid out like /sys/bus/pci/devices: address -> (vendor, class, device)."""
    bus = root / "pci"
    for address, (vendor, klass, device) in devices.items():
        node = bus / address
        node.mkdir(parents=True)
        for name, value in (("vendor", vendor), ("class", klass), ("device", device)):
            (node / name).write_text(value + "\n")
    bus.mkdir(parents=True, exist_ok=True)
    return bus


H100 = ("0x10de", "0x030200", "0x2330")
B200 = ("0x10de", "0x030200", "0x2901")
NVSWITCH = ("0x10de", "0x068000", "0x22a3")
NIC = ("0x15b3", "0x020000", "0x1021")


def run(tmp_path: Path, play: str, extra: dict[str, Any], rc: int = 0) -> dict[str, Any]:
    (tmp_path / "play.yml").write_text(play)
    # The facts given replace the gathered ones, interpreter discovery's among them: name the interpreter
    # (the system's, which has apt's bindings).
    (tmp_path / "extra.json").write_text(json.dumps({"ansible_python_interpreter": "/usr/bin/python3", **extra}))
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            "localhost,",
            "-c",
            "local",
            "--check",
            "--diff",
            "-e",
            f"@{tmp_path / 'extra.json'}",
            str(tmp_path / "play.yml"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == rc, proc.stdout[-4000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout)


def result(out: dict[str, Any], name: str) -> dict[str, Any]:
    found = [
        task["hosts"]["localhost"]
        for play in out["plays"]
        for task in play["tasks"]
        if task["task"]["name"].split(" : ", 1)[-1] == name and "localhost" in task["hosts"]
    ]
    assert found, f"no task {name!r}"
    return found[-1]


def decide(
    tmp_path: Path, platform: str, devices: dict[str, tuple[str, str, str]], _rc: int = 0, **more: Any
) -> dict[str, Any]:
    """Run PLAY on `platform`'s facts with the fake PCI bus `devices`; `more` are further extra vars."""
    extra = {"ansible_facts": facts(platform), "_nvidia_driver_pci_root": str(fake_pci(tmp_path, devices)), **more}
    return run(tmp_path, PLAY, extra, rc=_rc)


EXPECTED_DRIVER = {
    "debian12-amd64": ["nvidia-driver=535.309.01-0+deb12u1", "nvidia-smi=535.309.01-0+deb12u1"],
    "ubuntu2204-amd64": [
        "nvidia-driver-535=535.274.02-0ubuntu0.22.04.1",
        "nvidia-utils-535=535.274.02-0ubuntu0.22.04.1",
    ],
    "ubuntu2204-arm64": [
        "nvidia-driver-535=535.274.02-0ubuntu0.22.04.1",
        "nvidia-utils-535=535.274.02-0ubuntu0.22.04.1",
    ],
    "ubuntu2404-amd64": [
        "nvidia-driver-535=535.274.02-0ubuntu0.24.04.1",
        "nvidia-utils-535=535.274.02-0ubuntu0.24.04.1",
    ],
    "ubuntu2404-arm64": [
        "nvidia-driver-535=535.274.02-0ubuntu0.24.04.1",
        "nvidia-utils-535=535.274.02-0ubuntu0.24.04.1",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_distribution_driver_uses_the_releases_packages_and_the_hosts_own_sources(
    platform: str, tmp_path: Path
) -> None:
    out = decide(tmp_path, platform, {"0000:18:00.0": H100, "0000:19:00.0": NIC})
    decided = result(out, "Show the decisions")["msg"]
    assert decided["packages"] == EXPECTED_DRIVER[platform]
    assert decided["services"] == ["nvidia-persistenced"]
    source = result(out, "Render the apt source for NVIDIA packages")
    if platform.startswith("ubuntu"):
        # Ubuntu's own sources carry restricted/multiverse (ports on arm64): no source of the role's.
        assert decided["source_needed"] is False
        assert source.get("skipped") is True
    else:
        rendered = source["diff"][0]["after"] if isinstance(source["diff"], list) else source["diff"]["after"]
        assert "URIs: http://deb.debian.org/debian\n" in rendered
        assert "Suites: bookworm\nComponents: contrib non-free non-free-firmware\n" in rendered


@pytest.mark.slow
@pytest.mark.parametrize(
    ("platform", "path"),
    [
        ("debian12-amd64", "debian12/x86_64/"),
        ("ubuntu2204-amd64", "ubuntu2204/x86_64/"),
        ("ubuntu2204-arm64", "ubuntu2204/sbsa/"),
        ("ubuntu2404-arm64", "ubuntu2404/sbsa/"),
    ],
)
def test_nvidia_repository_path_follows_release_and_architecture(platform: str, path: str, tmp_path: Path) -> None:
    version = "580.95.05-1" if platform.startswith("debian") else "580.95.05-0ubuntu1"
    out = decide(
        tmp_path,
        platform,
        {"0000:18:00.0": H100},
        nvidia_driver_source="nvidia",
        nvidia_driver_branch="580",
        nvidia_driver_version=version,
        nvidia_driver_repo_key_url="file:///usr/share/keyrings/debian-archive-keyring.gpg",
    )
    source = result(out, "Render the apt source for NVIDIA packages")
    rendered = source["diff"][0]["after"] if isinstance(source["diff"], list) else source["diff"]["after"]
    assert f"URIs: https://developer.download.nvidia.com/compute/cuda/repos/{path}\n" in rendered
    assert "archive.ubuntu.com" not in rendered and "ports.ubuntu.com" not in rendered
    packages = result(out, "Show the decisions")["msg"]["packages"]
    expected = ["nvidia-driver", "nvidia-smi"] if platform.startswith("debian") else ["cuda-drivers-580"]
    assert packages == [f"{name}={version}" for name in expected]


@pytest.mark.slow
def test_ubuntu_mirror_mode_keeps_the_ports_path_on_arm64(tmp_path: Path) -> None:
    out = decide(
        tmp_path,
        "ubuntu2404-arm64",
        {"0000:18:00.0": H100},
        nvidia_driver_mirror_url="http://mirror.example:8080",
        nvidia_driver_repo_key_url="file:///usr/share/keyrings/debian-archive-keyring.gpg",
    )
    source = result(out, "Render the apt source for NVIDIA packages")
    rendered = source["diff"][0]["after"] if isinstance(source["diff"], list) else source["diff"]["after"]
    assert "URIs: http://mirror.example:8080/ubuntu-ports\n" in rendered
    assert "Suites: noble\nComponents: restricted multiverse\n" in rendered


@pytest.mark.slow
@pytest.mark.parametrize(
    ("server", "flavor", "expected"),
    [
        (False, "open", ["nvidia-driver-570-open", "nvidia-utils-570"]),
        (True, "proprietary", ["nvidia-driver-570-server", "nvidia-utils-570-server"]),
        (True, "open", ["nvidia-driver-570-server-open", "nvidia-utils-570-server"]),
    ],
)
def test_ubuntu_flavours_pick_open_and_server_packages(
    server: bool, flavor: str, expected: list, tmp_path: Path
) -> None:
    version = "570.195.03-0ubuntu0.24.04.1"
    out = decide(
        tmp_path,
        "ubuntu2404-amd64",
        {"0000:18:00.0": B200},
        nvidia_driver_flavor=flavor,
        nvidia_driver_server_packages=server,
        nvidia_driver_branch="570",
        nvidia_driver_version=version,
        _rc=0 if flavor == "open" else 2,
    )
    if flavor == "open":
        assert result(out, "Show the decisions")["msg"]["packages"] == [f"{p}={version}" for p in expected]
    else:
        failure = result(out, "Refuse the proprietary flavour on GPUs that need the open kernel modules")
        assert failure["failed"] is True
        assert "GPU 0000:18:00.0 (device 0x2901) is a Blackwell or newer GPU" in failure["msg"]
        assert "set nvidia_driver_flavor to open" in failure["msg"]


@pytest.mark.slow
def test_debian_open_flavour_adds_the_open_kernel_module(tmp_path: Path) -> None:
    out = decide(tmp_path, "debian12-amd64", {"0000:18:00.0": H100}, nvidia_driver_flavor="open")
    packages = result(out, "Show the decisions")["msg"]["packages"]
    version = "535.309.01-0+deb12u1"
    assert packages == [f"{p}={version}" for p in ("nvidia-open-kernel-dkms", "nvidia-driver", "nvidia-smi")]


@pytest.mark.slow
def test_server_packages_are_refused_where_the_distribution_has_none(tmp_path: Path) -> None:
    # The settings check is the role's own first step: run the role on Debian 12's facts.
    extra = {"ansible_facts": facts("debian12-amd64"), "nvidia_driver_server_packages": True}
    extra["nvidia_driver_assume_gpu"] = True  # the check is made where the driver is to be installed
    play = "- name: Driver\n  hosts: localhost\n  gather_facts: false\n  roles: [nvidia_driver]\n"
    failed = result(run(tmp_path, play, extra, rc=2), "Check the driver settings")
    assert "needs a source that has server packages (none on Debian)" in failed["msg"]


@pytest.mark.slow
def test_nvswitch_host_gets_the_fabric_manager_of_the_drivers_version(tmp_path: Path) -> None:
    devices = {f"0000:{n:02x}:00.0": H100 for n in range(0x18, 0x1C)} | {"0000:c1:00.0": NVSWITCH}
    out = decide(tmp_path, "ubuntu2204-amd64", devices)
    decided = result(out, "Show the decisions")["msg"]
    version = "535.274.02-0ubuntu0.22.04.1"
    assert decided["packages"] == [
        f"{p}={version}"
        for p in ("nvidia-driver-535", "nvidia-utils-535", "nvidia-fabricmanager-535", "libnvidia-nscq-535")
    ]
    assert decided["services"] == ["nvidia-persistenced", "nvidia-fabricmanager"]


@pytest.mark.slow
def test_nvswitch_host_on_debian_packages_is_refused_with_what_to_set(tmp_path: Path) -> None:
    out = decide(tmp_path, "debian12-amd64", {"0000:18:00.0": H100, "0000:c1:00.0": NVSWITCH}, _rc=2)
    failure = result(out, "Refuse an NVSwitch system whose source has no fabric manager")
    assert "has NVSwitch devices (0000:c1:00.0)" in failure["msg"]
    assert "Set nvidia_driver_source to nvidia" in failure["msg"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "platform",
    [
        ("Debian", "12", "bookworm", "12.8", "aarch64"),
        ("Ubuntu", "20", "focal", "20.04", "x86_64"),
        ("Rocky", "9", "blue", "9.4", "x86_64"),
    ],
)
def test_an_unsupported_platform_stops_with_what_is_supported(platform: tuple, tmp_path: Path) -> None:
    distribution, _, release, version, arch = platform
    PLATFORMS["odd"] = platform
    try:
        out = decide(tmp_path, "odd", {"0000:18:00.0": H100}, _rc=2)
    finally:
        del PLATFORMS["odd"]
    failure = result(out, "Check that the distribution, release and architecture are supported")
    assert f"do not support {distribution} {version} ({release}) on {arch}" in failure["msg"]
    assert "supported: Debian 12 (x86_64), Ubuntu 22 (x86_64, aarch64), Ubuntu 24 (x86_64, aarch64)" in failure["msg"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("platform", "version"),
    [
        ("debian12-amd64", "11.8.89~11.8.0-5~deb12u1"),
        ("ubuntu2204-arm64", "11.5.1-1ubuntu1"),
        ("ubuntu2404-amd64", "12.0.140~12.0.1-4build4"),
    ],
)
def test_cuda_toolkit_defaults_to_the_releases_own_version(platform: str, version: str, tmp_path: Path) -> None:
    out = run(tmp_path, CUDA_PLAY, {"ansible_facts": facts(platform)})
    assert result(out, "Show the version")["msg"] == version


@pytest.mark.slow
def test_a_host_without_a_gpu_on_another_platform_is_skipped_not_refused(tmp_path: Path) -> None:
    extra = {
        "ansible_facts": facts("ubuntu2404-arm64") | {"distribution": "Rocky", "distribution_major_version": "9"},
        "_nvidia_driver_pci_root": str(fake_pci(tmp_path, {"0000:0c:00.0": NIC})),
    }
    play = "- name: GPU roles\n  hosts: localhost\n  gather_facts: false\n  roles: [nvidia_driver, cuda_toolkit]\n"
    out = run(tmp_path, play, extra)
    said = result(out, "Say that the driver is skipped because the host has no NVIDIA GPU (fail where one is required)")
    assert said["msg"].startswith("No NVIDIA GPU found on localhost"), said
    assert result(out, "Say that the toolkit is skipped because the host has no NVIDIA GPU").get("skipped") is not True
