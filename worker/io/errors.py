"""Errors raised when an uploaded model or dataset cannot be used.

Both carry a stable ``code`` slug (the API turns it into a problem+json ``type``) and a
message that says what is wrong and how to fix it. Messages never echo file contents.
"""

from __future__ import annotations

MODEL_CODES = frozenset(
    {
        "unsupported-format",
        "pickle-refused",
        "torchscript-disabled",
        "unsupported-operator",
        "external-data-outside-upload",
        "model-too-large",
        "invalid-onnx",
        "invalid-safetensors",
        "invalid-torchscript",
        "architecture-required",
        "unknown-architecture",
        "weights-mismatch",
    }
)
DATASET_CODES = frozenset(
    {
        "unsupported-format",
        "invalid-safetensors",
        "invalid-npz",
        "missing-keys",
        "bad-dtype",
        "bad-shape",
        "bad-labels",
        "bad-values",
        "too-large",
        "too-few-samples",
        "unknown-dataset",
        # image archives (service.core.image_archives, worker.io.images)
        "invalid-archive",
        "too-many-members",
        "unsafe-archive-path",
        "archive-link",
        "archive-special-file",
        "archive-encrypted",
        "archive-bomb",
        "archive-too-large",
        "not-an-image",
        "image-too-large",
        "no-images",
        "bad-archive-layout",
        "image-bomb",
        "corrupt-image",
        "mixed-image-sizes",
        "bad-preprocessing",
    }
)


class _Rejected(ValueError):
    """Base of the two rejections: ``code`` is a stable slug, ``str(err)`` the message."""

    codes: frozenset[str] = frozenset()

    def __init__(self, code: str, message: str) -> None:
        if code not in self.codes:
            raise ValueError(f"unknown {type(self).__name__} code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        """``{"code": ..., "message": ...}`` for job errors and inspection results."""
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class ModelRejected(_Rejected):
    """An uploaded model that Shears will not load (format, safety, operators, weights)."""

    codes = MODEL_CODES


class DatasetRejected(_Rejected):
    """An uploaded dataset that Shears will not use (format, dtypes, shapes, labels)."""

    codes = DATASET_CODES
