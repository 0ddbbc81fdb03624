"""Pipeline stages: one file per stage, registered as ``{params type → runner}``.

The pipeline (:mod:`worker.pipeline`) looks each stage's params type up in
:data:`RUNNERS` and calls the runner; nothing else knows the stage types. Runners are
imported when a job first uses them. Adding a stage: its params model in
:mod:`service.core.spec` (and its line in ``STAGES``), one runner file here, one line below.
"""

from __future__ import annotations

from service.core.spec import EarlyBirdParams, FinetuneParams, ProbMaskParams, PruneChannelsParams, PruneWeightsParams
from worker.pruning.criteria import load_object
from worker.pruning.stages.base import EngineState, StageContext, StageRunner

RUNNERS: dict[type, str] = {
    EarlyBirdParams: "worker.pruning.stages.early_bird:EarlyBirdRunner",
    PruneChannelsParams: "worker.pruning.stages.prune_channels:PruneChannelsRunner",
    PruneWeightsParams: "worker.pruning.stages.prune_weights:PruneWeightsRunner",
    ProbMaskParams: "worker.pruning.stages.probmask:ProbMaskRunner",
    FinetuneParams: "worker.pruning.stages.finetune:FinetuneRunner",
}


def runner_for(params: object) -> StageRunner:
    """The runner of ``params``' stage type."""
    try:
        path = RUNNERS[type(params)]
    except KeyError:
        raise ValueError(f"no runner is registered for stage params {type(params).__name__}") from None
    return load_object(path)()


__all__ = ["RUNNERS", "EngineState", "StageContext", "StageRunner", "runner_for"]
