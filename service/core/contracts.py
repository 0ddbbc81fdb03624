"""Typed contracts between the engine, the worker and API clients: a job's progress, its
result summary and its ``report.json``. Workers validate what they write against these models
and the API publishes their JSON schema (openapi.yaml), so a client can rely on the shape.

Models allow extra keys so that an engine adding a field does not break a stored job; the
declared fields are the guaranteed part. Accuracies are percent (0-100), sizes bytes,
times seconds, latencies milliseconds; ``None`` where a stage did not run.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobProgress(_Open):
    """The latest progress event of a running job (``{}`` before the first one)."""

    stage: str | None = Field(
        None,
        description="What runs now: a pipeline stage as `<index>-<name>` (e.g. `1-finetune`, the name its "
        "training curve has in the report; a stage's inner runs add `.iteration-<k>` or `.candidate-<k>`), "
        "or `load`, `evaluate_dense`, `fidelity`, `export` around the pipeline.",
    )
    epoch: int | None = Field(None, description="Epochs finished in this stage (absent when it has just started).")
    epochs: int | None = Field(None, description="Epochs this stage runs (absent when it has just started).")
    percent: float | None = Field(None, ge=0, le=100, description="Share of all epochs of the job done.")


class Accuracy(_Open):
    """Top-1 accuracy on the validation split, percent; every value is None for a dataset
    without labels (label-free jobs are judged by fidelity)."""

    dense: float | None = Field(description="Accuracy of the uploaded model, percent (None without labels).")
    pruned: float | None = None
    finetuned: float | None = None
    final: float | None = Field(description="finetuned, else pruned, else dense.")
    split: str = "val"


class CountRatio(_Open):
    before: int | None = None
    after: int | None = None
    ratio: float | None = Field(None, description="after / before")


class OutputFidelity(_Open):
    """Fidelity of one output of the pruned model to the dense model's (worker.pruning.fidelity)."""

    kind: str = Field(description="`logits`, `probabilities` or `regression`.")
    shape: list[int | None] | None = None
    relative_error: float | None = Field(None, description="‖pruned − dense‖ / ‖dense‖ over the validation split.")
    cosine: float | None = Field(None, description="Mean per-sample cosine similarity.")
    agreement: float | None = Field(None, description="Top-1 agreement (logits only; per pixel for (N, C, H, W)).")


class Fidelity(_Open):
    """Per-output fidelity; ``fidelity`` is the worst output's score (agreement, else 1 − relative error)."""

    outputs: dict[str, OutputFidelity] = Field(default_factory=dict)
    fidelity: float | None = None
    samples: int | None = None


class FidelityReport(_Open):
    after_pruning: Fidelity | None = Field(None, description="Right after pruning, before the first finetune.")
    final: Fidelity | None = Field(
        None, description="At the end of the pipeline: after finetuning when a finetune stage ran."
    )


class Check(_Open):
    """One bound of the gate; ``passed`` None: not measurable here (e.g. accuracy without labels)."""

    bound: float
    measured: float | None = None
    passed: bool | None = None
    reason: str | None = None


class Acceptance(_Open):
    """The gate: ``passed`` is what CI acts on (``shears submit`` exits 2 when False); it holds
    when no check in ``checks`` (accuracy, min_agreement, max_relative_error) failed."""

    max_accuracy_drop: float | None = None
    measured_drop: float | None = None
    reference: str = "dense"
    compared: str
    passed: bool
    checks: dict[str, Check] = Field(default_factory=dict)


class JobResult(_Open):
    """The summary of a succeeded job (``JobOut.result``); the full story is ``report.json``."""

    accuracy: Accuracy
    test_accuracy: dict[str, float | None] | None = None
    parameters: CountRatio
    macs: CountRatio
    acceptance: Acceptance
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    early_bird_epoch: int | None = None
    channels_removed: bool = False
    unstructured_sparsity: float | None = None
    fidelity: dict[str, float | None] = Field(
        default_factory=dict, description="Headline fidelity to the dense model: {after_pruning, final}."
    )


class Structure(_Open):
    channels_removed: bool
    unstructured_sparsity: float | None = None
    iterative_pruning: dict | None = Field(
        None,
        description="`prune_channels.iterations` > 1: {iterations, epochs_between, steps: [{step, ratio, macs, "
        "accuracy_pruned, accuracy_finetuned}]} (accuracies as fractions; none after the last step).",
    )


class JobReport(_Open):
    """``report.json`` of a job (schema_version 1); ``report.html`` renders the same data."""

    schema_version: int = 1
    job_id: str | None = Field(None, description="The job this report belongs to (None for `shears prune`).")
    created_at: str
    model: dict = Field(default_factory=dict, description="{name, format, input_shape}")
    dataset: dict = Field(default_factory=dict, description="{name, num_classes, labelled, train, val, test}")
    spec: dict = Field(default_factory=dict, description="The resolved job spec.")
    accuracy: Accuracy
    test_accuracy: dict[str, float | None] | None = None
    parameters: CountRatio
    macs: CountRatio
    file_size: dict = Field(default_factory=dict, description="{before, after}: {bytes, gzip_bytes}")
    latency: dict = Field(default_factory=dict, description="{before, after, speedup} (onnxruntime, ms)")
    layers: list[dict] = Field(default_factory=list)
    structure: Structure
    early_bird: dict | None = None
    probmask: dict | None = Field(None, description="{sparsity, score_lr, steps, undecided, warnings} (ProbMask stage)")
    warnings: list[str] = Field(default_factory=list, description="Things to look at (undecided ProbMask scores).")
    training_curves: dict = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    exports: dict = Field(default_factory=dict)
    versions: dict[str, str | None] = Field(default_factory=dict)
    fidelity: FidelityReport = Field(default_factory=FidelityReport)
    acceptance: Acceptance
    target: dict | None = Field(
        None,
        description="prune_channels.target's search: {bound, value, batch, kind, dense, points: [{ratio, "
        "macs_fraction, latency_ms, accuracy_pruned, accuracy, measured, passed, chosen}], chosen_ratio, "
        "confirmed: {name, bound, measured, passed}} (None without a target).",
    )
