"""The one rejection every intake check raises: a stable ``code`` slug and a how-to-fix message.

The API turns it into a 422 problem+json (``type`` = code); the worker records it as the
upload's ``invalid`` reason or the job's error. Messages never echo file contents.
"""

from __future__ import annotations

CODES = frozenset(
    {
        # any upload
        "empty-file",
        "unsupported-format",
        "pickle-refused",
        "invalid-safetensors",
        # models
        "torchscript-disabled",
        "unsupported-operator",
        "unsupported-opset",
        "external-data-outside-upload",
        "model-too-large",
        "invalid-onnx",
        "invalid-torchscript",
        "architecture-required",
        "unknown-architecture",
        "weights-mismatch",
        "input-shape-required",
        "input-shape-mismatch",
        "multiple-inputs",
        # datasets
        "invalid-npz",
        "npz-too-many-arrays",
        "npz-compression-bomb",
        "npz-size-mismatch",
        "too-large",
        "missing-keys",
        "bad-dtype",
        "bad-shape",
        "bad-labels",
        "bad-values",
        "too-few-samples",
        "unknown-dataset",
        # image archives (service.core.intake.archives, worker.io.images)
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
        # datasets registered by reference (service.core.intake.references, service.core.storage.bucket)
        "invalid-reference",
        "references-disabled",
        "reference-not-allowed",
        "reference-not-found",
        "reference-unreadable",
        "too-many-objects",
        "unsafe-object-key",
        "reference-too-large",
        "input-changed",
        "input-deleted",
    }
)


class Rejected(ValueError):
    """An upload Shears will not use: ``code`` is one of ``CODES``, ``str(err)`` the message."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        """``{"code": ..., "message": ...}`` for job errors and inspection results."""
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"Rejected({self.code!r}, {self.message!r})"
