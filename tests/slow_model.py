"""A model factory whose forward pass sleeps: a stand-in for a slow (or GPU) model in the serving tests."""

from __future__ import annotations

import time

import torch
from torch import nn


class Sleepy(nn.Module):
    def __init__(self, n_features: int, n_classes: int, sleep_s: float) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)
        self.sleep_s = sleep_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.sleep_s)  # releases the GIL, like a GPU kernel or a long torch op
        return self.linear(x)


def sleepy(n_features: int, n_classes: int, sleep_ms: float = 200.0) -> nn.Module:
    """A linear model that sleeps `sleep_ms` in every forward pass (serve it with serving.jit = false)."""
    return Sleepy(n_features, n_classes, sleep_ms / 1000)
