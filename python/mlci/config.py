"""mlci.toml -> one typed, frozen dataclass tree.

Every key is checked: an unknown key, a wrong type or a bad value raises ConfigError naming the file, the
dotted key and the value. Command-line overrides (`train.epochs=3`) are applied to the raw table before
checking, so they get the same errors (with the file shown as `<command line>`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlci.errors import ConfigError

DEFAULT_CONFIG = "mlci.toml"
OVERRIDE_SOURCE = "<command line>"
# A runner's environment may name the shared registry (the ci_runner role sets it); it wins over mlci.toml.
REGISTRY_URL_ENV = "MLCI_REGISTRY_URL"

Check = tuple[Callable[[Any], bool], str]


def _checked(default: Any, *checks: Check) -> Any:
    return field(default=default, metadata={"checks": checks})


def positive() -> Check:
    return (lambda v: v > 0, "must be > 0")


def non_negative() -> Check:
    return (lambda v: v >= 0, "must be >= 0")


def fraction() -> Check:
    return (lambda v: 0 < v < 1, "must be between 0 and 1 (exclusive)")


def tcp_port() -> Check:
    return (lambda v: 0 <= v <= 65535, "must be a TCP port (0-65535)")


# --- sections ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectConfig:
    name: str = "digits"


@dataclass(frozen=True)
class DataConfig:
    # CSV files with a header row; relative paths are relative to the directory holding mlci.toml.
    # They are checked against `schema` and concatenated in this order.
    files: list[str] = field(
        default_factory=lambda: ["data/digits.csv"],
        metadata={"checks": ((lambda v: len(v) > 0, "must list at least one data file"),)},
    )
    # The data schema (TOML): label column and label set, each feature's dtype, min/max and NaN rule.
    schema: str = "data/schema.toml"
    # Fraction of rows held out (by a seeded, frozen split) for evaluation.
    eval_fraction: float = _checked(0.2, fraction())
    split_seed: int = 20261126
    # Read every data file to hash it, instead of trusting the sha256 cached for an unchanged stat (size, mtime,
    # ctime, inode) in .mlci/data-hashes.json. `mlci train --rehash` sets it for one run. Not part of the run key.
    rehash: bool = False


@dataclass(frozen=True)
class ModelConfig:
    # `module:function` returning a torch.nn.Module; called as f(n_features, n_classes, **params).
    factory: str = _checked("mlci.model:mlp", (lambda v: ":" in v, "must be 'module:function'"))
    params: dict[str, Any] = field(default_factory=lambda: {"hidden": [128, 128]})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _checked(30, positive())
    batch_size: int = _checked(64, positive())
    lr: float = _checked(2e-3, positive())
    weight_decay: float = _checked(0.0, non_negative())
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Data-parallel processes (torchrun/DDP; `--nproc N` sets it). batch_size is the global batch, split
    # across them. Part of the run key: a different sharding trains a different model.
    nproc: int = _checked(1, positive())
    # Train on every host of inventories/<fleet>'s gpu_runners group at once (torchrun, rendezvous on the
    # first; nproc processes on each); "" = on this machine. Part of the run key like nproc.
    fleet: str = ""


@dataclass(frozen=True)
class EvaluateConfig:
    bootstrap: int = _checked(1000, positive())
    confidence: float = _checked(0.95, fraction())
    seed: int = 0


@dataclass(frozen=True)
class GatesConfig:
    min_accuracy: float = _checked(0.90, (lambda v: 0 <= v <= 1, "must be between 0 and 1"))
    min_macro_f1: float = _checked(0.90, (lambda v: 0 <= v <= 1, "must be between 0 and 1"))
    # The candidate fails if it is worse than the champion by more than this (accuracy), at the
    # evaluate.confidence level (paired bootstrap).
    max_drop_vs_champion: float = _checked(0.02, non_negative())


@dataclass(frozen=True)
class RegistryConfig:
    path: str = ".mlci/registry.db"
    # A PostgreSQL server that several runners share ("postgresql://user@host:5432/db"); "" = the SQLite file
    # at `path`. Never with a password: libpq reads it from PGPASSWORD or ~/.pgpass (mode 0600).
    url: str = ""
    # A shared directory (an NFS mount, say) works: artifacts are written to a temp name, then renamed.
    artifacts: str = ".mlci/artifacts"
    reports: str = "reports"


@dataclass(frozen=True)
class ServingConfig:
    host: str = "127.0.0.1"
    port: int = _checked(8000, tcp_port())
    model_name: str = "digits"
    max_batch_size: int = _checked(64, positive())
    # How long a batch of several requests may wait to fill up (0: never; requests read in the same
    # event-loop tick share a batch anyway). A GPU model may gain from 1-2 ms; a small CPU model does not.
    max_delay_ms: float = _checked(0.0, non_negative())
    queue_size: int = _checked(1024, positive())
    max_body_bytes: int = _checked(1_048_576, positive())
    max_rows: int = _checked(1024, positive())
    # Name of an environment variable holding the bearer token for inference ("" = no token).
    token_env: str = ""
    management_host: str = "127.0.0.1"
    management_port: int = _checked(8001, tcp_port())
    management_token_env: str = "MLCI_MANAGEMENT_TOKEN"
    # torch intra-op threads for the forward pass (see inline_forward_ms for where it runs).
    threads: int = _checked(1, positive())
    # On SIGTERM, in-flight requests get this long to finish before they are cancelled.
    graceful_timeout_s: float = _checked(30.0, positive())
    # TorchScript-trace the model (kept only if it matches eager mode); false serves it eagerly.
    jit: bool = True
    # Open connections to the inference listener. At the cap a new connection closes the one whose unfinished
    # request head began first (slow clients do not lock out fresh ones); when all are busy it gets 503.
    max_connections: int = _checked(1024, positive())
    # Connections idle this long between requests are closed.
    keepalive_s: float = _checked(15.0, positive())
    # A request head (request line + headers) must arrive whole within this long, counted from the accept
    # (first request) or from its first byte (later ones); else 408 and close. Dripping bytes do not extend it.
    head_timeout_s: float = _checked(10.0, positive())
    # The longest wait for the next bytes of a request body; else 408 and close.
    body_timeout_s: float = _checked(10.0, positive())
    # A longer request URL (path + query) is answered 414.
    max_url_bytes: int = _checked(8192, positive())
    # Request header lines over this many bytes together (names + values), or more than max_headers of them:
    # answered 431.
    max_header_bytes: int = _checked(16384, positive())
    max_headers: int = _checked(100, positive())
    # Where the forward pass runs: auto = cuda when the host has a GPU, else cpu.
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    # A model whose full-batch forward pass (measured at load) takes longer than this, and any GPU model, runs
    # its forward passes in a worker thread (batching kept), so the event loop never waits on the model;
    # shorter ones run on the event-loop thread (cheaper than the handoff). 0: always a worker thread.
    inline_forward_ms: float = _checked(2.0, non_negative())
    # Model factories (`module:function`) an artifact's manifest may name; any other is refused before
    # anything is imported. Empty: only the project's model.factory.
    factories: list[str] = field(
        default_factory=list,
        metadata={"checks": ((lambda v: all(":" in f for f in v), "every entry must be 'module:function'"),)},
    )
    # Worker processes serving inference on the one port (SO_REUSEPORT), each with its own event loop and
    # batcher; "auto": one per CPU core this process may run on. The management API stays one (it swaps and
    # rolls back every worker or none). 1: a single process, no supervisor.
    workers: int | Literal["auto"] = _checked(1, (lambda v: v == "auto" or v > 0, 'must be > 0 or "auto"'))


@dataclass(frozen=True)
class LoadtestConfig:
    users: int = _checked(16, positive())
    spawn_rate: float = _checked(16.0, positive())
    duration_s: int = _checked(10, positive())  # whole seconds (Locust's --run-time)
    # 0: one Locust process; N: a Locust master and N worker processes on this machine.
    workers: int = _checked(0, non_negative())
    rows_per_request: int = _checked(1, positive())
    # Each user's request rate; 0 = closed loop (the next request as soon as the answer arrives).
    user_rps: float = _checked(0.0, non_negative())
    request_timeout_s: float = _checked(10.0, positive())  # a slower answer counts as a failed request
    p50_ms: float = _checked(20.0, positive())
    p95_ms: float = _checked(50.0, positive())
    p99_ms: float = _checked(100.0, positive())
    max_error_ratio: float = _checked(0.001, (lambda v: 0 <= v <= 1, "must be between 0 and 1"))
    min_rps: float = _checked(100.0, non_negative())
    # p95 may be at most this many times the champion's last measured p95 (0 disables the check).
    max_p95_vs_champion: float = _checked(1.5, non_negative())
    output: str = "reports/loadtest"


@dataclass(frozen=True)
class DeployConfig:
    # The inventory `mlci deploy` uses without --env (relative to mlci.toml); --env NAME = inventories/NAME.
    inventory: str = "inventories/local"
    # The environment (inventory folder name) that is the staging step: a good deploy there is recorded as
    # "passed staging" and does not change the champion; a good deploy anywhere else promotes.
    staging_env: str = "staging"
    # True: every other environment refuses a run that has not passed staging (the ledger knows).
    require_staging: bool = False
    # Load-test the canary (the first batch) against the previous model on the same host, interleaved.
    canary_loadtest: bool = True
    # The requests/s that load test offers in all (split over loadtest.users, each at a fixed rate): the canary
    # keeps serving live traffic, so the test can measure latency at a stated rate instead of running the host
    # flat out. 0 = a closed loop, as `mlci loadtest` (each user sends as soon as it has its answer). Not the
    # default yet: at a low rate the users' ramp-up falls in one model's windows and can tip the comparison.
    canary_rps: float = _checked(0.0, non_negative())
    # The nice value of the rollout's controller (ansible-playbook and what it runs here: the smoke tests, the
    # canary's load test). Where the controller shares CPUs with serving hosts (the local runtime, a sandbox,
    # a runner that also serves) inference keeps the CPU and the rollout waits; 0 = the caller's priority.
    controller_nice: int = _checked(10, (lambda v: 0 <= v <= 19, "must be 0 to 19"))


@dataclass(frozen=True)
class PeriodicConfig:
    # `mlci periodic` (cron on runners): deploy a new run that passed its gates (the code path of `mlci deploy`).
    deploy: bool = False
    # Keep the reports of the newest N runs (plus the champion's and every serving run's); 0 keeps them all.
    keep_reports: int = _checked(20, non_negative())
    # Name of an environment variable holding a webhook URL that gets each run's verdict as JSON ("" = none).
    # The URL may carry a token: logs show only its scheme and host.
    webhook_env: str = ""


@dataclass(frozen=True)
class Config:
    project: ProjectConfig = field(default_factory=ProjectConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    loadtest: LoadtestConfig = field(default_factory=LoadtestConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    periodic: PeriodicConfig = field(default_factory=PeriodicConfig)
    # Where mlci.toml lives; relative paths in the config resolve against it. Not a TOML key.
    root: Path = field(default=Path("."), compare=False)
    source: str = field(default=DEFAULT_CONFIG, compare=False)

    def path(self, relative: str) -> Path:
        """Resolve a path from the config against the directory that holds mlci.toml."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (what is stored with every run and inside every checkpoint)."""
        out = dataclasses.asdict(self)
        out.pop("root")
        out.pop("source")
        return out


