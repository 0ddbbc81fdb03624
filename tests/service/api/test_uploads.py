"""Uploads of models and datasets: accepted, listed per tenant, refused with reasons."""

from __future__ import annotations

import hashlib

from tests.factories import npz_bytes, tiny_onnx_bytes
from tests.service.api.conftest import as_tenant


def _upload(client, resource: str, content: bytes, filename: str = "file.bin", **kwargs):
    return client.post(f"/v1/{resource}", files={"file": (filename, content)}, **kwargs)


def test_an_onnx_upload_is_accepted_for_validation_with_its_sha256(client) -> None:
    content = tiny_onnx_bytes()
    response = _upload(client, "models", content, "model.onnx")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "validating"
    assert body["format"] == "onnx"
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["size_bytes"] == len(content)
    assert response.headers["location"] == f"/v1/models/{body['id']}"
    assert client.get(f"/v1/models/{body['id']}").json()["id"] == body["id"]


def test_another_tenant_neither_sees_nor_deletes_a_model(client) -> None:
    model_id = _upload(client, "models", tiny_onnx_bytes()).json()["id"]
    assert client.get(f"/v1/models/{model_id}", headers=as_tenant("beta")).status_code == 404
    assert client.delete(f"/v1/models/{model_id}", headers=as_tenant("beta")).status_code == 404
    assert client.get("/v1/models", headers=as_tenant("beta")).json()["items"] == []
    assert [m["id"] for m in client.get("/v1/models").json()["items"]] == [model_id]


def test_deleting_a_model_removes_it(client) -> None:
    model_id = _upload(client, "models", tiny_onnx_bytes()).json()["id"]
    assert client.delete(f"/v1/models/{model_id}").status_code == 204
    assert client.get(f"/v1/models/{model_id}").status_code == 404


def test_a_declared_body_over_the_limit_is_refused_before_it_is_stored(client, settings) -> None:
    content = b"\x08" + b"\x00" * (settings.max_upload_bytes + 300 * 1024)
    response = _upload(client, "models", content, "big.onnx")
    assert response.status_code == 413
    assert response.json()["type"].endswith("/upload-too-large")
    assert list((settings.data_dir / "tmp").glob("upload-*")) == []


def test_a_dataset_npz_is_accepted_and_a_model_file_is_not_a_dataset(client) -> None:
    assert _upload(client, "datasets", npz_bytes(), "data.npz").status_code == 202
    response = _upload(client, "datasets", tiny_onnx_bytes(), "data.npz")
    assert response.status_code == 422
    assert response.json()["type"].endswith("/unsupported-format")


def test_an_upload_without_a_file_part_is_explained(client) -> None:
    response = client.post("/v1/models", files={"other": ("x", b"abc")})
    assert response.status_code == 422
    assert "`file`" in response.json()["detail"]


def test_a_non_multipart_upload_is_refused_with_how_to_send_it(client) -> None:
    response = client.post("/v1/models", content=b"abc", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


def _onnx_with_payload(payload_bytes: int) -> bytes:
    """A valid ONNX model (Identity) carrying one initializer of ``payload_bytes`` raw bytes."""
    import numpy as np
    from onnx import TensorProto, helper

    count = payload_bytes // 4
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[count])
    tensor.raw_data = np.random.default_rng(0).standard_normal(count).astype(np.float32).tobytes()
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[tensor],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def test_an_upload_larger_than_several_receive_blocks_is_stored_whole_with_its_sha256(client, monkeypatch) -> None:
    from service.api import uploads

    monkeypatch.setattr(uploads, "BLOCK_BYTES", 16 * 1024)  # blocks small enough for the test's 64 KiB limit
    content = _onnx_with_payload(2 * 16 * 1024 + 12_344)  # two full blocks and a partial one
    response = _upload(client, "models", content, "big.onnx")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["size_bytes"] == len(content) and body["sha256"] == hashlib.sha256(content).hexdigest()
