"""``/v1/models`` and ``/v1/datasets``: streamed uploads, inspected asynchronously by a worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from service.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from service.api.errors import Problem
from service.api.schemas import DatasetList, DatasetOut, ModelList, ModelOut
from service.api.uploads import receive_form
from service.core import intake
from service.core.models import DatasetRecord, ModelRecord, new_id
from service.core.queue import INSPECT_DATASET_TASK, INSPECT_MODEL_TASK, send

_PROBLEM = {"content": {"application/problem+json": {}}}


def _multipart_body(description: str, extra_fields: dict) -> dict:
    properties = {"file": {"type": "string", "format": "binary", "description": description}}
    properties.update(extra_fields)
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": properties},
                "example": {"file": "model.onnx"},
            }},
        }
    }  # fmt: skip


def build_router(
    *, kind: str, record: type, out: type, listing: type, task: str, check: Callable[[Path, object], str],
    extra_fields: dict,
) -> APIRouter:
    """The upload resource ``/v1/{kind}s`` for ``record`` rows (models or datasets)."""
    router = APIRouter(prefix=f"/v1/{kind}s", tags=[f"{kind}s"])
    prefix = "mdl" if kind == "model" else "ds"

    @router.post(
        "", status_code=202, response_model=out, summary=f"Upload a {kind}",
        responses={413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
        openapi_extra=_multipart_body(f"The {kind} file.", extra_fields),
    )  # fmt: skip
    async def upload(request: Request, response: Response, tenant: TenantDep, settings: SettingsDep,
                     session: SessionDep, store: StoreDep):  # fmt: skip
        form = await receive_form(request, settings.max_upload_bytes, settings.data_dir / "tmp")
        try:
            received = form.files.get("file")
            if received is None:
                raise Problem(422, "file-missing", f"Send the {kind} as a multipart part named `file`.")
            try:
                file_format = await run_in_threadpool(check, received.path, settings)  # walks the file
            except intake.Rejected as error:
                raise Problem(422, error.code, str(error)) from error
            row = record(id=new_id(prefix), tenant=tenant, filename=received.filename,
                         sha256=received.sha256, size_bytes=received.size, status="validating")  # fmt: skip
            row.storage_key = f"uploads/{kind}s/{row.id}"
            if kind == "model":
                row.format = file_format
                row.architecture = (form.fields.get("architecture") or "").strip()[:64] or None
            await run_in_threadpool(store.put_file, row.storage_key, received.path)
        finally:
            form.cleanup()
        session.add(row)
        session.commit()
        try:
            send(request.app.state.celery, task, row.id)
        except Exception as error:  # noqa: BLE001 - the broker is down: lose nothing, say when to retry
            session.delete(row)
            session.commit()
            store.delete_prefix(row.storage_key)
            problem = Problem(503, "broker-unavailable", f"The job queue is unreachable ({type(error).__name__}); retry shortly.")
            problem.headers["Retry-After"] = "5"
            raise problem from error
        response.headers["Location"] = f"/v1/{kind}s/{row.id}"
        return row

    @router.get("", response_model=listing, summary=f"List {kind}s")
    def list_all(tenant: TenantDep, session: SessionDep):
        rows = session.scalars(select(record).where(record.tenant == tenant).order_by(record.created_at.desc()).limit(500))
        return listing(items=[out.model_validate(row) for row in rows])

    @router.get("/{item_id}", response_model=out, responses={404: _PROBLEM}, summary=f"Get a {kind}")
    def get_one(item_id: str, tenant: TenantDep, session: SessionDep):
        return _owned(session, record, item_id, tenant, kind)

    @router.delete("/{item_id}", status_code=204, responses={404: _PROBLEM}, summary=f"Delete a {kind}")
    def delete(item_id: str, tenant: TenantDep, session: SessionDep, store: StoreDep) -> Response:
        row = _owned(session, record, item_id, tenant, kind)
        store.delete_prefix(row.storage_key)
        session.delete(row)
        session.commit()
        return Response(status_code=204)

    return router


def _owned(session, record: type, item_id: str, tenant: str, kind: str):
    row = session.get(record, item_id)
    if row is None or row.tenant != tenant:
        raise Problem(404, f"{kind}-not-found", f"No {kind} {item_id!r} exists for your key; list them with GET /v1/{kind}s.")
    return row


models_router = build_router(
    kind="model", record=ModelRecord, out=ModelOut, listing=ModelList, task=INSPECT_MODEL_TASK,
    check=lambda path, settings: intake.check_model_file(path, settings.allow_torchscript_upload),
    extra_fields={"architecture": {"type": "string", "description": "Zoo architecture of a safetensors state dict."}},
)  # fmt: skip
datasets_router = build_router(
    kind="dataset", record=DatasetRecord, out=DatasetOut, listing=DatasetList, task=INSPECT_DATASET_TASK,
    check=lambda path, settings: intake.check_dataset_file(path, settings.max_dataset_bytes, settings.archive_limits()),
    extra_fields={},
)  # fmt: skip
