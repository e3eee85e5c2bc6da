"""Open Inference Protocol (KServe v2) tensors: check an infer request, encode its response.

JSON tensors, and the binary tensor data extension (what NVIDIA's tritonclient and perf_analyzer send by
default): an `Inference-Header-Content-Length: N` request header says the body's first N bytes are the JSON
request and the rest raw tensor bytes, in input order, each input's size in its `parameters.binary_data_size`
(little-endian, row-major). Outputs are sent the same way when asked (`parameters.binary_data_output` for the
request, `parameters.binary_data` per output): `encode_infer_binary`.

Every check names the field it rejects (`inputs[0].shape`, `inputs[0].data[7]`) and the bad value, so a
client can fix its request from the message alone. Nothing here touches the model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import orjson

FP32_MAX = float(np.finfo(np.float32).max)
_NUMBER_TYPES = frozenset((int, float))


class ProtocolError(Exception):
    """A request the server refuses; `status` is the HTTP status, the message names the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Signature:
    """What a model takes and returns, from its manifest."""

    input_name: str
    n_features: int
    output_name: str
    n_classes: int
    classes: tuple[Any, ...]

    @cached_property  # read on every request
    def label_datatype(self) -> str:
        return "INT64" if all(type(c) is int for c in self.classes) else "BYTES"

    @cached_property
    def output_names(self) -> tuple[str, str]:
        return (self.output_name, "label")

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> Signature:
        inp, out = manifest["input"], manifest["output"]
        n_classes = int(out["shape"][-1])
        return cls(
            input_name=str(inp.get("name", "input")),
            n_features=int(inp["shape"][-1]),
            output_name=str(out.get("name", "output")),
            n_classes=n_classes,
            classes=tuple(out.get("classes") or range(n_classes)),
        )

    def metadata(self, name: str, versions: list[str]) -> dict[str, Any]:
        return {
            "name": name,
            "versions": versions,
            "platform": "pytorch_safetensors",
            "inputs": [{"name": self.input_name, "datatype": "FP32", "shape": [-1, self.n_features]}],
            "outputs": [
                {"name": self.output_name, "datatype": "FP32", "shape": [-1, self.n_classes]},
                {"name": "label", "datatype": self.label_datatype, "shape": [-1]},
            ],
        }


class InferRequest(NamedTuple):  # a NamedTuple: built once per request, cheaper than a frozen dataclass
    x: np.ndarray  # (rows, n_features) float32
    id: str | None
    outputs: tuple[str, ...] | None  # None: every output
    binary: frozenset[str] = frozenset()  # outputs to send as binary tensor data


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_infer(body: bytes, sig: Signature, max_rows: int, header_length: bytes | None = None) -> InferRequest:
    """Check an infer request body against the model's signature; raise ProtocolError(400) naming the field.

    `header_length`: the request's Inference-Header-Content-Length (binary tensor data follows the JSON)."""
    binary = None
    if header_length is not None:
        n = header_length.strip()
        if not n.isdigit() or int(n) > len(body):
            raise ProtocolError(
                400,
                f"Inference-Header-Content-Length: {_short(n.decode('latin-1'))} is not a length within the "
                f"body ({len(body)} bytes)",
            )
        binary = memoryview(body)[int(n) :]
        body = body[: int(n)]
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(400, f"body: not valid JSON ({exc})") from None
    if type(req) is not dict:
        raise ProtocolError(400, f"body: must be a JSON object, got {type(req).__name__}")
    inputs = req.get("inputs")
    if type(inputs) is not list or not inputs:
        raise ProtocolError(400, f"inputs: must be a non-empty list of tensors, got {_short(inputs)}")
    if len(inputs) != 1:
        raise ProtocolError(
            400, f"inputs: this model takes exactly 1 input tensor ({sig.input_name!r}), got {len(inputs)}"
        )
    x, used = _parse_tensor(inputs[0], "inputs[0]", sig, max_rows, binary)
    if binary is not None and used != len(binary):
        raise ProtocolError(
            400,
            f"body: {len(binary)} bytes of binary data follow the JSON request (Inference-Header-Content-"
            f"Length), but the inputs' parameters.binary_data_size add up to {used}",
        )

    rid = req.get("id")
    if rid is not None and type(rid) is not str:
        raise ProtocolError(400, f"id: must be a string, got {_short(rid)}")
    params = req.get("parameters")
    if params is not None and type(params) is not dict:
        raise ProtocolError(400, f"parameters: must be an object, got {_short(params)}")
    all_binary = params is not None and params.get("binary_data_output") is True
    outputs, binary_outputs = _parse_outputs(req.get("outputs"), sig, all_binary)
    return InferRequest(x, rid, outputs, binary_outputs)


