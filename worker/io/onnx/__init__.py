"""ONNX → trainable ``torch.fx.GraphModule`` with onnx2torch, made safe and prune-friendly.

``load_onnx`` does, in order:

1. refuse files over protobuf's 2 GiB limit and unparsable or invalid ONNX;
2. validate every external-data reference (relative, no ``..``, resolving — symlinks
   included — inside the upload's directory, offsets inside the file) before reading any;
3. normalise the graph so onnx2torch yields modules that own trainable parameters:
   Constant/Identity-of-weight → initializers, shared initializers untied (one copy per
   consumer), unused BatchNormalization training outputs dropped, ``MatMul(+Add)`` with a
   constant 2-D weight → ``nn.Linear``, and constant Reshape targets after pooling
   rewritten into a batch-agnostic ``Flatten`` (so the graph follows channel pruning);
4. refuse unsupported operators by op type and node name;
5. convert with onnx2torch, whose gaps for opsets 18–21 are filled through its public
   ``add_converter`` registry (see ``_register_converters``).

Nothing from the file is executed: ONNX is data (protobuf), never pickled code.
"""

from worker.io.onnx.convert import check_operators, convert_model, load_onnx, prepare_for_torch
from worker.io.onnx.reading import PROTOBUF_LIMIT, check_external_data, read_onnx
from worker.io.onnx.runtime import SHEARS_DOMAIN
from worker.io.onnx.shapes import onnx_input_shape

__all__ = [
    "PROTOBUF_LIMIT",
    "SHEARS_DOMAIN",
    "check_external_data",
    "check_operators",
    "convert_model",
    "load_onnx",
    "onnx_input_shape",
    "prepare_for_torch",
    "read_onnx",
]
