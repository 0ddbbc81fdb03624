"""``/v1/models`` and ``/v1/datasets``: streamed uploads, inspected asynchronously by a worker."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from service.api.errors import Problem
from service.api.schemas import DatasetList, DatasetOut, DatasetReference, ModelList, ModelOut
from service.api.uploads import ReceivedFile, receive_form
from service.core import crud, intake
from service.core.config import Settings
from service.core.intake.references import check_reference
from service.core.models import DatasetRecord, ModelRecord
from service.core.queue import INSPECT_DATASET_TASK, INSPECT_MODEL_TASK, send
from service.core.storage import ArtifactStore

INSPECT_TASKS = {ModelRecord: INSPECT_MODEL_TASK, DatasetRecord: INSPECT_DATASET_TASK}

_PROBLEM = {"content": {"application/problem+json": {}}}


def _multipart_body(description: str, extra_fields: dict, json_schema: str | None = None) -> dict:
    properties = {"file": {"type": "string", "format": "binary", "description": description}}
    properties.update(extra_fields)
    content: dict = {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": properties},
            "example": {"file": "model.onnx"},
        }
    }
    if json_schema is not None:
        content["application/json"] = {
            "schema": {"$ref": f"#/components/schemas/{json_schema}"},
            "example": {"uri": "s3://datasets/pets/"},
        }
    return {"requestBody": {"required": True, "content": content}}


MAX_REFERENCE_BODY = 64 * 1024
_REFERENCE_FORBIDDEN = {"references-disabled", "reference-not-allowed"}  # the operator's policy: 403


async def register_reference(request: Request, tenant: str, settings: Settings) -> DatasetRecord:
    """POST /v1/datasets with ``{"uri": "s3://bucket/prefix/"}``: check the URI against the
    operator's allowlist, commit a ``validating`` row and queue its inspection (a worker lists
    and checks the data where they are, with its own credentials). Nothing is copied here."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_REFERENCE_BODY:
            raise Problem(413, "body-too-large", f"The JSON body is over {MAX_REFERENCE_BODY} bytes; send only `uri`.")
    try:
        body = DatasetReference.model_validate_json(bytes(raw))
    except ValidationError as error:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]} for err in error.errors()
        ]
        raise Problem(
            422,
            "invalid-request",
            'Send {"uri": "s3://bucket/prefix/"} as application/json, or the dataset file as multipart/form-data.',
            errors=errors,
        ) from error
    try:
        reference = check_reference(body.uri, settings.dataset_reference_prefixes, settings.resolved_storage_uri)
    except intake.Rejected as error:
        status = 403 if error.code in _REFERENCE_FORBIDDEN else 422
        raise Problem(status, error.code, str(error), errors=[{"field": "uri", "message": error.code}]) from error
    row = crud.new_reference(tenant, reference.uri, reference.name)
    await store_and_inspect(request, [(row, None)])
    return row


async def check_received(kind: str, received: ReceivedFile, settings: Settings) -> str:
    """Run the intake checks on a received file in the threadpool (they walk the file);
    422 with the rejection's code. Returns the format."""
    try:
        if kind == "model":
            return await run_in_threadpool(intake.check_model_file, received.path, settings.allow_torchscript_upload)
        return await run_in_threadpool(
            intake.check_dataset_file, received.path, settings.max_dataset_bytes, settings.archive_limits()
        )
    except intake.Rejected as error:
        raise Problem(422, error.code, str(error)) from error


async def store_and_inspect(request: Request, uploads: list[tuple[object, ReceivedFile | None]]) -> None:
    """Store checked files, commit their ``validating`` rows and queue their inspections: the
    one path every upload takes (POST /v1/models, /v1/datasets and multipart jobs; a dataset
    registered by reference has no file). When the broker is down, nothing is kept and the
    client gets 503 with Retry-After."""
    state = request.app.state
    for row, received in uploads:
        if received is not None:
            await run_in_threadpool(state.store.put_file, row.storage_key, received.path)
    rows = [row for row, _ in uploads]

    def save() -> None:
        with state.sessions.begin() as session:
            session.add_all(rows)

    await run_in_threadpool(save)
    try:
        for row in rows:
            send(state.celery, INSPECT_TASKS[type(row)], row.id)
    except Exception as error:  # noqa: BLE001 - the broker is down: lose nothing, say when to retry
        await run_in_threadpool(discard_uploads, state.sessions, state.store, rows)
        problem = Problem(
            503, "broker-unavailable", f"The job queue is unreachable ({type(error).__name__}); retry shortly."
        )
        problem.headers["Retry-After"] = "5"
        raise problem from error


def discard_uploads(sessions, store: ArtifactStore, rows: list) -> None:
    """Remove rows and stored files of uploads a request could not finish."""
    crud.delete_rows(sessions, rows)
    for row in rows:
        store.delete_prefix(row.storage_key)


