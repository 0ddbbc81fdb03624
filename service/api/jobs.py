"""``/v1/jobs``: create (JSON or one multipart request), poll, list, cancel, stream events,
and download reports and artifacts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from service.api.errors import Problem
from service.api.schemas import JobList, JobOut
from service.api.uploads import receive_form
from service.api.uploads_router import check_received, discard_uploads, store_and_inspect
from service.core import artifacts, crud
from service.core import jobs as job_states
from service.core.contracts import JobReport
from service.core.dispatch import dispatch_job
from service.core.intake.pairing import input_shape_conflict, sample_shape
from service.core.models import DatasetRecord, JobRecord, ModelRecord, new_id
from service.core.spec import JOB_SPEC_EXAMPLE, JobSpec
from service.core.webhooks import CallbackRefused, check_callback_url

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_PROBLEM = {"content": {"application/problem+json": {}}}


def _dispatch(request: Request, job_id: str) -> None:
    state = request.app.state
    dispatch_job(state.sessions, state.celery, state.settings, job_id)


def _field_path(loc: tuple) -> str:
    """``pipeline.0.prune_channels.ratio``: a stage's name appears once (pydantic's location of
    a pipeline entry repeats it: the tag of the stage union, then the stage's field)."""
    parts = [str(p) for p in loc]
    if len(parts) >= 4 and parts[0] == "pipeline" and parts[2] == parts[3]:
        del parts[3]
    return ".".join(parts)


def _problem_from_validation(error: ValidationError, prefix: str = "") -> Problem:
    errors = [{"field": prefix + _field_path(e["loc"]), "message": e["msg"]} for e in error.errors()]
    fields = ", ".join(e["field"].rstrip(".") or "body" for e in errors)
    return Problem(
        422,
        "invalid-spec",
        f"The job spec is invalid at {fields}; fix those fields (GET /v1/jobs/spec-schema lists every field).",
        errors=errors,
    )


def _check_idempotency_key(key: str | None) -> None:
    if key is not None and not (1 <= len(key) <= 255 and key.isprintable() and key.strip() == key and key):
        raise Problem(400, "invalid-idempotency-key", "Idempotency-Key must be 1-255 printable characters.")


def _check_callback(spec: JobSpec, settings) -> None:
    if spec.callback_url:
        try:
            check_callback_url(spec.callback_url, settings.allow_private_callbacks)
        except CallbackRefused as error:
            raise Problem(
                422, "callback-refused", str(error), errors=[{"field": "callback_url", "message": str(error)}]
            ) from error


def _earlier_job(request: Request, tenant: str, idempotency_key: str | None, request_hash: str) -> JobRecord | None:
    """The job this Idempotency-Key already made (422 when it was made from another body)."""
    if not idempotency_key:
        return None
    with request.app.state.sessions() as session:
        existing = crud.job_by_idempotency_key(session, tenant, idempotency_key)
    return None if existing is None else _replay(existing, request_hash)


def _create_job(
    request: Request,
    tenant: str,
    spec: JobSpec,
    idempotency_key: str | None,
    request_hash: str,
    check_inputs: bool = True,
) -> tuple[JobRecord, bool]:
    """Insert the job row (or find the one this Idempotency-Key already made), then send it
    to the queue. Returns (job, created)."""
    settings = request.app.state.settings
    _check_callback(spec, settings)
    existing = _earlier_job(request, tenant, idempotency_key, request_hash)
    if existing is not None:
        return existing, False
    if check_inputs:
        with request.app.state.sessions() as session:
            model = _check_usable(session, "model", spec.model_id, tenant)
            dataset = _check_usable(session, "dataset", spec.dataset_id, tenant) if spec.dataset_id else None
            _check_pair(spec, model, dataset)
    job = JobRecord(
        id=new_id("job"),
        tenant=tenant,
        model_id=spec.model_id,
        dataset_id=spec.dataset_id,
        spec=spec.model_dump(mode="json"),
        status="queued",
        progress={},
        max_attempts=settings.max_attempts,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        artifacts=[],
    )
    job, created = crud.insert_job(request.app.state.sessions, job)
    if not created:
        return _replay(job, request_hash), False
    _dispatch(request, job.id)
    return job, True


