"""Hostile and malformed requests against the real app in-process (embedded defaults: SQLite,
files): every answer is a problem+json with a stable ``type`` and a ``detail`` that says how to
fix the request; nothing hostile is stored, executed or followed. The checks that need real
processes (a uvicorn socket, a worker's deep inspection) live in tests/integration."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.deps import hash_key
from service.core import jobs as job_states
from service.core.config import Settings
from service.main import create_app
from tests.factories import malicious_pickle, npz_bytes, tiny_onnx_bytes
from tests.hostile import KEYS, LIMIT, TYPE_BASE, problem
from tests.hostile import as_tenant as _as
from tests.hostile import nothing_stored as _nothing_stored
from tests.hostile import upload as _upload


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, api_keys={hash_key(k): t for t, k in KEYS.items()}, max_upload_bytes=LIMIT)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, reaper=False), headers=_as("alpha")) as c:
        yield c


# ----------------------------------------------------------------------------- keys and tenants


@pytest.mark.parametrize("path", ["/v1/models", "/v1/datasets", "/v1/jobs", "/v1/jobs/job_0/artifacts"])
@pytest.mark.parametrize(
    "authorization", ["", "Bearer", "Bearer not-a-key", "Basic " + "a" * 20, "Bearer " + "x" * 10000]
)
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
        ("GET", f"/v1/models/{model_id}", "model-not-found"),
        ("DELETE", f"/v1/models/{model_id}", "model-not-found"),
        ("GET", f"/v1/datasets/{dataset_id}", "dataset-not-found"),
        ("DELETE", f"/v1/datasets/{dataset_id}", "dataset-not-found"),
        ("GET", f"/v1/jobs/{job_id}", "job-not-found"),
        ("POST", f"/v1/jobs/{job_id}/cancel", "job-not-found"),
        ("GET", f"/v1/jobs/{job_id}/events", "job-not-found"),
        ("GET", f"/v1/jobs/{job_id}/artifacts", "job-not-found"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/model.onnx", "job-not-found"),
        ("GET", f"/v1/jobs/{job_id}/report", "job-not-found"),
        ("GET", f"/v1/jobs/{job_id}/report.html", "job-not-found"),
    ]:
        problem(client.request(method, path, headers=beta), 404, kind)
    problem(
        client.post("/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}}, headers=beta),
        422,
        "model-not-found",
    )
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # beta's cancel changed nothing


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


@pytest.mark.parametrize(
    "location",
    [
        "/etc/passwd",
        "../../../etc/passwd",
        "weights/../../secret.bin",
        "C:\\Windows\\win.ini",
        "link-to-root",
        "model.onnx.data",
    ],
)
def test_onnx_external_data_is_refused_synchronously(client, settings, location: str) -> None:
    """An upload is one file: external data can only point outside it (absolute, `..`, or a
    name that a symlink next to the upload could redirect)."""
    body = problem(
        _upload(client, "models", _onnx_with_external(location), "model.onnx"), 422, "external-data-outside-upload"
    )
    assert "save_as_external_data=False" in body["detail"]
    _nothing_stored(client, settings)


# ----------------------------------------------------------------------------- safetensors


def _safetensors(header: dict | bytes, data: bytes = b"\x00" * 16, declared: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


LYING = {
    "offsets-out-of-range": {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}},
    "negative-offset": {"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}},
    "overlapping": {
        "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    },
    "huge-counts": {"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}},
    "shape-size-mismatch": {"w": {"dtype": "F64", "shape": [4], "data_offsets": [0, 16]}},
    "unknown-dtype": {"w": {"dtype": "F1024", "shape": [1], "data_offsets": [0, 16]}},
    "not-a-tensor": {"w": [1, 2, 3]},
    "header-length-beyond-file": "declared",
    "header-not-json": b"{not json at all",
}


@pytest.mark.parametrize("case", sorted(LYING))
def test_safetensors_with_a_lying_header_get_422_in_bounded_memory(client, settings, case: str) -> None:
    header = LYING[case]
    content = (
        _safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, declared=1 << 60)
        if header == "declared"
        else _safetensors(header)
    )
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
    body = problem(
        client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"}), 422, "invalid-spec"
    )
    fields = [error["field"] for error in body["errors"]]
    assert any(f.startswith(field) or field == "body" for f in fields), fields


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_specs_are_refused_without_a_crash(client, model_id, depth: int) -> None:
    nested = "[" * depth + "1" + "]" * depth
    raw = f'{{"model_id": "{model_id}", "dataset": {{"builtin": "digits"}}, "pipeline": {nested}}}'
    response = client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    problem(response, 413 if len(raw) > 1 << 20 else 422, "invalid-spec", "spec-too-large")


def test_a_spec_over_one_mebibyte_gets_413(client, model_id) -> None:
    raw = json.dumps({"model_id": model_id, "dataset": {"builtin": "digits"}, "architecture": "A" * (2 << 20)})
    problem(client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"}), 413, "spec-too-large")


@pytest.mark.parametrize("key", ["", " padded ", "tab\tkey", "k" * 256, "k" * 5000])
def test_malformed_idempotency_keys_are_refused(client, model_id, key: str) -> None:
    response = client.post(
        "/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}}, headers={"Idempotency-Key": key}
    )
    problem(response, response.status_code, "invalid-idempotency-key", "invalid-request")
    assert response.status_code in {400, 422}
    assert client.get("/v1/jobs").json()["items"] == []


@pytest.mark.parametrize(
    "cursor", ["!!!", "bm90IGpzb24", "eyJhIjogMX0", "WzEsIDJd", "WyJub3QgYSBkYXRlIiwgIngiXQ", "x" * 600]
)
def test_bad_cursors_are_refused(client, cursor: str) -> None:
    response = client.get("/v1/jobs", params={"cursor": cursor})
    problem(response, 400 if len(cursor) <= 512 else 422, "invalid-cursor", "invalid-request")


def test_artifacts_of_unfinished_and_failed_jobs_answer_409(client, model_id) -> None:
    queued = client.post("/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}}).json()["id"]
    failed = client.post("/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}, "seed": 2}).json()[
        "id"
    ]
    assert job_states.fail(client.app.state.sessions, failed, "timeout", "ran too long", "finetune")
    for job_id in (queued, failed):
        for suffix in ("artifacts", "artifacts/model.onnx", "report", "report.html"):
            problem(client.get(f"/v1/jobs/{job_id}/{suffix}"), 409, "job-not-succeeded")
    queued_detail = client.get(f"/v1/jobs/{queued}/artifacts").json()["detail"]
    failed_detail = client.get(f"/v1/jobs/{failed}/artifacts").json()["detail"]
    assert f"Poll GET /v1/jobs/{queued} until then" in queued_detail  # the job's id, not a template
    assert "It will not" in failed_detail and "Poll" not in failed_detail


# ----------------------------------------------------------------------------- webhooks


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://0.0.0.0/hook",
        "http://2130706433/hook",
        "http://0x7f000001/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http://user:pass@example.com/hook",
        "http://no-such-host.invalid/hook",
    ],
)
def test_callbacks_to_internal_or_odd_addresses_are_refused_at_creation(client, model_id, url: str) -> None:
    response = client.post(
        "/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}, "callback_url": url}
    )
    body = problem(response, 422, "callback-refused")
    assert body["errors"][0]["field"] == "callback_url"


def test_an_npz_smuggling_a_pickle_is_refused_at_upload_and_the_payload_never_runs(client, settings, tmp_path) -> None:
    marker = tmp_path / "pwned-by-npz"
    buffer = io.BytesIO()
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = _Boom(marker), _Boom(marker)
    np.savez(buffer, x_train=objects, y_train=np.zeros(2, np.int64), x_val=objects, y_val=np.zeros(2, np.int64))
    body = problem(_upload(client, "datasets", buffer.getvalue(), "data.npz"), 422, "pickle-refused")
    assert "numpy.savez" in body["detail"]
    assert not marker.exists()
    _nothing_stored(client, settings)


def test_an_onnx_declaring_an_opset_no_release_defines_is_refused_at_upload(client, settings) -> None:
    import onnx

    model = onnx.load_model_from_string(tiny_onnx_bytes())
    model.opset_import[0].version = 99
    body = problem(_upload(client, "models", model.SerializeToString(), "m.onnx"), 422, "unsupported-opset")
    assert "opset 99" in body["detail"] and "opset_version" in body["detail"]
    _nothing_stored(client, settings)


def _zeros_npz(rows: int) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((rows, 1 << 16), np.uint8), y=np.zeros(rows, np.int64))
    return buffer.getvalue()


def test_an_npz_compression_bomb_is_refused_at_upload_from_its_headers(client, settings) -> None:
    content = _zeros_npz(64)  # 4 MiB of zeros in a few KiB: inflates over 200:1
    assert len(content) < LIMIT
    body = problem(_upload(client, "datasets", content, "d.npz"), 422, "npz-compression-bomb")
    assert "inflates" in body["detail"]
    _nothing_stored(client, settings)
