"""``/v1/jobs``: create (JSON or one multipart request), poll, list, cancel, stream events,
and download reports and artifacts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from service.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from service.api.errors import Problem
from service.api.schemas import JobList, JobOut
from service.api.uploads import receive_form
from service.core import jobs as job_states
from service.core import intake
from service.core.models import DatasetRecord, JobRecord, ModelRecord, new_id, utcnow
from service.core.dispatch import dispatch_job
from service.core.spec import JOB_SPEC_EXAMPLE, JobSpec
from service.core.webhooks import CallbackRefused, check_callback_url

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_PROBLEM = {"content": {"application/problem+json": {}}}
MEDIA_TYPES = {
    "model.onnx": "application/octet-stream",
    "model.torchscript.pt": "application/octet-stream",
    "masks.safetensors": "application/octet-stream",
    "report.json": "application/json",
    "report.html": "text/html",
}


def _dispatch(request: Request, job_id: str) -> None:
    state = request.app.state
    dispatch_job(state.sessions, state.celery, state.settings, job_id)


def _problem_from_validation(error: ValidationError, prefix: str = "") -> Problem:
    errors = [{"field": prefix + ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in error.errors()]
    fields = ", ".join(e["field"].rstrip(".") or "body" for e in errors)
    return Problem(422, "invalid-spec", f"The job spec is invalid at {fields}; fix those fields "
                   "(GET /v1/jobs/spec-schema lists every field).", errors=errors)  # fmt: skip


def _check_idempotency_key(key: str | None) -> None:
    if key is not None and not (1 <= len(key) <= 255 and key.isprintable() and key.strip() == key and key):
        raise Problem(400, "invalid-idempotency-key", "Idempotency-Key must be 1-255 printable characters.")


def _create_job(request: Request, tenant: str, spec: JobSpec, model_id: str, dataset_id: str | None,
                idempotency_key: str | None, request_hash: str) -> tuple[JobRecord, bool]:  # fmt: skip
    """Insert the job row (or find the one this Idempotency-Key already made). Returns
    (job, created)."""
    settings = request.app.state.settings
    sessions = request.app.state.sessions
    if spec.callback_url:
        try:
            check_callback_url(spec.callback_url, settings.allow_private_callbacks)
        except CallbackRefused as error:
            raise Problem(422, "callback-refused", str(error), errors=[{"field": "callback_url", "message": str(error)}]) from error
    with sessions() as session:
        if idempotency_key:
            existing = session.scalar(select(JobRecord).where(
                JobRecord.tenant == tenant, JobRecord.idempotency_key == idempotency_key))  # fmt: skip
            if existing is not None:
                return _replay(existing, request_hash), False
        _check_usable(session, ModelRecord, model_id, tenant, "model")
        if dataset_id:
            _check_usable(session, DatasetRecord, dataset_id, tenant, "dataset")
        job = JobRecord(id=new_id("job"), tenant=tenant, model_id=model_id, dataset_id=dataset_id,
                        spec=spec.model_dump(mode="json"), status="queued", progress={},
                        max_attempts=settings.max_attempts, idempotency_key=idempotency_key,
                        request_hash=request_hash, artifacts=[])  # fmt: skip
        session.add(job)
        try:
            session.commit()
        except IntegrityError:  # a concurrent request with the same Idempotency-Key won
            session.rollback()
            existing = session.scalar(select(JobRecord).where(
                JobRecord.tenant == tenant, JobRecord.idempotency_key == idempotency_key))  # fmt: skip
            return _replay(existing, request_hash), False
    return job, True


def _check_usable(session, record: type, item_id: str, tenant: str, kind: str) -> None:
    """422 naming the field when the tenant's upload ``item_id`` is missing or was rejected."""
    row = session.get(record, item_id)
    field = f"{kind}_id"
    if row is None or row.tenant != tenant:
        raise Problem(422, f"{kind}-not-found", f"{field} {item_id!r} does not exist; upload it with POST /v1/{kind}s.",
                      errors=[{"field": field, "message": f"unknown {kind}"}])  # fmt: skip
    if row.status == "invalid":
        raise Problem(422, f"{kind}-invalid", f"{kind} {item_id} was rejected: {(row.error or {}).get('message')}",
                      errors=[{"field": field, "message": f"invalid {kind}"}])  # fmt: skip


def _replay(existing: JobRecord, request_hash: str) -> JobRecord:
    if existing.request_hash != request_hash:
        raise Problem(422, "idempotency-key-reused", "This Idempotency-Key was used with a different request "
                      "body; use a new key for a new job.")  # fmt: skip
    return existing


def _accepted(job: JobRecord, created: bool) -> JSONResponse:
    body = JobOut.model_validate(job).model_dump(mode="json")
    return JSONResponse(body, status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"})


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


_JOB_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}, "example": JOB_SPEC_EXAMPLE},
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["model", "spec"], "properties": {
                    "model": {"type": "string", "format": "binary", "description": "The model file."},
                    "dataset": {"type": "string", "format": "binary", "description": "Optional dataset file."},
                    "spec": {"type": "string", "description": "The job spec as JSON (model_id not needed)."},
                }},
                "example": {"model": "model.onnx", "spec": json.dumps({"dataset": {"builtin": "digits"}})},
            },
        },
    }
}  # fmt: skip


