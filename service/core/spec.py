"""The job spec: every field, default and bound in one place (pydantic).

The API validates requests with these models and stores the *resolved* spec (defaults filled
in) on the job row; the worker reads it back with the same models. Methods are described in
shared/ALGORITHMS.md: early-bird [EB]/[SPLINE], spline channel scoring [SPLINE], ProbMask
[PROBMASK].
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

from service.core.registry import CRITERION_NAMES

Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
LayerName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Epochs = Annotated[int, Field(ge=0, le=1000)]
DEFAULT_FINETUNE_STEPS = 1500
"""Finetune budget when neither ``epochs`` nor ``steps`` is given (clamped to 10–200 epochs). 1000 steps
left a held-out BN-folded MobileNet 2.1 points below its dense model; ~1500 brought every held-out
CNN within 1 point on two seeds (BENCHMARKS.md "Recovery on BN-folded ONNX exports")."""
MAX_DEFAULT_FINETUNE_EPOCHS = 200
DEFAULT_FINETUNE_LR = 0.01
"""Finetune lr of a model that keeps its BatchNorm (or without ``reinsert_bn``)."""
REINSERTED_BN_FINETUNE_LR = 0.05
"""Finetune lr when BatchNorm was re-inserted (filters rescaled to their initial norm, as in training from scratch)."""


class Strict(BaseModel):
    """Unknown fields are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


class EarlyBirdParams(Strict):
    """Train densely until the pruning decision stops changing ([EB] §2a, [SPLINE] §2b).

    ``window``, ``threshold`` and ``relative_threshold`` default per detector (the papers'
    values, calibrated for spline): ``bn`` 4 earlier masks (the last 5) within 0.1; ``spline`` 3
    earlier codes within half the largest distance so far, at most 0.25. The resolved spec
    holds them.
    """

    detector: Literal["spline", "bn"] = "spline"
    ratio: OpenFraction = Field(0.5, description="Channel ratio the ticket is drawn for.")
    max_epochs: Annotated[int, Field(ge=1, le=1000)] = 40
    threshold: Positive | None = Field(
        None,
        description="Distance under which masks count as equal. Default: 0.1 for bn ([EB]); 0.25 for spline, a "
        "ceiling on the calibrated threshold (relative_threshold; the paper's absolute value was 0.16).",
    )
    window: Annotated[int, Field(ge=1, le=20)] | None = Field(
        None,
        description="Number of earlier epochs the newest one is compared with (both detectors). "
        "Default: 4 for bn ([EB] keeps the last 5 masks), 3 for spline.",
    )
    relative_threshold: OpenFraction | None = Field(
        None,
        description="spline only: a ticket also needs the distance below this fraction of the largest "
        "distance so far (the run's own distance scale). Default 0.5 for spline; not used by bn.",
    )
    lr: Positive = Field(0.1, description="Constant learning rate of the dense training before the ticket ([EB]).")

    @model_validator(mode="after")
    def _detector_defaults(self) -> EarlyBirdParams:
        defaults = {"bn": (4, 0.1, None), "spline": (3, 0.25, 0.5)}[self.detector]
        if self.window is None:
            self.window = defaults[0]
        if self.threshold is None:
            self.threshold = defaults[1]
        if self.relative_threshold is None:
            self.relative_threshold = defaults[2]
        elif self.detector == "bn":
            raise ValueError("relative_threshold is a spline-detector setting; the bn detector uses threshold")
        return self


DEFAULT_CHANNEL_RATIO = 0.5
"""``prune_channels.ratio`` when neither ``ratio`` nor ``target`` is given."""

QUALITY_BOUNDS = ("max_accuracy_drop", "min_agreement", "max_relative_error")
COST_BOUNDS = ("macs", "latency_ms")


