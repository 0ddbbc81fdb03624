"""``prune_channels.target``: the channel ratio searched for a bound, then confirmed.

The candidates of the search (:mod:`worker.pruning.search`) are copies of the model as the
stage receives it, one at a time (memory: the model plus one candidate), pruned with the
channel scores of the first candidate (scores do not depend on the ratio):

- quality bounds: each candidate is finetuned briefly (``target.steps`` optimizer steps; by
  default half the budget of the ``finetune`` stage that follows; with its lr and
  distillation from the dense model), then
  judged on the validation split like the acceptance gate judges the final model; the
  training runs report progress (stage ``<stage>.candidate-<k>``), poll cancellation and
  checkpoint like any training run;
- cost bounds: each candidate is judged right after pruning (cost does not depend on the
  weights): MACs counted, or exported to ONNX and timed in onnxruntime at the requested batch
  (one intra-op thread, like the report; a candidate meets a latency bound when the upper end
  of its median's 95 % interval does, so that noise does not choose a model that is too slow;
  candidates are exported with the TorchScript exporter, ~20× faster than the dynamo exporter
  of the delivered file, which the confirmation times).

The chosen quality candidate is kept as its short finetune left it (the last passing one:
one more copy at most) and the following ``finetune`` continues from it, so the search's
training is not thrown away and the final model starts from one that met the bound.
Every candidate records MACs (fraction of the dense model's), the accuracy right after
pruning and, where measured, after the short finetune, fidelity and latency: the report's
trade-off curve. The stage then prunes the model at the chosen ratio (or takes the kept
candidate); the following ``finetune`` does the full recovery, and :func:`confirm_target` checks the final model
against the bound (the acceptance gate's ``checks.target``).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from service.core.spec import FinetuneParams, PruneChannelsParams, TargetParams
from worker.pruning.channels import PruneResult
from worker.pruning.fidelity import DROP_TOLERANCE
from worker.pruning.search import search_cost, search_quality
from worker.pruning.stages.base import EngineState, StageContext, labels_required
from worker.pruning.training import Cancelled, count_macs_params, epochs_for_steps

LATENCY_BUDGET_S = 1.0  # per candidate: onnxruntime timing stops earlier once the median is stable


SHORT_FRACTION = 0.5  # a candidate's finetune, as a fraction of the following finetune's (target.steps null)


def short_finetune_epochs(target: TargetParams, following: object, n_train: int, batch_size: int) -> int:
    """Epochs of each quality candidate's short finetune: ``target.steps`` as whole epochs, or
    (null) half the epochs of the ``finetune`` stage that follows (of the default finetune when
    none follows), at least one."""
    if target.steps is not None:
        return 0 if target.steps == 0 else epochs_for_steps(target.steps, n_train, batch_size)
    recipe = following if isinstance(following, FinetuneParams) else FinetuneParams()
    full = recipe.resolved_epochs(n_train, batch_size)
    return max(1, math.ceil(SHORT_FRACTION * full)) if full > 0 else 0


def planned_search_epochs(target: TargetParams, following: object, n_train: int, batch_size: int) -> int:
    """Training epochs the search runs at most (the quality bounds' short finetunes)."""
    if target.is_cost:
        return 0
    return target.candidates * short_finetune_epochs(target, following, n_train, batch_size)


def candidate_latency(model: nn.Module, context: StageContext, batch: int, directory: Path) -> dict:
    """onnxruntime latency of ``model`` (a CPU copy is exported; ``model`` is left as it is) at ``batch``:
    the fields of :func:`worker.export.latency.bounded_latency`."""
    from worker.export import export_onnx, onnxruntime_latency

    path = directory / "candidate.onnx"
    example = context.data.x_val[:1].float()
    export_onnx(
        copy.deepcopy(model).cpu().eval(),
        example,
        path,
        opset=context.spec.export.opset,
        dynamic_batch=True,
        prefer="legacy",
    )
    stats = onnxruntime_latency(
        path, tuple(context.data.input_shape), batch_sizes=(batch,), budget_s=LATENCY_BUDGET_S, seed=context.spec.seed
    )
    return stats["batch_sizes"][str(batch)]


class _Search:
    """The candidates of one search: pruned copies of ``base`` at a ratio, judged against ``target``."""

    def __init__(self, params: PruneChannelsParams, context: StageContext, base: nn.Module, directory: Path) -> None:
        self.params, self.context, self.base, self.directory = params, context, base, directory
        self.target: TargetParams = params.target
        self.scores: dict[str, torch.Tensor] | None = None
        self.example = context.data.x_val[:1].float().to(context.device)
        self.dense_macs, _ = count_macs_params(base, self.example)
        self.count = 0
        self.short_epochs = short_finetune_epochs(
            self.target, context.next_params, len(context.data.x_train), context.spec.training.batch_size
        )
        self.kept: tuple | None = None  # the last passing quality candidate: (ratio, model, pruning, fidelity)
        reference = context.dense_accuracy
        if reference is None and context.labelled:
            reference = context.evaluate(base)
        self.reference_accuracy = None if reference is None else 100.0 * reference  # percent, like the report

    def prune(self, model: nn.Module, ratio: float) -> PruneResult:
        """Prune ``model`` (a copy of the base, or the stage's model) at ``ratio``; the first call
        scores, later calls reuse its scores."""
        from worker.pruning.stages.prune_channels import prune_model

        result = prune_model(
            model, self.params.model_copy(update={"ratio": ratio, "target": None}), self.context, self.scores
        )
        if self.scores is None:
            self.scores = {name: torch.tensor(values) for name, values in result.scores.items()}
        return result

    def _check_cancel(self) -> None:
        should_cancel = self.context.hooks.should_cancel
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"stage {self.context.stage_id} cancelled during the target search")

    def _measures(self, model: nn.Module, latency_batch: int | None) -> dict:
        macs, params = count_macs_params(model, self.example)
        point = {"macs": macs, "macs_fraction": macs / self.dense_macs if self.dense_macs else None, "params": params}
        if latency_batch is not None:
            stats = candidate_latency(model, self.context, latency_batch, self.directory)
            point["latency_ms"] = stats["median_ms"]
            point["latency_ci95_ms"] = stats["ci95_ms"]
        return point

    def _accuracy(self, model: nn.Module) -> float | None:
        accuracy = self.context.evaluate(model)
        return None if accuracy is None else 100.0 * accuracy

    def quality(self, ratio: float) -> dict:
        """A quality candidate: pruned, briefly finetuned, judged like the final model."""
        self._check_cancel()
        self.count += 1
        candidate = copy.deepcopy(self.base)
        pruning = self.prune(candidate, ratio)
        point: dict = {"accuracy_pruned": self._accuracy(candidate)}
        after_pruning = None
        if self.context.has_reference:  # the report's fidelity after pruning, should this one be chosen
            after_pruning = self.context.reference().fidelity(
                candidate, self.context.data, self.context.spec.training.batch_size, self.context.device
            )
            point["fidelity_pruned"] = after_pruning.get("fidelity")
        if self.short_epochs > 0:
            self._short_finetune(candidate)
        point["accuracy"] = self._accuracy(candidate)
        bound, value = self.target.bound, getattr(self.target, self.target.bound)
        if bound == "max_accuracy_drop":
            point["measured"] = self.reference_accuracy - point["accuracy"]
            point["passed"] = point["measured"] <= value + DROP_TOLERANCE
        else:
            from worker.pruning.fidelity import check_bounds

            fidelity = self.context.reference().fidelity(
                candidate, self.context.data, self.context.spec.training.batch_size, self.context.device
            )
            check = check_bounds(fidelity, **{"min_agreement": None, "max_relative_error": None, bound: value})[bound]
            point["fidelity"] = fidelity.get("fidelity")
            point["measured"], point["passed"] = check["measured"], bool(check["passed"])
        point.update(self._measures(candidate, 1))
        if point["passed"]:  # bisection: every later passing candidate has a larger ratio
            self.kept = (ratio, candidate.cpu(), pruning, after_pruning)
        del candidate
        return point

    def cost(self, ratio: float) -> dict:
        """A cost candidate: pruned, measured (no training)."""
        self._check_cancel()
        self.count += 1
        candidate = copy.deepcopy(self.base)
        self.prune(candidate, ratio)
        point: dict = {"accuracy_pruned": self._accuracy(candidate)}
        point.update(self._measures(candidate, self.target.batch if self.target.latency_ms is not None else None))
        point.update(self._judge_cost(point))
        del candidate
        return point

    def _judge_cost(self, point: dict) -> dict:
        if self.target.macs is not None:
            return {"measured": point["macs_fraction"], "passed": point["macs_fraction"] <= self.target.macs}
        # the upper end of the median's 95 % interval: a noisy median does not choose a model that is too slow
        return {"measured": point["latency_ms"], "passed": point["latency_ci95_ms"][1] <= self.target.latency_ms}

    def _short_finetune(self, candidate: nn.Module) -> None:
        from worker.pruning.stages.finetune import short_finetune

        short_finetune(candidate, self.context, self.short_epochs, f"candidate-{self.count}")


