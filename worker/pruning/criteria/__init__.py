"""Channel criteria: one file per criterion, each an :class:`Importance`, found by name.

The names and where each criterion lives are in :data:`service.core.registry.CRITERIA`
(torch-free, so the API validates specs against the same list); :func:`get_criterion`
imports the one a job asks for.
"""

from __future__ import annotations

import importlib

from service.core.registry import CRITERIA, CRITERION_NAMES
from worker.pruning.criteria.base import Importance, Redundancy, ScoringContext


def load_object(path: str):
    """The object a ``"module.path:Attribute"`` entry names."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_criterion(name: str) -> Importance:
    """A fresh instance of the criterion registered as ``name``."""
    try:
        path = CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; expected one of {list(CRITERION_NAMES)}") from None
    return load_object(path)()


__all__ = ["CRITERION_NAMES", "Importance", "Redundancy", "ScoringContext", "get_criterion", "load_object"]
