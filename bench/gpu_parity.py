"""CUDA vs CPU training parity of the engine's loop (run on a machine with a GPU).

    .venv/bin/python bench/gpu_parity.py

Trains the same seeded MLP for 2 epochs on the CPU and on CUDA and prints the largest
parameter difference. Not part of the test suite: CI machines have no GPU.
"""

from __future__ import annotations

import torch

from worker.io.datasets import builtin_dataset
from worker.pruning.training import TrainConfig, seed_everything, train


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on the GPU machine")
    data = builtin_dataset("digits", seed=0)
    models = []
    for device in ("cpu", "cuda"):
        seed_everything(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        train(model, data, TrainConfig(epochs=2, lr=0.05, batch_size=32, device=device))
        models.append(model.cpu())
    worst = max((a - b).abs().max().item() for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True))
    print(f"largest parameter difference cpu vs cuda after 2 epochs: {worst:.3e}")


if __name__ == "__main__":
    main()
