"""Hostile and malformed input: every answer is a problem+json with a stable ``type`` and a
``detail`` that says how to fix the request; nothing hostile is stored, executed or followed.

Most checks run the real app in-process on the embedded defaults (SQLite, files); body-size
limits are checked against a real uvicorn process over a raw socket (so "refused before the
body is stored" is observable), and the checks that need a worker's deep inspection use the
session's redis + moto + PostgreSQL + celery worker.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import select
import socket
import struct
import threading
import tracemalloc
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.deps import hash_key
from service.core import jobs as job_states
from service.core import sniff
from service.core.config import Settings
from service.core.webhooks import CallbackRefused, deliver, verify
from service.main import create_app
from tests import servers
from tests.factories import digits_mlp_onnx, malicious_pickle, npz_bytes, tiny_onnx_bytes

KEYS = {"alpha": "hostile-alpha-0123456789", "beta": "hostile-beta-0123456789"}
LIMIT = 64 * 1024
TYPE_BASE = "https://shears.dev/problems/"


def _as(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def problem(response, status: int, *types: str) -> dict:
    """Assert a problem+json answer: status, a stable type (one of ``types``), a detail that
    tells the user what to do."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].startswith(TYPE_BASE) and body["status"] == status
    if types:
        assert body["type"].removeprefix(TYPE_BASE) in types, body
    assert len(body["detail"]) >= 30, body
    return body


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, api_keys={hash_key(k): t for t, k in KEYS.items()}, max_upload_bytes=LIMIT)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, reaper=False), headers=_as("alpha")) as c:
        yield c


def _upload(client, kind: str, content: bytes, filename: str = "upload.bin"):
    return client.post(f"/v1/{kind}", files={"file": (filename, content)})


def _nothing_stored(client, settings: Settings) -> None:
    assert client.get("/v1/models").json()["items"] == []
    assert client.get("/v1/datasets").json()["items"] == []
    assert list((settings.data_dir / "tmp").glob("upload-*")) == []


# ----------------------------------------------------------------------------- keys and tenants


@pytest.mark.parametrize("path", ["/v1/models", "/v1/datasets", "/v1/jobs", "/v1/jobs/job_0/artifacts"])
@pytest.mark.parametrize("authorization", ["", "Bearer", "Bearer not-a-key", "Basic " + "a" * 20, "Bearer " + "x" * 10000])
def test_a_missing_or_invalid_key_gets_401(client, path: str, authorization: str) -> None:
    response = client.get(path, headers={"Authorization": authorization})
    problem(response, 401, "unauthenticated", "invalid-api-key")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_another_tenants_ids_answer_404_everywhere(client) -> None:
    model_id = _upload(client, "models", tiny_onnx_bytes(), "m.onnx").json()["id"]
    dataset_id = _upload(client, "datasets", npz_bytes(), "d.npz").json()["id"]
    job_id = client.post("/v1/jobs", json={"model_id": model_id, "dataset_id": dataset_id}).json()["id"]
    beta = _as("beta")
    for method, path, kind in [
        ("GET", f"/v1/models/{model_id}", "model-not-found"), ("DELETE", f"/v1/models/{model_id}", "model-not-found"),
        ("GET", f"/v1/datasets/{dataset_id}", "dataset-not-found"),
        ("DELETE", f"/v1/datasets/{dataset_id}", "dataset-not-found"),
        ("GET", f"/v1/jobs/{job_id}", "job-not-found"), ("POST", f"/v1/jobs/{job_id}/cancel", "job-not-found"),
        ("GET", f"/v1/jobs/{job_id}/events", "job-not-found"), ("GET", f"/v1/jobs/{job_id}/artifacts", "job-not-found"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/model.onnx", "job-not-found"),
        ("GET", f"/v1/jobs/{job_id}/report", "job-not-found"), ("GET", f"/v1/jobs/{job_id}/report.html", "job-not-found"),
    ]:  # fmt: skip
        problem(client.request(method, path, headers=beta), 404, kind)
    problem(client.post("/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}}, headers=beta),
            422, "model-not-found")  # fmt: skip
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # beta's cancel changed nothing


# ----------------------------------------------------------------------------- body size (real uvicorn)


@pytest.fixture(scope="module")
def uvicorn_api(tmp_path_factory, server_logs: Path) -> Iterator[tuple[str, Settings]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("hostile-api"), max_upload_bytes=LIMIT,
                        api_keys={hash_key(k): t for t, k in KEYS.items()})  # fmt: skip
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
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.onnx\"\r\n\r\n").encode()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEYS['alpha']}\r\n"
                 f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n\r\n".encode())  # fmt: skip
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


# ----------------------------------------------------------------------------- unreadable files


def _truncated_npz() -> bytes:
    return npz_bytes()[:300]


