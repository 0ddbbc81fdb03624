"""Compatibility alias: the ONNX importer now lives in :mod:`worker.io.onnx` (split by concern)."""

from worker.io.onnx import *  # noqa: F403
from worker.io.onnx import __all__  # noqa: F401
