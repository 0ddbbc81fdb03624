"""The engine's one entry point: load → stages of the spec → export → report.

Pure torch and files: no job rows, Celery or object storage (worker.execution adapts this to
jobs; worker.local runs it from the command line). Stages run in the order of the spec, each
through the runner registered for its params type (:mod:`worker.pruning.stages`:
``early_bird``, ``prune_channels``, ``probmask``, ``finetune``).

Label-free datasets (inputs only): the dense model's outputs are the targets. ProbMask and
finetuning minimise a distillation loss over every output (worker.pruning.distill, through
worker.pruning.teacher), and the report measures fidelity to the dense model
(worker.pruning.fidelity) right after pruning and at the end; the acceptance gate can bound
it. Labelled classification works as before and reports fidelity too.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from service.core.spec import EarlyBirdParams, FinetuneParams, JobSpec
from worker.io.data import DataSplits
from worker.io.images import IndexedImages
from worker.measure import measure
from worker.pruning.stages import EngineState, StageContext, runner_for
from worker.pruning.teacher import Teacher
from worker.pruning.training import TrainHooks, resolve_device, seed_everything


@dataclass(frozen=True)
class PipelineInputs:
    model_path: Path
    architecture: str | None = None
    dataset_path: Path | None = None
    builtin_dataset: str | None = None
    images: IndexedImages | None = None  # a prefix of images registered by reference, read lazily
    allow_torchscript: bool = False
    device: str = "auto"
    job_id: str | None = None  # written into report.json / report.html


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
        stage = event.get("stage", "train")
        if ".candidate-" not in stage:  # a target search's short finetunes have their own plot
            self.history.setdefault(stage, []).append(event)
        self.emit(event)


def _total_epochs(spec: JobSpec, n_train: int) -> int:
    """The epochs the progress percentage counts. After ``early_bird`` a finetune without a budget
    trains the rest of its schedule, unknown until the ticket: the plan counts the early_bird
    stage's whole ``max_epochs`` and the finetune's least (a ticket at epoch t then adds up to the
    schedule)."""
    from worker.pruning.stages.finetune import least_ticket_epochs

    batch = spec.training.batch_size
    stages = spec.pipeline
    total, ticket = 0, None
    for i, stage in enumerate(stages):
        params = stage.params
        if isinstance(params, EarlyBirdParams):
            ticket = params
        if ticket is not None and isinstance(params, FinetuneParams) and params.epochs is None and params.steps is None:
            total += least_ticket_epochs(ticket.max_epochs)
            continue
        total += runner_for(params).planned_epochs(
            params, n_train, batch, stages[i + 1].params if i + 1 < len(stages) else None
        )
    return total


def load_inputs(inputs: PipelineInputs, spec: JobSpec) -> tuple[torch.nn.Module, DataSplits, str]:
    """The model (as a trainable module), the data, and the model's format."""
    from worker.io.datasets import builtin_dataset, load_dataset_file
    from worker.io.images import load_image_index
    from worker.io.models import load_model

    if inputs.builtin_dataset:
        data = builtin_dataset(inputs.builtin_dataset, seed=spec.seed)
    elif inputs.images is not None:
        data = load_image_index(
            inputs.images.index,
            inputs.images.source,
            spec.preprocessing,
            val_fraction=spec.training.val_fraction,
            seed=spec.seed,
            max_pixels=inputs.images.max_pixels,
        )
    else:
        data = load_dataset_file(
            inputs.dataset_path,
            seed=spec.seed,
            val_fraction=spec.training.val_fraction,
            preprocessing=spec.preprocessing,
        )
    loaded = load_model(
        inputs.model_path,
        architecture=inputs.architecture,
        allow_torchscript=inputs.allow_torchscript,
        num_classes=data.num_classes or None,
        input_shape=tuple(data.input_shape),
    )  # symbolic ONNX dims take the dataset's sample shape
    model = loaded.module.float()
    try:
        with torch.no_grad():
            logits = model.eval()(data.x_val[:2].float())
    except Exception as error:  # noqa: BLE001 - any failure here means the shapes do not fit
        raise EngineError(
            "input-shape-mismatch",
            f"the model does not accept the dataset's inputs of shape {list(data.input_shape)}: {error}",
        ) from error
    if not data.labelled:
        return model, data, loaded.format
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < data.num_classes:
        logits = logits if isinstance(logits, torch.Tensor) else torch.empty(0)
        raise EngineError(
            "output-shape-mismatch",
            f"the model outputs {list(logits.shape)} but the dataset has "
            f"{data.num_classes} classes; a labelled dataset needs (batch, classes) logits: "
            "upload the inputs without labels to prune by distillation",
        )
    return model, data, loaded.format


