"""The engine's one entry point: load → stages of the spec → export → report.

Pure torch and files: no job rows, Celery or object storage (worker.execution adapts this to
jobs; worker.local runs it from the command line). Stages run in the order of the spec:

- ``early_bird``: dense training until the pruning decision stops changing ([EB], [SPLINE]);
  when no ``prune_channels`` stage follows, the ticket is drawn with the detector's criterion.
- ``prune_channels``: score, allocate and physically remove channels ([SPLINE] §3).
- ``probmask``: unstructured sparsity under one global budget ([PROBMASK]).
- ``finetune``: train the result; masks from ProbMask stay fixed.

Label-free datasets (inputs only): the dense model's outputs are the targets. ProbMask and
finetuning minimise a distillation loss over every output (worker.pruning.distill), and the
report measures fidelity to the dense model (worker.pruning.fidelity) right after pruning and
at the end; the acceptance gate can bound it. Labelled classification works as before and
reports fidelity too.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from service.core.spec import (
    EarlyBirdParams,
    FinetuneParams,
    JobSpec,
    ProbMaskParams,
    PruneChannelsParams,
)
from worker.io.data import DataSplits
from worker.training import TrainHooks, count_macs_params, evaluate, resolve_device, seed_everything, train


LABEL_FREE_GRAD_CLIP = 5.0
"""Global gradient-norm clip of label-free finetuning (distillation only)."""


@dataclass(frozen=True)
class PipelineInputs:
    model_path: Path
    architecture: str | None = None
    dataset_path: Path | None = None
    builtin_dataset: str | None = None
    allow_torchscript: bool = False
    device: str = "auto"


@dataclass
class PipelineOutcome:
    files: dict[str, Path]
    summary: dict
    report: dict


class EngineError(ValueError):
    """A job-level failure with a stable code (input shapes that do not fit, say)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Run:
    """Bookkeeping of one pipeline run: stage timings, progress, curves."""

    total_epochs: int
    on_progress: Callable[[dict], None] | None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    epochs_done: int = 0
    history: dict[str, list[dict]] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        self.emit({"stage": name})
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[name] = round(self.stage_seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def emit(self, event: dict) -> None:
        if self.on_progress is None:
            return
        percent = 100.0 * self.epochs_done / max(self.total_epochs, 1)
        self.on_progress({**event, "percent": round(min(percent, 99.0), 1)})

    def epoch_progress(self, event: dict) -> None:
        self.epochs_done += 1
        self.history.setdefault(event.get("stage", "train"), []).append(event)
        self.emit(event)


def _total_epochs(spec: JobSpec) -> int:
    total = 0
    for stage in spec.pipeline:
        params = next(iter(vars(stage).values()))
        total += getattr(params, "max_epochs", 0) or getattr(params, "epochs", 0)
    return total


def load_inputs(inputs: PipelineInputs, spec: JobSpec) -> tuple[torch.nn.Module, DataSplits, str]:
    """The model (as a trainable module), the data, and the model's format."""
    from worker.io.datasets import builtin_dataset, load_dataset_file
    from worker.io.models import load_model

    if inputs.builtin_dataset:
        data = builtin_dataset(inputs.builtin_dataset, seed=spec.seed)
    else:
        data = load_dataset_file(inputs.dataset_path, seed=spec.seed, val_fraction=spec.training.val_fraction,
                                 preprocessing=spec.preprocessing)  # fmt: skip
    loaded = load_model(inputs.model_path, architecture=inputs.architecture,
                        allow_torchscript=inputs.allow_torchscript, num_classes=data.num_classes or None)  # fmt: skip
    model = loaded.module.float()
    try:
        with torch.no_grad():
            logits = model.eval()(data.x_val[:2].float())
    except Exception as error:  # noqa: BLE001 - any failure here means the shapes do not fit
        raise EngineError("input-shape-mismatch", f"the model does not accept the dataset's inputs of shape "
                          f"{list(data.input_shape)}: {error}") from error  # fmt: skip
    if not data.labelled:
        return model, data, loaded.format
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < data.num_classes:
        logits = logits if isinstance(logits, torch.Tensor) else torch.empty(0)
        raise EngineError("output-shape-mismatch", f"the model outputs {list(logits.shape)} but the dataset has "
                          f"{data.num_classes} classes; a labelled dataset needs (batch, classes) logits: "
                          "upload the inputs without labels to prune by distillation")  # fmt: skip
    return model, data, loaded.format


@dataclass
class _Teacher:
    """The dense model as the teacher and reference of fidelity: its output names and kinds."""

    model: torch.nn.Module
    names: list[str]
    kinds: list[str]
    temperature: float
    regression_loss: str

    def loss(self):
        from worker.pruning.distill import DistillationLoss

        return DistillationLoss(self.kinds, temperature=self.temperature, regression=self.regression_loss)  # type: ignore[arg-type]

    def fidelity(self, model, data: DataSplits, batch_size: int, device) -> dict:
        from worker.pruning.fidelity import measure_fidelity

        x = data.x_val
        batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
        teacher = self.model.to(device)
        try:
            return measure_fidelity(teacher, model.to(device), batches, names=self.names,
                                    kinds=dict(zip(self.names, self.kinds, strict=True)), device=device)  # fmt: skip
        finally:
            self.model.cpu()


def _teacher(dense: torch.nn.Module, data: DataSplits, spec: JobSpec, model_path: Path) -> _Teacher:
    """Names (ONNX output names when the model is ONNX) and kinds (spec, else detected)."""
    from worker.pruning.outputs import output_list, output_names, resolve_kinds

    with torch.no_grad():
        outputs = output_list(dense.eval()(data.x_val[:2].float()))
    names = output_names(outputs, _onnx_output_names(model_path))
    try:
        kinds = resolve_kinds(outputs, names, spec.distillation.kinds)
    except ValueError as error:
        raise EngineError("bad-output-kinds", f"distillation.kinds: {error}") from error
    return _Teacher(dense, names, list(kinds), spec.distillation.temperature, spec.distillation.regression_loss)


def _onnx_output_names(path: Path) -> list[str] | None:
    try:
        import onnx

        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX (zoo safetensors, TorchScript): numbered names
        return None
    return [output.name for output in proto.graph.output]


def run_pipeline(
    inputs: PipelineInputs,
    spec: JobSpec,
    out_dir: Path,
    *,
    on_progress: Callable[[dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_dir: Path | None = None,
) -> PipelineOutcome:
    """Run ``spec`` on the inputs; write artifacts to ``out_dir``."""
    from worker.export import check_onnx_parity, export_torchscript, onnx_export_info, save_masks
    from worker.report import build_report, layer_stats, write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(total_epochs=_total_epochs(spec), on_progress=on_progress)
    hooks = TrainHooks(on_progress=run.epoch_progress, should_cancel=should_cancel, checkpoint_dir=checkpoint_dir)
    seed_everything(spec.seed)
    device = resolve_device(inputs.device)

    with run.stage("load"):
        model, data, model_format = load_inputs(inputs, spec)
    example = data.x_val[:1]
    with run.stage("evaluate_dense"):
        dense = _measure(model, data, example, device, out_dir / "dense.onnx", spec)

    dense_model = copy.deepcopy(model).cpu()
    teacher = _teacher(dense_model, data, spec, inputs.model_path)
    fidelity: dict[str, dict | None] = {"after_pruning": None, "final": None}
    if not data.labelled and any(isinstance(next(iter(vars(s).values())), EarlyBirdParams) for s in spec.pipeline):
        raise EngineError("labels-required", "early_bird trains the dense model from labels; this dataset has "
                          "none. Drop the early_bird stage (prune_channels + finetune distil from the dense model).")  # fmt: skip
    model = model.to(device)
    finetuned = False
    masks: dict[str, torch.Tensor] | None = None
    layers_report: list[dict] = []
    early_bird: dict | None = None
    pruned_accuracy: float | None = None
    channels_removed = False
    stages = spec.pipeline
    for index, stage in enumerate(stages):
        name, params = next(iter(vars(stage).items()))
        stage_id = f"{index}-{name}"
        with run.stage(name):
            if isinstance(params, EarlyBirdParams):
                early_bird = _early_bird(model, data, params, spec, device, stage_id, hooks)
                follows = index + 1 < len(stages) and isinstance(next(iter(vars(stages[index + 1]).values())), PruneChannelsParams)
                if not follows:
                    criterion = "spline" if params.detector == "spline" else "bn_scale"
                    result = _prune(model, data, PruneChannelsParams(criterion=criterion, ratio=params.ratio), spec)
                    layers_report, channels_removed = result.layer_table(), True
                    pruned_accuracy = _accuracy(model, data, device)
            elif isinstance(params, PruneChannelsParams):
                result = _prune(model, data, params, spec)
                layers_report, channels_removed = result.layer_table(), True
                pruned_accuracy = _accuracy(model, data, device)
            elif isinstance(params, ProbMaskParams):
                masks = _probmask(model, data, params, spec, device, stage_id, hooks, teacher)
                pruned_accuracy = _accuracy(model, data, device)
            elif isinstance(params, FinetuneParams):
                if not finetuned and params.epochs > 0:
                    fidelity["after_pruning"] = teacher.fidelity(model, data, spec.training.batch_size, device)
                _finetune(model, data, params, spec, device, stage_id, hooks, masks, teacher=teacher)
                finetuned = finetuned or params.epochs > 0

    with run.stage("fidelity"):
        fidelity["final"] = teacher.fidelity(model, data, spec.training.batch_size, device)
    model = model.cpu().eval()
    files: dict[str, Path] = {}
    with run.stage("export"):
        final = _measure(model, data, example, torch.device("cpu"), out_dir / "model.onnx", spec)
        files["model.onnx"] = out_dir / "model.onnx"
        exports = {"onnx": {**check_onnx_parity(model, files["model.onnx"], data.x_val[:32].float()),
                            **onnx_export_info(files["model.onnx"])}}  # fmt: skip
        if "torchscript" in spec.export.formats:
            files["model.torchscript.pt"] = out_dir / "model.torchscript.pt"
            exports["torchscript"] = export_torchscript(model, example, files["model.torchscript.pt"])
        if masks:
            files["masks.safetensors"] = out_dir / "masks.safetensors"
            save_masks(masks, files["masks.safetensors"])
    if "onnx" not in spec.export.formats:
        files.pop("model.onnx")

    from worker.pruning.fidelity import check_bounds

    report = build_report(
        fidelity=fidelity, fidelity_checks=check_bounds(fidelity["final"], min_agreement=spec.acceptance.min_agreement,
                                                        max_relative_error=spec.acceptance.max_relative_error),
        accuracy_dense=_percent(dense["accuracy"]), accuracy_pruned=_percent(pruned_accuracy),
        accuracy_finetuned=_percent(final["accuracy"]) if finetuned else None,
        params_before=dense["params"], params_after=final["params"],
        macs_before=dense["macs"], macs_after=final["macs"],
        file_size_before=dense["file"], file_size_after=final["file"],
        latency_before=dense["latency_ms"], latency_after=final["latency_ms"],
        layers=layer_stats(dense_model, model, masks), channels_removed=channels_removed,
        early_bird=early_bird, training_curves=_curves(run.history), timings=run.stage_seconds,
        max_accuracy_drop=spec.acceptance.max_accuracy_drop, exports=exports,
        test_accuracy={"dense": _percent(dense["test_accuracy"]), "final": _percent(final["test_accuracy"])}
        if data.y_test is not None else None,
        model={"name": inputs.model_path.name, "format": model_format, "input_shape": list(data.input_shape)},
        dataset={"name": inputs.builtin_dataset or (inputs.dataset_path.name if inputs.dataset_path else None),
                 "num_classes": data.num_classes, "labelled": data.labelled, "train": len(data.x_train), "val": len(data.x_val),
                 "test": None if data.x_test is None else len(data.x_test)},
        spec=spec.model_dump(mode="json"),
    )  # fmt: skip
    json_path, html_path = write_report(report, out_dir)
    files["report.json"], files["report.html"] = json_path, html_path
    summary = {
        "accuracy": report["accuracy"], "test_accuracy": report["test_accuracy"],
        "parameters": report["parameters"], "macs": report["macs"], "acceptance": report["acceptance"],
        "stage_seconds": run.stage_seconds, "early_bird_epoch": (early_bird or {}).get("epoch"),
        "channels_removed": channels_removed,
        "unstructured_sparsity": report["structure"]["unstructured_sparsity"],
        "fidelity": {k: (v or {}).get("fidelity") for k, v in fidelity.items()},
    }  # fmt: skip
    return PipelineOutcome(files=files, summary=summary, report=report)


def _measure(model, data: DataSplits, example, device, onnx_path: Path, spec: JobSpec) -> dict:
    """Accuracy, size, MACs and onnxruntime latency of ``model`` (exported to ``onnx_path``)."""
    from worker.export import export_onnx, file_sizes, onnxruntime_latency

    model = model.to(device).eval()
    accuracy = _accuracy(model, data, device)
    test_accuracy = evaluate(model, data.x_test, data.y_test, device=device) if data.y_test is not None else None
    macs, params = count_macs_params(model, example.to(device))
    cpu_model = model.cpu()
    example = example.float() if example.dtype == torch.uint8 else example
    export_onnx(cpu_model, example, onnx_path, opset=spec.export.opset, dynamic_batch=spec.export.dynamic_batch)
    latency = onnxruntime_latency(onnx_path, tuple(data.input_shape), batch_sizes=(1, 32) if spec.export.dynamic_batch else (1,))
    return {"accuracy": accuracy, "test_accuracy": test_accuracy, "macs": macs, "params": params,
            "file": file_sizes(onnx_path), "latency_ms": latency}  # fmt: skip


def _train_kwargs(spec: JobSpec, device, stage_id: str, hooks: TrainHooks) -> dict:
    return {"batch_size": spec.training.batch_size, "weight_decay": spec.training.weight_decay,
            "seed": spec.seed, "device": device, "stage": stage_id, "hooks": hooks}  # fmt: skip


def _early_bird(model, data, params: EarlyBirdParams, spec, device, stage_id, hooks) -> dict:
    from worker.pruning.early_bird import BNScaleDetector, SplineDetector
    from worker.pruning.layers import discover_layers
    from worker.pruning.regions import select_probes

    if params.detector == "bn":
        detector = BNScaleDetector(ratio=params.ratio, threshold=params.threshold, window=params.window)
        after_backward = detector.add_l1_subgradient
    else:
        probes = select_probes(data.x_train, 512, seed=spec.seed)
        detector = SplineDetector(probes, discover_layers(model), threshold=params.threshold, window=params.window)
        after_backward = None
    history = train(model, data, epochs=params.max_epochs, lr=params.lr, after_backward=after_backward,
                    on_epoch_end=lambda epoch, m: detector.step(m), stateful=detector,
                    **_train_kwargs(spec, device, stage_id, hooks))  # fmt: skip
    return {"detector": params.detector, "found": detector.found_epoch is not None, "epoch": detector.found_epoch,
            "epochs_trained": len(history), "max_epochs": params.max_epochs, "threshold": params.threshold,
            "distances": list(detector.distances), "distance_epochs": list(detector.distance_epochs)}  # fmt: skip


def _prune(model, data, params: PruneChannelsParams, spec: JobSpec):
    """Remove channels; output layers (every head, worker.pruning.heads) keep their channels so
    every output keeps its shape."""
    from worker.pruning.channels import prune_channels
    from worker.pruning.heads import head_layers

    exclude = list(dict.fromkeys([*params.exclude, *head_layers(model)]))
    return prune_channels(model, data, criterion=params.criterion, ratio=params.ratio, scope=params.scope,
                          round_to=params.round_to, min_channels=params.min_channels, exclude=exclude,
                          probes_n=params.probes, seed=spec.seed)  # fmt: skip


def _probmask(model, data, params: ProbMaskParams, spec, device, stage_id, hooks, teacher: _Teacher) -> dict[str, torch.Tensor]:
    from worker.pruning.probmask import run_probmask

    distill = {}
    if not data.labelled:
        distill = {"teacher": copy.deepcopy(teacher.model).to(device).eval(), "distill_loss": teacher.loss()}
    result = run_probmask(model, data, sparsity=params.sparsity, epochs=params.epochs, lr=params.lr,
                          score_lr=params.score_lr, exclude=params.exclude, final_mask=params.final_mask,
                          mask_samples=params.mask_samples, **_train_kwargs(spec, device, stage_id, hooks),
                          **distill)  # fmt: skip
    return result["masks"]


def _finetune(model, data, params: FinetuneParams, spec, device, stage_id, hooks, masks, teacher: _Teacher) -> None:
    """Train the pruned model; with ``distill`` > 0 it also matches the dense model's softened
    outputs (knowledge distillation, Hinton et al. 2015). Without labels it learns the dense
    model's outputs alone, every output with the loss of its kind (worker.pruning.distill)."""
    if params.epochs == 0:
        return
    kwargs = _train_kwargs(spec, device, stage_id, hooks)
    if not data.labelled:  # gradient clipping: a pruned detector's first distillation steps can be steep
        kwargs.update(teacher=copy.deepcopy(teacher.model).to(device).eval(), distill_loss=teacher.loss(),
                      grad_clip=LABEL_FREE_GRAD_CLIP)  # fmt: skip
    elif params.distill > 0:
        kwargs.update(teacher=copy.deepcopy(teacher.model).to(device).eval(), distill_weight=params.distill)
        if len(teacher.kinds) > 1 or teacher.kinds != ["logits"]:
            kwargs["distill_loss"] = teacher.loss()
    if masks:
        from worker.pruning.probmask import finetune_with_masks

        finetune_with_masks(model, masks, data, epochs=params.epochs, lr=params.lr, **kwargs)
    else:
        train(model, data, epochs=params.epochs, lr=params.lr, **kwargs)


def _accuracy(model, data: DataSplits, device) -> float | None:
    """Top-1 accuracy on the validation split, or None when the dataset has no labels."""
    return evaluate(model, data.x_val, data.y_val, device=device) if data.y_val is not None else None


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def _curves(history: dict[str, list[dict]]) -> dict[str, dict[str, list]]:
    """Per-stage training curves for the report."""
    return {
        stage: {"epoch": [e.get("epoch") for e in events], "train_loss": [e.get("loss") for e in events],
                "val_accuracy": [_percent(e.get("val_accuracy")) for e in events]}
        for stage, events in history.items()
    }  # fmt: skip