def _random(n: int = 4096) -> bytes:
    return np.random.default_rng(7).bytes(n)


GARBAGE = {
    "empty": b"",
    "random": _random(),
    "zeros": b"\x00" * 1000,
    "truncated-onnx": tiny_onnx_bytes()[:-7],
    "onnx-head-only": tiny_onnx_bytes()[:3],
    "truncated-npz": _truncated_npz(),
    "truncated-safetensors": struct.pack("<Q", 200) + b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
    "text": b"hello, I am a model",
    "html": b"<html><body>not a model</body></html>",
}
EXTENSIONS = [".onnx", ".safetensors", ".npz", ".pt", ".pkl", ""]


@pytest.mark.parametrize("extension", EXTENSIONS)
@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_empty_random_and_truncated_files_get_422_with_a_named_reason_under_any_extension(
    client, settings, name: str, extension: str
) -> None:
    content = GARBAGE[name]
    model = problem(_upload(client, "models", content, f"file{extension}"), 422)
    dataset = problem(_upload(client, "datasets", content, f"file{extension}"), 422)
    named = {"empty-file", "unsupported-format", "invalid-onnx", "invalid-safetensors", "pickle-refused"}
    assert model["type"].removeprefix(TYPE_BASE) in named and dataset["type"].removeprefix(TYPE_BASE) in named
    if name == "truncated-onnx":
        assert model["type"].endswith("/invalid-onnx")  # a synchronous 422, not a later `invalid`
    _nothing_stored(client, settings)


# ----------------------------------------------------------------------------- pickles


def _torch_save_like(marker: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", malicious_pickle(marker))
        archive.writestr("archive/version", b"3")
    return buffer.getvalue()


@pytest.mark.parametrize("extension", EXTENSIONS)
@pytest.mark.parametrize("protocol", [0, 2, 4, 5, "torch.save-zip"])
def test_pickles_are_refused_and_their_payload_never_runs(client, settings, tmp_path, protocol, extension) -> None:
    marker = tmp_path / "pwned"
    if protocol == "torch.save-zip":
        content = _torch_save_like(marker)
    else:
        content = pickle.dumps(_Boom(marker), protocol=protocol)
    for kind in ("models", "datasets"):
        body = problem(_upload(client, kind, content, f"weights{extension}"), 422)
        assert body["type"].removeprefix(TYPE_BASE) in {"pickle-refused", "unsupported-format"}, body
        if protocol != 0:  # protocol 0 is plain text opcodes: refused as an unknown format
            assert body["type"].endswith("/pickle-refused")
    assert not marker.exists()
    _nothing_stored(client, settings)


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- ONNX


def _onnx_with_external(location: str) -> bytes:
    import onnx

    model = onnx.load_model_from_string(tiny_onnx_bytes())
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "48")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


@pytest.mark.parametrize("location", ["/etc/passwd", "../../../etc/passwd", "weights/../../secret.bin",
                                      "C:\\Windows\\win.ini", "link-to-root", "model.onnx.data"])  # fmt: skip
def test_onnx_external_data_is_refused_synchronously(client, settings, location: str) -> None:
    """An upload is one file: external data can only point outside it (absolute, `..`, or a
    name that a symlink next to the upload could redirect)."""
    body = problem(_upload(client, "models", _onnx_with_external(location), "model.onnx"), 422,
                   "external-data-outside-upload")  # fmt: skip
    assert "save_as_external_data=False" in body["detail"]
    _nothing_stored(client, settings)


def test_an_onnx_file_over_the_protobuf_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    """Sending 2 GiB through a test is impractical; the API's check runs on the stored size
    (a sparse file here) before any parsing."""
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as stream:
        stream.write(tiny_onnx_bytes())
        stream.truncate(2 << 30)
    with pytest.raises(sniff.Unacceptable) as refused:
        sniff.check_model_file(path, allow_torchscript=False)
    assert refused.value.code == "model-too-large"


def test_onnx_from_torch_exporters_passes_the_structural_check(tmp_path: Path) -> None:
    """No false refusals: real exports (legacy and dynamo exporters) pass the API's check."""
    import torch

    from tests.worker.io.conftest import Residual

    for cls in (Residual,):
        for dynamo in (False, True):
            path = tmp_path / f"{cls.__name__}-{dynamo}.onnx"
            options = {"external_data": False} if dynamo else {"dynamic_axes": {"x": {0: "batch"}}}
            torch.onnx.export(cls().eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=dynamo,
                              input_names=["x"], **options)  # fmt: skip
            assert sniff.check_model_file(path, allow_torchscript=False) == "onnx"


# ----------------------------------------------------------------------------- safetensors


