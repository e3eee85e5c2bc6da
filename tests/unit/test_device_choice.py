"""Where training runs and why: `auto` falls back to the CPU only where there is no NVIDIA GPU, and says so.

torch here is the real CPU-only build, so "a GPU host whose CUDA does not work" is real too: the test only
makes the host look like it has an NVIDIA GPU (the device node mlci looks for exists).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlci import device
from mlci.errors import EXIT_USAGE, ConfigError

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="these paths need a torch without working CUDA")


def test_auto_without_an_nvidia_gpu_trains_on_the_cpu_and_says_why(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(device, "_NVIDIA_NODES", (str(tmp_path / "nvidiactl"), str(tmp_path / "version")))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    chosen = device.choose("auto")
    assert (chosen.kind, chosen.precision) == ("cpu", "fp32")
    assert chosen.why == f"train.device = auto, and this host has no NVIDIA GPU (no {tmp_path / 'nvidiactl'})"


def test_auto_with_every_gpu_hidden_says_cuda_visible_devices_hid_them(monkeypatch, tmp_path: Path) -> None:
    node = tmp_path / "nvidiactl"
    node.touch()
    monkeypatch.setattr(device, "_NVIDIA_NODES", (str(node),))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    chosen = device.choose("auto")
    assert chosen.kind == "cpu" and "CUDA_VISIBLE_DEVICES='-1' hides every GPU" in chosen.why


def test_auto_on_a_gpu_host_whose_cuda_fails_stops_with_what_failed(monkeypatch, tmp_path: Path) -> None:
    node = tmp_path / "nvidiactl"
    node.touch()
    monkeypatch.setattr(device, "_NVIDIA_NODES", (str(node),))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ConfigError) as raised:
        device.choose("auto")
    message = str(raised.value)
    assert raised.value.exit_code == EXIT_USAGE and raised.value.key == "train.device"
    assert f"this host has an NVIDIA GPU ({node}) but CUDA does not work" in message
    assert f"torch {torch.__version__} is a CPU-only build" in message  # torch's own answer: this wheel has no CUDA
    assert 'set train.device = "cpu"' in message


def test_an_explicit_cpu_says_the_setting_chose_it(monkeypatch, tmp_path: Path) -> None:
    node = tmp_path / "nvidiactl"
    node.touch()
    monkeypatch.setattr(device, "_NVIDIA_NODES", (str(node),))
    chosen = device.choose("cpu")
    assert (chosen.kind, chosen.why) == ("cpu", "train.device = cpu")
