"""The jobs resource without a worker: validation, idempotency, polling, paging, cancelling."""

from __future__ import annotations

import json
import math

import pytest

from tests.factories import npz_bytes, tiny_onnx_bytes
from tests.service.api.conftest import as_tenant


@pytest.fixture
def model_id(client) -> str:
    return client.post("/v1/models", files={"file": ("m.onnx", tiny_onnx_bytes())}).json()["id"]


def _spec(model_id: str, **extra) -> dict:
    return {"model_id": model_id, "dataset": {"builtin": "digits"}, **extra}


def test_a_job_is_accepted_queued_with_its_resolved_spec_and_location(client, model_id) -> None:
    response = client.post("/v1/jobs", json=_spec(model_id))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["spec"]["pipeline"][0]["prune_channels"]["criterion"] == "l1"
    assert job["spec"]["acceptance"]["max_accuracy_drop"] == 1.0


@pytest.mark.parametrize(
    ("pipeline", "field"),
    [
        ([{"probmask": {"sparsity": 1.5}}], "pipeline.0.probmask.sparsity"),
        ([{"prune_channels": {"ratio": -0.1}}], "pipeline.0.prune_channels.ratio"),
        ([{"prune_channels": {"ratio": math.nan}}], "pipeline.0.prune_channels.ratio"),
        ([{"prune_channels": {"ratoi": 0.5}}], "pipeline.0.prune_channels.ratoi"),
        ([{"prune_channels": {"criterion": "magic"}}], "pipeline.0.prune_channels.criterion"),
        ([{"prune": {"ratio": 0.5}}], "pipeline.0"),
        ([{"probmask": {}}, {"prune_channels": {}}], "pipeline"),
    ],
    ids=["sparsity-1.5", "ratio-negative", "ratio-nan", "unknown-field", "unknown-criterion", "unknown-stage", "order"],
)
def test_out_of_range_or_unknown_spec_values_get_422_pointing_at_the_field(client, model_id, pipeline, field) -> None:
    body = json.dumps(_spec(model_id, pipeline=pipeline)).replace("NaN", "NaN")
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("/invalid-spec")
    assert [error["field"] for error in problem["errors"]] == [field]  # the one mistake, not one per stage kind
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_job_naming_an_unknown_or_foreign_model_is_refused(client, model_id) -> None:
    response = client.post("/v1/jobs", json=_spec(model_id), headers=as_tenant("beta"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "model_id"


def test_the_same_idempotency_key_and_body_return_the_same_job(client, model_id) -> None:
    headers = {"Idempotency-Key": "ci-run-42"}
    first = client.post("/v1/jobs", json=_spec(model_id), headers=headers)
    again = client.post("/v1/jobs", json=_spec(model_id), headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert len(client.get("/v1/jobs").json()["items"]) == 1


def test_an_idempotency_key_reused_with_another_body_is_refused(client, model_id) -> None:
    headers = {"Idempotency-Key": "ci-run-43"}
    client.post("/v1/jobs", json=_spec(model_id), headers=headers)
    response = client.post("/v1/jobs", json=_spec(model_id, seed=7), headers=headers)
    assert response.status_code == 422
    assert response.json()["type"].endswith("/idempotency-key-reused")


def test_polling_with_the_etag_answers_304_until_the_job_changes(client, model_id) -> None:
    job_id = client.post("/v1/jobs", json=_spec(model_id)).json()["id"]
    first = client.get(f"/v1/jobs/{job_id}")
    etag = first.headers["etag"]
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag}).status_code == 304
    client.post(f"/v1/jobs/{job_id}/cancel")
    changed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["status"] == "cancelled"
    assert changed.headers["etag"] != etag


def test_cancelling_a_queued_job_ends_it_and_a_second_cancel_is_a_conflict(client, model_id) -> None:
    job_id = client.post("/v1/jobs", json=_spec(model_id)).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert response.json()["type"].endswith("/job-finished")


def test_jobs_page_through_with_a_cursor_newest_first_without_repeats(client, model_id) -> None:
    created = [client.post("/v1/jobs", json=_spec(model_id, seed=i)).json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        page = client.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(created))


def test_listing_filters_by_status(client, model_id) -> None:
    keep = client.post("/v1/jobs", json=_spec(model_id, seed=1)).json()["id"]
    gone = client.post("/v1/jobs", json=_spec(model_id, seed=2)).json()["id"]
    client.post(f"/v1/jobs/{gone}/cancel")
    assert [j["id"] for j in client.get("/v1/jobs", params={"status": "queued"}).json()["items"]] == [keep]
    assert [j["id"] for j in client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]] == [gone]