def _check_usable(session, kind: str, item_id: str, tenant: str) -> ModelRecord | DatasetRecord:
    """422 naming the field when the tenant's upload ``item_id`` is missing or was rejected."""
    row = crud.owned_upload(session, kind, item_id, tenant)
    field = f"{kind}_id"
    if row is None:
        raise Problem(
            422,
            f"{kind}-not-found",
            f"{field} {item_id!r} does not exist; upload it with POST /v1/{kind}s.",
            errors=[{"field": field, "message": f"unknown {kind}"}],
        )
    if row.status == "invalid":
        raise Problem(
            422,
            f"{kind}-invalid",
            f"{kind} {item_id} was rejected: {(row.error or {}).get('message')}",
            errors=[{"field": field, "message": f"invalid {kind}"}],
        )
    return row


def _check_pair(spec: JobSpec, model: ModelRecord, dataset: DatasetRecord | None) -> None:
    """422 when both inspections are done and the model's declared input cannot take the
    dataset's samples (service.core.intake.pairing), instead of a job that fails at load."""
    if model.status != "ready" or (dataset is not None and dataset.status != "ready"):
        return
    builtin = spec.dataset.builtin if spec.dataset is not None else None
    samples = sample_shape(dataset.info if dataset is not None else None, builtin)
    conflict = input_shape_conflict(model.format, model.info, samples)
    if conflict is not None:
        field = "dataset_id" if dataset is not None else "dataset.builtin"
        raise Problem(
            422,
            "input-shape-mismatch",
            f"Model {model.id} cannot take this dataset: {conflict}.",
            errors=[{"field": field, "message": "samples do not fit the model's input"}],
        )


def _replay(existing: JobRecord, request_hash: str) -> JobRecord:
    if existing.request_hash != request_hash:
        raise Problem(
            422,
            "idempotency-key-reused",
            "This Idempotency-Key was used with a different request body; use a new key for a new job.",
        )
    return existing


def _accepted(job: JobRecord, created: bool) -> JSONResponse:
    body = JobOut.model_validate(job).model_dump(mode="json")
    return JSONResponse(body, status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"})


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


_CREATED = {200: {"model": JobOut, "description": "Replay of an Idempotency-Key."}}
_JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}, "example": JOB_SPEC_EXAMPLE},
        },
    }
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model", "spec"],
                    "properties": {
                        "model": {"type": "string", "format": "binary", "description": "The model file."},
                        "dataset": {"type": "string", "format": "binary", "description": "Optional dataset file."},
                        "spec": {"type": "string", "description": "The job spec as JSON (model_id not needed)."},
                    },
                },
                "example": {"model": "model.onnx", "spec": json.dumps({"dataset": {"builtin": "digits"}})},
            },
        },
    }
}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Create a pruning job from uploaded files",
    responses={**_CREATED, 400: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
    openapi_extra=_JSON_BODY,
)
async def create_job(
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=1024)] = None,
):
    """A JobSpec naming an uploaded model (`model_id`) and dataset (`dataset_id` or
    `dataset.builtin`). To send the files and the spec in one request use
    `POST /v1/jobs/upload` (a multipart body sent here is served the same way)."""
    _check_idempotency_key(idempotency_key)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await create_job_with_files(request, tenant, settings, idempotency_key)
    if not content_type.startswith("application/json"):
        raise Problem(
            415,
            "unsupported-media-type",
            "Send the job spec as application/json, or model + spec as multipart/form-data to POST /v1/jobs/upload.",
        )
    raw = await request.body()
    if len(raw) > 1 << 20:
        raise Problem(413, "spec-too-large", "The job spec is over 1 MiB; send a smaller spec.")
    try:
        spec = JobSpec.model_validate_json(raw)
    except ValidationError as error:
        raise _problem_from_validation(error) from error
    if spec.model_id is None:
        raise Problem(
            422,
            "invalid-spec",
            "model_id is required (or send the model file to POST /v1/jobs/upload).",
            errors=[{"field": "model_id", "message": "Field required"}],
        )
    if spec.dataset_id is None and spec.dataset is None:
        raise Problem(
            422,
            "invalid-spec",
            "Name the data: dataset_id (POST /v1/datasets) or dataset.builtin.",
            errors=[{"field": "dataset_id", "message": "Field required"}],
        )
    job, created = await run_in_threadpool(
        _create_job, request, tenant, spec, idempotency_key, _hash(spec.model_dump(mode="json"))
    )
    return _accepted(job, created)


