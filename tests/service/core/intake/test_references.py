"""References to object storage: the URI checks the API runs, and the listing checks the worker runs."""

from __future__ import annotations

import pytest

from service.core.config import Settings
from service.core.intake import Rejected
from service.core.intake.archives import ArchiveLimits
from service.core.intake.references import (
    ListedObject,
    Reference,
    check_reference,
    index_listing,
    index_of_manifest,
    manifest_of,
)

ALLOWED = ["s3://datasets/team-a/"]
STORAGE = "s3://shears/artifacts"


def _code(call) -> str:
    with pytest.raises(Rejected) as refused:
        call()
    return refused.value.code


def test_a_prefix_and_a_single_object_under_an_allowed_prefix_are_accepted() -> None:
    prefix = check_reference("s3://datasets/team-a/pets/", ALLOWED, STORAGE)
    assert (prefix.bucket, prefix.key, prefix.is_prefix, prefix.name) == ("datasets", "team-a/pets/", True, "pets")
    single = check_reference("s3://datasets/team-a/digits.npz", ALLOWED, STORAGE)
    assert (single.is_prefix, single.name) == (False, "digits.npz")


def test_an_empty_allowlist_turns_the_feature_off_and_names_the_setting() -> None:
    with pytest.raises(Rejected) as refused:
        check_reference("s3://datasets/team-a/pets/", [], STORAGE)
    assert refused.value.code == "references-disabled"
    assert "SHEARS_DATASET_REFERENCE_PREFIXES" in str(refused.value)


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("s3://datasets/team-b/pets/", "reference-not-allowed"),
        ("s3://datasets/team-a-evil/pets/", "reference-not-allowed"),  # a sibling sharing the prefix's letters
        ("s3://other/team-a/pets/", "reference-not-allowed"),
        ("https://datasets.s3.amazonaws.com/team-a/pets/", "invalid-reference"),
        ("file:///etc/", "invalid-reference"),
        ("/data/pets/", "invalid-reference"),
        ("s3://datasets/team-a/../team-b/", "invalid-reference"),
        ("s3://datasets/team-a/./pets/", "invalid-reference"),
        ("s3://datasets/team-a//pets/", "invalid-reference"),
        ("s3://datasets/team-a/pets/?versionId=1", "invalid-reference"),
        ("s3://datasets/team-a/pe\\ts/", "invalid-reference"),
        ("s3://Data_Sets/team-a/", "invalid-reference"),
        ("s3://datasets/team-a/notes.txt", "invalid-reference"),
        ("s3://datasets/team-a/" + "x/" * 600, "invalid-reference"),
        ("", "invalid-reference"),
    ],
)
def test_uris_outside_the_allowlist_or_malformed_are_refused_with_a_named_code(uri: str, code: str) -> None:
    assert _code(lambda: check_reference(uri, ALLOWED, STORAGE)) == code


def test_shears_own_storage_cannot_be_referenced_even_when_its_bucket_is_allowed() -> None:
    for uri in ("s3://shears/artifacts/uploads/datasets/", "s3://shears/artifacts/jobs/x.zip", "s3://shears/"):
        with pytest.raises(Rejected) as refused:
            check_reference(uri, ["s3://shears/"], STORAGE)
        assert refused.value.code == "reference-not-allowed" and "own storage" in str(refused.value)
    assert check_reference("s3://shears/user-data/", ["s3://shears/"], STORAGE).key == "user-data/"


def test_allowlist_entries_are_normalised_and_bad_ones_fail_at_startup() -> None:
    settings = Settings(dataset_reference_prefixes=["s3://datasets/team-a", "s3://open"])
    assert settings.dataset_reference_prefixes == ["s3://datasets/team-a/", "s3://open/"]
    with pytest.raises(ValueError, match="SHEARS_DATASET_REFERENCE_PREFIXES"):
        Settings(dataset_reference_prefixes=["/mnt/data"])


def _listing(names: list[str], size: int = 100) -> list[ListedObject]:
    return [ListedObject(f"team-a/pets/{name}", size, f"etag-{i}") for i, name in enumerate(names)]


PETS = Reference("datasets", "team-a/pets/")


def test_class_folders_are_labelled_and_every_member_keeps_its_etag() -> None:
    names = ["cat/1.png", "cat/2.jpg", "dog/1.png", "dog/2.png", ".DS_Store", "cat/"]
    objects = _listing(names)
    objects[-1] = ListedObject("team-a/pets/cat/", 0, "marker")  # a console's folder marker
    index = index_listing(PETS, objects, ArchiveLimits())
    assert index.classes == ["cat", "dog"] and len(index.members) == 4
    assert {m.name: m.etag for m in index.members}["dog/2.png"] == "etag-3"
    again = index_of_manifest(manifest_of(PETS, index))
    assert again.members == index.members and again.classes == index.classes


def test_a_flat_prefix_is_unlabelled_and_train_val_folders_give_the_split() -> None:
    assert not index_listing(PETS, _listing(["1.png", "2.png"]), ArchiveLimits()).labelled
    split = index_listing(
        PETS, _listing(["train/a/1.png", "train/b/1.png", "val/a/2.png", "val/b/2.png"]), ArchiveLimits()
    )
    assert split.has_split and split.classes == ["a", "b"]


@pytest.mark.parametrize(
    ("names", "limits", "code"),
    [
        ([f"{i}.png" for i in range(4)], ArchiveLimits(max_members=3), "too-many-objects"),
        (["a/../../etc/x.png", "b.png"], ArchiveLimits(), "unsafe-object-key"),
        (["a//x.png", "b.png"], ArchiveLimits(), "unsafe-object-key"),
        (["labels.csv", "b.png"], ArchiveLimits(), "not-an-image"),
        (["big.png", "b.png"], ArchiveLimits(max_member_bytes=50), "image-too-large"),
        (["a.png", "b.png"], ArchiveLimits(max_total_bytes=150), "reference-too-large"),
        ([".DS_Store"], ArchiveLimits(), "no-images"),
        (["cat/1.png", "2.png"], ArchiveLimits(), "bad-archive-layout"),
    ],
    ids=["too-many", "dotdot-key", "empty-segment", "not-an-image", "image-too-large", "too-large", "empty", "mixed"],
)
def test_hostile_listings_are_refused_naming_the_problem(names, limits, code) -> None:
    assert _code(lambda: index_listing(PETS, _listing(names), limits)) == code


def test_the_listing_is_consumed_no_further_than_the_member_limit() -> None:
    consumed = []

    def endless():
        for i in range(10**9):
            consumed.append(i)
            yield ListedObject(f"team-a/pets/{i}.png", 1, "e")

    assert _code(lambda: index_listing(PETS, endless(), ArchiveLimits(max_members=5))) == "too-many-objects"
    assert len(consumed) == 6