def test_another_tenant_gets_404_for_a_job(client, model_id) -> None:
    job_id = client.post("/v1/jobs", json=_spec(model_id)).json()["id"]
    for method, path in (("get", ""), ("post", "/cancel"), ("get", "/artifacts"), ("get", "/events")):
        response = getattr(client, method)(f"/v1/jobs/{job_id}{path}", headers=as_tenant("beta"))
        assert response.status_code == 404, path


def test_one_multipart_request_uploads_model_and_dataset_and_creates_the_job(client) -> None:
    response = client.post(
        "/v1/jobs",
        files={"model": ("m.onnx", tiny_onnx_bytes()), "dataset": ("d.npz", npz_bytes())},
        data={"spec": json.dumps({"pipeline": [{"finetune": {"epochs": 1}}]})},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["model_id"].startswith("mdl_") and job["dataset_id"].startswith("ds_")
    assert client.get(f"/v1/models/{job['model_id']}").status_code == 200


def test_a_spec_that_is_not_json_gets_422(client, model_id) -> None:
    response = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_the_spec_schema_lists_every_stage(client) -> None:
    schema = client.get("/v1/jobs/spec-schema").json()
    assert {"EarlyBirdStage", "PruneChannelsStage", "ProbMaskStage", "FinetuneStage"} <= set(schema["$defs"])


def _multipart(client, spec: dict, key: str | None = None, path: str = "/v1/jobs/upload"):
    return client.post(
        path,
        files={"model": ("m.onnx", tiny_onnx_bytes()), "dataset": ("d.npz", npz_bytes())},
        data={"spec": json.dumps(spec)},
        headers={"Idempotency-Key": key} if key else {},
    )


def _stored_uploads(settings) -> list:
    root = settings.data_dir / "artifacts" / "uploads"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_a_multipart_job_refused_for_its_callback_stores_no_file_and_no_row(client, settings) -> None:
    response = _multipart(client, {"callback_url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 422 and response.json()["type"].endswith("/callback-refused")
    assert client.get("/v1/models").json()["items"] == [] and client.get("/v1/datasets").json()["items"] == []
    assert _stored_uploads(settings) == []
    assert list((settings.data_dir / "tmp").glob("upload-*")) == []


def test_a_multipart_job_with_an_invalid_spec_stores_nothing(client, settings) -> None:
    response = _multipart(client, {"pipeline": [{"finetune": {"epochs": -1}}]})
    assert response.status_code == 422 and response.json()["type"].endswith("/invalid-spec")
    assert client.get("/v1/models").json()["items"] == [] and _stored_uploads(settings) == []


def test_an_idempotent_multipart_replay_reuses_the_files_of_the_first_request(client, settings) -> None:
    answers = [_multipart(client, {"seed": 3}, key="ci-build-7") for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 200, 200]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(client.get("/v1/models").json()["items"]) == 1
    assert len(client.get("/v1/datasets").json()["items"]) == 1
    assert len(_stored_uploads(settings)) == 2
    other = _multipart(client, {"seed": 4}, key="ci-build-7")
    assert other.status_code == 422 and other.json()["type"].endswith("/idempotency-key-reused")
    assert len(client.get("/v1/models").json()["items"]) == 1


def test_multipart_job_files_take_the_upload_path_and_await_inspection(client) -> None:
    for path in ("/v1/jobs/upload", "/v1/jobs"):  # the dedicated route, and the JSON route's compatibility
        job = _multipart(client, {"seed": 1}, path=path).json()
        model = client.get(f"/v1/models/{job['model_id']}").json()
        dataset = client.get(f"/v1/datasets/{job['dataset_id']}").json()
        assert model["status"] == dataset["status"] == "validating"  # a worker's inspection decides, never the API
        assert model["format"] == "onnx" and job["spec"]["model_id"] == model["id"]


def test_a_multipart_job_with_an_unacceptable_file_is_refused_with_the_upload_reason(client, settings) -> None:
    response = client.post(
        "/v1/jobs/upload",
        files={"model": ("m.onnx", b"")},
        data={"spec": json.dumps({"dataset": {"builtin": "digits"}})},
    )
    assert response.status_code == 422 and response.json()["type"].endswith("/empty-file")
    assert _stored_uploads(settings) == []


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_an_upload_a_queued_job_uses_cannot_be_deleted_until_the_job_ends(client, kind) -> None:
    job = _multipart(client, {"seed": 5}).json()
    item_id = job[f"{kind}_id"]
    refused = client.delete(f"/v1/{kind}s/{item_id}")
    assert refused.status_code == 409
    body = refused.json()
    assert body["type"].endswith(f"/{kind}-in-use") and body["job_id"] == job["id"] and job["id"] in body["detail"]
    assert client.get(f"/v1/{kind}s/{item_id}").status_code == 200
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/{kind}s/{item_id}").status_code == 204
    assert client.get(f"/v1/{kind}s/{item_id}").status_code == 404


@pytest.mark.parametrize("late", ["prune_channels", "early_bird"])
def test_a_channel_stage_after_probmask_is_refused_with_the_order_that_works(client, model_id, late) -> None:
    pipeline = [{"probmask": {"sparsity": 0.9}}, {late: {}}, {"finetune": {}}]
    response = client.post("/v1/jobs", json=_spec(model_id, pipeline=pipeline))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("/invalid-spec")
    assert f"put '{late}' before 'probmask'" in response.text
    assert client.get("/v1/jobs").json()["items"] == []
    works = [{late: {}}, {"probmask": {"sparsity": 0.9}}, {"finetune": {}}]
    assert client.post("/v1/jobs", json=_spec(model_id, pipeline=works)).status_code == 202


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"ratio": 0.5, "target": {"macs": 0.3}}, "ratio or prune_channels.target, not both"),
        ({"target": {"macs": 0.3, "max_accuracy_drop": 1.0}}, "exactly one bound"),
        ({"target": {"batch": 8, "macs": 0.3}}, "with latency_ms only"),
        ({"target": {"latency_ms": 0}}, "latency_ms"),
    ],
    ids=["ratio-and-target", "two-bounds", "batch-without-latency", "latency-zero"],
)
def test_a_target_that_cannot_be_searched_is_refused_with_422_saying_why(client, model_id, prune, message) -> None:
    response = client.post("/v1/jobs", json=_spec(model_id, pipeline=[{"prune_channels": prune}, {"finetune": {}}]))
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("/invalid-spec")
    assert message in response.text
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_job_with_a_target_stores_it_resolved_and_no_ratio(client, model_id) -> None:
    pipeline = [{"prune_channels": {"target": {"latency_ms": 2.5}}}, {"finetune": {}}]
    response = client.post("/v1/jobs", json=_spec(model_id, pipeline=pipeline))
    assert response.status_code == 202, response.text
    stored = response.json()["spec"]["pipeline"][0]["prune_channels"]
    assert stored["ratio"] is None and stored["target"]["latency_ms"] == 2.5 and stored["target"]["batch"] == 1