def _parse_tensor(
    t: Any, where: str, sig: Signature, max_rows: int, binary: memoryview | None
) -> tuple[np.ndarray, int]:
    """The tensor, and how many bytes of the binary data it took."""
    if type(t) is not dict:
        raise ProtocolError(400, f"{where}: must be an object with name, shape, datatype, data; got {_short(t)}")
    name = t.get("name")
    if name != sig.input_name:
        why = f"is not an input of this model (its input: {sig.input_name!r})"
        raise ProtocolError(400, f"{where}.name: {_short(name)} {why}")
    datatype = t.get("datatype")
    if datatype != "FP32":
        raise ProtocolError(400, f"{where}.datatype: {_short(datatype)} does not match the model's 'FP32'")
    shape = t.get("shape")
    if (
        type(shape) is not list
        or len(shape) != 2
        or type(shape[0]) is not int
        or type(shape[1]) is not int
        or shape[1] != sig.n_features
        or shape[0] < 1
    ):
        raise ProtocolError(
            400, f"{where}.shape: {_short(shape)} does not match the model's [-1, {sig.n_features}] (rows >= 1)"
        )
    rows = shape[0]
    if rows > max_rows:
        raise ProtocolError(400, f"{where}.shape: {rows} rows is more than serving.max_rows ({max_rows})")
    params = t.get("parameters")
    size = params.get("binary_data_size") if type(params) is dict else None
    if size is not None:
        return _binary_tensor(t, where, sig, rows, size, binary), size
    data = t.get("data")
    if type(data) is not list:
        raise ProtocolError(400, f"{where}.data: must be a list of numbers, got {_short(data)}")
    want = rows * sig.n_features
    if len(data) == rows and rows != want and all(type(r) is list for r in data):
        if any(len(r) != sig.n_features for r in data):
            bad = next(i for i, r in enumerate(data) if len(r) != sig.n_features)
            why = f"a row of {len(data[bad])} values; shape says {sig.n_features}"
            raise ProtocolError(400, f"{where}.data[{bad}]: {why}")
        flat = [v for r in data for v in r]
    else:
        flat = data
    if len(flat) != want:
        raise ProtocolError(400, f"{where}.data: {len(flat)} values do not fill shape {shape} ({want} values)")
    if not set(map(type, flat)) <= _NUMBER_TYPES:
        bad = next(i for i, v in enumerate(flat) if type(v) not in _NUMBER_TYPES)
        raise ProtocolError(400, f"{where}.data[{bad}]: {_short(flat[bad])} is not a number")
    # JSON numbers are finite doubles (orjson refuses NaN/Infinity), so only the FP32 range is left to check.
    if flat and not max(map(abs, flat)) <= FP32_MAX:
        bad = next(i for i, v in enumerate(flat) if not abs(v) <= FP32_MAX)
        raise ProtocolError(400, f"{where}.data[{bad}]: {flat[bad]!r} is not a finite FP32 number")
    return np.array(flat, dtype=np.float32).reshape(rows, sig.n_features), 0