def _needs_dense_model(spec: JobSpec, data: DataSplits) -> bool:
    """Whether the run needs a copy of the dense model: a stage distils from it (``distill`` > 0
    with a training budget), the dataset has no labels (its outputs are the targets and fidelity
    is the only measure) or the acceptance gate bounds fidelity to it."""
    if not data.labelled:
        return True
    if spec.acceptance.min_agreement is not None or spec.acceptance.max_relative_error is not None:
        return True
    targets = [getattr(stage.params, "target", None) for stage in spec.pipeline]
    if any(target is not None and not target.is_cost for target in targets):
        return True  # the search's short finetunes distil; fidelity bounds are measured against it
    n_train, batch = len(data.x_train), spec.training.batch_size
    return any(
        getattr(stage.params, "distill", 0) > 0
        and runner_for(stage.params).planned_epochs(stage.params, n_train, batch) > 0
        for stage in spec.pipeline
    )


def _teacher(dense: torch.nn.Module, data: DataSplits, spec: JobSpec, model_path: Path) -> Teacher:
    """Names (ONNX output names when the model is ONNX) and kinds (spec, else detected)."""
    from worker.pruning.outputs import output_list, output_names, resolve_kinds

    with torch.no_grad():
        outputs = output_list(dense.eval()(data.x_val[:2].float()))
    names = output_names(outputs, _onnx_output_names(model_path))
    try:
        kinds = resolve_kinds(outputs, names, spec.distillation.kinds)
    except ValueError as error:
        raise EngineError("bad-output-kinds", f"distillation.kinds: {error}") from error
    return Teacher(dense, names, list(kinds), spec.distillation.temperature, spec.distillation.regression_loss)


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
    from worker.report import build_report, channel_counts, layer_stats, write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(total_epochs=0, on_progress=on_progress)
    hooks = TrainHooks(on_progress=run.epoch_progress, should_cancel=should_cancel, checkpoint_dir=checkpoint_dir)
    seed_everything(spec.seed)
    device = resolve_device(inputs.device)

    with run.stage("load"):
        model, data, model_format = load_inputs(inputs, spec)
    run.total_epochs = _total_epochs(spec, len(data.x_train))
    example = data.x_val[:1]
    with run.stage("evaluate_dense"):
        source = inputs.model_path if model_format == "onnx" else None
        dense = measure(model, data, example, device, out_dir / "dense.onnx", spec.export, source_onnx=source)

    dense_channels = channel_counts(model)
    # the dense model is copied only where it is needed: a distillation teacher, the target of a
    # label-free job, the reference of fidelity bounds
    dense_model = copy.deepcopy(model).cpu() if _needs_dense_model(spec, data) else None
    teacher = _teacher(dense_model, data, spec, inputs.model_path) if dense_model is not None else None
    state = EngineState(model=model.to(device))
    stages = spec.pipeline
    reference_accuracy = dense["accuracy"]
    for index, stage in enumerate(stages):
        context = StageContext(
            data=data,
            spec=spec,
            device=device,
            hooks=hooks,
            teacher=dense_model,
            stage_id=f"{index}-{stage.name}",
            next_params=stages[index + 1].params if index + 1 < len(stages) else None,
            outputs=teacher,
            dense_accuracy=reference_accuracy,
        )
        with run.stage(context.stage_id):  # the name its epochs' events and curves carry
            runner_for(stage.params).run(stage.params, context, state)
        if state.reference is not None:  # early_bird: distil from and compare with the network at the ticket
            dense_model, state.reference = state.reference, None
            teacher = _teacher(dense_model, data, spec, inputs.model_path)
            reference_accuracy = (state.early_bird or {}).get("dense_accuracy", reference_accuracy)
    model, masks, early_bird = state.model, state.masks, state.early_bird
    if early_bird is not None:  # in percent, like every accuracy of the report
        early_bird = {**early_bird, "dense_accuracy": _percent(early_bird.get("dense_accuracy"))}
    finetuned, pruned_accuracy, channels_removed = state.finetuned, state.pruned_accuracy, state.channels_removed
    fidelity, probmask_info = state.fidelity, state.extras.get("probmask")

    if teacher is not None:
        with run.stage("fidelity"):
            fidelity["final"] = teacher.fidelity(model, data, spec.training.batch_size, device)
    model = model.cpu().eval()
    files: dict[str, Path] = {}
    with run.stage("export"):
        final = measure(model, data, example, torch.device("cpu"), out_dir / "model.onnx", spec.export)
        files["model.onnx"] = out_dir / "model.onnx"
        exports = {
            "onnx": {
                **check_onnx_parity(model, files["model.onnx"], _parity_sample(data.x_val).float()),
                **onnx_export_info(files["model.onnx"]),
            }
        }
        if "torchscript" in spec.export.formats:
            files["model.torchscript.pt"] = out_dir / "model.torchscript.pt"
            exports["torchscript"] = export_torchscript(model, example, files["model.torchscript.pt"])
        if masks:
            files["masks.safetensors"] = out_dir / "masks.safetensors"
            save_masks(masks, files["masks.safetensors"])
    if "onnx" not in spec.export.formats:
        files.pop("model.onnx")

    from worker.pruning.fidelity import check_bounds

    target = _confirm_target(state.extras.get("target"), model, dense, final, fidelity, data, spec, out_dir)
    report = build_report(
        fidelity=fidelity,
        fidelity_checks=check_bounds(
            fidelity["final"] or {},
            min_agreement=spec.acceptance.min_agreement,
            max_relative_error=spec.acceptance.max_relative_error,
        ),
        accuracy_dense=_percent(dense["accuracy"]),
        accuracy_pruned=_percent(pruned_accuracy),
        accuracy_finetuned=_percent(final["accuracy"]) if finetuned else None,
        params_before=dense["params"],
        params_after=final["params"],
        macs_before=dense["macs"],
        macs_after=final["macs"],
        file_size_before=dense["file"],
        file_size_after=final["file"],
        latency_before=dense["latency_ms"],
        latency_after=final["latency_ms"],
        layers=layer_stats(dense_channels, model, masks),
        channels_removed=channels_removed,
        early_bird=early_bird,
        probmask=probmask_info,
        training_curves=_curves(run.history),
        timings=run.stage_seconds,
        max_accuracy_drop=spec.acceptance.max_accuracy_drop,
        exports=exports,
        test_accuracy={"dense": _percent(dense["test_accuracy"]), "final": _percent(final["test_accuracy"])}
        if data.y_test is not None
        else None,
        model={"name": inputs.model_path.name, "format": model_format, "input_shape": list(data.input_shape)},
        dataset={
            "name": inputs.builtin_dataset
            or (inputs.images.name if inputs.images else None)
            or (inputs.dataset_path.name if inputs.dataset_path else None),
            "num_classes": data.num_classes,
            "labelled": data.labelled,
            "train": len(data.x_train),
            "val": len(data.x_val),
            "test": None if data.x_test is None else len(data.x_test),
        },
        spec=spec.model_dump(mode="json"),
        job_id=inputs.job_id,
        target=target,
    )
    report["structure"]["excluded_from_pruning"] = [{"layer": k, "reason": v} for k, v in state.excluded.items()]
    if "iterative_pruning" in state.extras:
        report["structure"]["iterative_pruning"] = state.extras["iterative_pruning"]
    json_path, html_path = write_report(report, out_dir)
    files["report.json"], files["report.html"] = json_path, html_path
    summary = {
        "accuracy": report["accuracy"],
        "test_accuracy": report["test_accuracy"],
        "parameters": report["parameters"],
        "macs": report["macs"],
        "acceptance": report["acceptance"],
        "stage_seconds": run.stage_seconds,
        "early_bird_epoch": (early_bird or {}).get("epoch"),
        "channels_removed": channels_removed,
        "unstructured_sparsity": report["structure"]["unstructured_sparsity"],
        "fidelity": {k: (v or {}).get("fidelity") for k, v in fidelity.items()},
    }
    return PipelineOutcome(files=files, summary=summary, report=report)


