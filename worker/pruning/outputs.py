"""What a model returns, as a flat list of named tensors, and what kind each output is.

Label-free pruning treats the dense model's outputs as targets, so every output needs a
name (for the report and the spec) and a kind that decides how it is compared:

- ``logits``: scores over classes along dim 1 (a classifier's ``(N, C)``, a segmenter's
  ``(N, C, H, W)``); compared by top-1 agreement and distilled with a tempered KL.
- ``probabilities``: values in [0, 1] from a sigmoid or softmax (a text-detection or
  segmentation map, per-step character probabilities); compared like regression and
  distilled with a normalised Bernoulli KL, whose gradient does not vanish where a pruned
  model's sigmoid saturates.
- ``regression``: anything else (boxes, embeddings, feature maps, depth); compared by
  relative L2 error and cosine similarity and distilled with a scale-normalised L2.

Pure torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

OutputKind = Literal["logits", "probabilities", "regression"]
KINDS: tuple[str, ...] = ("logits", "probabilities", "regression")


def output_list(outputs: object) -> list[torch.Tensor]:
    """Flatten a model's return value (a tensor, a tuple/list, a dict, nested) into tensors."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, Mapping):
        return [t for value in outputs.values() for t in output_list(value)]
    if isinstance(outputs, (tuple, list)):
        return [t for value in outputs for t in output_list(value)]
    raise TypeError(f"a model output of type {type(outputs).__name__} is not a tensor, tuple, list or dict")


def output_names(outputs: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> list[str]:
    """``names`` when they fit (ONNX output names), else ``output_0``, ``output_1``, ..."""
    if names is not None and len(names) == len(outputs):
        return list(names)
    return [f"output_{i}" for i in range(len(outputs))]


def detect_kind(output: torch.Tensor) -> OutputKind:
    """Guess an output's kind from one batch of it.

    ``(N, C)`` with C ≥ 2 is read as logits (a classifier). A higher-rank output whose
    values all lie in [0, 1] is read as ``probabilities`` (a sigmoid or softmax map). Other
    higher-rank outputs could be per-pixel class scores or feature maps alike, so they count
    as ``regression`` unless the spec says otherwise; an integer or boolean output is never
    logits or probabilities.
    """
    if not output.is_floating_point():
        return "regression"
    if output.ndim == 2 and output.shape[1] >= 2:
        return "logits"
    if output.ndim >= 2 and output.numel() and bool(((output >= 0) & (output <= 1)).all()):
        return "probabilities"
    return "regression"


def resolve_kinds(
    outputs: Sequence[torch.Tensor], names: Sequence[str], declared: Mapping[str, str] | None = None
) -> list[OutputKind]:
    """Kinds of all outputs: declared in the spec (by name or index) or detected."""
    declared = dict(declared or {})
    known = set(names) | {str(i) for i in range(len(names))}
    unknown = sorted(set(declared) - known)
    if unknown:
        raise ValueError(f"output kinds name {unknown} but the model's outputs are {list(names)}")
    kinds: list[OutputKind] = []
    for index, (name, output) in enumerate(zip(names, outputs, strict=True)):
        kind = declared.get(name, declared.get(str(index)))
        if kind is None:
            kinds.append(detect_kind(output))
        elif kind == "logits" and (output.ndim < 2 or output.shape[1] < 2 or not output.is_floating_point()):
            raise ValueError(
                f"output {name!r} of shape {list(output.shape)} cannot be logits: "
                "logits need a class dimension (dim 1) of size 2 or more"
            )
        elif kind not in KINDS:
            raise ValueError(f"output {name!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        else:
            kinds.append(kind)  # type: ignore[arg-type]
    return kinds


def class_last(output: torch.Tensor) -> torch.Tensor:
    """``(N, C, *rest)`` → ``(N·prod(rest), C)``: one row of class scores per position."""
    if output.ndim == 2:
        return output
    return output.movedim(1, -1).reshape(-1, output.shape[1])