def _safetensors(header: dict | bytes, data: bytes = b"\x00" * 16, declared: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


LYING = {
    "offsets-out-of-range": {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}},
    "negative-offset": {"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}},
    "overlapping": {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}},
    "huge-counts": {"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}},
    "shape-size-mismatch": {"w": {"dtype": "F64", "shape": [4], "data_offsets": [0, 16]}},
    "unknown-dtype": {"w": {"dtype": "F1024", "shape": [1], "data_offsets": [0, 16]}},
    "not-a-tensor": {"w": [1, 2, 3]},
    "header-length-beyond-file": "declared",
    "header-not-json": b"{not json at all",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LYING))
def test_safetensors_with_a_lying_header_get_422_in_bounded_memory(client, settings, case: str) -> None:
    header = LYING[case]
    content = (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, declared=1 << 60)
               if header == "declared" else _safetensors(header))  # fmt: skip
    tracemalloc.start()
    for kind in ("models", "datasets"):
        problem(_upload(client, kind, content, "weights.safetensors"), 422, "invalid-safetensors")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 << 20, f"checking a lying header took {peak} bytes"
    _nothing_stored(client, settings)


# ----------------------------------------------------------------------------- job specs and headers


@pytest.fixture
def model_id(client) -> str:
    return _upload(client, "models", tiny_onnx_bytes(), "m.onnx").json()["id"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"pipeline": [{"prune_channels": {"ratio": 1.5}}]}, "pipeline.0"),
        ({"pipeline": [{"finetune": {"epochs": "many"}}]}, "pipeline.0"),
        ({"pipeline": [{"finetune": {"epochs": 10**12}}]}, "pipeline.0"),
        ({"pipeline": [{"probmask": {"sparsity": float("nan")}}]}, "body"),
        ({"pipeline": []}, "pipeline"),
        ({"pipeline": [{"finetune": {}}] * 17}, "pipeline"),
        ({"seed": -1}, "seed"),
        ({"time_limit_s": 1}, "time_limit_s"),
        ({"architecture": "A" * 900_000}, "architecture"),
        ({"callback_url": "https://x.example/" + "a" * 5000}, "callback_url"),
        ({"export": {"formats": ["onnx"] * 3}}, "export.formats"),
        ({"export": {"opset": "latest"}}, "export.opset"),
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"dataset": {"builtin": "imagenet"}}, "dataset.builtin"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_bad_spec_values_get_422_naming_the_field(client, model_id, patch: dict, field: str) -> None:
    raw = json.dumps({"model_id": model_id, "dataset": {"builtin": "digits"}, **patch}, allow_nan=True)
    body = problem(client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"}), 422,
                   "invalid-spec")  # fmt: skip
    fields = [error["field"] for error in body["errors"]]
    assert any(f.startswith(field) or field == "body" for f in fields), fields


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_specs_are_refused_without_a_crash(client, model_id, depth: int) -> None:
    raw = '{"model_id": "%s", "dataset": {"builtin": "digits"}, "pipeline": %s1%s}' % (model_id, "[" * depth, "]" * depth)
    response = client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    problem(response, 413 if len(raw) > 1 << 20 else 422, "invalid-spec", "spec-too-large")


def test_a_spec_over_one_mebibyte_gets_413(client, model_id) -> None:
    raw = json.dumps({"model_id": model_id, "dataset": {"builtin": "digits"}, "architecture": "A" * (2 << 20)})
    problem(client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"}), 413, "spec-too-large")


@pytest.mark.parametrize("key", ["", " padded ", "tab\tkey", "k" * 256, "k" * 5000])
def test_malformed_idempotency_keys_are_refused(client, model_id, key: str) -> None:
    response = client.post("/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}},
                           headers={"Idempotency-Key": key})  # fmt: skip
    problem(response, response.status_code, "invalid-idempotency-key", "invalid-request")
    assert response.status_code in {400, 422}
    assert client.get("/v1/jobs").json()["items"] == []


def test_an_idempotency_key_reused_with_another_body_is_refused(client, model_id) -> None:
    spec = {"model_id": model_id, "dataset": {"builtin": "digits"}}
    first = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "ci-run-1"})
    assert first.status_code == 202
    problem(client.post("/v1/jobs", json={**spec, "seed": 1}, headers={"Idempotency-Key": "ci-run-1"}), 422,
            "idempotency-key-reused")  # fmt: skip
    assert len(client.get("/v1/jobs").json()["items"]) == 1


@pytest.mark.parametrize("cursor", ["!!!", "bm90IGpzb24", "eyJhIjogMX0", "WzEsIDJd", "WyJub3QgYSBkYXRlIiwgIngiXQ", "x" * 600])
def test_bad_cursors_are_refused(client, cursor: str) -> None:
    response = client.get("/v1/jobs", params={"cursor": cursor})
    problem(response, 400 if len(cursor) <= 512 else 422, "invalid-cursor", "invalid-request")