_NOT_TOML_KEYS = {"root", "source"}


# --- loading ----------------------------------------------------------------------------------------


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> Config:
    """Read `path` (missing file = all defaults is an error), apply `key=value` overrides, check all."""
    path = Path(path)
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(source, "<file>", str(path), "file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "<file>", str(path), f"not UTF-8 ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "<file>", str(path), f"not valid TOML ({exc})") from None
    origins: dict[str, str] = {}
    if os.environ.get(REGISTRY_URL_ENV):
        registry = raw.get("registry", {})
        if isinstance(registry, dict):
            raw = {**raw, "registry": {**registry, "url": os.environ[REGISTRY_URL_ENV]}}
            origins["registry.url"] = f"${REGISTRY_URL_ENV}"
    config = config_from_dict(raw, source=source, overrides=overrides, origins=origins)
    return dataclasses.replace(config, root=path.resolve().parent, source=source)


def config_from_dict(
    raw: dict[str, Any],
    *,
    source: str = DEFAULT_CONFIG,
    overrides: Sequence[str] = (),
    origins: dict[str, str] | None = None,
) -> Config:
    """`origins`: where keys not from `source` came from (a key -> what error messages name as its file)."""
    origins = dict(origins or {})
    raw = _apply_overrides(raw, overrides, origins)
    config = _build(Config, raw, "", source, origins)
    _check_registry_url(config.registry.url, origins.get("registry.url", source))
    _check_canary_rps(config, origins.get("deploy.canary_rps", source))
    return config


