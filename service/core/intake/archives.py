"""Image datasets uploaded as a ``.zip`` or an uncompressed ``.tar``: checked without extracting.

Torch-free (the API runs it on upload; workers read images through it). Every member is
checked from the archive's own directory before any byte of it is used: member count (read
from the zip's end record before the directory is parsed), paths (absolute, ``..``,
backslashes, drive letters), links and special files, encrypted members, declared sizes,
total size and compression ratio (zip bombs). Images are then decoded one at a time with
Pillow, refusing any whose declared pixel count passes ``max_pixels`` (decompression bombs)
before its pixels are decoded. Nothing is ever extracted: workers read members straight from
the archive file, so a refused archive leaves nothing on disk.

Layouts (one optional common top folder is ignored):

- ``<class>/<image>``: labelled, like torchvision's ImageFolder; classes sorted by name.
- ``<image>``: a flat folder, unlabelled (inputs only).
- ``train/...`` and ``val/...`` (``validation/`` too): an explicit split of either layout.
"""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from service.core.intake.errors import Rejected

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
_SPLITS = {"train": "train", "val": "val", "validation": "val"}
_IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
LAYOUT_HELP = (
    "Put images in class folders (<class>/<image>, labelled) or in one flat folder (unlabelled), "
    "optionally under train/ and val/."
)


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what an image archive may hold (settings: ``SHEARS_ARCHIVE_*``, ``SHEARS_IMAGE_MAX_PIXELS``)."""

    max_members: int = 50_000
    max_member_bytes: int = 64 << 20
    max_total_bytes: int = 16 << 30
    max_ratio: int = 200
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class ImageMember:
    """One image: where it is in the archive and what it is."""

    name: str
    size: int
    offset: int = -1  # start of the data in an uncompressed tar
    label: str | None = None
    split: str | None = None
    etag: str | None = None  # an object of a referenced prefix: the ETag it had when it was listed


@dataclass
class ImageIndex:
    """What an image archive holds, as the checks found it."""

    kind: str  # "zip" | "tar"
    members: list[ImageMember] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    @property
    def has_split(self) -> bool:
        return any(m.split is not None for m in self.members)

    def summary(self) -> dict:
        splits = {s: sum(1 for m in self.members if m.split == s) for s in ("train", "val")}
        return {
            "archive": self.kind,
            "images": len(self.members),
            "labelled": self.labelled,
            "classes": self.classes[:1000],
            "num_classes": len(self.classes),
            "split": splits if self.has_split else None,
        }


def archive_kind(path: Path) -> str | None:
    """``"zip"``, ``"tar"`` (uncompressed, ustar/gnu) or None, from the bytes."""
    with open(path, "rb") as stream:
        head = stream.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) == 512 and head[257:262] == b"ustar":
        return "tar"
    return None


def _refuse(code: str, message: str) -> Rejected:
    return Rejected(code, message)


def _safe_parts(name: str) -> list[str]:
    """The path components of a member name, or a refusal when the name could escape."""
    shown = name[:200]
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise _refuse(
            "unsafe-archive-path",
            f"archive member {shown!r} has an absolute or Windows path; "
            "archive a folder with relative paths (zip -r data.zip folder/).",
        )
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(
            "unsafe-archive-path",
            f"archive member {shown!r} climbs out of the archive with '..'; archive a folder with relative paths.",
        )
    return parts


def _zip_entry_count(path: Path) -> int:
    """Entry count from the zip's end-of-central-directory record (zip64 aware), read before
    the directory itself, so an archive of millions of members costs no memory to refuse."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        tail_len = min(size, 65_557)
        stream.seek(size - tail_len)
        tail = stream.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + 22 > len(tail):
            raise _refuse("invalid-archive", "the zip has no end-of-directory record (truncated?); upload it whole.")
        entries = struct.unpack("<H", tail[at + 10 : at + 12])[0]
        if entries == 0xFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
            (eocd64,) = struct.unpack("<Q", tail[at - 12 : at - 4])
            stream.seek(eocd64)
            record = stream.read(56)
            if record[:4] != b"PK\x06\x06":
                raise _refuse("invalid-archive", "the zip64 end-of-directory record is damaged.")
            (entries,) = struct.unpack("<Q", record[32:40])
    return entries