class TargetParams(Strict):
    """A bound instead of a ratio: ``prune_channels`` searches the channel ratio (one bound).

    Quality bounds (``max_accuracy_drop``, ``min_agreement``, ``max_relative_error``, the
    acceptance gate's measures): the largest ratio whose candidate, pruned and briefly
    finetuned (``steps``: half the following finetune's budget by default; distilled from the
    dense model), still meets the bound — bisection
    over (0, ``max_ratio``] with ``candidates`` candidates. Cost bounds (``macs``: fraction of
    the dense MACs; ``latency_ms`` at ``batch``, onnxruntime on the worker, one thread): the
    smallest ratio whose pruned model meets the bound (no training: cost does not depend on the
    weights; a smaller ratio keeps more channels, the most accurate model under the bound).
    The final model is checked against the bound again by the acceptance gate (``checks.target``).
    """

    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] | None = Field(
        None,
        description="Most compression whose validation accuracy is at most this many points below the dense model.",
    )
    min_agreement: OpenFraction | None = Field(
        None, description="Most compression whose top-1 agreement with the dense model is at least this."
    )
    max_relative_error: Positive | None = Field(
        None, description="Most compression whose relative L2 error to the dense model's outputs is at most this."
    )
    macs: OpenFraction | None = Field(
        None, description="Most accurate model with at most this fraction of the dense model's MACs."
    )
    latency_ms: Annotated[float, Field(gt=0.0, le=3_600_000.0, allow_inf_nan=False)] | None = Field(
        None,
        description="Most accurate model whose onnxruntime latency (median, one intra-op thread, on the worker) "
        "at `batch` is at most this many milliseconds.",
    )
    batch: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        None, description="Batch size of `latency_ms` (default 1); only with `latency_ms`."
    )
    candidates: Annotated[int, Field(ge=1, le=12)] = Field(
        5, description="Quality bounds: ratios tried (each pruned and briefly finetuned); bisection, so 5 → 1/32."
    )
    steps: Annotated[int, Field(ge=0, le=10_000_000)] | None = Field(
        None,
        description="Quality bounds: optimizer steps of each candidate's short finetune (rounded up to whole "
        "epochs; 0: judge the candidates right after pruning). Default (null): half the budget of the "
        "`finetune` stage that follows (500 steps with the default finetune): with 200 a candidate at 50% "
        "measured 1.1 points more drop than the full finetune gave (BENCHMARKS.md).",
    )
    max_ratio: OpenFraction = Field(0.9, description="Largest channel ratio the search may choose.")

    @model_validator(mode="after")
    def _one_bound(self) -> TargetParams:
        given = [name for name in (*QUALITY_BOUNDS, *COST_BOUNDS) if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "target takes exactly one bound, one of "
                + ", ".join((*QUALITY_BOUNDS, *COST_BOUNDS))
                + (f"; got {', '.join(given)}" if given else "")
            )
        if self.latency_ms is None and self.batch is not None:
            raise ValueError("target.batch is the batch size of target.latency_ms; give it with latency_ms only")
        if self.latency_ms is not None and self.batch is None:
            self.batch = 1
        return self

    @property
    def bound(self) -> str:
        """The name of the one bound given."""
        return next(n for n in (*QUALITY_BOUNDS, *COST_BOUNDS) if getattr(self, n) is not None)

    @property
    def is_cost(self) -> bool:
        return self.bound in COST_BOUNDS


