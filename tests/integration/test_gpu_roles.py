"""GPU roles on real sandbox hosts (no GPU exists here).

- Without a GPU every GPU role skips with its message, or the driver role fails when the host must have one.
- Offline-mirror mode: a signed apt mirror is built here (stand-in packages in NVIDIA's and Debian's
  layouts, each at the pinned version and a newer one), served over HTTP on the host's loopback, and the
  roles run against it as on a host with a GPU on the PCI bus (the list detection would find is handed in,
  as no GPU exists here): the rendered sources name only the mirror, the pins and holds keep the pinned
  versions although newer ones are offered, the CUDA environment reaches login shells and the Docker engine
  knows the nvidia runtime through the docker role's daemon.json merge.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from apt_mirror import (
    SERVE_MIRROR,
    UNSERVE_MIRROR,
    flat_repo,
    gnupg_home,
    packages_index,
    release,
    signing_key,
    stand_in_deb,
)
from test_gpu_roles_support import host_in_group, playbook, sandbox_inventory, task_results

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

DRIVER = "535.309.01-0+deb12u1"
PERSISTENCED = "535.43.02-1~deb12u1"
CUDA = "12.4.1-1"
TOOLKIT = "1.17.8-1"
MIRROR_PORT = 8089
MIRROR = f"http://127.0.0.1:{MIRROR_PORT}"
UPSTREAM_HOSTS = ("deb.debian.org", "security.debian.org", "archive.ubuntu.com", "nvidia.com", "nvidia.github.io")
TOOLKIT_PACKAGES = [
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
]
HELD = ["nvidia-driver", "nvidia-smi", "cuda-toolkit-12-4", *TOOLKIT_PACKAGES]


# --- a signed apt mirror with stand-in packages ------------------------------------------------------


def build_mirror(root: Path) -> Path:
    """The mirror tree (upstream paths kept) and its public key at mirror-key.asc."""
    root.mkdir(parents=True)
    with gnupg_home() as gnupghome:
        return _build_mirror(root, gnupghome)


def _build_mirror(root: Path, gnupghome: Path) -> Path:
    mirror = root / "mirror"
    mirror.mkdir()
    (mirror / "mirror-key.asc").write_bytes(signing_key(gnupghome, "mlci test mirror"))

    # Debian's layout: the driver in non-free, at Debian 12's version and at a newer branch.
    smi = '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'
    debian = mirror / "debian"
    pool = debian / "pool/non-free/n"
    pool.mkdir(parents=True)
    debs = []
    for version in (DRIVER, "550.163.01-1"):
        debs.append(stand_in_deb(pool, "nvidia-smi", version, {"usr/bin/nvidia-smi": smi}))
        debs.append(stand_in_deb(pool, "nvidia-driver", version, {}, depends=f"nvidia-smi (= {version})"))
    # Debian packages the persistence daemon on its own, at a version of its own; the role enables its unit.
    unit = "[Unit]\nDescription=stand-in nvidia-persistenced\n[Service]\nExecStart=/bin/true\n"
    unit += "[Install]\nWantedBy=multi-user.target\n"
    units = {"lib/systemd/system/nvidia-persistenced.service": unit}
    debs.append(stand_in_deb(pool, "nvidia-persistenced", PERSISTENCED, units))
    dist = debian / "dists/bookworm"
    indexes = []
    for component in ("contrib", "non-free", "non-free-firmware"):
        index = dist / component / "binary-amd64/Packages"
        index.parent.mkdir(parents=True)
        index.write_text(packages_index(debs, debian) if component == "non-free" else "")
        indexes.append(index)
    fields = "Origin: mlci tests\nSuite: bookworm\nCodename: bookworm\nArchitectures: amd64\n"
    release(dist, indexes, gnupghome, fields + "Components: contrib non-free non-free-firmware\n")

    # NVIDIA's CUDA repository layout: the toolkit at the pinned version and a newer patch release.
    nvcc = "#!/bin/sh\necho 'Cuda compilation tools, release 12.4'\n"
    flat_repo(
        mirror / "compute/cuda/repos/debian12/x86_64",
        [("cuda-toolkit-12-4", v, {"usr/local/cuda-12.4/bin/nvcc": nvcc}) for v in (CUDA, "12.4.99-1")],
        gnupghome,
    )
    # NVIDIA's libnvidia-container layout; the runtime hands over to runc, as the real one does.
    runtime = {"usr/bin/nvidia-container-runtime": '#!/bin/sh\nexec runc "$@"\n'}
    flat_repo(
        mirror / "libnvidia-container/stable/deb/amd64",
        [
            (p, v, runtime if p == "nvidia-container-toolkit" else {})
            for p in TOOLKIT_PACKAGES
            for v in (TOOLKIT, "1.18.0-1")
        ],
        gnupghome,
    )
    return mirror


# --- plays ------------------------------------------------------------------------------------------

GPU_STACK = """
- name: GPU stack from the offline mirror
  hosts: "{{ target }}"
  roles:
    - role: nvidia_driver
    - role: cuda_toolkit
    - role: docker
    - role: nvidia_container_toolkit