def _iter_zip(path: Path, limits: ArchiveLimits) -> Iterator[tuple[str, int, int]]:
    count = _zip_entry_count(path)
    if count > limits.max_members:
        raise _refuse(
            "too-many-members",
            f"the archive has {count} members, above the limit of "
            f"{limits.max_members}; upload fewer or larger images, or split the dataset.",
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise _refuse("invalid-archive", f"the zip cannot be read ({error}); upload it whole.") from error
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise _refuse(
                "too-many-members", f"the archive has {len(infos)} members, above the limit of {limits.max_members}."
            )
        for info in infos:
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise _refuse(
                    "archive-link",
                    f"archive member {info.filename[:200]!r} is a symbolic link; "
                    "links are refused: archive the files themselves.",
                )
            if info.is_dir():
                _safe_parts(info.filename)
                continue
            if mode not in (0, 0o100000):
                raise _refuse("archive-special-file", f"archive member {info.filename[:200]!r} is not a regular file.")
            if info.flag_bits & 0x1:
                raise _refuse(
                    "archive-encrypted",
                    f"archive member {info.filename[:200]!r} is encrypted; upload an archive without a password.",
                )
            if info.file_size > 1 << 20 and info.file_size > limits.max_ratio * max(1, info.compress_size):
                raise _refuse(
                    "archive-bomb",
                    f"archive member {info.filename[:200]!r} expands "
                    f"{info.file_size // max(1, info.compress_size)}-fold ({info.file_size} bytes); "
                    "images do not compress like that: this looks like a zip bomb.",
                )
            yield info.filename, info.file_size, -1


def _iter_tar(path: Path, limits: ArchiveLimits) -> Iterator[tuple[str, int, int]]:
    try:
        archive = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as error:
        raise _refuse(
            "invalid-archive", f"the tar cannot be read ({error}); upload an uncompressed .tar or a .zip."
        ) from error
    count = 0
    with archive:
        try:
            for info in archive:
                archive.members = []  # keep memory flat: TarFile would remember every member
                count += 1
                if count > limits.max_members:
                    raise _refuse(
                        "too-many-members",
                        f"the archive has more than {limits.max_members} members; "
                        "upload fewer or larger images, or split the dataset.",
                    )
                if info.issym() or info.islnk():
                    raise _refuse(
                        "archive-link",
                        f"archive member {info.name[:200]!r} is a "
                        f"{'symbolic' if info.issym() else 'hard'} link; links are refused: "
                        "archive the files themselves.",
                    )
                if info.isdir():
                    _safe_parts(info.name)
                    continue
                if not info.isreg() or info.issparse():
                    raise _refuse("archive-special-file", f"archive member {info.name[:200]!r} is not a regular file.")
                yield info.name, info.size, info.offset_data
        except tarfile.TarError as error:
            raise _refuse("invalid-archive", f"the tar is damaged after {count} members ({error}).") from error


def index_image_archive(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> ImageIndex:
    """Check every member's metadata and work out the layout; raise ``Rejected`` naming
    the first problem. Reads no image data."""
    path = Path(path)
    kind = archive_kind(path)
    if kind is None:
        raise _refuse(
            "unsupported-format",
            "the file is not a .zip or an uncompressed .tar of images "
            "(compressed tars cannot be read lazily; images are compressed already).",
        )
    entries: list[tuple[list[str], str, int, int]] = []
    total = 0
    for name, size, offset in (_iter_zip if kind == "zip" else _iter_tar)(path, limits):
        parts = _safe_parts(name)
        if not parts or parts[0] == "__MACOSX" or parts[-1] in _IGNORED_NAMES or parts[-1].startswith("._"):
            continue
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            raise _refuse(
                "not-an-image",
                f"archive member {name[:200]!r} is not an image "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); remove other files.",
            )
        if size > limits.max_member_bytes:
            raise _refuse(
                "image-too-large",
                f"archive member {name[:200]!r} has {size} bytes, above the "
                f"per-image limit of {limits.max_member_bytes}.",
            )
        total += size
        if total > limits.max_total_bytes:
            raise _refuse(
                "archive-too-large",
                f"the archive expands to more than {limits.max_total_bytes} bytes; "
                "register the data by reference or upload a subset.",
            )
        entries.append((parts, name, size, offset))
    if not entries:
        raise _refuse("no-images", f"the archive holds no images. {LAYOUT_HELP}")
    return _layout(kind, entries)


def _layout(kind: str, entries: list[tuple[list[str], str, int, int]], noun: str = "archive member") -> ImageIndex:
    """Labels and splits from the paths (``noun`` names an entry in messages: archive member, object)."""
    tops = {parts[0] for parts, *_ in entries}
    if len(tops) == 1 and all(len(parts) > 1 for parts, *_ in entries) and next(iter(tops)) not in _SPLITS:
        entries = [(parts[1:], *rest) for parts, *rest in entries]  # one common top folder
    split_tops = {parts[0] for parts, *_ in entries if len(parts) > 1 and parts[0] in _SPLITS}
    use_split = bool(split_tops) and all(len(parts) > 1 and parts[0] in _SPLITS for parts, *_ in entries)
    if split_tops and not use_split:
        raise _refuse("bad-archive-layout", f"some images are under train/ or val/ and others are not. {LAYOUT_HELP}")
    if use_split and {_SPLITS[t] for t in split_tops} != {"train", "val"}:
        raise _refuse(
            "bad-archive-layout", "the dataset has a train/ or a val/ folder but not both; give both or neither."
        )
    members, depths = [], set()
    for parts, name, size, offset in entries:
        split = _SPLITS[parts[0]] if use_split else None
        rest = parts[1:] if use_split else parts
        depths.add(len(rest))
        if len(rest) > 2:
            raise _refuse("bad-archive-layout", f"{noun} {name[:200]!r} is nested too deep. {LAYOUT_HELP}")
        members.append(
            ImageMember(name=name, size=size, offset=offset, label=rest[0] if len(rest) == 2 else None, split=split)
        )
    if depths == {1, 2}:
        raise _refuse("bad-archive-layout", f"some images are in class folders and others are not. {LAYOUT_HELP}")
    classes = sorted({m.label for m in members if m.label is not None})
    if len(classes) == 1:
        raise _refuse(
            "bad-archive-layout",
            f"the images are in a single class folder {classes[0]!r}; labelled data "
            "need two or more classes (for unlabelled data put the images in one flat folder).",
        )
    members.sort(key=lambda m: (m.split or "", m.label or "", m.name))
    return ImageIndex(kind=kind, members=members, classes=classes)


class MemberReader:
    """Reads member bytes from an indexed archive, never more than the size its check allowed."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = Path(path), kind
        self._zip: zipfile.ZipFile | None = None
        self._file = None

    def read(self, member: ImageMember) -> bytes:
        if self.kind == "zip":
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            with self._zip.open(member.name) as stream:
                data = stream.read(member.size + 1)
        else:
            if self._file is None:
                self._file = open(self.path, "rb")  # noqa: SIM115 - kept open across reads, closed in close()
            self._file.seek(member.offset)
            data = self._file.read(member.size)
        if len(data) != member.size:
            raise _refuse(
                "corrupt-image",
                f"archive member {member.name[:200]!r} holds {len(data)} bytes, "
                f"not the {member.size} its header declares.",
            )
        return data

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict:  # DataLoader workers open their own handles
        return {"path": self.path, "kind": self.kind}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["kind"])


def decode_image(data: bytes, name: str, max_pixels: int):
    """A Pillow image decoded from ``data``; refuses decompression bombs before decoding pixels."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise _refuse(
                    "image-bomb",
                    f"image {name[:200]!r} declares {width}x{height} pixels, above the "
                    f"limit of {max_pixels}; resize it before uploading.",
                )
            image.load()
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _refuse("image-bomb", f"image {name[:200]!r} is a decompression bomb ({error}).") from error
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise _refuse(
            "corrupt-image",
            f"image {name[:200]!r} cannot be decoded ({type(error).__name__}: "
            f"{str(error)[:200]}); replace or remove it.",
        ) from error
    return image


def check_images(path: Path, index: ImageIndex, limits: ArchiveLimits = ArchiveLimits()) -> None:
    """Decode every image once (one at a time: memory stays at one image)."""
    reader = MemberReader(path, index.kind)
    try:
        for member in index.members:
            decode_image(reader.read(member), member.name, limits.max_pixels).close()
    finally:
        reader.close()


def check_image_archive(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> ImageIndex:
    """Everything the API checks on upload: metadata of all members, then every image decoded."""
    index = index_image_archive(path, limits)
    check_images(path, index, limits)
    return index