class PruneChannelsParams(Strict):
    """Structured pruning: whole channels removed physically ([SPLINE] §3), at a fixed
    ``ratio`` or at the ratio a ``target`` search chooses."""

    criterion: Literal[CRITERION_NAMES] = Field(  # type: ignore[valid-type]  (the registered criteria)
        "l1",
        description="How channels are scored: l1 (filter norm; the default), spline ([SPLINE]: how a channel "
        "cuts the data into linear regions, on `probes` inputs), spline_geometry, bn_scale, random. With the "
        "default finetune l1 and spline were within a point of each other on six digits/MNIST-1D CNNs; on a "
        "32×32 image task (ResNet-20) spline was 2.7–8.5 points behind l1 (BENCHMARKS.md).",
    )
    scope: Literal["global", "layerwise"] = Field(
        "layerwise",
        description="layerwise: the same ratio in every layer (measured best, BENCHMARKS.md); "
        "global: one pool of all channels.",
    )
    ratio: OpenFraction | None = Field(
        None,
        description="Fraction of the channels removed. Default (null): 0.5 without `target`; null with `target` "
        "(the search chooses it; give one or the other).",
    )
    target: TargetParams | None = Field(
        None,
        description="Search the ratio for a bound instead of giving it: a quality bound (most compression "
        "within it) or a cost bound (most accurate model within it). Excludes `ratio`.",
    )
    round_to: Annotated[int, Field(ge=1, le=256)] = 1
    min_channels: Annotated[int, Field(ge=1, le=4096)] = 1
    exclude: list[LayerName] = Field(default_factory=lambda: ["last"], max_length=1000)
    probes: Annotated[int, Field(ge=16, le=20000)] = 512
    iterations: Annotated[int, Field(ge=1, le=10)] = Field(
        1,
        description="Prune in this many steps (k) instead of one: after step i the model keeps 1 − ratio·i/k of "
        "its channels (Torch-Pruning's linear iterative schedule), scored again at every step, with a short "
        "finetune after every step but the last (1/k of the following finetune's budget each, with its lr and "
        "distillation; the following finetune stage then does the full recovery). Costs (k − 1)/k of that "
        "finetune again. 1: one shot. Not with `target`.",
    )

    @model_validator(mode="after")
    def _ratio_or_target(self) -> PruneChannelsParams:
        if self.target is not None and self.ratio is not None:
            raise ValueError(
                "give prune_channels.ratio or prune_channels.target, not both (the target search chooses the ratio)"
            )
        if self.target is not None and self.iterations > 1:
            raise ValueError(
                "prune_channels.iterations > 1 prunes a fixed ratio in steps; a target searches the ratio in one "
                "step: drop one of them"
            )
        if self.target is None and self.ratio is None:
            self.ratio = DEFAULT_CHANNEL_RATIO
        return self


class PruneWeightsParams(Strict):
    """Unstructured pruning by weight magnitude under one global budget, in one shot: the smallest
    |w| over all masked Conv/Linear weights together are zeroed (global magnitude pruning, the
    baseline of [PROBMASK]); a following finetune keeps them at zero."""

    sparsity: OpenFraction = Field(0.9, description="Fraction of the masked weights set to zero, over all layers.")
    exclude: list[LayerName] = Field(default_factory=list, max_length=1000)


class ProbMaskParams(Strict):
    """Unstructured sparsity under one global budget ([PROBMASK])."""

    sparsity: OpenFraction = 0.9
    epochs: Annotated[int, Field(ge=1, le=1000)] = 30
    lr: Positive = 0.01
    score_lr: Positive | None = Field(
        None,
        description="Initial Adam lr of the keep-probabilities (cosine-annealed). Default (null): scaled to "
        "the job's steps so that the sum of the per-step score lr over the stage is 20 (initial lr = 20 / "
        "(steps per epoch × (epochs + 1) / 2), at most 1.0). The paper's 6e-3 assumes ~59k steps; with a few "
        "hundred steps it leaves the scores undecided.",
    )
    exclude: list[LayerName] = Field(default_factory=list, max_length=1000)
    final_mask: Literal["expected_magnitude", "topk", "sample"] = Field(
        "expected_magnitude",
        description="How the final mask is drawn from the learned keep-probabilities s. `expected_magnitude`: "
        "the weights with the largest s·|w| (the expected magnitude of the masked weight; where the scores are "
        "undecided the larger weight wins); `topk`: the largest s, ties broken by |w|; `sample`: the best of "
        "10 Bernoulli(s) draws by training accuracy (the reference's). Both top-K rules give the exact "
        "sparsity.",
    )
    mask_samples: Annotated[int, Field(ge=1, le=8)] = 1