def _check_canary_rps(config: Config, file: str) -> None:
    """A canary offered fewer requests/s than the SLO's floor could never pass its rate check."""
    rps, floor = config.deploy.canary_rps, config.loadtest.min_rps
    if 0 < rps < floor:
        raise ConfigError(file, "deploy.canary_rps", rps, f"is below loadtest.min_rps ({floor}): the canary's rate "
                          "check could never pass; raise it, or set 0 for a closed loop")  # fmt: skip


def _check_registry_url(url: str, file: str) -> None:
    """Here, not as a field check: the error must show the URL without any password in it."""
    if not url:
        return
    from mlci.registry_db import URL_SCHEMES, redact, url_password

    if not url.startswith(URL_SCHEMES):
        raise ConfigError(file, "registry.url", redact(url), "must start with postgresql:// (or be empty: SQLite)")
    if url_password(url):
        raise ConfigError(
            file, "registry.url", redact(url), "holds a password: set PGPASSWORD or ~/.pgpass (mode 0600) instead"
        )


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (["train", "epochs"], 3). Values are TOML literals; bare words are strings."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(OVERRIDE_SOURCE, text, text, "an override must look like section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.split("."), parsed


def _apply_overrides(raw: dict[str, Any], overrides: Sequence[str], origins: dict[str, str]) -> dict[str, Any]:
    merged = _deep_copy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        table = merged
        for part in parts[:-1]:
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(OVERRIDE_SOURCE, ".".join(parts), value, f"{part!r} is not a table")
            table = nxt
        table[parts[-1]] = value
        origins[".".join(parts)] = OVERRIDE_SOURCE
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _build(cls: type, raw: Any, prefix: str, source: str, origins: dict[str, str]) -> Any:
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(origins.get(where, source), where, raw, "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_TOML_KEYS}
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields))
            full = prefix + key
            raise ConfigError(origins.get(full, source), full, raw[key], f"unknown key (known: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        full = prefix + name
        file = origins.get(full, source)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], full + ".", source, origins)
            continue
        value = _coerce(tp, raw[name], full, file)
        for check, why in f.metadata.get("checks", ()):
            if not check(value):
                raise ConfigError(file, full, raw[name], why)
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, file: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(file, key, value, f"must be one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, file)
            except ConfigError:
                continue
        raise ConfigError(file, key, value, f"must be {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(file, key, value, f"must be {_type_name(tp)}")
        return [_coerce(args[0], v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(file, key, value, "must be a table")
        return {k: _coerce(args[1], v, f"{key}.{k}", file) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, value, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(file, key, value, "must be a number")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(file, key, value, "must be a finite number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(file, key, value, "must be a string")
        return value
    raise TypeError(f"config type {tp!r} for {key} is not supported")  # a bug in mlci, not user input


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))
