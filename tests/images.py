"""Builders of image archives for tests: ImageFolder zips, flat tars and hostile ones."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable

import numpy as np
from PIL import Image


def png_bytes(width: int = 8, height: int = 8, seed: int = 0, *, pattern: int | None = None) -> bytes:
    """A small RGB PNG of seeded noise (or a class-dependent pattern brightness)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if pattern is not None:
        pixels[:, :, pattern % 3] = 255  # one bright channel per class: learnable
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A grayscale PNG that declares ``width x height`` zero pixels in ~100 KB, built row by row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zip_bytes(members: Iterable[tuple[str, bytes]], *, symlinks: Iterable[tuple[str, str]] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(
    members: Iterable[tuple[str, bytes]],
    *,
    symlinks: Iterable[tuple[str, str]] = (),
    hardlinks: Iterable[tuple[str, str]] = (),
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for links, kind in ((symlinks, tarfile.SYMTYPE), (hardlinks, tarfile.LNKTYPE)):
            for name, target in links:
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                archive.addfile(info)
    return buffer.getvalue()


def image_folder(
    classes: int = 2, per_class: int = 6, size: int = 8, *, split: bool = False
) -> list[tuple[str, bytes]]:
    """Members of an ImageFolder archive ``data/<class>/<n>.png`` (or under train/ and val/)."""
    members = []
    for c in range(classes):
        for i in range(per_class):
            prefix = ("train/" if i < per_class - 2 else "val/") if split else ""
            members.append((f"data/{prefix}class{c}/{i}.png", png_bytes(size, size, seed=100 * c + i, pattern=c)))
    return members


def flat_folder(count: int = 10, size: int = 8) -> list[tuple[str, bytes]]:
    return [(f"images/{i:04d}.png", png_bytes(size, size, seed=i)) for i in range(count)]


def many_tiny_members_zip(count: int = 100_000) -> bytes:
    """A zip of ``count`` one-byte members (stored), about 100 bytes each."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(zipfile.ZipInfo(f"i/{i}.png"), b"x")
    return buffer.getvalue()


_WORDS = "invoice total date page shears prune model layer channel report figure table 2026 #12 A4 x=3.5 OK"


def text_document_png(width: int, height: int, seed: int = 0) -> bytes:
    """A procedurally rendered page: a tinted background, 1–5 lines of dark text at random
    sizes and places, sometimes a rule or a box (an unlabelled input for OCR/text detection)."""
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    paper = tuple(int(v) for v in rng.integers(200, 256, size=3))
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    words = _WORDS.split()
    y = int(rng.integers(0, max(1, height // 6)))
    for _ in range(int(rng.integers(2, 7))):
        size = int(rng.integers(max(6, height // 14), max(7, height // 5)))
        font = ImageFont.load_default(size=size)
        text = " ".join(rng.choice(words, size=int(rng.integers(1, 5))))
        ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
        x = int(rng.integers(0, max(1, width // 4)))
        draw.text((x, y), text, fill=ink, font=font)
        y += size + int(rng.integers(1, max(2, size)))
        if y >= height:
            break
    if rng.random() < 0.3:
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        draw.rectangle((x0, y0, x0 + width // 3, y0 + height // 4), outline=(40, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_scene_png(width: int, height: int, seed: int = 0) -> bytes:
    """A procedurally rendered scene: a gradient background and 2–8 filled ellipses,
    rectangles and polygons in random colours (an unlabelled input for an object detector)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    top, bottom = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 9))):
        w, h = int(rng.integers(width // 8, width // 2)), int(rng.integers(height // 8, height // 2))
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            points = [(x0 + int(rng.integers(0, w)), y0 + int(rng.integers(0, h))) for _ in range(3)]
            draw.polygon(points, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
