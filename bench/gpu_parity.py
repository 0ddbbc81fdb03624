"""CUDA vs CPU training parity of the engine's loop (run on a machine with a GPU).

    .venv/bin/python bench/gpu_parity.py [--device cuda] [--json out.json]

Trains the same seeded MLP for 2 epochs on the CPU and on ``--device`` and prints the largest
parameter difference. ``--device cpu`` compares the CPU with itself (0 on this deterministic
loop): bench/gpu_check.py's self-test. Not part of the test suite's assertions on CUDA: CI
machines have no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from worker.io.datasets import builtin_dataset  # noqa: E402
from worker.pruning.training import TrainConfig, seed_everything, train  # noqa: E402


def parity(device: str = "cuda", epochs: int = 2) -> dict:
    """Largest parameter difference after ``epochs`` epochs on the CPU vs on ``device``."""
    data = builtin_dataset("digits", seed=0)
    models = []
    for dev in ("cpu", device):
        seed_everything(0)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
        )
        train(model, data, TrainConfig(epochs=epochs, lr=0.05, batch_size=32, device=dev))
        models.append(model.cpu())
    pairs = zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True)
    worst = max((a - b).abs().max().item() for a, b in pairs)
    return {"device": device, "epochs": epochs, "max_param_diff": worst}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on the GPU machine")
    result = parity(args.device)
    print(f"largest parameter difference cpu vs {args.device} after 2 epochs: {result['max_param_diff']:.3e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
