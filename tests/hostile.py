"""What the hostile-input tests share: two tenants' keys, the upload limit, and the problem+json check."""

from __future__ import annotations

KEYS = {"alpha": "hostile-alpha-0123456789", "beta": "hostile-beta-0123456789"}
LIMIT = 64 * 1024
TYPE_BASE = "https://shears.dev/problems/"


def as_tenant(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def problem(response, status: int, *types: str) -> dict:
    """Assert a problem+json answer: status, a stable type (one of ``types``), a detail that
    tells the user what to do."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].startswith(TYPE_BASE) and body["status"] == status
    if types:
        assert body["type"].removeprefix(TYPE_BASE) in types, body
    assert len(body["detail"]) >= 30, body
    return body


def upload(client, kind: str, content: bytes, filename: str = "upload.bin"):
    return client.post(f"/v1/{kind}", files={"file": (filename, content)})


def nothing_stored(client, settings) -> None:
    """No model or dataset row, and no temporary upload file left."""
    assert client.get("/v1/models").json()["items"] == []
    assert client.get("/v1/datasets").json()["items"] == []
    assert list((settings.data_dir / "tmp").glob("upload-*")) == []