@router.post(
    "/upload",
    status_code=202,
    response_model=JobOut,
    summary="Create a pruning job with its files in one request",
    responses={**_CREATED, 400: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
    openapi_extra=_UPLOAD_BODY,
)
async def create_job_with_files(
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=1024)] = None,
):
    """multipart/form-data: `model` (file), `spec` (JSON text) and optionally `dataset`
    (file) — one request for a CI step. Everything (spec, callback, files, Idempotency-Key)
    is checked before anything is stored; the files then take the path of POST /v1/models
    and /v1/datasets (stored `validating`, inspected by a worker). A replay of an
    Idempotency-Key stores nothing and answers the job it made."""
    _check_idempotency_key(idempotency_key)
    form = await receive_form(request, settings.max_upload_bytes, settings.data_dir / "tmp")
    try:
        if "model" not in form.files or "spec" not in form.fields:
            raise Problem(422, "invalid-request", "Send the parts `model` (file) and `spec` (JSON text).")
        try:
            spec = JobSpec.model_validate_json(form.fields["spec"])
        except ValidationError as error:
            raise _problem_from_validation(error, "spec.") from error
        model_file, dataset_file = form.files["model"], form.files.get("dataset")
        if dataset_file is None and spec.dataset is None:
            raise Problem(422, "invalid-spec", "Give a `dataset` file part or spec.dataset.builtin.")
        _check_callback(spec, settings)
        model_format = await check_received("model", model_file, settings)
        if dataset_file is not None:
            await check_received("dataset", dataset_file, settings)
        request_hash = _hash(spec.model_dump(mode="json"), model_file.sha256, dataset_file and dataset_file.sha256)
        existing = await run_in_threadpool(_earlier_job, request, tenant, idempotency_key, request_hash)
        if existing is not None:
            return _accepted(existing, False)  # the files it stored the first time are reused
        model = crud.new_upload(
            "model",
            tenant,
            model_file.filename,
            model_file.sha256,
            model_file.size,
            format=model_format,
            architecture=spec.architecture,
        )
        uploads = [(model, model_file)]
        update = {"model_id": model.id}
        if dataset_file is not None:
            dataset = crud.new_upload("dataset", tenant, dataset_file.filename, dataset_file.sha256, dataset_file.size)
            uploads.append((dataset, dataset_file))
            update.update(dataset_id=dataset.id, dataset=None)
        await store_and_inspect(request, uploads)
    finally:
        form.cleanup()
    rows = [row for row, _ in uploads]
    try:
        job, created = await run_in_threadpool(
            _create_job, request, tenant, spec.model_copy(update=update), idempotency_key, request_hash, False
        )
    except BaseException:
        await run_in_threadpool(discard_uploads, request.app.state.sessions, request.app.state.store, rows)
        raise
    if not created:  # a concurrent request with this Idempotency-Key won: keep only its files
        await run_in_threadpool(discard_uploads, request.app.state.sessions, request.app.state.store, rows)
    return _accepted(job, created)


@router.get("/spec-schema", summary="The JSON schema of a job spec, with every default")
def spec_schema() -> dict:
    return JobSpec.model_json_schema()


def _encode_cursor(job: JobRecord) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError) as error:
        raise Problem(
            400, "invalid-cursor", "The cursor is not one this API returned; start again without it."
        ) from error


@router.get("", response_model=JobList, summary="List jobs, newest first", responses={400: _PROBLEM})
def list_jobs(
    tenant: TenantDep,
    session: SessionDep,
    status: Annotated[str | None, Query(pattern="^(queued|running|cancelling|succeeded|failed|cancelled)$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobList:
    rows = crud.page_jobs(session, tenant, status, limit, _decode_cursor(cursor) if cursor else None)
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return JobList(items=[JobOut.model_validate(r) for r in rows[:limit]], next_cursor=next_cursor)


def _job(session, job_id: str, tenant: str) -> JobRecord:
    job = job_states.get(session, job_id, tenant)
    if job is None:
        raise Problem(404, "job-not-found", f"No job {job_id!r} exists for your key; list them with GET /v1/jobs.")
    return job


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="Get a job (ETag / If-None-Match → 304)",
    responses={304: {"description": "Not modified"}, 404: _PROBLEM},
)
async def get_job(
    request: Request, job_id: str, tenant: TenantDep, if_none_match: Annotated[str | None, Header()] = None
):
    # The hot path of every CI poll loop: one threadpool hop for the read (no session
    # dependency) and no body built for a 304 (bench/api_load.py).
    def read() -> tuple[str, dict | None]:
        with request.app.state.sessions() as session:
            job = _job(session, job_id, tenant)
            etag = f'W/"{job.id}-{job.version}"'
            if if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]:
                return etag, None
            return etag, JobOut.model_validate(job).model_dump(mode="json")

    etag, body = await run_in_threadpool(read)
    if body is None:
        return Response(status_code=304, headers={"ETag": etag})
    return JSONResponse(body, headers={"ETag": etag, "Cache-Control": "no-cache"})


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Cancel a job",
    responses={404: _PROBLEM, 409: _PROBLEM},
)
def cancel_job(job_id: str, request: Request, tenant: TenantDep, session: SessionDep) -> JobOut:
    job = _job(session, job_id, tenant)
    if not job_states.request_cancel(request.app.state.sessions, job.id):
        raise Problem(409, "job-finished", f"Job {job_id} already ended as {job.status}; nothing to cancel.")
    session.refresh(job)
    return JobOut.model_validate(job)


