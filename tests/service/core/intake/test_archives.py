"""Image archives are checked member by member before any image is used (torch-free)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from service.core.intake import Rejected, check_dataset_file
from service.core.intake.archives import ArchiveLimits, check_image_archive, index_image_archive
from tests.images import (
    bomb_png,
    flat_folder,
    image_folder,
    many_tiny_members_zip,
    png_bytes,
    tar_bytes,
    zip_bytes,
)


def _write(tmp_path: Path, data: bytes, name: str = "data.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refused(path: Path, limits: ArchiveLimits | None = None) -> Rejected:
    with pytest.raises(Rejected) as refused:
        check_image_archive(path, limits or ArchiveLimits())
    return refused.value


def test_an_image_folder_zip_is_labelled_with_sorted_classes(tmp_path):
    index = check_image_archive(_write(tmp_path, zip_bytes(image_folder(classes=3, per_class=4))))
    assert index.labelled and index.classes == ["class0", "class1", "class2"]
    assert len(index.members) == 12 and not index.has_split
    assert {m.label for m in index.members} == {"class0", "class1", "class2"}
    assert check_dataset_file(tmp_path / "data.zip") == "image-zip"


def test_a_flat_tar_is_unlabelled_and_an_explicit_split_is_kept(tmp_path):
    index = check_image_archive(_write(tmp_path, tar_bytes(flat_folder(5)), "flat.tar"))
    assert index.kind == "tar" and not index.labelled and len(index.members) == 5
    split = check_image_archive(_write(tmp_path, zip_bytes(image_folder(per_class=5, split=True))))
    assert split.summary()["split"] == {"train": 6, "val": 4}
    assert check_dataset_file(tmp_path / "flat.tar") == "image-tar"


@pytest.mark.parametrize(
    "name", ["../escape.png", "/etc/evil.png", "a/../../evil.png", "C:/evil.png", "a\\..\\evil.png"]
)
def test_member_paths_that_could_escape_are_refused(tmp_path, name):
    error = _refused(_write(tmp_path, zip_bytes([*flat_folder(2), (name, png_bytes())])))
    assert error.code == "unsafe-archive-path" and "relative paths" in str(error)


def test_tar_traversal_is_refused_too(tmp_path):
    assert _refused(_write(tmp_path, tar_bytes([("../../x.png", png_bytes())]), "t.tar")).code == "unsafe-archive-path"


@pytest.mark.parametrize(
    "maker",
    [
        lambda: zip_bytes(flat_folder(2), symlinks=[("images/link.png", "/etc/passwd")]),
        lambda: tar_bytes(flat_folder(2), symlinks=[("images/link.png", "/etc/passwd")]),
        lambda: tar_bytes(flat_folder(2), hardlinks=[("images/hard.png", "images/0000.png")]),
    ],
)
def test_links_are_refused(tmp_path, maker):
    error = _refused(_write(tmp_path, maker()))
    assert error.code == "archive-link" and "link" in str(error)


def test_a_hundred_thousand_tiny_members_are_refused_from_the_end_record(tmp_path):
    path = _write(tmp_path, many_tiny_members_zip(100_000))
    error = _refused(path)
    assert error.code == "too-many-members" and "100000 members" in str(error)


def test_a_decompression_bomb_image_is_refused_before_its_pixels_are_decoded(tmp_path):
    bomb = bomb_png(10_000, 10_000)
    assert len(bomb) < 1_000_000
    error = _refused(_write(tmp_path, zip_bytes([*flat_folder(2), ("images/bomb.png", bomb)])))
    assert error.code == "image-bomb" and "bomb.png" in str(error) and "pixels" in str(error)
    # under Pillow's own limit (89 M pixels) but over ours: refused from the declared size
    error = _refused(_write(tmp_path, zip_bytes([*flat_folder(2), ("images/bomb.png", bomb_png(7_000, 7_000))])))
    assert error.code == "image-bomb" and "7000x7000" in str(error)


def test_a_zip_bomb_member_is_refused_by_its_ratio(tmp_path):
    path = tmp_path / "zbomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images/a.png", b"\x00" * (50 << 20))
    assert _refused(path).code == "archive-bomb"


@pytest.mark.parametrize("data", [b"not an image at all", png_bytes(16, 16)[:60]])
def test_a_corrupt_image_is_named(tmp_path, data):
    error = _refused(_write(tmp_path, zip_bytes([*flat_folder(2), ("images/broken.png", data)])))
    assert error.code == "corrupt-image" and "broken.png" in str(error)


def test_layouts_that_are_ambiguous_or_not_images_are_explained(tmp_path):
    mixed = zip_bytes([("data/a/1.png", png_bytes()), ("data/b/2.png", png_bytes()), ("data/3.png", png_bytes())])
    assert _refused(_write(tmp_path, mixed)).code == "bad-archive-layout"
    one_class = zip_bytes([("data/cats/1.png", png_bytes()), ("data/cats/2.png", png_bytes())])
    assert "single class" in str(_refused(_write(tmp_path, one_class)))
    assert _refused(_write(tmp_path, zip_bytes([("a/notes.txt", b"hi")]))).code == "not-an-image"
    ignored = zip_bytes([*flat_folder(2), ("__MACOSX/images/._0000.png", b"junk"), ("images/.DS_Store", b"")])
    assert len(index_image_archive(_write(tmp_path, ignored)).members) == 2


def test_per_image_and_total_size_limits_apply(tmp_path):
    path = _write(tmp_path, zip_bytes(flat_folder(3)))
    assert _refused(path, ArchiveLimits(max_member_bytes=50)).code == "image-too-large"
    assert _refused(path, ArchiveLimits(max_total_bytes=100)).code == "archive-too-large"
