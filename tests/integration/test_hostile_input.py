"""Hostile input that needs real processes: body limits over a raw socket to a real uvicorn,
temporary files of requests that end badly, and the worker's deep inspection (redis, moto,
PostgreSQL and a celery worker started by the tests). The same rules checked in-process live
in tests/service/api/test_hostile_requests.py, without duplicates here."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.deps import hash_key
from service.core.config import Settings
from service.main import create_app
from tests import servers
from tests.factories import tiny_onnx_bytes
from tests.hostile import KEYS, LIMIT, problem
from tests.hostile import as_tenant as _as
from tests.hostile import upload as _upload


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, api_keys={hash_key(k): t for t, k in KEYS.items()}, max_upload_bytes=LIMIT)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, reaper=False), headers=_as("alpha")) as c:
        yield c


# ----------------------------------------------------------------------------- body size (real uvicorn)


@pytest.fixture(scope="module")
def uvicorn_api(tmp_path_factory, server_logs: Path) -> Iterator[tuple[str, Settings]]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("hostile-api"),
        max_upload_bytes=LIMIT,
        api_keys={hash_key(k): t for t, k in KEYS.items()},
    )
    proc, base = servers.start_api(server_logs, settings, "hostile-api")
    try:
        yield base, settings
    finally:
        proc.stop()


def _raw_upload(base: str, *, chunked: bool, total: int) -> tuple[bytes, int]:
    """Send a multipart model upload of ``total`` body bytes, chunk by chunk, until the server
    answers. Returns (the answer, body bytes sent before it came)."""
    host, port = base.removeprefix("http://").split(":")
    boundary = "hostileboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.onnx"\r\n\r\n').encode()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEYS['alpha']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n\r\n".encode()
    )
    sent, payload = 0, head + b"\x08\x07" + b"\x00" * (total - len(head) - 2)
    try:
        while sent < total and not select.select([sock], [], [], 0.01)[0]:
            chunk = payload[sent : sent + 16384]
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed the connection while we were still sending
    answer = b""
    with __import__("contextlib").suppress(OSError):
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    sock.close()
    return answer, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed-chunked"])
def test_a_body_over_the_limit_gets_413_before_it_is_stored(uvicorn_api, chunked: bool) -> None:
    base, settings = uvicorn_api
    total = 32 << 20
    answer, sent = _raw_upload(base, chunked=chunked, total=total)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"type":"https://shears.dev/problems/upload-too-large"' in answer
    assert b"SHEARS_MAX_UPLOAD_BYTES" in answer
    assert sent < total // 4, f"the server read {sent} bytes before refusing"
    if not chunked:
        assert sent <= 16384  # refused on the declared length, before the body
    servers.wait_until(lambda: not list((settings.data_dir / "tmp").glob("upload-*")), 10, "temporary files removed")
    assert not (settings.data_dir / "artifacts" / "uploads").exists()


# ----------------------------------------------------------------------------- deep checks in a worker


@pytest.fixture
def worker_client(service_settings: Settings, celery_worker) -> Iterator[TestClient]:
    settings = service_settings.model_copy(update={"api_keys": {hash_key(KEYS["alpha"]): "alpha"}})
    with TestClient(create_app(settings, reaper=False), headers=_as("alpha")) as c:
        yield c


def _inspected(client, kind: str, item_id: str) -> dict:
    servers.wait_until(
        lambda: client.get(f"/v1/{kind}/{item_id}").json()["status"] != "validating",
        90,
        f"{kind} inspection",
        interval=0.1,
    )
    return client.get(f"/v1/{kind}/{item_id}").json()


def _unsupported_operator_onnx() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["h"], name="relu_1"),
            helper.make_node("FancyUnknownOp", ["h"], ["y"], name="mystery_node", domain="com.example"),
        ],
        "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    return model.SerializeToString()


def test_a_model_with_an_unsupported_operator_is_marked_invalid_naming_op_and_node(worker_client) -> None:
    client = worker_client
    accepted = _upload(client, "models", _unsupported_operator_onnx(), "odd.onnx")
    assert accepted.status_code == 202, accepted.text  # structurally fine: the worker converts it
    model = _inspected(client, "models", accepted.json()["id"])
    assert model["status"] == "invalid"
    assert model["error"]["code"] == "unsupported-operator"
    assert "FancyUnknownOp" in model["error"]["message"] and "mystery_node" in model["error"]["message"]
    body = problem(
        client.post("/v1/jobs", json={"model_id": model["id"], "dataset": {"builtin": "digits"}}), 422, "model-invalid"
    )
    assert "FancyUnknownOp" in body["detail"]


# ----------------------------------------------------------------------------- temporary files (real uvicorn)


def _send_raw(
    base: str, body: bytes, *, declared: int | None = None, close_early: bool = False, path: str = "/v1/models"
) -> bytes:
    """POST a hand-made multipart body over a socket; with ``close_early`` the client hangs
    up after sending it (its Content-Length promised more). Returns what the server answered."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEYS['alpha']}\r\n"
        f"Content-Type: multipart/form-data; boundary=b0undary\r\n"
        f"Content-Length: {declared or len(body)}\r\n\r\n".encode()
        + body
    )
    answer = b""
    if not close_early:
        with __import__("contextlib").suppress(OSError):
            while not answer.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
    sock.close()
    return answer


def _file_part(name: str, content: bytes) -> bytes:
    return (
        (f'--b0undary\r\nContent-Disposition: form-data; name="{name}"; filename="m.onnx"\r\n\r\n').encode()
        + content
        + b"\r\n"
    )


def _no_temporary_files(settings: Settings) -> None:
    servers.wait_until(lambda: not list((settings.data_dir / "tmp").glob("upload-*")), 30, "temporary files removed")


def test_an_unterminated_multipart_body_gets_400_and_leaves_no_temporary_file(uvicorn_api) -> None:
    base, settings = uvicorn_api
    answer = _send_raw(base, _file_part("file", tiny_onnx_bytes()).rstrip(b"\r\n"))  # no closing boundary
    assert answer.startswith(b"HTTP/1.1 400") and b"malformed-multipart" in answer, answer[:300]
    _no_temporary_files(settings)


def test_repeated_file_parts_get_422_and_leave_no_temporary_file(uvicorn_api) -> None:
    base, settings = uvicorn_api
    body = _file_part("file", tiny_onnx_bytes()) + _file_part("file", tiny_onnx_bytes()) + b"--b0undary--\r\n"
    answer = _send_raw(base, body)
    assert answer.startswith(b"HTTP/1.1 422") and b"duplicate-part" in answer, answer[:300]
    _no_temporary_files(settings)


@pytest.mark.parametrize("path", ["/v1/models", "/v1/jobs/upload"])
def test_a_client_that_disconnects_mid_upload_leaves_no_temporary_file(uvicorn_api, path: str) -> None:
    base, settings = uvicorn_api
    partial = _file_part("file" if path == "/v1/models" else "model", b"\x08\x07" + b"\x00" * 20000)
    _send_raw(base, partial, declared=len(partial) + 40000, close_early=True, path=path)
    _no_temporary_files(settings)