@router.post(
    "", status_code=202, response_model=JobOut, summary="Create a pruning job",
    responses={200: {"model": JobOut, "description": "Replay of an Idempotency-Key."},
               400: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM},
    openapi_extra=_JOB_BODY,
)  # fmt: skip
async def create_job(
    request: Request, tenant: TenantDep, settings: SettingsDep, store: StoreDep,
    idempotency_key: Annotated[str | None, Header(max_length=1024)] = None,
):  # fmt: skip
    """JSON body: a JobSpec naming an uploaded model. multipart/form-data: `model` (file),
    `spec` (JSON) and optionally `dataset` (file) — one request for a CI step."""
    _check_idempotency_key(idempotency_key)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _create_from_multipart(request, tenant, settings, store, idempotency_key)
    if not content_type.startswith("application/json"):
        raise Problem(415, "unsupported-media-type", "Send the job spec as application/json, or model + spec as multipart/form-data.")
    raw = await request.body()
    if len(raw) > 1 << 20:
        raise Problem(413, "spec-too-large", "The job spec is over 1 MiB; send a smaller spec.")
    try:
        spec = JobSpec.model_validate_json(raw)
    except ValidationError as error:
        raise _problem_from_validation(error) from error
    if spec.model_id is None:
        raise Problem(422, "invalid-spec", "model_id is required (or send the model file as multipart).",
                      errors=[{"field": "model_id", "message": "Field required"}])  # fmt: skip
    if spec.dataset_id is None and spec.dataset is None:
        raise Problem(422, "invalid-spec", "Name the data: dataset_id (POST /v1/datasets) or dataset.builtin.",
                      errors=[{"field": "dataset_id", "message": "Field required"}])  # fmt: skip
    job, created = await run_in_threadpool(_create_and_dispatch, request, tenant, spec, spec.model_id,
                                           spec.dataset_id, idempotency_key, _hash(spec.model_dump(mode="json")))  # fmt: skip
    return _accepted(job, created)


def _create_and_dispatch(request: Request, *args) -> tuple[JobRecord, bool]:
    """Insert the row, then send it to the queue, in one threadpool hop."""
    job, created = _create_job(request, *args)
    if created:
        _dispatch(request, job.id)
    return job, created


async def _create_from_multipart(request, tenant, settings, store, idempotency_key):
    form = await receive_form(request, settings.max_upload_bytes, settings.data_dir / "tmp")
    try:
        if "model" not in form.files or "spec" not in form.fields:
            raise Problem(422, "invalid-request", "Send the parts `model` (file) and `spec` (JSON text).")
        try:
            spec = JobSpec.model_validate_json(form.fields["spec"])
        except ValidationError as error:
            raise _problem_from_validation(error, "spec.") from error
        received = {"model": form.files["model"], "dataset": form.files.get("dataset")}
        if received["dataset"] is None and spec.dataset is None:
            raise Problem(422, "invalid-spec", "Give a `dataset` file part or spec.dataset.builtin.")
        try:
            model_format = await run_in_threadpool(
                intake.check_model_file, received["model"].path, settings.allow_torchscript_upload)
            if received["dataset"] is not None:
                await run_in_threadpool(intake.check_dataset_file, received["dataset"].path, settings.max_dataset_bytes,
                                        settings.archive_limits())  # fmt: skip
        except intake.Rejected as error:
            raise Problem(422, error.code, str(error)) from error
        request_hash = _hash(spec.model_dump(mode="json"), *(f.sha256 for f in received.values() if f))
        model = ModelRecord(id=new_id("mdl"), tenant=tenant, filename=received["model"].filename,
                            sha256=received["model"].sha256, size_bytes=received["model"].size,
                            status="ready", format=model_format, architecture=spec.architecture)  # fmt: skip
        model.storage_key = f"uploads/models/{model.id}"
        rows = [model]
        await run_in_threadpool(store.put_file, model.storage_key, received["model"].path)
        if received["dataset"] is not None:
            dataset = DatasetRecord(id=new_id("ds"), tenant=tenant, filename=received["dataset"].filename,
                                    sha256=received["dataset"].sha256, size_bytes=received["dataset"].size,
                                    status="ready")  # fmt: skip
            dataset.storage_key = f"uploads/datasets/{dataset.id}"
            await run_in_threadpool(store.put_file, dataset.storage_key, received["dataset"].path)
            rows.append(dataset)
            spec = spec.model_copy(update={"dataset_id": dataset.id, "dataset": None})
    finally:
        form.cleanup()
    spec = spec.model_copy(update={"model_id": model.id})

    def save_and_create():
        with request.app.state.sessions.begin() as session:
            session.add_all(rows)
        return _create_job(request, tenant, spec, model.id, spec.dataset_id, idempotency_key, request_hash)

    job, created = await run_in_threadpool(save_and_create)
    if created:
        await run_in_threadpool(_dispatch, request, job.id)
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
        raise Problem(400, "invalid-cursor", "The cursor is not one this API returned; start again without it.") from error


