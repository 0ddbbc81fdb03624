"""The job report: one plain dict (``report.json``) and a self-contained ``report.html``.

Schema (``schema_version`` 1; accuracies in percent, 0–100; sizes in bytes; times in
seconds; latencies in milliseconds; ``None`` where a stage did not run):

```
schema_version   int
job_id           str | None
created_at       ISO-8601 UTC
model            {name, format, input_shape}            # as given by the caller
dataset          {name, num_classes, train, val, test}  # sample counts
spec             dict                                   # the resolved job spec
accuracy         {dense, pruned, finetuned, final, split}
                 final = finetuned, else pruned, else dense; split = "val"
test_accuracy    {dense, final} | None                  # held-out split, benchmarks only
parameters       {before, after, ratio}                 # ratio = after / before
macs             {before, after, ratio}
file_size        {before: {bytes, gzip_bytes} | None, after: {...} | None}
latency          {before: onnxruntime_latency() | None, after: ... | None,
                  speedup: {batch: before_median / after_median}}
layers           [{name, type, channels_before, channels_after, kept_fraction,
                   weights, nonzero_weights, sparsity}]
structure        {channels_removed: bool, unstructured_sparsity: float | None}
early_bird       {detector, found, epoch, distances: [float], threshold, lr, dense_accuracy, warnings} | None
                 # dense_accuracy: the network at the ticket, the accuracy reference after early_bird
probmask         {sparsity, score_lr, steps, undecided, warnings} | None  # undecided: scores in (0.05, 0.95)
warnings         [str]                                  # things the user should look at (undecided scores)
training_curves  {stage: {epoch: [int], train_loss: [float], val_accuracy: [float]}}
timings          {stage: seconds, "total": seconds}
exports          {onnx: {...parity, exporter}, torchscript: {...}} | {}
versions         {shears, torch, onnx, onnxruntime, torch_pruning, python}
fidelity         {after_pruning: F | None, final: F | None}; F = {outputs: {name: {kind, shape,
                 relative_error, cosine, agreement}}, fidelity, samples} (worker.pruning.fidelity);
                 after early_bird, to the network at the ticket (acceptance.reference "ticket")
acceptance       {max_accuracy_drop, measured_drop, reference ("dense" | "ticket"), compared, passed,
                  checks: {accuracy?, min_agreement?, max_relative_error?, target?: {bound, measured, passed}}}
target           {bound, value, batch, kind, reference_accuracy, steps, dense: P, points: [P],
                  chosen_ratio, met_in_search, seconds, warnings, confirmed: {name, bound, measured,
                  passed}} | None                       # prune_channels.target's search
                 P = {ratio, macs, macs_fraction, params?, accuracy_pruned, accuracy?, fidelity?,
                      latency_ms?, latency_ci95_ms?, measured, passed, chosen}
```

Label-free datasets (inputs only) have no accuracy: every accuracy is ``None`` and the gate
rests on the fidelity bounds; an accuracy bound that cannot be measured is reported with
``passed: None`` and does not fail the gate.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.pruning.fidelity import DROP_TOLERANCE

SCHEMA_VERSION = 1
REPORT_FIELDS = (
    "schema_version",
    "job_id",
    "created_at",
    "model",
    "dataset",
    "spec",
    "accuracy",
    "test_accuracy",
    "parameters",
    "macs",
    "file_size",
    "latency",
    "layers",
    "structure",
    "early_bird",
    "probmask",
    "warnings",
    "training_curves",
    "timings",
    "exports",
    "versions",
    "fidelity",
    "acceptance",
    "target",
)

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def versions() -> dict[str, str | None]:
    """Versions of the libraries that shaped the result."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "shears": version("shears"),
        "torch": torch.__version__,
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime"),
        "torch_pruning": version("torch-pruning"),
        "python": platform.python_version(),
    }


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv/Linear layer by module name (what :func:`layer_stats`
    needs of the dense model, without keeping a copy of it)."""
    return {
        name: int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)
        for name, m in model.named_modules()
        if isinstance(m, _PRUNABLE)
    }


def layer_stats(
    before: nn.Module | Mapping[str, int], after: nn.Module, masks: Mapping[str, torch.Tensor] | None = None
) -> list[dict[str, Any]]:
    """Per Conv/Linear layer: output channels before/after and weight sparsity after.

    ``before`` is the dense model or its :func:`channel_counts`. Layers are matched by module
    name. ``masks`` (``"<layer>.weight"`` or ``"<layer>"`` → 0/1 tensor) count as zeros where
    0; otherwise zeros are read from the weights.
    """
    masks = masks or {}
    dense = channel_counts(before) if isinstance(before, nn.Module) else dict(before)
    rows = []
    for name, module in after.named_modules():
        if not isinstance(module, _PRUNABLE):
            continue
        out_after = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        out_before = dense.get(name)
        weight = module.weight.detach()
        mask = masks.get(f"{name}.weight", masks.get(name))
        nonzero = int((mask != 0).sum()) if mask is not None else int((weight != 0).sum())
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "channels_before": None if out_before is None else int(out_before),
                "channels_after": int(out_after),
                "kept_fraction": None if not out_before else out_after / out_before,
                "weights": int(weight.numel()),
                "nonzero_weights": nonzero,
                "sparsity": 1.0 - nonzero / weight.numel() if weight.numel() else 0.0,
            }
        )
    return rows


def _ratio(before: float | None, after: float | None) -> float | None:
    if before in (None, 0) or after is None:
        return None
    return after / before


def _speedup(before: Mapping | None, after: Mapping | None) -> dict[str, float]:
    if not before or not after:
        return {}
    out = {}
    for batch, stats in before.get("batch_sizes", {}).items():
        other = after.get("batch_sizes", {}).get(batch)
        if other and other.get("median_ms"):
            out[batch] = stats["median_ms"] / other["median_ms"]
    return out


def build_report(
    *,
    accuracy_dense: float | None,
    accuracy_pruned: float | None = None,
    accuracy_finetuned: float | None = None,
    params_before: int,
    params_after: int,
    macs_before: int | None = None,
    macs_after: int | None = None,
    file_size_before: Mapping[str, int] | None = None,
    file_size_after: Mapping[str, int] | None = None,
    latency_before: Mapping[str, Any] | None = None,
    latency_after: Mapping[str, Any] | None = None,
    layers: list[dict[str, Any]] | None = None,
    channels_removed: bool = False,
    early_bird: Mapping[str, Any] | None = None,
    probmask: Mapping[str, Any] | None = None,
    training_curves: Mapping[str, Mapping[str, list]] | None = None,
    timings: Mapping[str, float] | None = None,
    max_accuracy_drop: float | None = None,
    exports: Mapping[str, Any] | None = None,
    test_accuracy: Mapping[str, float | None] | None = None,
    job_id: str | None = None,
    model: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
    fidelity: Mapping[str, Any] | None = None,
    fidelity_checks: Mapping[str, Any] | None = None,
    target: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the report dict (see the module docstring for the schema). The accuracy drop is
    measured against the dense model, or, after ``early_bird``, against the dense network at the
    ticket (the upload was only where its training started)."""
    final = next((a for a in (accuracy_finetuned, accuracy_pruned, accuracy_dense) if a is not None), None)
    compared = "finetuned" if accuracy_finetuned is not None else "pruned" if accuracy_pruned is not None else "dense"
    reference, reference_accuracy = "dense", accuracy_dense
    if early_bird and early_bird.get("dense_accuracy") is not None:
        reference, reference_accuracy = "ticket", early_bird["dense_accuracy"]
    drop = None if reference_accuracy is None or final is None else reference_accuracy - final
    checks: dict[str, Any] = {}
    if max_accuracy_drop is not None:
        checks["accuracy"] = {
            "bound": max_accuracy_drop,
            "measured": drop,
            "passed": None if drop is None else bool(drop <= max_accuracy_drop + DROP_TOLERANCE),
        }
        if drop is None:
            checks["accuracy"]["reason"] = "the dataset has no labels: accuracy is not measured"
    checks.update(dict(fidelity_checks or {}))
    if target and target.get("confirmed"):
        checks["target"] = dict(target["confirmed"])
    layers = list(layers or [])
    total_weights = sum(row.get("weights", 0) for row in layers)
    nonzero = sum(row.get("nonzero_weights", 0) for row in layers)
    timings = dict(timings or {})
    if timings and "total" not in timings:
        timings["total"] = float(sum(timings.values()))
    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": dict(model or {}),
        "dataset": dict(dataset or {}),
        "spec": dict(spec or {}),
        "accuracy": {
            "dense": accuracy_dense,
            "pruned": accuracy_pruned,
            "finetuned": accuracy_finetuned,
            "final": final,
            "split": "val",
        },
        "test_accuracy": dict(test_accuracy) if test_accuracy else None,
        "parameters": {
            "before": int(params_before),
            "after": int(params_after),
            "ratio": _ratio(params_before, params_after),
        },
        "macs": {"before": macs_before, "after": macs_after, "ratio": _ratio(macs_before, macs_after)},
        "file_size": {
            "before": dict(file_size_before) if file_size_before else None,
            "after": dict(file_size_after) if file_size_after else None,
        },
        "latency": {
            "before": dict(latency_before) if latency_before else None,
            "after": dict(latency_after) if latency_after else None,
            "speedup": _speedup(latency_before, latency_after),
        },
        "layers": layers,
        "structure": {
            "channels_removed": bool(channels_removed),
            "unstructured_sparsity": (1.0 - nonzero / total_weights) if total_weights else None,
        },
        "early_bird": dict(early_bird) if early_bird else None,
        "probmask": dict(probmask) if probmask else None,
        "warnings": [
            *(early_bird or {}).get("warnings", []),
            *(probmask or {}).get("warnings", []),
            *(target or {}).get("warnings", []),
        ],
        "training_curves": {k: dict(v) for k, v in (training_curves or {}).items()},
        "timings": timings,
        "exports": dict(exports or {}),
        "versions": versions(),
        "fidelity": {"after_pruning": None, "final": None, **dict(fidelity or {})},
        "acceptance": {
            "max_accuracy_drop": max_accuracy_drop,
            "measured_drop": drop,
            "reference": reference,
            "compared": compared,
            "passed": all(c["passed"] is not False for c in checks.values()),
            "checks": checks,
        },
        "target": dict(target) if target else None,
    }