def test_a_dataset_whose_samples_do_not_fit_the_inspected_model_is_refused_before_a_job_is_queued(
    client, settings, model_id
) -> None:
    from worker.inspection import inspect_dataset_upload, inspect_model_upload  # the worker's real inspection

    state = client.app.state
    datasets = {
        features: client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(features=features))}).json()["id"]
        for features in (4, 5)
    }
    assert inspect_model_upload(model_id, settings, state.sessions, state.store) == "ready"
    for dataset_id in datasets.values():
        assert inspect_dataset_upload(dataset_id, settings, state.sessions, state.store) == "ready"
    response = client.post("/v1/jobs", json={"model_id": model_id, "dataset_id": datasets[5]})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("/input-shape-mismatch")
    assert "[4]" in problem["detail"] and "[5]" in problem["detail"]  # what the model takes, what the data are
    assert [error["field"] for error in problem["errors"]] == ["dataset_id"]
    assert client.get("/v1/jobs").json()["items"] == []
    assert client.post("/v1/jobs", json={"model_id": model_id, "dataset_id": datasets[4]}).status_code == 202
    builtin = client.post("/v1/jobs", json={"model_id": model_id, "dataset": {"builtin": "digits"}})
    assert builtin.status_code == 422 and builtin.json()["errors"][0]["field"] == "dataset.builtin"