@router.get(
    "/{job_id}/events",
    summary="Progress as Server-Sent Events until the job ends",
    responses={200: {"content": {"text/event-stream": {}}}, 404: _PROBLEM},
)
async def job_events(job_id: str, request: Request, tenant: TenantDep) -> StreamingResponse:
    sessions = request.app.state.sessions

    def snapshot() -> JobRecord | None:
        with sessions() as session:
            return job_states.get(session, job_id, tenant)

    if await run_in_threadpool(snapshot) is None:
        raise Problem(404, "job-not-found", f"No job {job_id!r} exists for your key.")

    async def stream():
        seen = None
        while not await request.is_disconnected():
            job = await run_in_threadpool(snapshot)
            if job.version != seen:
                seen = job.version
                data = JobOut.model_validate(job).model_dump_json()
                yield f"id: {job.version}\nevent: job\ndata: {data}\n\n"
            if job.status in job_states.TERMINAL:
                return
            await asyncio.sleep(0.5)  # poll interval of the stream, not synchronisation

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _finished_job(session, job_id: str, tenant: str) -> JobRecord:
    job = _job(session, job_id, tenant)
    if job.status != "succeeded":
        finished = job.status in {"failed", "cancelled"}
        raise Problem(
            409,
            "job-not-succeeded",
            f"Job {job_id} is {job.status}; artifacts exist only once it succeeded. "
            + (
                f"It will not: GET /v1/jobs/{job_id} says why, and a new job is needed."
                if finished
                else f"Poll GET /v1/jobs/{job_id} until then."
            ),
        )
    return job


@router.get("/{job_id}/artifacts", summary="List a finished job's artifacts", responses={404: _PROBLEM, 409: _PROBLEM})
def list_artifacts(job_id: str, tenant: TenantDep, session: SessionDep) -> list[dict]:
    return _finished_job(session, job_id, tenant).artifacts


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download an artifact (streamed, or 307 to a presigned URL)",
    responses={
        200: {"content": {"application/octet-stream": {}, "application/json": {}, "text/html": {}}},
        307: {"description": "Presigned URL"},
        404: _PROBLEM,
        409: _PROBLEM,
    },
)
def download_artifact(
    job_id: str, name: str, tenant: TenantDep, session: SessionDep, store: StoreDep, settings: SettingsDep
):
    job = _finished_job(session, job_id, tenant)
    if name not in {a["name"] for a in job.artifacts}:
        raise Problem(
            404, "artifact-not-found", f"Job {job_id} has no artifact {name!r}; see GET /v1/jobs/{job_id}/artifacts."
        )
    key = artifacts.artifact_key(job.id, name)
    url = store.presigned_url(key, settings.presign_expires_s)
    if url:
        return RedirectResponse(url, status_code=307)
    return StreamingResponse(
        store.iter_bytes(key),
        media_type=artifacts.media_type(name),
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/{job_id}/report",
    response_model=JobReport,
    response_model_exclude_unset=True,  # the stored report.json as written, byte for byte in content
    summary="The job's report (JSON)",
    responses={404: _PROBLEM, 409: _PROBLEM},
)
def get_report(job_id: str, tenant: TenantDep, session: SessionDep, store: StoreDep) -> JobReport:
    job = _finished_job(session, job_id, tenant)
    return JobReport.model_validate_json(
        b"".join(store.iter_bytes(artifacts.artifact_key(job.id, artifacts.REPORT_JSON)))
    )


@router.get(
    "/{job_id}/report.html",
    response_class=HTMLResponse,
    summary="The job's report with plots",
    responses={404: _PROBLEM, 409: _PROBLEM},
)
def get_report_html(job_id: str, tenant: TenantDep, session: SessionDep, store: StoreDep) -> HTMLResponse:
    job = _finished_job(session, job_id, tenant)
    return HTMLResponse(b"".join(store.iter_bytes(artifacts.artifact_key(job.id, artifacts.REPORT_HTML))))
