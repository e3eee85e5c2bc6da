"""KServe v2 request checks: every refusal names the field and the bad value; good requests become arrays."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from mlci.serve.protocol import InferRequest, ProtocolError, Signature, encode_infer, parse_infer

SIG = Signature(input_name="input", n_features=4, output_name="output", n_classes=3, classes=(0, 1, 2))


def body(**tensor_overrides: object) -> bytes:
    tensor = {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}
    tensor.update(tensor_overrides)
    return orjson.dumps({"id": "r1", "inputs": [tensor]})


def refused(raw: bytes, max_rows: int = 16) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_infer(raw, SIG, max_rows)
    assert info.value.status == 400
    return info.value


def test_flat_and_nested_data_give_the_same_rows() -> None:
    flat = parse_infer(body(), SIG, 16)
    nested = parse_infer(body(data=[[0, 1, 2, 3], [4, 5, 6, 7]]), SIG, 16)
    assert flat.x.dtype == np.float32 and flat.x.shape == (2, 4)
    assert np.array_equal(flat.x, nested.x)
    assert flat.id == "r1" and flat.outputs is None


@pytest.mark.parametrize(
    ("raw", "field", "value"),
    [
        (b"{not json", "body: not valid JSON", ""),
        (b"", "body: not valid JSON", ""),
        (b"[1, 2]", "body: must be a JSON object", "list"),
        (b'{"inputs": []}', "inputs:", "[]"),
        (b'{"inputs": "x"}', "inputs:", "'x'"),
        (orjson.dumps({"inputs": [1, 2]}), "inputs: this model takes exactly 1", "got 2"),
        (orjson.dumps({"inputs": [7]}), "inputs[0]:", "7"),
        (body(name="pixels"), "inputs[0].name:", "'pixels'"),
        (body(datatype="INT64"), "inputs[0].datatype:", "'INT64'"),
        (body(datatype=None), "inputs[0].datatype:", "None"),
        (body(shape=[2, 5]), "inputs[0].shape:", "[2, 5]"),
        (body(shape=[8]), "inputs[0].shape:", "[8]"),
        (body(shape=[0, 4], data=[]), "inputs[0].shape:", "[0, 4]"),
        (body(shape=[2.0, 4]), "inputs[0].shape:", "[2.0, 4]"),
        (body(shape=[True, 4]), "inputs[0].shape:", "[True, 4]"),
        (body(shape=[17, 4]), "inputs[0].shape: 17 rows", "serving.max_rows (16)"),
        (body(data=list(range(7))), "inputs[0].data: 7 values", "[2, 4]"),
        (body(data={"a": 1}), "inputs[0].data:", "{'a': 1}"),
        (body(data=[[0, 1, 2, 3], [4, 5, 6]]), "inputs[0].data[1]:", "3 values"),
        (body(data=[0, 1, "2", 3, 4, 5, 6, 7]), "inputs[0].data[2]:", "'2'"),
        (body(data=[0, 1, 2, 3, None, 5, 6, 7]), "inputs[0].data[4]:", "None"),
        (body(data=[0, 1, 2, 3, 4, True, 6, 7]), "inputs[0].data[5]:", "True"),
        (body(data=[0, 1, 2, 3, 4, 5, 6, 1e39]), "inputs[0].data[7]:", "1e+39"),
        (body(data=[0, 1, 2, -3.5e38, 4, 5, 6, 7]), "inputs[0].data[3]:", "-3.5e+38"),
        (b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [NaN, 1, 2, 3]}]}',
         "body: not valid JSON", ""),
        (orjson.dumps({"id": 5, "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                            "data": [1, 2, 3, 4]}]}), "id: must be a string", "5"),
        (orjson.dumps({"parameters": [], "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                                     "data": [1, 2, 3, 4]}]}), "parameters:", "[]"),
        (orjson.dumps({"outputs": [{"name": "probs"}], "inputs": [{"name": "input", "shape": [1, 4],
                                                                   "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
         "outputs[0].name:", "'probs'"),
    ],
)  # fmt: skip
def test_refusals_name_the_field_and_value(raw: bytes, field: str, value: str) -> None:
    message = refused(raw).message
    assert message.startswith(field.split(":")[0]), message
    assert field in message and value in message, message


def test_float32_limits_are_accepted() -> None:
    edge = float(np.finfo(np.float32).max)
    x = parse_infer(body(data=[edge, -edge, 0, 1e-45, 2, 3, 4, 5]), SIG, 16).x
    assert np.isfinite(x).all()


def test_encode_returns_logits_and_labels_row_major() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [2.0, -1.0, 0.5]], dtype=np.float32)
    req = InferRequest(np.zeros((2, 4), np.float32), "r1", None)
    out = orjson.loads(encode_infer("digits", "3", "r1", logits, req, SIG, np.array(SIG.classes)))
    assert out["model_name"] == "digits" and out["model_version"] == "3" and out["id"] == "r1"
    by_name = {o["name"]: o for o in out["outputs"]}
    assert by_name["output"]["shape"] == [2, 3] and by_name["output"]["datatype"] == "FP32"
    assert by_name["output"]["data"] == pytest.approx(logits.reshape(-1).tolist())
    assert by_name["label"] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}


def test_requested_outputs_only_and_string_classes() -> None:
    sig = Signature("input", 4, "output", 2, ("cat", "dog"))
    req = InferRequest(np.zeros((1, 4), np.float32), None, ("label",))
    out = orjson.loads(encode_infer("m", "1", "7", np.array([[0.0, 1.0]], np.float32), req, sig, np.array(sig.classes)))
    assert out["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [1], "data": ["dog"]}]