"""

# What mokutil answers on a machine booted with Secure Boot (the real tool needs EFI variables).
SECURE_BOOT_ON = """
- name: Make the runner report Secure Boot as enabled
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Put a stand-in mokutil first on PATH
      ansible.builtin.copy:
        content: "#!/bin/sh\\n[ \\"$1\\" = --sb-state ] && echo 'SecureBoot enabled'\\n"
        dest: /usr/bin/mokutil
        mode: "0755"
"""

# After UNSERVE_MIRROR: the stand-in mokutil, CUDA's profile and the runtime's daemon.json fragment go with it,
# and the docker role merges daemon.json again without the runtime.
CLEANED = {
    "packages": [*HELD, "nvidia-persistenced"],
    "held": HELD,
    "extra_paths": ["/usr/bin/mokutil", "/etc/profile.d/mlci-cuda.sh",
                    "/etc/docker/daemon.json.d/nvidia_container_toolkit.json"],
}  # fmt: skip
MERGE_DAEMON_JSON = """
- name: Merge daemon.json without the runtime
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Merge daemon.json without the runtime
      ansible.builtin.include_role:
        name: docker
        tasks_from: daemon_json
"""


def _mirror_vars(mirror: str) -> dict[str, object]:
    key = f"{mirror}/mirror-key.asc"
    return {
        # What detect.yml finds on a host with one GPU (extra vars outrank its set_fact).
        "_nvidia_driver_gpus": ["0000:65:00.0"],
        "nvidia_driver_mirror_url": mirror,
        "nvidia_driver_repo_key_url": key,
        "nvidia_driver_headers_package": "",
        "nvidia_driver_reboot": False,
        "cuda_toolkit_only_with_gpu": False,
        "cuda_toolkit_source": "nvidia",
        "cuda_toolkit_version": CUDA,
        "cuda_toolkit_mirror_url": mirror,
        "cuda_toolkit_repo_key_url": key,
        "nvidia_container_toolkit_mirror_url": mirror,
        "nvidia_container_toolkit_repo_key_url": key,
    }


# --- tests ------------------------------------------------------------------------------------------


@pytest.fixture
def inventory(request: pytest.FixtureRequest) -> Path:
    return sandbox_inventory(request)


def test_gpu_roles_skip_without_a_gpu_and_say_so(inventory: Path, tmp_path: Path) -> None:
    runner = host_in_group(inventory, "gpu_runners")
    plays = (
        "- name: GPU roles\n  hosts: '{{ target }}'\n  roles: [nvidia_driver, cuda_toolkit, nvidia_container_toolkit]\n"
    )
    out = playbook(inventory, plays, tmp_path, {"target": runner})

    messages = [r.get("msg", "") for r in task_results(out, runner, "Say that")]
    assert (
        f"No NVIDIA GPU found on {runner} (no PCI display device of vendor 0x10de): skipping the NVIDIA driver."
        in (messages[0])
    )
    assert messages[1].startswith(f"No NVIDIA GPU found on {runner}: skipping the CUDA toolkit.")
    assert messages[2].startswith(f"No NVIDIA GPU found on {runner}: skipping the NVIDIA container toolkit.")
    assert out["stats"][runner]["changed"] == 0

    check = "- name: Look\n  hosts: '{{ target }}'\n  gather_facts: false\n  tasks:\n"
    check += "    - {name: List, ansible.builtin.command: 'ls /etc/apt/sources.list.d', changed_when: false}\n"
    listing = task_results(playbook(inventory, check, tmp_path, {"target": runner}), runner, "List")[0]
    assert "mlci-nvidia" not in listing["stdout"]


def test_driver_role_fails_on_a_host_that_must_have_a_gpu(inventory: Path, tmp_path: Path) -> None:
    runner = host_in_group(inventory, "gpu_runners")
    plays = "- name: Driver\n  hosts: '{{ target }}'\n  roles: [nvidia_driver]\n"
    out = playbook(inventory, plays, tmp_path, {"target": runner, "nvidia_driver_require_gpu": True}, rc=2)
    failure = task_results(out, runner, "Say that the driver is skipped")[0]
    assert failure["failed"] is True
    assert failure["msg"].startswith(f"No NVIDIA GPU found on {runner}")
    assert "nvidia_driver_require_gpu is true" in failure["msg"]


@dataclass
class GpuMirrorRun:
    runner: str
    first: dict  # the first converge (installs; nvidia_driver_reboot false)
    second: dict  # the same again
    reboot_allowed: dict  # a third, with nvidia_driver_reboot true and nothing to change
    secure_boot: dict  # a fourth, where mokutil says Secure Boot is on (the module is unsigned: none exists)


@pytest.fixture(scope="module")
def gpu_mirror_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    inventory = sandbox_inventory(request)
    tmp_path = tmp_path_factory.mktemp("gpu-mirror")
    runner = host_in_group(inventory, "gpu_runners")
    mirror_dir = build_mirror(tmp_path / "build")
    playbook(inventory, SERVE_MIRROR, tmp_path, {"target": runner, "mirror_dir": str(mirror_dir), "port": MIRROR_PORT})
    try:
        extra = {"target": runner, **_mirror_vars(MIRROR)}
        first = playbook(inventory, GPU_STACK, tmp_path, extra)
        second = playbook(inventory, GPU_STACK, tmp_path, extra)
        rebooting = {**extra, "nvidia_driver_reboot": True}
        reboot_allowed = playbook(inventory, GPU_STACK, tmp_path, rebooting)
        playbook(inventory, SECURE_BOOT_ON, tmp_path, {"target": runner})
        secure_boot = playbook(inventory, GPU_STACK, tmp_path, rebooting, rc=2)
        yield GpuMirrorRun(runner, first, second, reboot_allowed, secure_boot)
    finally:
        playbook(inventory, UNSERVE_MIRROR + MERGE_DAEMON_JSON, tmp_path, {"target": runner, **CLEANED})


INSPECT = """
- name: Inspect the runner
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Read the rendered apt files
      ansible.builtin.shell: >-
        for f in /etc/apt/sources.list.d/mlci-* /etc/apt/preferences.d/mlci-*; do echo "== $f"; cat "$f"; done
      changed_when: false
    - name: Read the installed versions
      ansible.builtin.command: dpkg-query -W -f '${Package} ${Version}\\n' {{ held | join(' ') }}
      changed_when: false
    - name: Read the holds
      ansible.builtin.command: apt-mark showhold
      changed_when: false
    - name: Read whether the persistence daemon is enabled
      ansible.builtin.command: systemctl is-enabled nvidia-persistenced
      changed_when: false
    - name: Read the candidates apt offers
      ansible.builtin.command: apt-cache madison nvidia-driver cuda-toolkit-12-4 nvidia-container-toolkit
      changed_when: false
    - name: Read a login shell's CUDA environment
      ansible.builtin.command:
        cmd: bash -lc 'echo "$CUDA_HOME|$PATH|$LD_LIBRARY_PATH|$(command -v nvcc)"'
        expand_argument_vars: false  # the login shell expands them, not the module
      changed_when: false
    - name: Read daemon.json
      ansible.builtin.command: cat /etc/docker/daemon.json
      changed_when: false
    - name: Read the engine's runtimes
      ansible.builtin.command: docker info --format '{{ '{{' }} json .Runtimes {{ '}}' }}'
      changed_when: false