class FinetuneParams(Strict):
    """Training of the pruned network (masks, if any, stay fixed), with optional recovery aids."""

    epochs: Epochs | None = Field(
        None,
        description="Epochs of finetuning (0: none). Default (null): the epochs that hold `steps` optimizer "
        "steps on the dataset, so the budget scales with the dataset instead of being a fixed number of epochs; "
        "after an `early_bird` stage, the rest of its `max_epochs` schedule once the ticket is drawn (at least a "
        "quarter of it): the job trains for the dense schedule, the epochs after the ticket on the pruned network.",
    )
    steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = Field(
        None,
        description="Budget in optimizer steps, rounded up to whole epochs of the dataset; give it or "
        "`epochs`, not both. Default (null, with `epochs` null): 1500 steps, at least 10 and at most 200 epochs. "
        "Fewer steps finish sooner: at 1000 one held-out BN-folded MobileNet stayed 2.1 points below its dense "
        "model (BENCHMARKS.md).",
    )
    lr: Positive | None = Field(
        None,
        description="Initial SGD learning rate (cosine to 0). Default (null): 0.05 when `reinsert_bn` re-inserted "
        "BatchNorm (the filters are rescaled to their initial norm, as in training from scratch); else, after an "
        "`early_bird` stage, its `lr` (the ticket is trained from the dense schedule's lr, as [EB] retrains it); "
        "else 0.01. The report's `finetune` entries record the lr used.",
    )
    distill: Fraction = Field(
        0.9,
        description="Weight of knowledge distillation from the dense model (Hinton et al. 2015; "
        "`distill_temperature`); 0 for plain cross-entropy. On by default: over six variants of the acceptance "
        "model it cut the worst drop from 6.0 to 1.9 points (README). Default 0 after an `early_bird` stage (the "
        "uploaded model is then the untrained start, not a teacher).",
    )
    distill_temperature: Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)] = 4.0
    warmup: Annotated[float, Field(ge=0.0, le=0.5, allow_inf_nan=False)] = Field(
        0.05, description="Fraction of the finetune's steps with a linear learning-rate warm-up (0: none)."
    )
    patience: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        None,
        description="Early stopping: stop after this many epochs without a better validation "
        "accuracy (epochs/steps stay the cap). None: train the whole budget.",
    )
    restore_best: bool | None = Field(
        None,
        description="End with the weights of the epoch with the best validation accuracy "
        "(the starting weights included), so a finetune never ends worse on validation than its best epoch. "
        "The validation split then chose the weights: its accuracy is slightly optimistic, judge by a test "
        "split (x_test, y_test) when the margin matters. Default (null): on with labels, off on a label-free "
        "dataset; `true` on a label-free dataset is refused.",
    )
    recalibrate_bn: bool = Field(
        False,
        description="Re-estimate BatchNorm running statistics on training batches before "
        "finetuning (stale after channel surgery); no effect without BatchNorm.",
    )
    reinsert_bn: bool = Field(
        True,
        description="For a model without BatchNorm (an export in eval mode folds BN into the convs): attach an "
        "identity-initialised BatchNorm after every convolution for finetuning and fold it back afterwards "
        "(the exported model keeps its layers).",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> FinetuneParams:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give finetune.epochs or finetune.steps, not both (steps: a budget in optimizer steps)")
        return self

    def resolved_epochs(self, n_train: int, batch_size: int) -> int:
        """``epochs``; or the whole epochs that hold ``steps`` optimizer steps; or, with
        neither given, the default budget: :data:`DEFAULT_FINETUNE_STEPS` steps clamped to
        10–:data:`MAX_DEFAULT_FINETUNE_EPOCHS` epochs."""
        if self.epochs is not None:
            return self.epochs
        per_epoch = max(1, -(-n_train // batch_size))
        if self.steps is not None:
            return max(1, -(-self.steps // per_epoch))
        return min(MAX_DEFAULT_FINETUNE_EPOCHS, max(10, -(-DEFAULT_FINETUNE_STEPS // per_epoch)))


class StageEntry(Strict):
    """One entry of ``pipeline``: ``{<stage name>: <its params>}`` (one key)."""

    @property
    def name(self) -> str:
        return next(iter(type(self).model_fields))

    @property
    def params(self) -> Strict:
        return getattr(self, self.name)


# The stages a pipeline may hold: name → params type. The worker maps each params type to
# its runner (worker.pruning.stages); adding a stage is its params model and one line here.
STAGES: dict[str, type[Strict]] = {
    "early_bird": EarlyBirdParams,
    "prune_channels": PruneChannelsParams,
    "prune_weights": PruneWeightsParams,
    "probmask": ProbMaskParams,
    "finetune": FinetuneParams,
}


def _stage_entry(name: str, params: type[Strict]) -> type[StageEntry]:
    """The ``{name: params}`` model of one stage, named like its params (``ProbMaskParams`` →
    ``ProbMaskStage``: the schema name clients and validation errors see)."""
    model_name = params.__name__.removesuffix("Params") + "Stage"
    return create_model(model_name, __base__=StageEntry, __module__=__name__, **{name: (params, ...)})


STAGE_ENTRIES: dict[str, type[StageEntry]] = {name: _stage_entry(name, params) for name, params in STAGES.items()}
EarlyBirdStage = STAGE_ENTRIES["early_bird"]
PruneChannelsStage = STAGE_ENTRIES["prune_channels"]
ProbMaskStage = STAGE_ENTRIES["probmask"]
FinetuneStage = STAGE_ENTRIES["finetune"]


def _stage_name(entry: Any) -> str | None:
    """Which stage a pipeline entry is: its one key (a built entry: its field), so that a
    mistake inside a stage is reported against that stage alone, not against every stage."""
    if isinstance(entry, StageEntry):
        return entry.name
    if isinstance(entry, dict) and len(entry) == 1:
        return next(iter(entry))
    return None


Stage = Annotated[
    Union[tuple(Annotated[entry, Tag(name)] for name, entry in STAGE_ENTRIES.items())],  # noqa: UP007 - built from the table
    Discriminator(
        _stage_name,
        custom_error_type="unknown_stage",
        custom_error_message=(
            "a pipeline entry is one stage name as its only key ("
            + ", ".join(STAGES)
            + "), e.g. {'prune_channels': {'ratio': 0.5}}"
        ),
    ),
]


class ExportParams(Strict):
    formats: list[Literal["onnx", "torchscript"]] = Field(
        default_factory=lambda: ["onnx", "torchscript"], min_length=1, max_length=2
    )
    opset: Annotated[int, Field(ge=13, le=21)] = 18
    dynamic_batch: bool = True
    latency_batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [1],
        min_length=1,
        max_length=4,
        description="Batch sizes at which the report times the dense and the final model in onnxruntime "
        "(one intra-op thread, each bounded to about 1.5 s). Each size costs at least two runs of the "
        "model at that batch, so a large batch on a large model lengthens every job: add e.g. 32 for a "
        "throughput figure. Sizes above 1 need `dynamic_batch`.",
    )

    @model_validator(mode="after")
    def _batches_fit_the_export(self) -> ExportParams:
        if not self.dynamic_batch and any(batch != 1 for batch in self.latency_batch_sizes):
            raise ValueError(
                "export.latency_batch_sizes above 1 need export.dynamic_batch: true "
                "(a fixed-batch export runs at batch 1 only)"
            )
        if len(set(self.latency_batch_sizes)) != len(self.latency_batch_sizes):
            raise ValueError("export.latency_batch_sizes lists a batch size twice; give each once")
        return self


class AcceptanceParams(Strict):
    """The gate a CI pipeline fails on: accuracy points lost versus the dense model, and/or how
    closely the final model's outputs follow the dense model's (fidelity, label-free)."""

    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] | None = Field(
        1.0,
        description="Accuracy points the build may lose (checked only when the dataset has labels; "
        "null: no accuracy bound).",
    )
    min_agreement: Fraction | None = Field(
        None,
        description="Lowest top-1 agreement with the dense model allowed on any logit-like output "
        "(fraction of samples, or pixels, with the same arg-max class).",
    )
    max_relative_error: Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)] | None = Field(
        None, description="Largest relative L2 error ‖pruned − dense‖ / ‖dense‖ allowed on any output."
    )


OutputName = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class DistillationParams(Strict):
    """How the dense model's outputs teach the pruned one (all outputs; Hinton et al. 2015 for
    logits). Label-free datasets always distil; labelled ones when ``finetune.distill`` > 0."""

    kinds: dict[OutputName, Literal["logits", "probabilities", "regression"]] = Field(
        default_factory=dict,
        max_length=256,
        description="Kind of an output by ONNX output name or index; undeclared outputs are detected "
        "((N, C) is logits, a higher-rank output with every value in [0, 1] probabilities, anything "
        "else regression).",
    )
    temperature: Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)] = 4.0
    regression_loss: Literal["l2", "smooth_l1"] = Field(
        "l2", description="l2: ‖s − t‖² / ‖t‖²; smooth_l1: on outputs divided by the teacher's std."
    )


Size = Annotated[int, Field(ge=1, le=8192)]


class PreprocessingParams(Strict):
    """How images of an image dataset (an archive, or a prefix registered by reference) become the model's input.

    Order: decode (Pillow) → colour → resize → centre crop → scale to [0, 1] (float dtypes)
    → (x − mean) / std → channel order → layout → dtype.
    """

    color: Literal["rgb", "grayscale"] = "rgb"
    resize: Size | tuple[Size, Size] | None = Field(
        None, description="An int resizes the shorter side (keeping the aspect ratio); [height, width] resizes exactly."
    )
    center_crop: Size | tuple[Size, Size] | None = Field(None, description="An int crops a square; or [height, width].")
    mean: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        None,
        min_length=1,
        max_length=3,
        description="Per channel, in the [0, 1] scale (ImageNet: [0.485, 0.456, 0.406]).",
    )
    std: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] | None = Field(None, min_length=1, max_length=3)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    dtype: Literal["float32", "uint8"] = Field(
        "float32",
        description="uint8: raw 0..255 pixel values, no scaling or mean/std (the engine and the "
        "exported model take them as float32).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessingParams:
        channels = 1 if self.color == "grayscale" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, channels):
                raise ValueError(f"{name} has {len(values)} values; give 1 or {channels} for {self.color} images")
        if self.dtype == "uint8" and (self.mean is not None or self.std is not None):
            raise ValueError("mean/std need a float dtype; with dtype uint8 the model gets raw 0..255 pixels")
        if self.resize is None and self.center_crop is None:
            pass  # images must then all have one size; checked when the data are read
        return self


