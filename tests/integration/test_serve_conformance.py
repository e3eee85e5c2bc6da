"""Every endpoint of a real `mlci serve` process on 127.0.0.1, error bodies included."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from test_serve_support import N_FEATURES, Server, infer_body, make_artifact, serving

from mlci.artifacts import load_model

MAX_BODY = 64_000
MAX_ROWS = 50


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("artifacts"), version=1, seed=1)


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(
        artifact, tmp_path_factory.mktemp("serve"), f"serving.max_body_bytes={MAX_BODY}", f"serving.max_rows={MAX_ROWS}"
    ) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_server_metadata_and_health(client: httpx.Client) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "mlci" and isinstance(meta["extensions"], list) and meta["version"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_and_readiness(client: httpx.Client) -> None:
    meta = client.get("/v2/models/digits").json()
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, N_FEATURES]}]
    assert {o["name"] for o in meta["outputs"]} == {"output", "label"}
    assert client.get("/v2/models/digits/versions/1").json()["versions"] == ["1"]
    for path in ("/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"):
        assert client.get(path).json() == {"name": "digits", "version": "1", "ready": True}


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/v2/models/cats", "'cats' is not served here"),
        ("/v2/models/cats/ready", "'cats' is not served here"),
        ("/v2/models/digits/versions/9", "no loaded version '9' (loaded: 1)"),
        ("/v2/models/digits/versions/9/ready", "no loaded version '9'"),
        ("/v3/anything", "no route GET /v3/anything"),
    ],
)
def test_unknown_models_versions_and_routes_are_404(client: httpx.Client, path: str, needle: str) -> None:
    assert needle in error_of(client.get(path), 404)


def test_infer_answers_what_the_model_computes(client: httpx.Client, artifact: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, (3, N_FEATURES)).astype(np.float32)
    eager, _ = load_model(artifact)
    with torch.no_grad():
        expected = eager(torch.from_numpy(x)).numpy()
    nested = {"id": "req-7", "inputs": [{"name": "input", "shape": [3, N_FEATURES], "datatype": "FP32",
                                         "data": x.tolist()}]}  # fmt: skip
    for body, path in ((nested, "/v2/models/digits/infer"), (nested, "/v2/models/digits/versions/1/infer")):
        out = client.post(path, json=body)
        assert out.status_code == 200, out.text
        reply = out.json()
        assert reply["model_name"] == "digits" and reply["model_version"] == "1" and reply["id"] == "req-7"
        logits, labels = reply["outputs"]
        assert logits["name"] == "output" and logits["shape"] == [3, 10] and logits["datatype"] == "FP32"
        assert np.allclose(np.array(logits["data"]).reshape(3, 10), expected, atol=1e-5)
        assert labels == {"name": "label", "datatype": "INT64", "shape": [3], "data": expected.argmax(1).tolist()}


def test_infer_gives_an_id_and_the_outputs_asked_for(client: httpx.Client) -> None:
    reply = client.post("/v2/models/digits/infer", json=infer_body(2, outputs=[{"name": "label"}])).json()
    assert reply["id"] and [o["name"] for o in reply["outputs"]] == ["label"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{broken", "body: not valid JSON"),
        (b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [NaN]}]}',
         "body: not valid JSON"),
        (json.dumps(infer_body(1) | {"inputs": [{**infer_body(1)["inputs"][0], "shape": [1, 63]}]}).encode(),
         "inputs[0].shape: [1, 63]"),
        (json.dumps({"inputs": [{**infer_body(1)["inputs"][0], "datatype": "FP16"}]}).encode(),
         "inputs[0].datatype: 'FP16'"),
        (json.dumps({"inputs": [{**infer_body(1)["inputs"][0], "name": "x"}]}).encode(), "inputs[0].name: 'x'"),
        (json.dumps({"inputs": [{**infer_body(1)["inputs"][0], "data": ["a"] * 64}]}).encode(),
         "inputs[0].data[0]: 'a' is not a number"),
        (json.dumps(infer_body(MAX_ROWS + 1)).encode(), f"more than serving.max_rows ({MAX_ROWS})"),
        (json.dumps({"inputs": [{**infer_body(1)["inputs"][0], "data": [1e39] * 64}]}).encode(),
         "inputs[0].data[0]: 1e+39 is not a finite FP32 number"),
    ],
)  # fmt: skip
def test_bad_infer_requests_are_400_naming_the_field(client: httpx.Client, content: bytes, needle: str) -> None:
    response = client.post("/v2/models/digits/infer", content=content)
    assert needle in error_of(response, 400)


def test_infer_on_unknown_model_or_version_is_404(client: httpx.Client) -> None:
    assert "'cats' is not served here" in error_of(client.post("/v2/models/cats/infer", json=infer_body()), 404)
    needle = "no loaded version '4'"
    assert needle in error_of(client.post("/v2/models/digits/versions/4/infer", json=infer_body()), 404)
    assert "no route POST" in error_of(client.post("/v2/models/infer", json=infer_body()), 404)


def test_wrong_methods_are_405(client: httpx.Client) -> None:
    assert "GET /v2/models/digits/infer" in error_of(client.get("/v2/models/digits/infer"), 405)
    assert "POST /v2/health/ready" in error_of(client.post("/v2/health/ready"), 405)


def test_bodies_over_the_limit_are_413_whether_declared_or_streamed(server: Server) -> None:
    big = json.dumps(infer_body(MAX_ROWS)).encode().ljust(MAX_BODY + 1, b" ")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        response = c.post("/v2/models/digits/infer", content=big)
        assert "serving.max_body_bytes" in error_of(response, 413)

    def chunks():  # no Content-Length: chunked transfer encoding, counted as it arrives
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert "serving.max_body_bytes" in error_of(c.post("/v2/models/digits/infer", content=chunks()), 413)


def raw_exchange(server: Server, payload: bytes, expect_responses: int) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        while data.count(b"HTTP/1.1 ") < expect_responses or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_malformed_http_is_400_and_the_server_stays_up(server: Server, client: httpx.Client) -> None:
    data = raw_exchange(server, b"THIS IS NOT HTTP\r\n\r\n", 1)
    assert data.startswith(b"HTTP/1.1 400 ") and b"malformed HTTP request" in data
    assert client.get("/v2/health/ready").status_code == 200


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    body = json.dumps(infer_body(1, id="first")).encode()
    first = b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    second = b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n"
    third = first.replace(b'"first"', b'"third"')
    data = raw_exchange(server, first + second + third, 3)
    assert data.index(b'"first"') < data.index(b'{"live":true}') < data.index(b'"third"')


def test_expect_100_continue_is_honoured(server: Server) -> None:
    body = json.dumps(infer_body(1)).encode()
    head = b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n"
    data = raw_exchange(server, head % len(body) + body, 2)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")


def test_metrics_count_requests_batches_and_the_model_version(client: httpx.Client) -> None:
    client.post("/v2/models/digits/infer", json=infer_body())
    client.post("/v2/models/digits/infer", content=b"{")
    text = client.get("/metrics").text
    for needle in (
        'mlci_requests_total{route="infer",status="200"}',
        'mlci_requests_total{route="infer",status="400"}',
        'mlci_requests_total{route="health",status="200"}',
        "mlci_infer_latency_seconds_bucket",
        "mlci_batch_rows_bucket",
        "mlci_queue_depth 0.0",
        'mlci_model_version{model="digits"} 1.0',
        "mlci_shed_total",
    ):
        assert needle in text, needle


def test_head_announces_the_length_without_a_body(server: Server) -> None:
    data = raw_exchange(server, b"HEAD /v2 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n", 1)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and rest == b""
    length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"content-length:")).split(b":")[1])
    assert length == len(httpx.get(f"{server.url}/v2", timeout=30).content) > 0


def test_nothing_is_answered_after_connection_close(server: Server, client: httpx.Client) -> None:
    first = b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    second = b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\n\r\n"
    data = raw_exchange(server, first + second + first, 3)  # reads until the server closes
    assert data.count(b"HTTP/1.1 ") == 1 and b'{"live":true}' in data and b"connection: close" in data
    assert client.get("/v2/health/ready").status_code == 200
