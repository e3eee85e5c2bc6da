"""preflight's torch CUDA check (roles/preflight/files/torch_cuda.py): the version rule between torch's CUDA
build and the driver's CUDA, run for real with this project's torch, and the role's message on a host
without a GPU (this machine, read-only, the verdict written to a temporary folder)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "preflight" / "files" / "torch_cuda.py"


@pytest.fixture(scope="module")
def torch_cuda():
    spec = importlib.util.spec_from_file_location("preflight_torch_cuda", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("torch_cuda_build", "driver"),
    [("12.4", "12.4"), ("12.8", "12.4"), ("12.4", "13.0"), ("11.8", "12.2")],
)
def test_a_build_of_the_drivers_major_or_older_passes(torch_cuda, torch_cuda_build: str, driver: str) -> None:
    assert torch_cuda.mismatch("2.9.0", torch_cuda_build, driver) == ""


def test_a_build_for_a_newer_cuda_major_than_the_driver_says_what_to_change(torch_cuda) -> None:
    said = torch_cuda.mismatch("2.9.0+cu130", "13.0", "12.8")
    assert said.startswith("torch 2.9.0+cu130 is built for CUDA 13.0 but the driver runs CUDA 12.8 at most")
    assert "nvidia_driver_branch" in said and "a torch built for CUDA 12.8 or older" in said


def test_a_cpu_only_torch_on_a_gpu_host_is_named(torch_cuda) -> None:
    said = torch_cuda.mismatch("2.13.0+cpu", None, "12.8")
    assert said == (
        "torch 2.13.0+cpu is a CPU-only build: install a CUDA build of torch in the project environment "
        "(one for CUDA 12.8 or older)"
    )


def test_a_cuda_torch_without_a_driver_is_named(torch_cuda) -> None:
    said = torch_cuda.mismatch("2.9.0", "12.8", None)
    assert said.startswith("torch 2.9.0 is built for CUDA 12.8 but no NVIDIA driver answers (libcuda.so.1")


def test_the_check_runs_with_this_projects_torch_and_prints_json() -> None:
    import torch

    run = subprocess.run([sys.executable, "-c", SCRIPT.read_text()], capture_output=True, text=True, check=True)
    out = json.loads(run.stdout)
    assert out["torch"] == torch.__version__ and out["torch_cuda"] == torch.version.cuda
    if torch.version.cuda is None:  # this machine: CPU torch, no driver
        assert out["problem"].startswith(f"torch {torch.__version__} is a CPU-only build")
    elif out["problem"] == "":  # a GPU machine: the op ran
        assert out["device"] == torch.cuda.get_device_name(0)


PLAY = """
- name: Preflight on this machine
  hosts: localhost
  gather_facts: true
  roles:
    - role: preflight
"""


@pytest.mark.slow
def test_preflight_skips_the_torch_check_without_a_gpu_and_says_so(tmp_path: Path) -> None:
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this machine has an NVIDIA GPU")
    (tmp_path / "play.yml").write_text(PLAY)
    extra = {
        "preflight_torch_python": sys.executable,
        "preflight_verdict_dir": str(tmp_path),
        "preflight_min_disk_gb": 0,
        "preflight_min_memory_mb": 0,
        "preflight_supported_os": [{"distribution": "Debian", "version": "12"}],
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1"}
    run = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "-c", "local", "-e", json.dumps(extra), str(tmp_path / "play.yml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    out = json.loads(run.stdout)
    said = [
        result["msg"]
        for play in out["plays"]
        for task in play["tasks"]
        if task["task"]["name"].endswith("Say what the host has, or stop with every unmet requirement")
        for result in task["hosts"].values()
    ]
    assert said and said[0].endswith("every requirement met; torch CUDA check skipped: no NVIDIA GPU"), said