def build_router(
    *,
    kind: str,
    out: type,
    listing: type,
    extra_fields: dict,
    summary: str,
    description: str,
    json_schema: str | None = None,
) -> APIRouter:
    """The upload resource ``/v1/{kind}s`` (models or datasets; ``json_schema``: the body of
    a JSON registration, datasets by reference)."""
    router = APIRouter(prefix=f"/v1/{kind}s", tags=[f"{kind}s"])
    responses = {413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM}
    if json_schema is not None:
        responses[403] = {**_PROBLEM, "description": "Registering by reference is off, or the URI is not allowed."}

    @router.post(
        "",
        status_code=202,
        response_model=out,
        summary=summary,
        description=description,
        responses=responses,
        openapi_extra=_multipart_body(f"The {kind} file.", extra_fields, json_schema),
    )
    async def upload(request: Request, response: Response, tenant: TenantDep, settings: SettingsDep):
        if json_schema is not None and request.headers.get("content-type", "").startswith("application/json"):
            row = await register_reference(request, tenant, settings)
            response.headers["Location"] = f"/v1/{kind}s/{row.id}"
            return row
        form = await receive_form(request, settings.max_upload_bytes, settings.data_dir / "tmp")
        try:
            received = form.files.get("file")
            if received is None:
                raise Problem(422, "file-missing", f"Send the {kind} as a multipart part named `file`.")
            file_format = await check_received(kind, received, settings)
            columns = {}
            if kind == "model":
                architecture = (form.fields.get("architecture") or "").strip()[:64] or None
                columns = {"format": file_format, "architecture": architecture}
            row = crud.new_upload(kind, tenant, received.filename, received.sha256, received.size, **columns)
            await store_and_inspect(request, [(row, received)])
        finally:
            form.cleanup()
        response.headers["Location"] = f"/v1/{kind}s/{row.id}"
        return row

    @router.get("", response_model=listing, summary=f"List {kind}s")
    def list_all(tenant: TenantDep, session: SessionDep):
        return listing(items=[out.model_validate(row) for row in crud.list_uploads(session, kind, tenant)])

    @router.get("/{item_id}", response_model=out, responses={404: _PROBLEM}, summary=f"Get a {kind}")
    def get_one(item_id: str, tenant: TenantDep, session: SessionDep):
        return _owned(session, item_id, tenant, kind)

    @router.delete(
        "/{item_id}",
        status_code=204,
        responses={404: _PROBLEM, 409: _PROBLEM},
        summary=f"Delete a {kind} (409 while a queued or running job uses it)",
        description="Removes the record and what Shears stored for it; the objects of a dataset "
        "registered by reference are never touched."
        if kind == "dataset"
        else None,
    )
    def delete(item_id: str, tenant: TenantDep, session: SessionDep, store: StoreDep) -> Response:
        row = _owned(session, item_id, tenant, kind)
        job_id = crud.pending_job_using(session, kind, row.id)
        if job_id is not None:
            raise Problem(
                409,
                f"{kind}-in-use",
                f"Job {job_id} still uses {kind} {item_id}; wait until it ends or "
                f"cancel it (POST /v1/jobs/{job_id}/cancel), then delete the {kind}.",
                job_id=job_id,
            )
        session.delete(row)
        session.commit()
        store.delete_prefix(row.storage_key)
        return Response(status_code=204)

    return router


def _owned(session, item_id: str, tenant: str, kind: str):
    row = crud.owned_upload(session, kind, item_id, tenant)
    if row is None:
        raise Problem(
            404, f"{kind}-not-found", f"No {kind} {item_id!r} exists for your key; list them with GET /v1/{kind}s."
        )
    return row


models_router = build_router(
    kind="model",
    out=ModelOut,
    listing=ModelList,
    extra_fields={"architecture": {"type": "string", "description": "Zoo architecture of a safetensors state dict."}},
    summary="Upload a model",
    description="multipart/form-data with the model file as `file`; 202 `validating` until a worker inspects it.",
)
datasets_router = build_router(
    kind="dataset",
    out=DatasetOut,
    listing=DatasetList,
    extra_fields={},
    summary="Upload a dataset, or register one where it lives",
    description="multipart/form-data with the dataset file as `file`, or application/json "
    '`{"uri": "s3://bucket/prefix/"}` to register data that stay in object storage under a prefix the '
    "operator allows (SHEARS_DATASET_REFERENCE_PREFIXES; otherwise 403 `references-disabled` or "
    "`reference-not-allowed`). Either way 202 `validating`: a worker checks the data (for a reference: "
    "lists it with its own credentials, decodes a sample and records every key's ETag, so jobs read "
    "that snapshot) and sets `ready` or `invalid` with a named `error.code`.",
    json_schema="DatasetReference",
)
