"""Region codes of a ReLU network on a probe set ([SPLINE]; ALGORITHMS §1).

Each unit k of a layer cuts its input space with the hyperplane h_k(x) = 0; the bit
1[h_k(x) > 0] over the units of a layer is the region code of x at that layer. Codes
are read from the pre-activation (the BN output when a BN follows, else the conv/linear
output) in eval mode, on at most ``max_positions`` fixed spatial positions per map, and
stored bit-packed with ``numpy.packbits``: one row of M = probes × positions bits per
unit, probe-major (bit m = probe * positions + position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from worker.pruning.layers import PrunableLayer

DEFAULT_PROBES = 512
DEFAULT_MAX_POSITIONS = 64


# --------------------------------------------------------------------------- probes


def select_probes(
    x: torch.Tensor,
    n: int = DEFAULT_PROBES,
    seed: int = 0,
    blend: int = 0,
    *,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """A fixed probe set: ``n`` training inputs drawn without replacement with ``seed``.

    **Shears choice** (ALGORITHMS §1): probes are training samples. ``blend`` adds that
    many convex combinations λ·x_a + (1−λ)·x_b of two training inputs of different
    classes (λ ~ U(0.25, 0.75)), as [SPLINE] did with test images; pass the labels
    ``y`` so partners can be drawn from other classes.
    """
    gen = torch.Generator().manual_seed(seed)
    n = min(n, len(x))
    probes = x[torch.randperm(len(x), generator=gen)[:n]]
    if blend > 0:
        a = torch.randint(len(x), (blend,), generator=gen)
        b = torch.randint(len(x), (blend,), generator=gen)
        if y is not None:
            # re-draw partners of equal class a few times; keep whatever differs
            for _ in range(8):
                same = y[a] == y[b]
                if not bool(same.any()):
                    break
                b[same] = torch.randint(len(x), (int(same.sum()),), generator=gen)
        lam = 0.25 + 0.5 * torch.rand((blend,) + (1,) * (x.dim() - 1), generator=gen)
        probes = torch.cat([probes, lam * x[a] + (1 - lam) * x[b]])
    return probes


# --------------------------------------------------------------------------- codes


@dataclass
class RegionCodes:
    """Bit-packed region codes of one layer: ``packed[k]`` holds unit k's M bits."""

    packed: np.ndarray  # uint8, shape (units, ceil(bits / 8))
    units: int
    bits: int  # M = probes * positions
    probes: int
    positions: int

    def unpack(self, unit: int | None = None) -> np.ndarray:
        """Bool codes: shape (units, M), or (M,) for one unit."""
        rows = self.packed if unit is None else self.packed[unit]
        return np.unpackbits(rows, axis=-1, count=self.bits).astype(bool)

    def activity(self) -> np.ndarray:
        """Fraction of "on" bits per unit (a_k in ALGORITHMS §3), float64."""
        ones = np.bitwise_count(self.packed).sum(axis=1, dtype=np.int64)
        return ones / max(1, self.bits)

    def state_dict(self) -> dict:
        """Tensors and ints only (checkpoint-friendly)."""
        return {
            "packed": torch.from_numpy(self.packed.copy()),
            "units": self.units,
            "bits": self.bits,
            "probes": self.probes,
            "positions": self.positions,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> RegionCodes:
        """Inverse of :meth:`state_dict`."""
        return cls(
            state["packed"].numpy().astype(np.uint8),
            int(state["units"]),
            int(state["bits"]),
            int(state["probes"]),
            int(state["positions"]),
        )


def _as_units_positions(h: torch.Tensor, is_conv: bool) -> torch.Tensor:
    """(batch, units, positions) view of a layer output."""
    if is_conv:
        return h.flatten(2)
    if h.dim() == 2:
        return h.unsqueeze(-1)
    return h.movedim(-1, 1).flatten(2)  # Linear on (B, ..., F): middle dims are positions


def _position_index(total: int, max_positions: int, seed: int, layer_index: int) -> torch.Tensor | None:
    if total <= max_positions:
        return None
    rng = np.random.default_rng([seed, layer_index])
    return torch.from_numpy(np.sort(rng.choice(total, size=max_positions, replace=False)))


def stream_preactivations(
    model: nn.Module,
    probes: torch.Tensor,
    layers: Sequence[PrunableLayer],
    consume: Callable[[str, torch.Tensor], None],
    max_positions: int = DEFAULT_MAX_POSITIONS,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, int]:
    """Run ``probes`` through ``model`` (eval, no grad) and hand each layer's
    pre-activations, shaped (batch, units, positions ≤ max_positions), to
    ``consume(name, h)`` batch by batch. Positions are a fixed-seed subsample, the same
    for every batch and every call. Returns the number of positions per layer.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    positions: dict[str, int] = {}
    index_cache: dict[str, torch.Tensor | None] = {}
    done: set[str] = set()
    handles = []
    for li, layer in enumerate(layers):
        target = layer.bn if layer.bn is not None else layer.module

        def hook(_m, _inp, out, *, name=layer.name, is_conv=layer.is_conv, li=li):
            if name in done:  # a module run twice per forward: read its first call only
                return
            done.add(name)
            h = _as_units_positions(out.detach(), is_conv)
            if name not in index_cache:
                index_cache[name] = _position_index(h.shape[2], max_positions, seed, li)
                positions[name] = h.shape[2] if index_cache[name] is None else max_positions
            idx = index_cache[name]
            if idx is not None:
                h = h.index_select(2, idx.to(h.device))
            consume(name, h)

        handles.append(target.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(probes), batch_size):
                done.clear()
                model(probes[i : i + batch_size].to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return positions


def compute_region_codes(
    model: nn.Module,
    probes: torch.Tensor,
    layers: Sequence[PrunableLayer],
    max_positions: int = DEFAULT_MAX_POSITIONS,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, RegionCodes]:
    """Bit-packed region codes 1[h > 0] of every layer in ``layers`` on ``probes``.

    Batches are packed as they arrive (batch sizes are rounded up to a multiple of 8 so
    that every packed chunk but the last ends on a byte boundary): memory stays at
    one bit per (probe, unit, position).
    """
    batch_size = max(8, -(-batch_size // 8) * 8)
    chunks: dict[str, list[np.ndarray]] = {layer.name: [] for layer in layers}

    def consume(name: str, h: torch.Tensor) -> None:
        bits = (h > 0).permute(1, 0, 2).reshape(h.shape[1], -1)  # (units, batch*positions)
        chunks[name].append(np.packbits(bits.cpu().numpy(), axis=1))

    positions = stream_preactivations(model, probes, layers, consume, max_positions, seed, batch_size)
    codes: dict[str, RegionCodes] = {}
    for layer in layers:
        if not chunks[layer.name]:
            continue  # layer not executed on this input
        packed = np.concatenate(chunks[layer.name], axis=1)
        p = positions[layer.name]
        codes[layer.name] = RegionCodes(packed, packed.shape[0], len(probes) * p, len(probes), p)
    return codes


def code_distance(a: RegionCodes, b: RegionCodes) -> float:
    """Fraction of differing bits between two codes of the same layer (normalized
    Hamming distance), computed on the packed bytes with a popcount of their XOR."""
    if a.packed.shape != b.packed.shape or a.bits != b.bits:
        raise ValueError("region codes of different shapes")
    differing = int(np.bitwise_count(np.bitwise_xor(a.packed, b.packed)).sum(dtype=np.int64))
    return differing / max(1, a.units * a.bits)


def network_distance(a: dict[str, RegionCodes], b: dict[str, RegionCodes]) -> float:
    """Unweighted mean of :func:`code_distance` over the layers both dicts share ([SPLINE])."""
    common = [name for name in a if name in b]
    if not common:
        raise ValueError("no common layers")
    return float(np.mean([code_distance(a[n], b[n]) for n in common]))


__all__ = [
    "DEFAULT_MAX_POSITIONS",
    "DEFAULT_PROBES",
    "RegionCodes",
    "code_distance",
    "compute_region_codes",
    "network_distance",
    "select_probes",
    "stream_preactivations",
]
