"""The example model (an MLP) and how any model is built from `model.factory` in mlci.toml.

Every model is wrapped with a Standardize layer whose mean/std come from the training split, so the
weights file alone (plus the manifest) is enough to serve it: no preprocessing code on the server.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlci.errors import ConfigError


def mlp(n_features: int, n_classes: int, hidden: Sequence[int] = (128, 128), dropout: float = 0.0) -> nn.Module:
    """A plain multilayer perceptron: Linear -> ReLU (-> Dropout) per hidden layer, then a Linear head."""
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


class Standardize(nn.Module):
    """(x - mean) / std with the statistics stored as buffers (saved in the weights file)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Standardize -> the user's network. Outputs logits."""

    def __init__(self, net: nn.Module, n_features: int) -> None:
        super().__init__()
        self.standardize = Standardize(n_features)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))


def resolve_factory(spec: str, *, source: str = "mlci.toml") -> Any:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(source, "model.factory", spec, f"cannot import module {module_name!r} ({exc})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(source, "model.factory", spec, f"{module_name!r} has no function {func_name!r}")
    return func


def build_model(
    factory: str, params: dict[str, Any], n_features: int, n_classes: int, *, source: str = "mlci.toml"
) -> Classifier:
    """Build `factory(n_features, n_classes, **params)` wrapped in a Classifier."""
    func = resolve_factory(factory, source=source)
    try:
        net = func(n_features, n_classes, **params)
    except TypeError as exc:
        raise ConfigError(source, "model.params", params, f"{factory} rejected them ({exc})") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(source, "model.factory", factory, "must return a torch.nn.Module")
    return Classifier(net, n_features)