@router.get("", response_model=JobList, summary="List jobs, newest first", responses={400: _PROBLEM})
def list_jobs(
    tenant: TenantDep, session: SessionDep,
    status: Annotated[str | None, Query(pattern="^(queued|running|cancelling|succeeded|failed|cancelled)$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobList:  # fmt: skip
    query = select(JobRecord).where(JobRecord.tenant == tenant)
    if status:
        query = query.where(JobRecord.status == status)
    if cursor:
        created, job_id = _decode_cursor(cursor)
        if session.bind.dialect.name == "sqlite":
            created = created.replace(tzinfo=None)
        query = query.where(or_(JobRecord.created_at < created,
                                and_(JobRecord.created_at == created, JobRecord.id < job_id)))  # fmt: skip
    rows = list(session.scalars(query.order_by(JobRecord.created_at.desc(), JobRecord.id.desc()).limit(limit + 1)))
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return JobList(items=[JobOut.model_validate(r) for r in rows[:limit]], next_cursor=next_cursor)


def _job(session, job_id: str, tenant: str) -> JobRecord:
    job = job_states.get(session, job_id, tenant)
    if job is None:
        raise Problem(404, "job-not-found", f"No job {job_id!r} exists for your key; list them with GET /v1/jobs.")
    return job


@router.get("/{job_id}", response_model=JobOut, summary="Get a job (ETag / If-None-Match → 304)",
            responses={304: {"description": "Not modified"}, 404: _PROBLEM})  # fmt: skip
async def get_job(request: Request, job_id: str, tenant: TenantDep,
                  if_none_match: Annotated[str | None, Header()] = None):  # fmt: skip
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


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, summary="Cancel a job",
             responses={404: _PROBLEM, 409: _PROBLEM})  # fmt: skip
def cancel_job(job_id: str, request: Request, tenant: TenantDep, session: SessionDep) -> JobOut:
    job = _job(session, job_id, tenant)
    if not job_states.request_cancel(request.app.state.sessions, job.id):
        raise Problem(409, "job-finished", f"Job {job_id} already ended as {job.status}; nothing to cancel.")
    session.refresh(job)
    return JobOut.model_validate(job)


@router.get("/{job_id}/events", summary="Progress as Server-Sent Events until the job ends",
            responses={200: {"content": {"text/event-stream": {}}}, 404: _PROBLEM})  # fmt: skip
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
        raise Problem(409, "job-not-succeeded", f"Job {job_id} is {job.status}; artifacts exist only once it "
                      "succeeded. Poll GET /v1/jobs/{id} until then.")  # fmt: skip
    return job


@router.get("/{job_id}/artifacts", summary="List a finished job's artifacts", responses={404: _PROBLEM, 409: _PROBLEM})
def list_artifacts(job_id: str, tenant: TenantDep, session: SessionDep) -> list[dict]:
    return _finished_job(session, job_id, tenant).artifacts


@router.get("/{job_id}/artifacts/{name}", summary="Download an artifact (streamed, or 307 to a presigned URL)",
            responses={200: {"content": {"application/octet-stream": {}, "application/json": {}, "text/html": {}}},
                       307: {"description": "Presigned URL"},
                       404: _PROBLEM, 409: _PROBLEM})  # fmt: skip
def download_artifact(job_id: str, name: str, tenant: TenantDep, session: SessionDep, store: StoreDep,
                      settings: SettingsDep):  # fmt: skip
    job = _finished_job(session, job_id, tenant)
    if name not in {a["name"] for a in job.artifacts}:
        raise Problem(404, "artifact-not-found", f"Job {job_id} has no artifact {name!r}; see GET /v1/jobs/{job_id}/artifacts.")
    key = f"jobs/{job.id}/{name}"
    url = store.presigned_url(key, settings.presign_expires_s)
    if url:
        return RedirectResponse(url, status_code=307)
    return StreamingResponse(store.iter_bytes(key), media_type=MEDIA_TYPES.get(name, "application/octet-stream"),
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip


@router.get("/{job_id}/report", summary="The job's report (JSON)", responses={404: _PROBLEM, 409: _PROBLEM})
def get_report(job_id: str, tenant: TenantDep, session: SessionDep, store: StoreDep) -> dict:
    job = _finished_job(session, job_id, tenant)
    return json.loads(b"".join(store.iter_bytes(f"jobs/{job.id}/report.json")))


@router.get("/{job_id}/report.html", response_class=HTMLResponse, summary="The job's report with plots",
            responses={404: _PROBLEM, 409: _PROBLEM})  # fmt: skip
def get_report_html(job_id: str, tenant: TenantDep, session: SessionDep, store: StoreDep) -> HTMLResponse:
    job = _finished_job(session, job_id, tenant)
    return HTMLResponse(b"".join(store.iter_bytes(f"jobs/{job.id}/report.html")))
