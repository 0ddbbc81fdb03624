"""TorchScript export with a reload-and-compare parity check."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _max_diff(a: Any, b: Any) -> float:
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


def export_torchscript(
    model: nn.Module, example_input: torch.Tensor, path: Path, *, rtol: float = 1e-3, atol: float = 1e-5
) -> dict[str, Any]:
    """Save ``model`` as TorchScript (trace, else script), reload it and compare outputs.

    The comparison runs at the example's batch size and at a different one, so a trace
    that baked in the batch size is caught (and scripting is tried instead). Returns
    ``{path, method, max_abs_diff, tolerance, passed, batch_sizes_checked}``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    example = example_input.detach()
    other = torch.cat([example, example, example], 0)[: example.shape[0] + 2]
    probes = [example, other]
    result: dict[str, Any] = {"path": str(path), "method": None, "passed": False}
    try:
        with torch.no_grad():
            refs = [model(x) for x in probes]
        ref_max = max(float(r.abs().max()) if r.numel() else 0.0 for r in refs)
        tolerance = atol + rtol * ref_max
        errors = []
        for method in ("trace", "script"):
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    scripted = (
                        torch.jit.trace(model, example, check_trace=False)
                        if method == "trace"
                        else torch.jit.script(model)
                    )
                    torch.jit.save(scripted, str(path))
                    reloaded = torch.jit.load(str(path), map_location="cpu").eval()
                with torch.no_grad():
                    diff = max(_max_diff(reloaded(x), r) for x, r in zip(probes, refs, strict=True))
            except Exception as exc:
                errors.append(f"{method}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")
                continue
            result.update(method=method, max_abs_diff=diff, tolerance=tolerance, passed=diff <= tolerance)
            if result["passed"]:
                break
        if result["method"] is None:
            result["error"] = "; ".join(errors)
        result["batch_sizes_checked"] = sorted({int(x.shape[0]) for x in probes})
        return result
    finally:
        model.train(was_training)
