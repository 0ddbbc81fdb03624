"""Give every piece of a channel Split its own consumer, so Torch-Pruning can trace it.

Torch-Pruning 1.6 looks a Split's pieces up by the position of their consumers
(``infer_channels_between``, the split index mapping): it assumes one consumer per piece.
A YOLOv8 C2f block feeds one piece of its Split to both a Concat and a bottleneck, so the
dependency graph cannot be built at all and the whole model would be refused. This
torch.fx pass puts an exact identity (``Tensor.clone``, exported as ONNX ``Identity``)
after each piece of such a Split and hands the piece's consumers to it: each piece then
has exactly one consumer and the graph builds. Sets whose channels still cannot be
removed (a Split with constant sizes) are excluded by partial pruning
(:mod:`worker.pruning.exclusion`).
"""

from __future__ import annotations

import operator

from torch import fx


def _is_split(module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    return type(module.get_submodule(str(node.target))).__name__.startswith("OnnxSplit")


def separate_split_pieces(module: fx.GraphModule) -> int:
    """One read and one clone per piece of every Split with a piece used twice (in place); count of Splits."""
    changed = 0
    for node in list(module.graph.nodes):
        if not _is_split(module, node):
            continue
        reads = [u for u in node.users if u.op == "call_function" and u.target is operator.getitem]
        by_index: dict[int, list[fx.Node]] = {}
        for read in reads:
            by_index.setdefault(int(read.args[1]), []).append(read)
        uses = {i: sum(len(r.users) for r in group) for i, group in by_index.items()}
        if len(reads) != len(node.users) or all(n <= 1 for n in uses.values()):
            continue
        for group in by_index.values():
            first = group[0]
            with module.graph.inserting_after(first):
                alone = module.graph.call_method("clone", (first,))
            for read in group:
                read.replace_all_uses_with(alone, delete_user_cb=lambda user, a=alone: user is not a)
            for read in group[1:]:
                module.graph.erase_node(read)
        changed += 1
    if changed:
        module.graph.lint()
        module.recompile()
    return changed
