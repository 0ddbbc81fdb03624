"""The engine's plug-ins by name, torch-free (the API validates job specs against these).

Each entry maps a name a job spec may use to the object implementing it, written as
``"module.path:Attribute"`` (the entry-point syntax). The worker imports the module only
when a job uses the name (:mod:`worker.pruning.criteria`); the API only reads the names,
so it never imports torch. Adding a criterion: one file in ``worker/pruning/criteria/``
implementing :class:`worker.pruning.criteria.Importance`, and one line here.
"""

from __future__ import annotations

CRITERIA: dict[str, str] = {
    "spline": "worker.pruning.criteria.spline:SplineImportance",
    "spline_geometry": "worker.pruning.criteria.spline_geometry:SplineGeometryImportance",
    "l1": "worker.pruning.criteria.l1:L1Importance",
    "bn_scale": "worker.pruning.criteria.bn_scale:BNScaleImportance",
    "random": "worker.pruning.criteria.random:RandomImportance",
}

CRITERION_NAMES: tuple[str, ...] = tuple(CRITERIA)

__all__ = ["CRITERIA", "CRITERION_NAMES"]