class TrainingParams(Strict):
    batch_size: Annotated[int, Field(ge=1, le=8192)] = 128
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 5e-4
    val_fraction: OpenFraction = Field(
        0.2, description="Share held out for validation when a dataset has no split of its own."
    )


class BuiltinDataset(Strict):
    builtin: Literal["mnist1d", "digits"]


class JobSpec(Strict):
    """What to do to a model. Stages run in order; each is optional."""

    model_id: Annotated[str, StringConstraints(pattern=r"^mdl_[0-9a-f]{24}$")] | None = None
    dataset_id: Annotated[str, StringConstraints(pattern=r"^ds_[0-9a-f]{24}$")] | None = Field(
        None,
        description="A dataset of POST /v1/datasets: an uploaded file, or data registered by reference "
        '(`{"uri": "s3://bucket/prefix/"}`), which jobs read where they are.',
    )
    dataset: BuiltinDataset | None = None
    architecture: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None, description="Zoo architecture of a safetensors model; ignored for ONNX."
    )
    pipeline: list[Stage] = Field(
        default_factory=lambda: [
            PruneChannelsStage(prune_channels=PruneChannelsParams()),
            FinetuneStage(finetune=FinetuneParams()),
        ],
        min_length=1,
        max_length=16,
    )
    training: TrainingParams = Field(default_factory=TrainingParams)
    export: ExportParams = Field(default_factory=ExportParams)
    acceptance: AcceptanceParams = Field(default_factory=AcceptanceParams)
    distillation: DistillationParams = Field(default_factory=DistillationParams)
    preprocessing: PreprocessingParams | None = Field(
        None,
        description="For image datasets (archives, or prefixes registered by reference): how images become "
        "the model's input.",
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    time_limit_s: Annotated[int, Field(ge=10, le=7 * 24 * 3600)] = 6 * 3600
    callback_url: Annotated[str, StringConstraints(max_length=2048)] | None = None

    @model_validator(mode="after")
    def _one_dataset(self) -> JobSpec:
        if self.dataset_id is not None and self.dataset is not None:
            raise ValueError("give only one of dataset_id (an uploaded dataset) or dataset.builtin")
        return self

    @field_validator("pipeline")
    @classmethod
    def _stage_order(cls, pipeline: list[StageEntry]) -> list[StageEntry]:
        """Channel removal (``prune_channels``, ``early_bird``) after unstructured pruning
        (``probmask``, ``prune_weights``) would change the shapes of the weight masks it fixed (and
        dense early-bird training would revive the zeros): refused, with the order that works."""
        names = [stage.name for stage in pipeline]
        masking = [n for n in names if n in ("probmask", "prune_weights")]
        if masking:
            first = names.index(masking[0])
            late = [n for n in names[first + 1 :] if n in ("prune_channels", "early_bird")]
            if late:
                raise ValueError(
                    f"pipeline: '{late[0]}' cannot follow '{masking[0]}' (it changes the layers whose weights "
                    f"'{masking[0]}' masked); put '{late[0]}' before '{masking[0]}', e.g. "
                    f"[{late[0]}, {masking[0]}, finetune]"
                )
        return pipeline

    @field_validator("pipeline")
    @classmethod
    def _ticket_training_defaults(cls, pipeline: list[StageEntry]) -> list[StageEntry]:
        """After ``early_bird`` the uploaded model is where dense training started, not a trained
        teacher, and the ticket is an unconverged network to train ([EB] retrains it with
        cross-entropy): unless given, a finetune there trains without distillation (a teacher would
        also add its forward pass to every step of the cheap phase); the resolved spec holds it. Its
        default lr (the early_bird stage's, unless BatchNorm is re-inserted) and budget (the rest of
        the early_bird schedule) depend on the model and the ticket (worker.pruning.stages.finetune)."""
        names = [stage.name for stage in pipeline]
        if "early_bird" in names:
            for stage in pipeline[names.index("early_bird") + 1 :]:
                params = stage.params
                if isinstance(params, FinetuneParams) and "distill" not in params.model_fields_set:
                    params.distill = 0.0
        return pipeline

    @field_validator("pipeline")
    @classmethod
    def _one_target(cls, pipeline: list[StageEntry]) -> list[StageEntry]:
        """One target per job: the acceptance gate confirms the final model against it, and a
        second search would start from a model the first one already sized for the same job."""
        targets = [s for s in pipeline if getattr(s.params, "target", None) is not None]
        if len(targets) > 1:
            raise ValueError("pipeline: at most one prune_channels stage may have a target")
        return pipeline

    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.pipeline]


JOB_SPEC_EXAMPLE = {
    "model_id": "mdl_0123456789abcdef01234567",
    "dataset_id": "ds_0123456789abcdef01234567",
    "pipeline": [
        {"prune_channels": {"criterion": "spline", "ratio": 0.5}},
        {"probmask": {"sparsity": 0.9, "epochs": 5}},
        {"finetune": {"epochs": 5, "lr": 0.01}},
    ],
    "export": {"formats": ["onnx", "torchscript"]},
    "acceptance": {"max_accuracy_drop": 2.5},
    "seed": 0,
}