def test_artifacts_of_unfinished_and_failed_jobs_answer_409(client, model_id) -> None:
    queued = client.post("/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}}).json()["id"]
    failed = client.post("/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}, "seed": 2}).json()["id"]
    assert job_states.fail(client.app.state.sessions, failed, "timeout", "ran too long", "finetune")
    for job_id in (queued, failed):
        for suffix in ("artifacts", "artifacts/model.onnx", "report", "report.html"):
            problem(client.get(f"/v1/jobs/{job_id}/{suffix}"), 409, "job-not-succeeded")


# ----------------------------------------------------------------------------- webhooks


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost:8080/hook", "http://[::1]/hook", "http://169.254.169.254/latest/meta-data",
    "http://10.1.2.3/hook", "http://192.168.0.1/hook", "http://0.0.0.0/hook", "http://2130706433/hook",
    "http://0x7f000001/hook", "http://[::ffff:127.0.0.1]/hook", "ftp://example.com/hook", "file:///etc/passwd",
    "http://user:pass@example.com/hook", "http://no-such-host.invalid/hook",
])  # fmt: skip
def test_callbacks_to_internal_or_odd_addresses_are_refused_at_creation(client, model_id, url: str) -> None:
    response = client.post("/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}, "callback_url": url})
    body = problem(response, 422, "callback-refused")
    assert body["errors"][0]["field"] == "callback_url"


class _Receiver:
    """A real HTTP server on loopback that records requests and answers with ``status``."""

    def __init__(self, status: int, location: str | None = None) -> None:
        self.hits: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.hits.append((dict(self.headers), body))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_delivery_does_not_follow_a_redirect_to_an_internal_address() -> None:
    internal = _Receiver(200)
    redirector = _Receiver(307, location=internal.url)
    try:
        payload = {"id": "job_x", "status": "succeeded"}
        delivered = deliver(redirector.url, payload, "secret", allow_private=True, attempts=2, backoff_s=0.01)
        assert delivered is False
        assert len(redirector.hits) == 1  # a 3xx is final: no retry storm, no follow
        assert internal.hits == []
        headers, body = redirector.hits[0]
        assert verify("secret", headers["Shears-Webhook-Id"], headers["Shears-Signature"], body)
        # without the operator's opt-in, a loopback receiver is not even contacted
        with pytest.raises(CallbackRefused):
            deliver(internal.url, payload, "secret", allow_private=False, attempts=1)
        assert internal.hits == []
    finally:
        internal.close()
        redirector.close()


# ----------------------------------------------------------------------------- deep checks in a worker


@pytest.fixture
def worker_client(service_settings: Settings, celery_worker) -> Iterator[TestClient]:
    settings = service_settings.model_copy(update={"api_keys": {hash_key(KEYS["alpha"]): "alpha"}})
    with TestClient(create_app(settings, reaper=False), headers=_as("alpha")) as c:
        yield c


def _inspected(client, kind: str, item_id: str) -> dict:
    servers.wait_until(lambda: client.get(f"/v1/{kind}/{item_id}").json()["status"] != "validating", 90,
                       f"{kind} inspection", interval=0.1)  # fmt: skip
    return client.get(f"/v1/{kind}/{item_id}").json()


def _unsupported_operator_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="relu_1"),
         helper.make_node("FancyUnknownOp", ["h"], ["y"], name="mystery_node", domain="com.example")],
        "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )  # fmt: skip
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
    body = problem(client.post("/v1/jobs", json={"model_id": model["id"], "dataset": {"builtin": "digits"}}), 422,
                   "model-invalid")  # fmt: skip
    assert "FancyUnknownOp" in body["detail"]


def test_an_npz_smuggling_a_pickle_is_marked_invalid_and_the_payload_never_runs(worker_client, tmp_path: Path) -> None:
    client = worker_client
    marker = tmp_path / "pwned-by-npz"
    buffer = io.BytesIO()
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = _Boom(marker), _Boom(marker)
    np.savez(buffer, x_train=objects, y_train=np.zeros(2, np.int64), x_val=objects, y_val=np.zeros(2, np.int64))
    accepted = _upload(client, "datasets", buffer.getvalue(), "data.npz")
    assert accepted.status_code == 202, accepted.text  # an npz by its bytes; the worker reads it
    dataset = _inspected(client, "datasets", accepted.json()["id"])
    assert dataset["status"] == "invalid", dataset
    assert "pickle" in dataset["error"]["message"].lower() or dataset["error"]["code"] in {"invalid-npz", "bad-dtype"}
    assert not marker.exists()
    body = problem(client.post("/v1/jobs", json={"model_id": _upload(client, "models", digits_mlp_onnx(), "m.onnx")
                                                 .json()["id"], "dataset_id": dataset["id"]}), 422, "dataset-invalid")  # fmt: skip
    assert body["errors"][0]["field"] == "dataset_id"
