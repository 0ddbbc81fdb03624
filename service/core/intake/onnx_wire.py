"""ONNX structure from the protobuf wire format, without the onnx package or torch.

Refuses files over the protobuf limit, truncated or corrupt files, graphs whose nodes read
undefined values, tensors whose data lives in external files, and opsets no ONNX release
defines (so they are refused at upload, not after a worker's conversion).
"""

from __future__ import annotations

import mmap
from pathlib import Path

from service.core.intake.errors import Rejected

# The newest default-domain opset the pinned onnx release defines (onnx.defs.onnx_opset_version();
# tests/service/core/intake keeps the two equal). Anything newer cannot be converted.
MAX_ONNX_OPSET = 28
_DEFAULT_DOMAINS = ("", "ai.onnx")


def _check_opsets(opsets: dict[str, int]) -> None:
    for domain, version in opsets.items():
        if domain in _DEFAULT_DOMAINS and not 1 <= version <= MAX_ONNX_OPSET:
            raise Rejected(
                "unsupported-opset",
                f"The model declares ONNX opset {version}, which Shears cannot convert (supported: 1-{MAX_ONNX_OPSET}, "
                "best tested 13-21). Export it again with e.g. torch.onnx.export(..., opset_version=18) or "
                "onnx.version_converter.convert_version(model, 18).",
            )


MAX_ONNX_BYTES = (2 << 30) - 1  # protobuf's message limit: larger models need external data


class _Truncated(ValueError):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Truncated("varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, pos: int, end: int):
    """(field number, wire type, value) of one protobuf message; length-delimited values
    are (start, end) slices. Raises _Truncated when the bytes end inside a field."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Truncated("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        else:
            raise _Truncated(f"wire type {wire}")
        if pos > end:
            raise _Truncated("a field runs past the end")
        yield number, wire, value


def _text(buf, value) -> str:
    return bytes(buf[value[0] : value[1]]).decode("utf-8", errors="replace")


def check_onnx_structure(path: Path) -> None:
    """Walk an ONNX ModelProto's wire format (no onnx package, no torch): refuse files over
    the protobuf limit, truncated or corrupt files, graphs whose nodes read undefined values,
    and tensors whose data lives in external files (which a single-file upload cannot carry)."""
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise Rejected(
            "model-too-large",
            f"The ONNX file is {size} bytes, over protobuf's 2 GiB limit; "
            "export a smaller model (Shears accepts single-file ONNX only).",
        )

    def invalid(reason: str) -> Rejected:
        return Rejected(
            "invalid-onnx",
            f"The file starts like ONNX but is not a complete model ({reason}); "
            "upload the whole file as written by torch.onnx.export or onnx.save_model.",
        )

    with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            top: dict = {1: None, 7: None}
            opsets: dict[str, int] = {}
            for number, wire, value in _fields(buf, 0, size):
                if number in (1, 7) and wire == (0 if number == 1 else 2):
                    top[number] = value
                elif number == 8 and wire == 2:  # OperatorSetIdProto {domain = 1, version = 2}
                    entry = {n: v for n, w, v in _fields(buf, *value) if (n, w) in ((1, 2), (2, 0))}
                    domain = _text(buf, entry[1]) if 1 in entry else ""
                    opsets[domain] = entry.get(2, 0)
            if not top[1]:
                raise invalid("no ir_version")
            if top[7] is None:
                raise invalid("no graph")
            if not opsets:
                raise invalid("no opset_import")
            _check_opsets(opsets)
            defined, used, outputs, nodes = {""}, [], [], 0
            for number, wire, value in _fields(buf, *top[7]):
                if wire != 2:
                    continue
                if number == 1:  # NodeProto
                    nodes += 1
                    node = {"in": [], "name": "", "op": ""}
                    for n, w, v in _fields(buf, *value):
                        if w != 2:
                            continue
                        if n == 1:
                            node["in"].append(_text(buf, v))
                        elif n == 2:
                            defined.add(_text(buf, v))
                        elif n == 3:
                            node["name"] = _text(buf, v)
                        elif n == 4:
                            node["op"] = _text(buf, v)
                    used.append(node)
                elif number in (5, 15):  # initializer / sparse_initializer
                    _check_tensor(buf, value if number == 5 else _sparse_values(buf, value), defined)
                elif number == 11:  # graph input (ValueInfoProto)
                    defined.update(_text(buf, v) for n, w, v in _fields(buf, *value) if n == 1 and w == 2)
                elif number == 12:
                    outputs.extend(_text(buf, v) for n, w, v in _fields(buf, *value) if n == 1 and w == 2)
        except _Truncated as error:
            raise invalid(f"truncated or corrupt: {error}") from error
    if not nodes:
        raise invalid("its graph has no nodes")
    if not outputs:
        raise invalid("its graph has no outputs")
    for node in used:
        for name in node["in"]:
            if name not in defined:
                raise invalid(f"node {node['name']!r} ({node['op']}) reads {name[:100]!r}, which nothing defines")
    for name in outputs:
        if name not in defined:
            raise invalid(f"graph output {name[:100]!r} is never computed")


def _sparse_values(buf, value):
    for n, w, v in _fields(buf, *value):
        if n == 1 and w == 2:  # SparseTensorProto.values (a TensorProto, named like the tensor)
            return v
    return (value[0], value[0])


def _check_tensor(buf, value, defined: set) -> None:
    name, location, external = "", None, False
    for n, w, v in _fields(buf, *value):
        if n == 8 and w == 2:
            name = _text(buf, v)
        elif n == 14 and w == 0 and v == 1:
            external = True
        elif n == 13 and w == 2:  # external_data: StringStringEntryProto {key, value}
            entry = {k: _text(buf, x) for k, ww, x in _fields(buf, *v) if ww == 2}
            if entry.get(1) == "location":
                location = entry.get(2, "")
    defined.add(name)
    if external or location is not None:
        where = location or "?"
        escapes = where.startswith(("/", "\\")) or ".." in where.replace("\\", "/").split("/") or ":" in where
        reason = "a path outside the upload" if escapes else "a separate file, which a single-file upload cannot carry"
        raise Rejected(
            "external-data-outside-upload",
            f"Tensor {name[:100]!r} keeps its data in {where[:200]!r}, {reason}. Save the model as one file: "
            "torch.onnx.export(..., external_data=False) or "
            "onnx.save_model(model, path, save_as_external_data=False).",
        )