def _confirm_target(
    info: dict | None,
    model: torch.nn.Module,
    dense: dict,
    final: dict,
    fidelity: dict,
    data: DataSplits,
    spec: JobSpec,
    out_dir: Path,
) -> dict | None:
    """The target search's report section with the final model checked against its bound
    (``confirmed``): the accuracy drop, fidelity or MACs of the final model, or the onnxruntime
    latency of the exported ``model.onnx`` at the target's batch."""
    if info is None:
        return None
    from worker.export import export_onnx, onnxruntime_latency
    from worker.pruning.stages.target import confirm_target

    latency = None
    if info["bound"] == "latency_ms":
        with tempfile.TemporaryDirectory(prefix="shears-confirm-") as tmp:
            path = out_dir / "model.onnx"  # the delivered file (exported even when not delivered)
            if info["batch"] != 1 and not spec.export.dynamic_batch:  # it takes batch 1 only
                path = export_onnx(model, data.x_val[:1].float(), Path(tmp) / "model.onnx", opset=spec.export.opset)
            latency = onnxruntime_latency(path, tuple(data.input_shape), batch_sizes=(info["batch"],), seed=spec.seed)
    drop = None
    if dense["accuracy"] is not None and final["accuracy"] is not None:
        drop = _percent(dense["accuracy"]) - _percent(final["accuracy"])  # as the report's gate computes it
    macs_fraction = final["macs"] / dense["macs"] if dense["macs"] else None
    confirmed = confirm_target(
        info, accuracy_drop=drop, macs_fraction=macs_fraction, fidelity=fidelity.get("final"), latency=latency
    )
    return {**info, "confirmed": confirmed}


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def _curves(history: dict[str, list[dict]]) -> dict[str, dict[str, list]]:
    """Per-stage training curves for the report."""
    return {
        stage: {
            "epoch": [e.get("epoch") for e in events],
            "train_loss": [e.get("loss") for e in events],
            "val_accuracy": [_percent(e.get("val_accuracy")) for e in events],
        }
        for stage, events in history.items()
    }


def _parity_sample(x: torch.Tensor, max_elements: int = 1 << 20) -> torch.Tensor:
    """At most 32 inputs and about ``max_elements`` values (at least 2 inputs): the export parity
    check's cost stays bounded for large inputs (6 images at 224×224)."""
    per_sample = max(1, x[0].numel()) if len(x) else 1
    return x[: max(2, min(32, max_elements // per_sample))]
