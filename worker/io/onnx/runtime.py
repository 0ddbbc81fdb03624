"""onnx2torch imported without torchvision, and the names the other modules share."""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

from service.core.intake import Rejected

SHEARS_DOMAIN = "shears"  # custom ops of our graph passes (no dot: it prefixes module names)
_STUBBED_OPS = frozenset({"NonMaxSuppression", "RoiAlign"})  # need torchvision, absent here


# ------------------------------------------------------------------------------------
# Importing onnx2torch without torchvision
# ------------------------------------------------------------------------------------


def _unsupported_torchvision_op(name: str):
    def raiser(*args: Any, **kwargs: Any) -> Any:
        raise Rejected(
            "unsupported-operator",
            f"unsupported operator {name}: it needs torchvision, which this worker does not "
            "ship. Remove detection post-processing (NonMaxSuppression/RoiAlign) from the "
            "graph before uploading; Shears prunes the backbone/classifier.",
        )

    return raiser


def _import_onnx2torch() -> types.ModuleType:
    """Import onnx2torch; when torchvision is not importable, import it against a stub.

    onnx2torch imports torchvision for two converters only (NonMaxSuppression, RoiAlign).
    The stub lives in ``sys.modules`` just for the import and is removed afterwards, so
    the rest of the process still sees torchvision as absent.
    """
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    if importlib.util.find_spec("torchvision") is not None:
        import onnx2torch

        return onnx2torch
    stub = types.ModuleType("torchvision")
    stub.__doc__ = "Shears stub: torchvision is not installed in this worker."
    ops = types.ModuleType("torchvision.ops")
    ops.nms = _unsupported_torchvision_op("NonMaxSuppression")
    ops.box_convert = _unsupported_torchvision_op("NonMaxSuppression")
    ops.roi_align = _unsupported_torchvision_op("RoiAlign")
    stub.ops = ops
    sys.modules["torchvision"] = stub
    sys.modules["torchvision.ops"] = ops
    try:
        import onnx2torch
    finally:
        for name in ("torchvision.ops", "torchvision"):
            if sys.modules.get(name) in (stub, ops):
                del sys.modules[name]
    return onnx2torch


_import_onnx2torch()
from onnx2torch import convert as _onnx2torch_convert  # noqa: E402, F401
from onnx2torch.node_converters import add_converter, get_converter  # noqa: E402, F401
from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes  # noqa: E402, F401
from onnx2torch.onnx_graph import OnnxGraph  # noqa: E402, F401
from onnx2torch.onnx_node import OnnxNode  # noqa: E402, F401
from onnx2torch.utils.common import (  # noqa: E402, F401
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)
