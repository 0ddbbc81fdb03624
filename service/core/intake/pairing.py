"""Whether an inspected model and an inspected dataset can meet in a job, checked when the job is
created (both records ``ready``) so that a mismatch is a 422 instead of a queued job that fails at
load. Only what the inspections recorded for sure is compared: an ONNX model's declared input
(static dims must equal the samples'; symbolic ones take them) against a dataset of arrays or a
built-in one. Images are sized by ``spec.preprocessing`` and zoo architectures take any shape,
so those pairs are left to the job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

BUILTIN_SAMPLE_SHAPES: dict[str, list[int]] = {"mnist1d": [1, 40], "digits": [1, 8, 8]}
"""Per-sample shapes of the built-in datasets (worker.io.datasets.builtin_dataset)."""


def declared_input(model_info: Mapping[str, Any]) -> list[int | str | None] | None:
    """The ONNX model's per-sample input dims as inspected (None: not recorded)."""
    if model_info.get("input_shape") is not None:
        return list(model_info["input_shape"])
    inputs = (model_info.get("io") or {}).get("inputs") or []
    if len(inputs) != 1 or len(inputs[0].get("dims") or []) < 2:
        return None
    return [d if isinstance(d, int) else None for d in inputs[0]["dims"][1:]]


def sample_shape(dataset_info: Mapping[str, Any] | None, builtin: str | None) -> list[int] | None:
    """The dataset's per-sample shape as a job will see it (None: known only to the job)."""
    if builtin is not None:
        return BUILTIN_SAMPLE_SHAPES.get(builtin)
    if not dataset_info or str(dataset_info.get("format", "")).startswith("image"):
        return None
    shape = dataset_info.get("input_shape")
    return list(shape) if shape is not None else None


def input_shape_conflict(
    model_format: str | None, model_info: Mapping[str, Any] | None, samples: Sequence[int] | None
) -> str | None:
    """Why the model cannot take the samples, or None when it can (or it cannot be told here)."""
    if model_format != "onnx" or not model_info or samples is None:
        return None
    declared = declared_input(model_info)
    if declared is None:
        return None
    if len(declared) == len(samples) and all(d is None or d == s for d, s in zip(declared, samples, strict=True)):
        return None
    shown = [d if d is not None else "?" for d in declared]
    return (
        f"the model's input is declared {shown} per sample but the dataset's samples have shape {list(samples)}; "
        f"use a dataset whose samples have shape {shown} (or the model trained on this dataset)"
    )
