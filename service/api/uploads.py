"""Streamed multipart uploads: file parts go to disk chunk by chunk, hashed on the way.

Starlette's form parser buffers whole parts before a route runs; this reader enforces the
size limit while the bytes arrive (413 as soon as the limit is crossed, or at once when the
declared Content-Length is over it) and keeps memory flat for multi-GiB models: the body is
parsed, hashed and written in 4 MiB blocks in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from service.api.errors import Problem

MAX_FIELD_BYTES = 256 * 1024
BLOCK_BYTES = 4 << 20  # parse, hash and write uploads in blocks of this size, off the event loop


@dataclass
class ReceivedFile:
    field: str
    filename: str
    path: Path
    size: int
    sha256: str


@dataclass
class ReceivedForm:
    files: dict[str, ReceivedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    temporary: list[Path] = field(default_factory=list)  # every file made, finished or not

    def cleanup(self) -> None:
        for path in self.temporary:
            path.unlink(missing_ok=True)


def _too_large(limit: int) -> Problem:
    return Problem(
        413,
        "upload-too-large",
        f"The upload is larger than this server's limit of {limit} bytes; "
        "prune a smaller export or ask the operator to raise SHEARS_MAX_UPLOAD_BYTES.",
    )


async def receive_form(request: Request, limit: int, tmp_dir: Path) -> ReceivedForm:
    """Read a multipart/form-data body into temporary files. However the request ends
    (refused, malformed, unterminated, repeated parts, client gone, cancelled) every file
    it made is removed here; on success the caller removes them with ``form.cleanup()``."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise Problem(
            415, "multipart-required", "Send the file as multipart/form-data, e.g. `curl -F file=@model.onnx`."
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MAX_FIELD_BYTES:
        raise _too_large(limit)

    tmp_dir.mkdir(parents=True, exist_ok=True)
    form = ReceivedForm()
    state: dict = {}
    total = 0

    def on_part_begin() -> None:
        state.update(headers={}, name=None, filename=None, out=None, buffer=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] = data[start:end].decode("latin-1").lower()

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["headers"][state["header"]] = state["headers"].get(state["header"], "") + data[start:end].decode(
            "latin-1"
        )

    def on_headers_finished() -> None:
        _, params = parse_options_header(state["headers"].get("content-disposition", ""))
        state["name"] = params.get(b"name", b"").decode()
        filename = params.get(b"filename")
        if state["name"] in form.files or state["name"] in form.fields:
            raise Problem(
                422, "duplicate-part", f"The form repeats the part {state['name'][:40]!r}; send each part once."
            )
        if filename is not None:
            fd, path = tempfile.mkstemp(dir=tmp_dir, prefix=f"upload-{os.getpid()}-")
            form.temporary.append(Path(path))
            state.update(
                filename=os.path.basename(filename.decode(errors="replace"))[:255] or "upload",
                out=os.fdopen(fd, "wb"),
                path=Path(path),
                hash=hashlib.sha256(),
                size=0,
            )

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = memoryview(data)[start:end]  # no copy: written and hashed in place
        if state["out"] is not None:
            state["out"].write(chunk)
            state["hash"].update(chunk)
            state["size"] += len(chunk)
        else:
            state["buffer"] += chunk
            if len(state["buffer"]) > MAX_FIELD_BYTES:
                raise Problem(413, "field-too-large", f"Form field {state['name']!r} is over {MAX_FIELD_BYTES} bytes.")

    def on_part_end() -> None:
        if state["out"] is not None:
            state["out"].close()
            form.files[state["name"]] = ReceivedFile(
                state["name"], state["filename"], state["path"], state["size"], state["hash"].hexdigest()
            )
        else:
            form.fields[state["name"]] = state["buffer"].decode("utf-8", errors="replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    pending: asyncio.Future | None = None
    try:
        # The socket's pieces are gathered into blocks of BLOCK_BYTES (not joined: no copy);
        # each block is parsed, hashed and written in a worker thread (hashlib and file
        # writes release the GIL) while the event loop receives the next: at most two blocks
        # in memory.
        chunks: list[bytes] = []
        gathered = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + MAX_FIELD_BYTES:
                raise _too_large(limit)
            chunks.append(chunk)
            gathered += len(chunk)
            if gathered >= BLOCK_BYTES:
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(asyncio.to_thread(_write_all, parser, chunks))
                chunks, gathered = [], 0
        if pending is not None:
            await pending
        pending = None
        if chunks:
            await asyncio.to_thread(_write_all, parser, chunks)
        parser.finalize()
        if parser.state != MultipartState.END:
            raise Problem(
                400,
                "malformed-multipart",
                "The multipart body ended before its closing boundary (`--<boundary>--`); send the complete body.",
            )
    except BaseException as error:  # a Problem, a parse error, a client disconnect, a cancellation
        if pending is not None:  # let the thread finish before its file is closed and removed
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
        if state.get("out") is not None and not state["out"].closed:
            state["out"].close()
        form.cleanup()
        if isinstance(error, Problem):
            raise
        if isinstance(error, Exception):
            raise Problem(
                400,
                "malformed-multipart",
                f"The multipart body could not be parsed ({error}); send it again with a valid boundary.",
            ) from error
        raise
    for received in form.files.values():
        if received.size > limit:
            form.cleanup()
            raise _too_large(limit)
    return form


def _write_all(parser: MultipartParser, chunks: list[bytes]) -> None:
    for chunk in chunks:
        parser.write(chunk)


def remove_orphan_uploads(tmp_dir: Path) -> list[Path]:
    """Delete temporary upload files left by API processes that died mid-upload (killed,
    OOM, power loss). Files carry the writer's pid; those of live processes other than this
    one are kept (several API processes may share ``tmp_dir`` on one host)."""
    removed = []
    for path in tmp_dir.glob("upload-*") if tmp_dir.is_dir() else ():
        owner = path.name.split("-")[1]
        if owner.isdigit() and int(owner) != os.getpid():
            try:
                os.kill(int(owner), 0)
                continue  # its writer is alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, another user's
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