"""


def test_mirror_mode_renders_only_the_mirror_and_pins_and_holds(
    gpu_mirror_run: GpuMirrorRun, inventory: Path, tmp_path: Path
) -> None:
    runner, first, second = gpu_mirror_run.runner, gpu_mirror_run.first, gpu_mirror_run.second
    out = playbook(inventory, INSPECT, tmp_path, {"target": runner, "held": HELD})
    read = {
        name: task_results(out, runner, name)[0]["stdout"]
        for name in (
            "Read the rendered apt files",
            "Read the installed versions",
            "Read the holds",
            "Read whether the persistence daemon is enabled",
            "Read the candidates apt offers",
            "Read a login shell's CUDA environment",
            "Read daemon.json",
            "Read the engine's runtimes",
        )
    }

    # Sources: every URI is on the mirror, and no upstream host is named anywhere in the rendered files.
    files = read["Read the rendered apt files"]
    uris = [line.split(":", 1)[1].strip() for line in files.splitlines() if line.startswith("URIs:")]
    assert sorted(uris) == sorted(
        [
            f"{MIRROR}/debian",
            f"{MIRROR}/compute/cuda/repos/debian12/x86_64/",
            f"{MIRROR}/libnvidia-container/stable/deb/amd64",
        ]
    )
    assert not [host for host in UPSTREAM_HOSTS if host in files]
    assert "Signed-By: /etc/apt/keyrings/mlci-nvidia-distribution.asc" in files
    # Pins: the exact versions first, the branch next.
    assert f"Pin: version {DRIVER}\nPin-Priority: 1001" in files
    assert "Pin: version 535.*\nPin-Priority: 990" in files
    assert f"Pin: version {CUDA}\nPin-Priority: 1001" in files
    assert f"Pin: version {TOOLKIT}\nPin-Priority: 1001" in files

    # The mirror offers newer versions, yet the pinned ones are installed and held.
    assert "550.163.01-1" in read["Read the candidates apt offers"]
    assert "12.4.99-1" in read["Read the candidates apt offers"]
    installed = dict(line.split() for line in read["Read the installed versions"].splitlines())
    assert installed == {
        "nvidia-driver": DRIVER,
        "nvidia-smi": DRIVER,
        "cuda-toolkit-12-4": CUDA,
        **dict.fromkeys(TOOLKIT_PACKAGES, TOOLKIT),
    }
    assert sorted(read["Read the holds"].split()) == sorted(HELD)
    assert read["Read whether the persistence daemon is enabled"] == "enabled"

    # CUDA environment for login shells.
    cuda_home, path, ld_path, nvcc = read["Read a login shell's CUDA environment"].split("|")
    assert cuda_home == "/usr/local/cuda-12.4"
    assert path.split(":")[0] == "/usr/local/cuda-12.4/bin"
    assert ld_path.split(":")[0] == "/usr/local/cuda-12.4/lib64"
    assert nvcc == "/usr/local/cuda-12.4/bin/nvcc"

    # daemon.json through the docker role's merge, and the engine loaded it.
    daemon = json.loads(read["Read daemon.json"])
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert daemon["log-driver"] == "json-file"  # the docker role's own keys survive the merge
    assert "nvidia" in json.loads(read["Read the engine's runtimes"])

    # The driver is installed but not loaded (no GPU): the role says so instead of rebooting.
    note = task_results(first, runner, "Say that a reboot is needed")[0]["msg"]
    assert "installed but not loaded" in note and "nvidia_driver_reboot is false" in note

    # Idempotent: the second run changed nothing.
    assert first["stats"][runner]["changed"] > 0
    assert second["stats"][runner]["changed"] == 0, textwrap.shorten(str(second["stats"]), 300)


def test_a_driver_that_did_not_load_is_not_rebooted_again_when_nothing_changed(gpu_mirror_run: GpuMirrorRun) -> None:
    run, runner = gpu_mirror_run.reboot_allowed, gpu_mirror_run.runner
    assert run["stats"][runner]["changed"] == 0 and run["stats"][runner]["failures"] == 0
    (said,) = task_results(run, runner, "Say why the host is not rebooted again")
    assert "nothing changed in this run, so it is not rebooted again" in said["msg"], said
    (reboot,) = task_results(run, runner, "Reboot to load the NVIDIA driver")
    assert reboot.get("skipped") is True, reboot


def test_secure_boot_with_an_unsigned_module_fails_with_what_to_do_instead_of_rebooting(
    gpu_mirror_run: GpuMirrorRun,
) -> None:
    run, runner = gpu_mirror_run.secure_boot, gpu_mirror_run.runner
    (failure,) = task_results(run, runner, "Fail when Secure Boot would refuse an unsigned driver module")
    assert failure["failed"] is True
    assert f"{runner}: Secure Boot is enabled and the nvidia kernel module is not signed" in failure["msg"]
    assert "mokutil --import" in failure["msg"] and "dkms autoinstall" in failure["msg"]
    assert not task_results(run, runner, "Reboot to load the NVIDIA driver")  # the run stopped before it
