"""What the load test sends: Open Inference Protocol request bodies built from known-good rows.

Rows come, in this order of preference, from the artifact manifest given with --artifact (its smoke-test
input), from the served model's metadata (when the server publishes its smoke input there), or from the
project's bundled data (the feature columns the schema names). The target is only ever seen over HTTP.
"""

from __future__ import annotations

import csv
import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlci.config import Config
from mlci.errors import DataError, UsageError

MAX_ROWS = 256  # distinct rows to cycle through; more adds memory in every Locust process, not realism
METADATA_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ModelInput:
    """The served model's input tensor as the load test needs it."""

    model_name: str
    name: str = "input"
    datatype: str = "FP32"
    n_features: int | None = None
    features: list[str] | None = None
    run_id: str | None = None  # the registry run behind the model, when known
    versions: list[str] = field(default_factory=list)  # the artifact's version, or the versions served
    rows: list[list[float]] = field(default_factory=list)
    source: str = ""  # where the rows came from, for the summary


def infer_path(model_name: str, version: str | None = None) -> str:
    if version is not None:
        return f"/v2/models/{model_name}/versions/{version}/infer"
    return f"/v2/models/{model_name}/infer"


def from_manifest(manifest: dict[str, Any], source: str) -> ModelInput:
    spec = manifest["input"]
    return ModelInput(
        model_name=manifest.get("model_name", ""),
        name=spec.get("name", "input"),
        datatype=spec.get("datatype", "FP32"),
        n_features=int(spec["shape"][-1]),
        features=list(spec.get("features") or []) or None,
        run_id=manifest.get("run_id"),
        versions=[str(manifest["version"])] if "version" in manifest else [],
        rows=[[float(v) for v in row] for row in manifest["smoke"]["input"]],
        source=f"smoke input of {source}",
    )


def fetch_metadata(url: str, model_name: str, headers: dict[str, str]) -> dict[str, Any]:
    """GET /v2/models/{name}: also the preflight that the target answers at all (exit 2 if not)."""
    target = url.rstrip("/") + f"/v2/models/{model_name}"
    request = urllib.request.Request(target, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=METADATA_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise UsageError(
            f"--url {url}: GET {target} answered HTTP {exc.code} (is model {model_name!r} served?)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"--url {url}: cannot reach the server ({reason})") from None
    except json.JSONDecodeError:
        raise UsageError(f"--url {url}: GET {target} did not answer JSON model metadata") from None


def from_metadata(metadata: dict[str, Any], model_name: str, url: str) -> ModelInput:
    """Read the first input tensor's spec (and any smoke rows the server publishes in `parameters`)."""
    inputs = metadata.get("inputs") or []
    if not inputs or not isinstance(inputs[0], dict):
        raise UsageError(f"--url {url}: model {model_name!r} metadata lists no inputs")
    spec = inputs[0]
    shape = spec.get("shape") or []
    params = metadata.get("parameters") or {}
    smoke = params.get("smoke_input") if isinstance(params, dict) else None
    rows = [[float(v) for v in row] for row in smoke] if isinstance(smoke, list) else []
    features = params.get("features") if isinstance(params, dict) else None
    return ModelInput(
        model_name=model_name,
        name=spec.get("name", "input"),
        datatype=spec.get("datatype", "FP32"),
        n_features=int(shape[-1]) if shape and int(shape[-1]) > 0 else None,
        features=list(features) if isinstance(features, list) else None,
        run_id=params.get("run_id") if isinstance(params, dict) else None,
        versions=[str(v) for v in metadata.get("versions") or []],
        rows=rows,
        source=f"smoke input published by {url}" if rows else "",
    )


def bundled_rows(config: Config, features: list[str] | None, n_features: int | None) -> tuple[list[list[float]], str]:
    """Up to MAX_ROWS rows of the first data file, feature columns in the model's order."""
    if not config.data.files:
        raise DataError(config.source, "data.files is empty: no bundled rows to send")
    if features is None:
        from mlci.schema import load_schema

        features = load_schema(config).feature_names
    from mlci.data import file_names

    file = file_names(config)[0]
    path = config.path(file)
    if n_features is not None and len(features) != n_features:
        raise DataError(file, f"the schema names {len(features)} features but the model takes {n_features}")
    if path.suffix.lower() == ".parquet":
        return _parquet_rows(path, file, features)
    rows: list[list[float]] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [f for f in features if f not in (reader.fieldnames or [])]
            if missing:
                raise DataError(file, f"no column {missing[0]!r} (the model's features: {len(features)} columns)")
            for number, record in enumerate(reader, start=2):
                if len(rows) >= MAX_ROWS:
                    break
                row = []
                for name in features:
                    try:
                        value = float(record[name])
                    except (TypeError, ValueError):
                        raise DataError(file, "not a number", row=number, column=name, value=record[name]) from None
                    if not math.isfinite(value):
                        raise DataError(file, "not a finite number", row=number, column=name, value=record[name])
                    row.append(value)
                rows.append(row)
    except FileNotFoundError:
        raise DataError(file, f"data file not found ({path})") from None
    if not rows:
        raise DataError(file, "no data rows to send")
    return rows, f"first {len(rows)} rows of {file}"


def _parquet_rows(path: Path, file: str, features: list[str]) -> tuple[list[list[float]], str]:
    """The first rows of a Parquet data file (its first batch only is read)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        found = pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(file, f"data file not found ({path})") from None
    except (pa.ArrowException, OSError) as exc:
        raise DataError(file, f"not a readable Parquet file ({exc})") from None
    missing = [f for f in features if f not in found.schema_arrow.names]
    if missing:
        raise DataError(file, f"no column {missing[0]!r} (the model's features: {len(features)} columns)")
    batch = next(found.iter_batches(batch_size=MAX_ROWS, columns=features), None)
    if batch is None or batch.num_rows == 0:
        raise DataError(file, "no data rows to send")
    x = np.stack([batch.column(f).cast(pa.float64()).to_numpy(zero_copy_only=False) for f in features], axis=1)
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise DataError(file, "not a finite number", row=i + 1, column=features[j], value=str(x[i, j]))
    return x.tolist(), f"first {len(x)} rows of {file}"


def bodies(model_input: ModelInput, rows_per_request: int) -> list[str]:
    """One JSON body per starting row: `rows_per_request` consecutive rows (wrapping), flat row-major data."""
    rows = model_input.rows[:MAX_ROWS]
    if not rows:
        raise DataError(model_input.source or "<payload>", "no rows to send")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(model_input.source, f"row has {len(row)} values, the first has {width}", row=i)
    if model_input.n_features is not None and width != model_input.n_features:
        raise DataError(model_input.source, f"rows have {width} values but the model takes {model_input.n_features}")
    out = []
    for start in range(len(rows)):
        batch = [rows[(start + k) % len(rows)] for k in range(rows_per_request)]
        tensor = {
            "name": model_input.name,
            "shape": [rows_per_request, width],
            "datatype": model_input.datatype,
            "data": [v for row in batch for v in row],
        }
        out.append(json.dumps({"inputs": [tensor]}, separators=(",", ":")))
    return out


def artifact_input(artifact: Path) -> ModelInput:
    """The manifest of --artifact (a directory or its manifest.json)."""
    from mlci.artifacts import read_manifest

    return from_manifest(read_manifest(artifact), str(artifact))