def run_target_search(params: PruneChannelsParams, context: StageContext, state: EngineState) -> None:
    """Search the ratio for ``params.target``, prune ``state.model`` at it, and record the
    search in ``state.extras["target"]`` (the report's ``target`` section)."""
    target = params.target
    if target.bound == "max_accuracy_drop" and not context.labelled:
        raise labels_required(
            "target.max_accuracy_drop measures accuracy; this dataset has no labels. Use target.min_agreement or "
            "target.max_relative_error (fidelity to the dense model)."
        )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shears-target-") as tmp:
        search = _Search(params, context, state.model, Path(tmp))
        dense: dict = {"ratio": 0.0, "macs": search.dense_macs, "macs_fraction": 1.0}
        dense["accuracy"] = dense["accuracy_pruned"] = search.reference_accuracy
        if target.is_cost:
            batch = target.batch if target.latency_ms is not None else None
            if batch is not None:
                stats = candidate_latency(state.model, context, batch, Path(tmp))
                dense["latency_ms"], dense["latency_ci95_ms"] = stats["median_ms"], stats["ci95_ms"]
            dense.update(search._judge_cost(dense))
            result = search_cost(search.cost, max_ratio=target.max_ratio, dense_passes=dense["passed"])
        else:
            stats = candidate_latency(state.model, context, 1, Path(tmp))
            dense["latency_ms"], dense["latency_ci95_ms"] = stats["median_ms"], stats["ci95_ms"]
            dense["passed"] = True
            result = search_quality(search.quality, candidates=target.candidates, max_ratio=target.max_ratio)
    value = getattr(target, target.bound)
    warnings = []
    chosen = result.chosen
    if chosen is None and target.is_cost:
        from worker.pipeline import EngineError

        last = result.points[-1]
        raise EngineError(
            "target-unreachable",
            f"target.{target.bound} {value} cannot be met: at the largest ratio allowed (max_ratio "
            f"{target.max_ratio}) the pruned model measures {last['measured']:.4g}",
        )
    if chosen is None:
        chosen = min(point["ratio"] for point in result.points)
        warnings.append(
            f"target.{target.bound} {value}: no candidate met the bound after its short finetune; pruned at the "
            f"smallest ratio tried ({chosen}), the acceptance gate checks the final model"
        )
    from worker.pruning.stages.prune_channels import record_pruning

    if search.kept is not None and search.kept[0] == chosen:
        # the chosen candidate as its short finetune left it: the following finetune continues its recovery
        state.model = search.kept[1].to(context.device)
        record_pruning(search.kept[2], context, state)
        accuracy = next(p for p in result.points if p["ratio"] == chosen)["accuracy_pruned"]
        state.pruned_accuracy = None if accuracy is None else accuracy / 100.0  # right after the surgery
        if search.kept[3] is not None and state.fidelity.get("after_pruning") is None:
            state.fidelity["after_pruning"] = search.kept[3]  # not the short-finetuned model's
        if search.short_epochs > 0:  # it has been trained: without a finetune stage after, the report says so
            state.finetuned = True
    elif chosen > 0:
        record_pruning(search.prune(state.model, chosen), context, state)
    search.kept = None
    for point in result.points:
        point["chosen"] = point["ratio"] == chosen
    dense["chosen"] = chosen == 0
    state.extras["target"] = {
        "bound": target.bound,
        "value": value,
        "batch": target.batch if target.latency_ms is not None else (None if target.is_cost else 1),
        "kind": "cost" if target.is_cost else "quality",
        "reference_accuracy": search.reference_accuracy,
        "short_finetune_epochs": None if target.is_cost else search.short_epochs,
        "dense": dense,
        "points": result.points,
        "chosen_ratio": chosen,
        "met_in_search": result.chosen is not None,
        "seconds": round(time.perf_counter() - start, 3),
        "warnings": warnings,
    }


