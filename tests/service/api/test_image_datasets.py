"""Image archives through POST /v1/datasets: accepted, or a 422 that names the problem and
leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.deps import hash_key
from service.core.config import Settings
from service.main import create_app
from tests.images import bomb_png, flat_folder, image_folder, many_tiny_members_zip, png_bytes, tar_bytes, zip_bytes
from tests.service.api.conftest import KEYS


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, api_keys={hash_key(KEYS["alpha"]): "alpha"}, max_upload_bytes=64 << 20)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, reaper=False), headers={"Authorization": f"Bearer {KEYS['alpha']}"}) as c:
        yield c


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_an_image_folder_zip_and_a_flat_tar_are_accepted(client, settings) -> None:
    for name, content in (("pets.zip", zip_bytes(image_folder())), ("frames.tar", tar_bytes(flat_folder(4)))):
        response = client.post("/v1/datasets", files={"file": (name, content)})
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "validating"
    assert len(_files_under(settings.data_dir / "artifacts" / "uploads" / "datasets")) == 2


@pytest.mark.parametrize(
    ("content", "code", "named"),
    [
        (zip_bytes([*flat_folder(2), ("../../etc/cron.d/x.png", png_bytes())]), "unsafe-archive-path", "x.png"),
        (tar_bytes(flat_folder(2), symlinks=[("images/passwd.png", "/etc/passwd")]), "archive-link", "passwd.png"),
        (many_tiny_members_zip(100_000), "too-many-members", "100000"),
        (zip_bytes([*flat_folder(2), ("images/bomb.png", bomb_png())]), "image-bomb", "bomb.png"),
        (zip_bytes([*flat_folder(2), ("images/cut.png", png_bytes(32, 32)[:90])]), "corrupt-image", "cut.png"),
    ],
    ids=["traversal", "symlink", "1e5-members", "decompression-bomb", "corrupt-image"],
)
def test_hostile_archives_get_a_422_naming_the_problem_and_leave_nothing_on_disk(
    client, settings, content, code, named
) -> None:
    response = client.post("/v1/datasets", files={"file": ("data.zip", content)})
    assert response.status_code == 422, response.text
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert body["type"].endswith(code) and named in body["detail"]
    assert _files_under(settings.data_dir / "tmp") == []
    assert _files_under(settings.data_dir / "artifacts") == []
    assert client.get("/v1/datasets").json()["items"] == []
