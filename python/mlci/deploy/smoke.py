"""The smoke test from outside the server: the manifest's known input over HTTP, its known output back.

The server runs the same test on every load, but that only proves the model inside the process; this one
goes through the host's real inference port (network, HTTP layer, batching, the version route), as a client
would. Only the standard library: it runs wherever the controller runs.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlci.artifacts import read_manifest
from mlci.errors import GateFailed

TIMEOUT_S = 10.0


def smoke(url: str, artifact: Path, *, version: str | None = None, token: str | None = None) -> dict[str, Any]:
    """POST the smoke input of `artifact` to `url`; return the evidence, or raise GateFailed saying what differed.

    `version` addresses that version explicitly (default: the artifact's own), so the answer cannot come from
    another model the server has loaded.
    """
    manifest = read_manifest(artifact)
    smoke_spec, spec = manifest["smoke"], manifest["input"]
    version = str(manifest.get("version")) if version is None else version
    path = f"/v2/models/{manifest['model_name']}/versions/{version}/infer"
    rows = smoke_spec["input"]
    body = {
        "inputs": [
            {
                "name": spec.get("name", "input"),
                "shape": [len(rows), len(rows[0])],
                "datatype": spec.get("datatype", "FP32"),
                "data": [v for row in rows for v in row],
            }
        ]
    }
    answer = _post(url.rstrip("/") + path, body, token)
    logits = _logits(answer, manifest["output"].get("name", "output"), len(rows), path)
    expected = smoke_spec["expected_logits"]
    atol = float(smoke_spec.get("atol", 1e-4))
    worst = max(abs(a - b) for got, want in zip(logits, expected, strict=True) for a, b in zip(got, want, strict=True))
    labels = [max(range(len(row)), key=row.__getitem__) for row in logits]
    evidence = {
        "url": url,
        "path": path,
        "rows": len(rows),
        "labels": labels,
        "expected_labels": list(smoke_spec["expected_labels"]),
        "max_abs_diff": worst,
        "atol": atol,
    }
    if any(not math.isfinite(v) for row in logits for v in row):
        raise GateFailed(f"smoke test at {url}{path}: the model answered non-finite logits (NaN or inf)")
    if labels != evidence["expected_labels"] or not worst <= atol:
        raise GateFailed(
            f"smoke test at {url}{path}: labels {labels} (expected {evidence['expected_labels']}), "
            f"max |logit diff| {worst:.3g} (allowed {atol:g})"
        )
    return evidence


def _post(url: str, body: dict[str, Any], token: str | None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        raise GateFailed(f"smoke test at {url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise GateFailed(f"smoke test at {url}: no answer ({getattr(exc, 'reason', exc)})") from None
    except json.JSONDecodeError as exc:
        raise GateFailed(f"smoke test at {url}: the answer is not JSON ({exc})") from None


def _logits(answer: dict[str, Any], name: str, rows: int, path: str) -> list[list[float]]:
    try:
        output = next(o for o in answer["outputs"] if o.get("name") == name)
        data = [float(v) for v in output["data"]]
        width = len(data) // rows
        if width * rows != len(data) or width == 0:
            raise ValueError(f"{len(data)} values for {rows} rows")
    except (KeyError, StopIteration, TypeError, ValueError) as exc:
        raise GateFailed(f"smoke test at {path}: malformed inference answer ({exc!r})") from None
    return [data[i * width : (i + 1) * width] for i in range(rows)]