def _binary_tensor(t: dict, where: str, sig: Signature, rows: int, size: Any, binary: memoryview | None) -> np.ndarray:
    key = f"{where}.parameters.binary_data_size"
    if binary is None:
        raise ProtocolError(400, f"{key}: binary data needs an Inference-Header-Content-Length request header")
    if "data" in t:
        raise ProtocolError(400, f"{where}: has both data and {key}; send one")
    want = rows * sig.n_features * 4
    if type(size) is not int or size != want:
        raise ProtocolError(400, f"{key}: {_short(size)} bytes do not fill shape {t['shape']} (FP32: {want} bytes)")
    if size > len(binary):
        raise ProtocolError(
            400, f"{key}: {size} bytes, but only {len(binary)} bytes of binary data follow the JSON request"
        )
    x = np.frombuffer(binary, dtype="<f4", count=rows * sig.n_features).astype(np.float32)  # a writable copy
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ProtocolError(400, f"{where}: value {bad} ({x[bad]!r}) is not a finite FP32 number")
    return x.reshape(rows, sig.n_features)


def _parse_outputs(outputs: Any, sig: Signature, all_binary: bool) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    """The outputs asked for (None: all) and those to send as binary data."""
    if outputs is None:
        return None, frozenset(sig.output_names) if all_binary else frozenset()
    if type(outputs) is not list:
        raise ProtocolError(400, f"outputs: must be a list of {{'name': ...}} objects, got {_short(outputs)}")
    names = []
    binary = set()
    for i, o in enumerate(outputs):
        name = o.get("name") if type(o) is dict else None
        if name not in sig.output_names:
            raise ProtocolError(
                400, f"outputs[{i}].name: {_short(name)} is not an output of this model ({', '.join(sig.output_names)})"
            )
        names.append(name)
        params = o.get("parameters")
        wanted = params.get("binary_data") if type(params) is dict else None
        if wanted is True or (wanted is None and all_binary):
            binary.add(name)
    return tuple(names), frozenset(binary)


def encode_infer(
    model_name: str, version: str, rid: str, logits: np.ndarray, req: InferRequest, sig: Signature, classes: np.ndarray
) -> bytes:
    """The v2 infer response: logits as `output` (FP32, flattened row-major) and the class as `label`."""
    outputs = []
    wanted = req.outputs or sig.output_names
    rows = logits.shape[0]
    for name in wanted:
        if name == sig.output_name:
            outputs.append(
                {"name": name, "datatype": "FP32", "shape": [rows, sig.n_classes], "data": logits.reshape(-1)}
            )
        else:
            labels = classes[logits.argmax(axis=1)]
            if labels.dtype.kind != "i":  # orjson serializes numeric arrays only
                labels = labels.tolist()
            outputs.append({"name": "label", "datatype": sig.label_datatype, "shape": [rows], "data": labels})
    return orjson.dumps(
        {"model_name": model_name, "model_version": version, "id": rid, "outputs": outputs},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def encode_infer_binary(
    model_name: str, version: str, rid: str, logits: np.ndarray, req: InferRequest, sig: Signature, classes: np.ndarray
) -> tuple[bytes, int]:
    """The v2 infer response with the outputs in `req.binary` as binary tensor data after the JSON.

    Returns the body and the JSON part's length (the Inference-Header-Content-Length response header)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    rows = logits.shape[0]
    for name in req.outputs or sig.output_names:
        if name == sig.output_name:
            out: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": [rows, sig.n_classes]}
            values: Any = logits.reshape(-1)
            blob = values.astype("<f4").tobytes() if name in req.binary else b""
        else:
            labels = classes[logits.argmax(axis=1)]
            out = {"name": "label", "datatype": sig.label_datatype, "shape": [rows]}
            values = labels if labels.dtype.kind == "i" else labels.tolist()
            if name not in req.binary:
                blob = b""
            elif sig.label_datatype == "INT64":
                blob = labels.astype("<i8").tobytes()
            else:  # BYTES: each element a 4-byte little-endian length, then its bytes
                blob = b"".join(struct.pack("<I", len(b)) + b for b in (str(v).encode() for v in values))
        if name in req.binary:
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = values
        outputs.append(out)
    header = orjson.dumps(
        {"model_name": model_name, "model_version": version, "id": rid, "outputs": outputs},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return b"".join((header, *blobs)), len(header)
