"""preflight's probe (roles/preflight/files/probe.py) read against a made-up /sys, /proc and /usr/local: GPUs
on the PCI bus, the driver's version and GPU models, the CUDA toolkit, Secure Boot."""

import importlib.util
import json
import os
import platform
import shutil
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[2] / "roles" / "preflight" / "files" / "probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("preflight_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(root: Path, rel: str, content: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def pci(root: Path, address: str, vendor: str, cls: str) -> None:
    write(root, f"sys/bus/pci/devices/{address}/vendor", vendor + "\n")
    write(root, f"sys/bus/pci/devices/{address}/class", cls + "\n")


@pytest.fixture
def gpu_host(tmp_path: Path) -> Path:
    write(tmp_path, "proc/meminfo", "MemTotal:       131072000 kB\nMemFree:        1000 kB\n")
    pci(tmp_path, "0000:01:00.0", "0x10de", "0x030200")  # the GPU (3D controller)
    pci(tmp_path, "0000:01:00.1", "0x10de", "0x040300")  # its audio function: not a GPU
    pci(tmp_path, "0000:02:00.0", "0x1af4", "0x030000")  # another vendor's display device
    write(tmp_path, "sys/module/nvidia/version", "580.159.04\n")
    write(
        tmp_path,
        "proc/driver/nvidia/gpus/0000:01:00.0/information",
        "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 42\nBus Location: \t 0000:01:00.0\n",
    )
    write(
        tmp_path, "usr/local/cuda-13.0/version.json", json.dumps({"cuda": {"name": "CUDA SDK", "version": "13.0.88"}})
    )
    (tmp_path / "usr/local/cuda").symlink_to(tmp_path / "usr/local/cuda-13.0")
    # EFI variable: 4 bytes of attributes, then the value.
    write(tmp_path, "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c", b"\x06\x00\x00\x00\x01")
    return tmp_path


def test_a_gpu_host_reports_its_gpu_driver_and_cuda(probe, gpu_host: Path) -> None:
    out = probe.probe(str(gpu_host), root=str(gpu_host))
    assert out["memory_mb"] == 128000
    assert out["gpus"] == ["0000:01:00.0"]
    assert out["gpu_models"] == ["NVIDIA H100 80GB HBM3"]
    assert out["gpu_count"] == 1
    assert out["nvidia_loaded"] is True
    assert out["driver_version"] == "580.159.04"
    assert out["cuda_toolkit_version"] == "13.0.88"
    assert out["secure_boot"] is True
    assert out["kernel_headers"] is False
    json.dumps(out)  # what the role reads is JSON


def test_a_host_without_gpu_or_efi_reports_none(probe, tmp_path: Path) -> None:
    write(tmp_path, "proc/meminfo", "MemTotal:       4096000 kB\n")
    pci(tmp_path, "0000:00:02.0", "0x8086", "0x030000")
    out = probe.probe(str(tmp_path), root=str(tmp_path))
    assert out["gpus"] == [] and out["gpu_models"] == [] and out["gpu_count"] == 0
    assert out["driver_version"] is None and out["cuda_driver_version"] is None
    assert out["cuda_toolkit_version"] is None
    assert out["secure_boot"] is None


@pytest.mark.parametrize(
    ("line", "version"),
    [
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023", "535.104.05"),
        ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs@U16)", "580.159.04"),
    ],
)
def test_the_driver_version_is_read_from_proc_when_sys_lacks_it(probe, tmp_path: Path, line: str, version: str) -> None:
    write(tmp_path, "proc/driver/nvidia/version", line + "\nGCC version:  gcc version 12.2.0\n")
    assert probe.kernel_driver(str(tmp_path)) == (version, [])


def test_secure_boot_off_is_false(probe, tmp_path: Path) -> None:
    write(tmp_path, "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c", b"\x06\x00\x00\x00\x00")
    assert probe.secure_boot(str(tmp_path)) is False


def test_this_machine_probes_to_json(probe) -> None:
    out = json.loads(json.dumps(probe.probe("/")))
    # The same numbers from other sources than the probe's own files.
    assert out["memory_mb"] == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    assert abs(out["disk_free_gb"] - shutil.disk_usage("/").free / 2**30) < 0.5
    assert out["kernel"] == platform.release()
    assert out["gpu_count"] >= len(out["gpus"]) and out["gpu_count"] >= len(out["gpu_models"])
    assert all(port.isdigit() for port in out["listening"])