def confirm_target(
    info: dict,
    *,
    accuracy_drop: float | None,
    macs_fraction: float | None,
    fidelity: dict | None,
    latency: dict | None,
) -> dict:
    """The final model against the searched bound: ``{bound, measured, passed}`` (the acceptance
    gate's ``checks.target``). ``latency``: the final ONNX file's onnxruntime latency at the
    target's batch (:func:`worker.export.onnxruntime_latency`), for a latency bound."""
    bound, value = info["bound"], info["value"]
    check: dict = {"bound": value, "name": bound}
    if bound == "max_accuracy_drop":
        check["measured"] = accuracy_drop
        check["passed"] = None if accuracy_drop is None else bool(accuracy_drop <= value + DROP_TOLERANCE)
    elif bound in ("min_agreement", "max_relative_error"):
        from worker.pruning.fidelity import check_bounds

        inner = check_bounds(fidelity or {}, **{"min_agreement": None, "max_relative_error": None, bound: value})[bound]
        check["measured"], check["passed"] = inner["measured"], bool(inner["passed"])
    elif bound == "macs":
        check["measured"] = macs_fraction
        check["passed"] = None if macs_fraction is None else bool(macs_fraction <= value)
    else:
        stats = (latency or {}).get("batch_sizes", {}).get(str(info["batch"]))
        check["measured"] = None if stats is None else stats["median_ms"]
        check["ci95_ms"] = None if stats is None else stats["ci95_ms"]
        check["batch"] = info["batch"]
        check["passed"] = None if stats is None else bool(stats["median_ms"] <= value)
    return check


__all__ = ["candidate_latency", "confirm_target", "planned_search_epochs", "run_target_search"]