# ------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def _figure():
    from matplotlib.figure import Figure

    return Figure(figsize=(7.5, 3.2), dpi=100, layout="constrained")


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _plot_layers(layers: list[dict[str, Any]]) -> str | None:
    if not layers:
        return None
    fig = _figure()
    ax_channels, ax_sparsity = fig.subplots(1, 2)
    x = range(len(layers))
    before = [row.get("channels_before") or 0 for row in layers]
    after = [row.get("channels_after") or 0 for row in layers]
    ax_channels.bar(x, before, color="#cccccc", label="before")
    ax_channels.bar(x, after, color="#1f77b4", label="kept")
    ax_channels.set_title("channels per layer")
    ax_channels.set_xlabel("layer index")
    ax_channels.legend(fontsize=8)
    ax_sparsity.bar(x, [100 * (row.get("sparsity") or 0) for row in layers], color="#d62728")
    ax_sparsity.set_title("weight sparsity per layer (%)")
    ax_sparsity.set_xlabel("layer index")
    ax_sparsity.set_ylim(0, 100)
    return _png(fig)


def _plot_curves(curves: Mapping[str, Mapping[str, list]]) -> str | None:
    if not curves:
        return None
    fig = _figure()
    ax_loss, ax_acc = fig.subplots(1, 2)
    for index, curve in enumerate(curves.values()):
        label = f"stage {index + 1}"  # stage names are shown (escaped) in the table
        epochs = curve.get("epoch") or list(
            range(1, len(curve.get("train_loss") or curve.get("val_accuracy") or []) + 1)
        )
        if curve.get("train_loss"):
            ax_loss.plot(epochs[: len(curve["train_loss"])], curve["train_loss"], marker=".", label=label)
        if curve.get("val_accuracy"):
            ax_acc.plot(epochs[: len(curve["val_accuracy"])], curve["val_accuracy"], marker=".", label=label)
    ax_loss.set_title("training loss")
    ax_acc.set_title("validation accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=8)
    return _png(fig)


def _plot_early_bird(early_bird: Mapping[str, Any] | None) -> str | None:
    if not early_bird or not early_bird.get("distances"):
        return None
    fig = _figure()
    ax = fig.subplots()
    distances = early_bird["distances"]
    epochs = early_bird.get("distance_epochs") or list(range(1, len(distances) + 1))
    ax.plot(epochs, distances, marker="o", label="distance")
    if early_bird.get("threshold") is not None:
        ax.axhline(early_bird["threshold"], color="#d62728", linestyle="--", label="threshold")
    if early_bird.get("epoch") is not None:
        ax.axvline(early_bird["epoch"], color="#2ca02c", linestyle=":", label="ticket")
    ax.set_xlabel("epoch")
    ax.set_title("early-bird mask distance")
    ax.legend(fontsize=8)
    return _png(fig)


def _plot_target(target: Mapping[str, Any] | None) -> str | None:
    """The trade-off curve a target search explored: accuracy (or fidelity) against MACs and,
    where measured, onnxruntime latency; the chosen point starred, the bound dashed."""
    if not target or not target.get("points"):
        return None
    points = sorted([target["dense"], *target["points"]], key=lambda p: p["ratio"])
    explored = target["points"]  # the dense point has every measure; what the candidates have decides
    quality = "accuracy" if any(p.get("accuracy") is not None for p in explored) else "accuracy_pruned"
    if all(p.get(quality) is None for p in explored):
        quality = "fidelity"
    label = {"accuracy": "val. accuracy (%)", "accuracy_pruned": "val. accuracy after pruning (%)"}.get(
        quality, "fidelity"
    )
    axes_x = [("macs_fraction", "MACs (fraction of dense)")]
    if any(p.get("latency_ms") is not None for p in points):
        axes_x.append(("latency_ms", f"onnxruntime latency, batch {target.get('batch') or 1} (ms)"))
    fig = _figure()
    for ax, (key, xlabel) in zip(fig.subplots(1, len(axes_x), squeeze=False)[0], axes_x, strict=True):
        shown = [p for p in points if p.get(key) is not None and p.get(quality) is not None]
        ax.plot([p[key] for p in shown], [p[quality] for p in shown], "o-", color="#1f77b4", label="explored")
        for p in shown:
            ax.annotate(
                f"{p['ratio']:.2f}", (p[key], p[quality]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        chosen = [p for p in shown if p.get("chosen")]
        if chosen:
            ax.plot([chosen[0][key]], [chosen[0][quality]], "*", markersize=14, color="#d62728", label="chosen")
        bound, value = target.get("bound"), target.get("value")
        if bound == "macs" and key == "macs_fraction" or bound == "latency_ms" and key == "latency_ms":
            ax.axvline(value, color="#d62728", linestyle="--", label="bound")
        if bound == "max_accuracy_drop" and quality == "accuracy" and target.get("reference_accuracy") is not None:
            ax.axhline(target["reference_accuracy"] - value, color="#d62728", linestyle="--", label="bound")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return _png(fig)


def _target_section(target: Mapping[str, Any] | None) -> list[str]:
    """The search's table: every point explored, the chosen one and the confirmation."""
    if not target:
        return []
    confirmed = target.get("confirmed") or {}
    verdict = {True: "met", False: "NOT met", None: "not measured"}[confirmed.get("passed")]
    rows = [
        (
            p["ratio"],
            p.get("macs_fraction"),
            p.get("latency_ms"),
            p.get("accuracy_pruned"),
            p.get("accuracy"),
            p.get("measured"),
            p.get("passed"),
            p.get("chosen"),
        )
        for p in sorted([target["dense"], *target.get("points", [])], key=lambda p: p["ratio"])
    ]
    header = (
        "ratio",
        "MACs fraction",
        "latency ms",
        "acc. after pruning",
        "acc. short finetune",
        "measured",
        "meets",
        "chosen",
    )
    return [
        "<h2>Target search</h2>",
        f"<p>target.{html.escape(str(target.get('bound')))} = {html.escape(_fmt(target.get('value')))}"
        + (f" (batch {html.escape(_fmt(target.get('batch')))})" if target.get("bound") == "latency_ms" else "")
        + f": chosen ratio {html.escape(_fmt(target.get('chosen_ratio')))}; final model measures "
        f"{html.escape(_fmt(confirmed.get('measured')))}: <b>{verdict}</b>.</p>",
        _table(rows, header),
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(cell))}</td>" for cell in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page (inline PNG plots, no external resources), all text escaped."""
    acc, acceptance = report["accuracy"], report["acceptance"]
    verdict = "PASSED" if acceptance["passed"] else "FAILED"
    sizes = report["file_size"]
    latency = report["latency"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Shears report {html.escape(str(report.get('job_id') or ''))}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
        ".passed{color:#2ca02c}.failed{color:#d62728}img{max-width:100%}</style></head><body>",
        f"<h1>Shears pruning report {html.escape(str(report.get('job_id') or ''))}</h1>",
        f"<p class='{verdict.lower()}'><b>Acceptance: {verdict}</b> — "
        + "; ".join(
            f"{html.escape(name)}: measured {html.escape(_fmt(c.get('measured')))}, bound {html.escape(_fmt(c.get('bound')))}"
            f" ({'passed' if c.get('passed') else 'not measured' if c.get('passed') is None else 'FAILED'})"
            for name, c in (acceptance.get("checks") or {}).items()
        )
        + ".</p>",
        *(f"<p class='warning'><b>Warning:</b> {html.escape(w)}</p>" for w in report.get("warnings") or []),
        "<h2>Summary</h2>",
        _table(
            [
                ("accuracy dense (%)", acc["dense"]),
                ("accuracy pruned (%)", acc["pruned"]),
                ("accuracy finetuned (%)", acc["finetuned"]),
                (
                    "parameters before / after",
                    f"{_fmt(report['parameters']['before'])} / {_fmt(report['parameters']['after'])}",
                ),
                ("MACs before / after", f"{_fmt(report['macs']['before'])} / {_fmt(report['macs']['after'])}"),
                (
                    "ONNX bytes before / after",
                    f"{_fmt((sizes['before'] or {}).get('bytes'))} / {_fmt((sizes['after'] or {}).get('bytes'))}",
                ),
                (
                    "gzip bytes before / after",
                    f"{_fmt((sizes['before'] or {}).get('gzip_bytes'))} / {_fmt((sizes['after'] or {}).get('gzip_bytes'))}",
                ),
                ("channels physically removed", report["structure"]["channels_removed"]),
                ("unstructured sparsity", report["structure"]["unstructured_sparsity"]),
                ("early-bird epoch", (report.get("early_bird") or {}).get("epoch")),
                (
                    "accuracy at the early-bird ticket (%), the gate's reference",
                    (report.get("early_bird") or {}).get("dense_accuracy"),
                ),
            ]
        ),
    ]
    parts += _fidelity_section(report.get("fidelity") or {})
    lat_rows = []
    for batch in sorted(
        set((latency["before"] or {}).get("batch_sizes", {})) | set((latency["after"] or {}).get("batch_sizes", {})),
        key=lambda b: int(b) if str(b).isdigit() else 0,
    ):
        b = ((latency["before"] or {}).get("batch_sizes") or {}).get(batch, {})
        a = ((latency["after"] or {}).get("batch_sizes") or {}).get(batch, {})
        lat_rows.append((f"batch {batch}", b.get("median_ms"), a.get("median_ms"), latency["speedup"].get(batch)))
    if lat_rows:
        parts += ["<h2>onnxruntime latency (median ms)</h2>", _table(lat_rows, ("", "before", "after", "speedup"))]
    parts += _target_section(report.get("target"))
    plots = [
        ("Target search: trade-off explored", _plot_target(report.get("target"))),
        ("Layers", _plot_layers(report["layers"])),
        ("Training curves", _plot_curves(report["training_curves"])),
        ("Early-bird detection", _plot_early_bird(report.get("early_bird"))),
    ]
    for title, image in plots:
        if image:
            parts += [f"<h2>{html.escape(title)}</h2>", image]
    if report["training_curves"]:
        parts.append(
            _table(
                [(f"stage {i + 1}", name) for i, name in enumerate(report["training_curves"])], ("plot label", "stage")
            )
        )
    if report["layers"]:
        parts += [
            "<h2>Per-layer channels and sparsity</h2>",
            _table(
                [
                    (i, r["name"], r["type"], r["channels_before"], r["channels_after"], r["sparsity"])
                    for i, r in enumerate(report["layers"])
                ],
                ("#", "layer", "type", "channels before", "channels after", "sparsity"),
            ),
        ]
    if report["timings"]:
        parts += ["<h2>Time per stage (s)</h2>", _table(list(report["timings"].items()))]
    parts += ["<h2>Versions</h2>", _table(list(report["versions"].items())), "</body></html>"]
    return "".join(parts)


def _fidelity_section(fidelity: Mapping[str, Any]) -> list[str]:
    """Per-output fidelity to the dense model right after pruning and at the end."""
    before, final = fidelity.get("after_pruning") or {}, fidelity.get("final") or {}
    if not final and not before:
        return []
    names = list((final.get("outputs") or {}) or (before.get("outputs") or {}))
    rows = []
    for name in names:
        b, f = (before.get("outputs") or {}).get(name, {}), (final.get("outputs") or {}).get(name, {})
        rows.append(
            (
                name,
                f.get("kind") or b.get("kind"),
                "x".join(str(d) for d in f.get("shape") or b.get("shape") or []),
                b.get("relative_error"),
                f.get("relative_error"),
                b.get("cosine"),
                f.get("cosine"),
                b.get("agreement"),
                f.get("agreement"),
            )
        )
    rows.append(("headline fidelity", "", "", before.get("fidelity"), final.get("fidelity"), "", "", "", ""))
    end = "after finetuning" if before else "final"  # after_pruning is measured by a finetune stage
    header = (
        "output",
        "kind",
        "shape",
        "rel. error after pruning",
        f"rel. error {end}",
        "cosine after pruning",
        f"cosine {end}",
        "agreement after pruning",
        f"agreement {end}",
    )
    return ["<h2>Fidelity to the dense model (validation split)</h2>", _table(rows, header)]


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` (NaN/inf become null) and ``report.html``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = _json_safe(report)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(safe, indent=2, allow_nan=False), encoding="utf-8")
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(safe), encoding="utf-8")
    return json_path, html_path
