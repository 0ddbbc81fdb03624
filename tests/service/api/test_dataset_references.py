"""POST /v1/datasets with {"uri": ...}: registered by reference when the operator allows the
prefix, refused with a named problem otherwise; nothing is copied through the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.deps import hash_key
from service.core.config import Settings
from service.main import create_app
from tests.hostile import problem
from tests.service.api.conftest import KEYS, as_tenant

ALLOWED = "s3://datasets/team-a/"


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, reaper=False), headers={"Authorization": f"Bearer {KEYS['alpha']}"})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        api_keys={hash_key(k): t for t, k in KEYS.items()},
        dataset_reference_prefixes=[ALLOWED],
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with _client(settings) as c:
        yield c


def test_a_prefix_under_an_allowed_prefix_is_registered_validating_without_storing_anything(client, settings) -> None:
    response = client.post("/v1/datasets", json={"uri": ALLOWED + "pets/"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["source_uri"], body["filename"]) == ("validating", ALLOWED + "pets/", "pets")
    assert response.headers["Location"] == f"/v1/datasets/{body['id']}"
    stored = settings.data_dir / "artifacts"
    assert [p for p in stored.rglob("*") if p.is_file()] == []  # the worker stores the manifest, the API nothing
    listed = client.get("/v1/datasets").json()["items"]
    assert [item["source_uri"] for item in listed] == [ALLOWED + "pets/"]
    assert client.get(f"/v1/datasets/{body['id']}", headers=as_tenant("beta")).status_code == 404
    assert client.delete(f"/v1/datasets/{body['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{body['id']}").status_code == 404


def test_without_allowed_prefixes_registering_by_reference_is_off_and_the_problem_names_the_setting(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, api_keys={hash_key(KEYS["alpha"]): "alpha"})
    with _client(settings) as client:
        body = problem(client.post("/v1/datasets", json={"uri": ALLOWED + "pets/"}), 403, "references-disabled")
        assert "SHEARS_DATASET_REFERENCE_PREFIXES" in body["detail"]
        assert client.get("/v1/datasets").json()["items"] == []


@pytest.mark.parametrize(
    ("payload", "status", "code", "named"),
    [
        ({"uri": "s3://datasets/team-b/pets/"}, 403, "reference-not-allowed", ALLOWED),
        ({"uri": "s3://datasets/team-a/../team-b/"}, 422, "invalid-reference", "'..'"),
        ({"uri": "gs://datasets/team-a/pets/"}, 422, "invalid-reference", "'gs'"),
        ({"uri": "s3://datasets/team-a/readme.md"}, 422, "invalid-reference", "end the URI with '/'"),
        ({"uri": 7}, 422, "invalid-request", "uri"),
        ({"uri": ALLOWED, "copy": True}, 422, "invalid-request", "copy"),
        ({}, 422, "invalid-request", "uri"),
    ],
    ids=["outside-allowlist", "dotdot", "other-scheme", "not-a-dataset-object", "not-a-string", "extra-field", "empty"],
)
def test_bad_references_get_a_problem_naming_what_to_fix_and_nothing_is_registered(
    client, payload, status, code, named
) -> None:
    body = problem(client.post("/v1/datasets", json=payload), status, code)
    assert named in body["detail"] or named in str(body.get("errors"))
    assert client.get("/v1/datasets").json()["items"] == []


def test_an_oversized_json_body_is_413_and_models_still_need_multipart(client) -> None:
    problem(client.post("/v1/datasets", json={"uri": "s3://datasets/team-a/" + "a" * 70_000}), 413, "body-too-large")
    problem(client.post("/v1/models", json={"uri": ALLOWED + "m.onnx"}), 415, "multipart-required")
