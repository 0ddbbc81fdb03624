"""The HTTP contract beyond single routes: timestamps, `Allow`, and that openapi.yaml lists
every error status and media type the app sends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.factories import npz_bytes, tiny_onnx_bytes

PROBLEM_JSON = "application/problem+json"


def _assert_rfc3339_utc(value: str) -> None:
    assert value.endswith("Z"), value
    assert datetime.fromisoformat(value).tzinfo == UTC


def test_get_answers_carry_rfc3339_utc_timestamps_like_post_answers(client) -> None:
    created = client.post("/v1/datasets", files={"file": ("data.npz", npz_bytes())}).json()
    model = client.post("/v1/models", files={"file": ("m.onnx", tiny_onnx_bytes())}).json()
    job = client.post("/v1/jobs", json={"model_id": model["id"], "dataset": {"builtin": "digits"}}).json()
    stamps = [
        created["created_at"],
        client.get(f"/v1/datasets/{created['id']}").json()["created_at"],
        client.get("/v1/datasets").json()["items"][0]["created_at"],
        client.get(f"/v1/models/{model['id']}").json()["created_at"],
        job["created_at"],
        client.get(f"/v1/jobs/{job['id']}").json()["created_at"],
        client.get("/v1/jobs").json()["items"][0]["created_at"],
    ]
    for stamp in stamps:
        _assert_rfc3339_utc(stamp)


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/v1/models", {"GET", "POST"}),
        ("/v1/models/mdl_x", {"GET", "DELETE"}),
        ("/v1/datasets/ds_x", {"GET", "DELETE"}),
        ("/v1/jobs", {"GET", "POST"}),
        ("/v1/jobs/job_x/cancel", {"POST"}),
        ("/v1/jobs/upload", {"POST"}),  # a literal path, not /v1/jobs/{job_id}
        ("/healthz", {"GET"}),
    ],
)
def test_options_and_405_list_every_method_the_path_serves(client, path: str, methods: set[str]) -> None:
    options = client.options(path)
    assert options.status_code == 204
    assert set(options.headers["allow"].split(", ")) == methods | {"OPTIONS"}
    refused = client.put(path)
    assert refused.status_code == 405
    assert refused.headers["content-type"] == PROBLEM_JSON
    assert set(refused.headers["allow"].split(", ")) == methods | {"OPTIONS"}


def _documented(client, path: str, method: str, status: int) -> dict:
    responses = client.get("/openapi.json").json()["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    return responses[str(status)].get("content", {})


def test_a_malformed_multipart_body_gets_a_documented_400_problem(client) -> None:
    response = client.post(
        "/v1/datasets",
        content=b"--b\r\nNone--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 400
    assert response.json()["type"].endswith("/malformed-multipart")
    assert PROBLEM_JSON in _documented(client, "/v1/datasets", "post", 400)


def test_a_422_on_get_jobs_is_problem_json_and_documented_as_such(client) -> None:
    response = client.get("/v1/jobs", params={"limit": 0})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert set(_documented(client, "/v1/jobs", "get", 422)) == {PROBLEM_JSON}


def test_every_documented_error_is_problem_json_and_every_keyed_operation_documents_401_and_429(client) -> None:
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    assert set(response["content"]) == {PROBLEM_JSON}, (method, path, status)
            if operation.get("security"):
                assert {"401", "429", "503"} <= set(operation["responses"]), (method, path)
