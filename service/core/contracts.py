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

    stage: str | None = Field(None, description="Pipeline stage running now, e.g. `finetune`.")
    epoch: int | None = Field(None, description="Epochs finished in this stage.")
    epochs: int | None = Field(None, description="Epochs this stage runs.")
    percent: float | None = Field(None, ge=0, le=100, description="Share of all epochs of the job done.")


class Accuracy(_Open):
    dense: float = Field(description="Accuracy of the uploaded model, percent.")
    pruned: float | None = None
    finetuned: float | None = None
    final: float = Field(description="finetuned, else pruned, else dense.")
    split: str = "val"


class CountRatio(_Open):
    before: int | None = None
    after: int | None = None
    ratio: float | None = Field(None, description="after / before")


class Acceptance(_Open):
    """The accuracy gate: ``passed`` is what CI acts on (``shears submit`` exits 2 when False)."""

    max_accuracy_drop: float | None = None
    measured_drop: float
    reference: str = "dense"
    compared: str
    passed: bool


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


class Structure(_Open):
    channels_removed: bool
    unstructured_sparsity: float | None = None


class JobReport(_Open):
    """``report.json`` of a job (schema_version 1); ``report.html`` renders the same data."""

    schema_version: int = 1
    job_id: str | None = Field(None, description="The job this report belongs to (None for `shears prune`).")
    created_at: str
    model: dict = Field(default_factory=dict, description="{name, format, input_shape}")
    dataset: dict = Field(default_factory=dict, description="{name, num_classes, train, val, test}")
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
    training_curves: dict = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    exports: dict = Field(default_factory=dict)
    versions: dict[str, str | None] = Field(default_factory=dict)
    acceptance: Acceptance
