"""The binary tensor data extension against a real `mlci serve`: NVIDIA's tritonclient at its defaults, and
binary bodies that do not add up (400 naming what is wrong)."""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from test_serve_support import N_FEATURES, make_artifact, serving

INFER = "/v2/models/digits/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("binary")
    with serving(make_artifact(tmp / "a", version=1, seed=1), tmp / "serve") as running:
        yield running


def _json_answer(url: str, x: np.ndarray) -> dict:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    response = httpx.post(url + INFER, json=body)
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"]) for o in response.json()["outputs"]}


def test_tritonclient_at_its_defaults_gets_the_json_answer_in_binary(server) -> None:
    x = np.random.default_rng(0).uniform(0, 16, (5, N_FEATURES)).astype(np.float32)
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("digits")
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True: the default
    result = client.infer("digits", [inp])  # no outputs named: all of them, binary
    response = result.get_response()
    assert response["model_version"] == "1"
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    expected = _json_answer(server.url, x)
    np.testing.assert_allclose(result.as_numpy("output"), expected["output"].reshape(5, 10), rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])

    # Outputs asked one by one: binary where asked, JSON where not.
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=True),
        httpclient.InferRequestedOutput("output", binary_data=False),
    ]
    result = client.infer("digits", [inp], outputs=outputs)
    kinds = {o["name"]: "data" in o for o in result.get_response()["outputs"]}
    assert kinds == {"label": False, "output": True}
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(result.as_numpy("output"), expected["output"].reshape(5, 10), rtol=1e-6)
    client.close()


def _binary_post(url: str, header: dict, blob: bytes, header_length: int | None = None) -> httpx.Response:
    head = orjson.dumps(header)
    length = len(head) if header_length is None else header_length
    return httpx.post(
        url + INFER,
        content=head + blob,
        headers={"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"},
    )


def _header(rows: int, size: int) -> dict:
    return {
        "inputs": [
            {"name": "input", "shape": [rows, N_FEATURES], "datatype": "FP32", "parameters": {"binary_data_size": size}}
        ]
    }


@pytest.mark.parametrize(
    ("case", "build", "message"),
    [
        (
            "header length beyond the body",
            lambda: (_header(1, 256), bytes(256), 10_000),
            "Inference-Header-Content-Length: '10000' is not a length within the body",
        ),
        (
            "fewer bytes than binary_data_size",
            lambda: (_header(1, 256), bytes(100), None),
            "256 bytes, but only 100 bytes of binary data follow",
        ),
        (
            "more bytes than the inputs take",
            lambda: (_header(1, 256), bytes(300), None),
            "300 bytes of binary data follow the JSON request",
        ),
        (
            "binary_data_size that does not fill the shape",
            lambda: (_header(2, 256), bytes(256), None),
            "256 bytes do not fill shape [2, 64] (FP32: 512 bytes)",
        ),
        (
            "a NaN",
            lambda: (_header(1, 256), np.full(N_FEATURES, np.nan, "<f4").tobytes(), None),
            "is not a finite FP32 number",
        ),
    ],
)
def test_a_binary_body_that_does_not_add_up_is_400(server, case: str, build, message: str) -> None:
    header, blob, length = build()
    response = _binary_post(server.url, header, blob, length)
    assert response.status_code == 400, f"{case}: {response.status_code} {response.text}"
    assert message in response.json()["error"], case


def test_binary_data_size_without_the_header_is_400(server) -> None:
    response = httpx.post(server.url + INFER, content=orjson.dumps(_header(1, 256)))
    assert response.status_code == 400
    assert "needs an Inference-Header-Content-Length" in response.json()["error"]
