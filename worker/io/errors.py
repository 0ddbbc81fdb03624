"""Former names of ``service.core.intake.Rejected`` (one error type for every upload refusal).

``ModelRejected`` and ``DatasetRejected`` are the same class; new code imports ``Rejected``
from ``service.core.intake``.
"""

from service.core.intake import CODES, Rejected

ModelRejected = Rejected
DatasetRejected = Rejected
MODEL_CODES = DATASET_CODES = CODES

__all__ = ["DATASET_CODES", "MODEL_CODES", "DatasetRejected", "ModelRejected", "Rejected"]
