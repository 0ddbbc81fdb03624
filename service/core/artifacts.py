"""The artifacts a job can produce: names, media types, listing order and storage keys,
in one place for the worker that writes them and the API that serves them."""

from __future__ import annotations

MEDIA_TYPES: dict[str, str] = {
    "model.onnx": "application/octet-stream",
    "model.torchscript.pt": "application/octet-stream",
    "masks.safetensors": "application/octet-stream",
    "report.json": "application/json",
    "report.html": "text/html",
}
ORDER = tuple(MEDIA_TYPES)
REPORT_JSON, REPORT_HTML = "report.json", "report.html"


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(name, "application/octet-stream")


def order(name: str) -> int:
    """Listing position: the pruned model first, the report last, unknown names after."""
    return ORDER.index(name) if name in ORDER else len(ORDER)


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def artifact_key(job_id: str, name: str) -> str:
    return f"{job_prefix(job_id)}{name}"
