"""Property-based fuzzing of infer requests against a real server: never a 5xx, healthy afterwards.

Requests are drawn around the valid shape (right name, datatype and shape with the right number of
values) and far from it (wrong types anywhere, junk JSON, random bytes, NaN/Infinity literals, huge
integers), so both the deep checks and the early refusals are exercised. One persistent HTTP client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve_support import N_FEATURES, Server, infer_body, make_artifact, serving

EXAMPLES = 1200

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included: JSON has no literal for them
    st.text(max_size=8),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def mostly(value: Any, *others: Any) -> st.SearchStrategy[Any]:
    """`value` 4 times in 5, else one of `others` (strategies or plain values)."""
    alternatives = st.one_of(*(o if isinstance(o, st.SearchStrategy) else st.just(o) for o in others))
    return st.integers(0, 4).flatmap(lambda i: st.just(value) if i else alternatives)


@st.composite
def tensors(draw: st.DrawFn) -> Any:
    rows = draw(mostly(1, st.integers(-1, 6)))
    cols = draw(mostly(N_FEATURES, N_FEATURES - 1, N_FEATURES + 1, 0))
    shape = draw(mostly([rows, cols], st.lists(st.integers(-2, 70), max_size=3), junk))
    n = max(rows, 0) * max(cols, 0)
    # Long numeric lists come from a drawn seed (drawing every element would make each case slow).
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    values = rng.uniform(-20, 20, n).round(draw(st.integers(0, 6))).tolist()
    kind = draw(st.integers(0, 9))
    if kind == 7 and n:  # one bad element at a drawn position
        values[draw(st.integers(0, n - 1))] = draw(scalars)
    elif kind == 8:
        values = values[: max(n + draw(st.sampled_from([-1, 1])), 0)] if n else [1.0]
    elif kind == 9:
        values = draw(junk)
    elif kind >= 5 and rows > 0 and cols > 0:
        values = [values[i * cols : (i + 1) * cols] for i in range(rows)]  # nested form
    tensor = {
        "name": draw(mostly("input", "x", "", junk)),
        "shape": shape,
        "datatype": draw(mostly("FP32", "FP64", "INT64", "BYTES", "fp32", junk)),
        "data": values,
    }
    for key in list(tensor):
        if draw(st.integers(0, 30)) == 0:
            del tensor[key]
    return tensor


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(
        mostly(
            "/v2/models/digits/infer",
            "/v2/models/digits/versions/1/infer",
            "/v2/models/digits/versions/x/infer",
            "/v2/models/other/infer",
        )
    )
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return path, draw(st.binary(max_size=300))
    if kind == 1:
        return path, json.dumps(draw(junk)).encode()
    body: dict[str, Any] = {"inputs": draw(mostly([draw(tensors())], st.lists(tensors(), max_size=2), junk))}
    if draw(st.booleans()):
        body["id"] = draw(mostly(draw(st.text(max_size=10)), junk))
    if draw(st.integers(0, 5)) == 0:
        body["outputs"] = draw(mostly([{"name": "label"}], junk))
    if draw(st.integers(0, 5)) == 0:
        body["parameters"] = draw(mostly({}, junk))
    return path, json.dumps(body).encode()  # NaN/Infinity become literals JSON does not allow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    artifact = make_artifact(tmp_path_factory.mktemp("artifacts"))
    with serving(artifact, tmp_path_factory.mktemp("serve"), "serving.max_rows=4") as s:
        yield s


def test_fuzzed_infer_requests_never_get_a_5xx(server: Server) -> None:
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(requests())
        def check(request: tuple[str, bytes]) -> None:
            path, content = request
            response = client.post(path, content=content, headers={"content-type": "application/json"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (path, content[:300], response.text)
            reply = response.json()
            if response.status_code == 200:
                assert reply["model_name"] == "digits" and reply["outputs"]
            else:
                assert response.status_code in (400, 404), response.text
                assert set(reply) == {"error"} and reply["error"], reply

        check()

        assert sum(statuses.values()) >= 1000, statuses
        assert statuses.get(200, 0) > 100 and statuses.get(400, 0) > 100, statuses  # both sides were exercised
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post("/v2/models/digits/infer", json=infer_body(2)).status_code == 200
    assert server.proc.poll() is None
    assert "Traceback" not in server.output()


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Bytes on the wire: mangled request lines, headers and lengths around a valid infer request."""
    method = draw(mostly(b"POST", b"GET", b"PUT", b"", draw(st.binary(max_size=8))))
    target = draw(mostly(b"/v2/models/digits/infer", b"/", b"*", b"/v2/%zz", draw(st.binary(max_size=20))))
    version = draw(mostly(b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTX"))
    body = draw(mostly(json.dumps(infer_body()).encode(), draw(st.binary(max_size=200))))
    length = draw(mostly(str(len(body)).encode(), b"-1", b"abc", b"99999999999", b"0", str(len(body) + 5).encode()))
    headers = [b"host: t", b"content-length: " + length]
    headers += draw(st.lists(st.sampled_from([b"transfer-encoding: chunked", b"expect: 100-continue",
                                              b"connection: close", b"upgrade: websocket", b"x:" + b"y" * 9000,
                                              b"bad header"]), max_size=2))  # fmt: skip
    return method + b" " + target + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def test_fuzzed_raw_http_never_crashes_the_server(server: Server) -> None:
    import socket

    host, port = server.url.removeprefix("http://").split(":")

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw_requests())
    def check(payload: bytes) -> None:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # no more bytes: the server must answer or close, not wait
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        if data:
            status = int(data.split(b" ", 2)[1])
            assert status < 500 or status == 503, data[:300]

    check()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post("/v2/models/digits/infer", json=infer_body()).status_code == 200
    assert server.proc.poll() is None and "Traceback" not in server.output()
