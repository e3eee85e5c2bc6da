"""The data schema (TOML): the label column and its label set, every feature column's dtype, range and NaN rule.

A user's own dataset plugs in by pointing `data.schema` in mlci.toml at its own schema file. Mistakes in the
schema itself raise ConfigError naming the schema file, the key and the value (exit 2), like mlci.toml's.
Only the standard library is imported here: the no-op path of `mlci train` must stay cheap.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mlci.config import Config
from mlci.errors import ConfigError

Dtype = Literal["int", "float"]
DTYPES: tuple[str, ...] = ("int", "float")
_COLUMN_KEYS = ("dtype", "min", "max", "nan")
_SECTIONS = ("options", "label", "defaults", "features")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: Dtype = "float"
    min: float | None = None
    max: float | None = None
    nan: bool = False  # NaN (or an empty field) allowed


@dataclass(frozen=True)
class Schema:
    file: str  # where it was read from, for messages
    label: str  # the label column's name
    classes: tuple[int | str, ...]  # the label set, in order; y holds indices into it
    features: tuple[Column, ...]  # in the order the model sees them
    allow_duplicate_rows: bool = False

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    @property
    def columns(self) -> list[str]:
        """Every column a data file must have (any order)."""
        return [*self.feature_names, self.label]


def schema_path(config: Config) -> Path:
    return config.path(config.data.schema)


def load_schema(config: Config) -> Schema:
    """Read and check the schema file named by `config.data.schema` (relative to the config's directory)."""
    path = schema_path(config)
    file = config.data.schema
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(config.source, "data.schema", file, f"schema file not found ({path})") from None
    except IsADirectoryError:
        raise ConfigError(config.source, "data.schema", file, "is a directory, not a schema file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "<file>", file, f"not UTF-8 ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "<file>", file, f"not valid TOML ({exc})") from None
    return schema_from_dict(raw, file=file)


def schema_from_dict(raw: dict[str, Any], *, file: str = "<schema>") -> Schema:
    _only(raw, _SECTIONS, "", file)
    options = _table(raw, "options", file)
    _only(options, ("allow_duplicate_rows",), "options.", file)
    allow_dup = options.get("allow_duplicate_rows", False)
    if not isinstance(allow_dup, bool):
        raise ConfigError(file, "options.allow_duplicate_rows", allow_dup, "must be true or false")

    label_table = _table(raw, "label", file)
    _only(label_table, ("column", "classes"), "label.", file)
    label = label_table.get("column")
    if not isinstance(label, str) or not label:
        raise ConfigError(file, "label.column", label, "must be the label column's name (a string)")
    classes = _classes(label_table.get("classes"), file)

    defaults = _table(raw, "defaults", file)
    _only(defaults, _COLUMN_KEYS, "defaults.", file)
    _column("", defaults, file, key="defaults")  # its own mistakes are named as defaults.<key>
    features_table = _table(raw, "features", file)
    if not features_table:
        raise ConfigError(file, "features", features_table, "must list at least one feature column")
    features = []
    for name, spec in features_table.items():
        if not isinstance(spec, dict):
            raise ConfigError(file, f"features.{name}", spec, "must be a table such as { dtype = 'int', min = 0 }")
        if name == label:
            raise ConfigError(file, f"features.{name}", spec, "is the label column; it cannot also be a feature")
        _only(spec, _COLUMN_KEYS, f"features.{name}.", file)
        features.append(_column(name, {**defaults, **spec}, file))
    return Schema(file=file, label=label, classes=classes, features=tuple(features), allow_duplicate_rows=allow_dup)


def _column(name: str, spec: dict[str, Any], file: str, *, key: str = "") -> Column:
    key = key or f"features.{name}"
    dtype = spec.get("dtype", "float")
    if dtype not in DTYPES:
        raise ConfigError(file, f"{key}.dtype", dtype, f"must be one of {', '.join(map(repr, DTYPES))}")
    nan = spec.get("nan", False)
    if not isinstance(nan, bool):
        raise ConfigError(file, f"{key}.nan", nan, "must be true or false")
    if nan and dtype == "int":
        raise ConfigError(file, f"{key}.nan", nan, "an int column cannot hold NaN; use dtype = 'float'")
    bounds: dict[str, float | None] = {}
    for end in ("min", "max"):
        value = spec.get(end)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise ConfigError(file, f"{key}.{end}", value, "must be a finite number")
        bounds[end] = value
    lo, hi = bounds["min"], bounds["max"]
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(file, f"{key}.min", lo, f"is greater than max ({hi})")
    return Column(name=name, dtype=dtype, min=lo, max=hi, nan=nan)


def _classes(value: Any, file: str) -> tuple[int | str, ...]:
    key = "label.classes"
    if not isinstance(value, list) or not value:
        raise ConfigError(file, key, value, "must be a non-empty list of the label values")
    is_int = [isinstance(v, int) and not isinstance(v, bool) for v in value]
    is_str = [isinstance(v, str) for v in value]
    if not (all(is_int) or all(is_str)):
        raise ConfigError(file, key, value, "must be all integers or all strings")
    if all(is_str) and any(not v for v in value):
        raise ConfigError(file, key, value, "a class name cannot be empty")
    seen = set()
    for v in value:
        if v in seen:
            raise ConfigError(file, key, v, "is listed twice")
        seen.add(v)
    return tuple(value)


def _table(raw: dict[str, Any], name: str, file: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(file, name, value, "must be a table")
    return value


def _only(table: dict[str, Any], known: tuple[str, ...], prefix: str, file: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(file, prefix + key, table[key], f"unknown key (known: {', '.join(known)})")
