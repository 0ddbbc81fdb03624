"""Deployments of the whole service for integration tests, started from the test setup."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from service.api.deps import hash_key
from service.core.config import Settings
from tests import servers
from tests.servers import REPO_ROOT

API_KEY = "e2e-key-0123456789abcdef"
WEBHOOK_SECRET = "whsec-test-0123456789"
REFERENCE_BUCKET = "shears-user-data"  # "the user's" bucket on moto, apart from the artifact store's
REFERENCE_PREFIX = f"s3://{REFERENCE_BUCKET}/allowed/"


def _compose_command(service: str) -> list[str]:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return compose["services"][service]["command"]


def _dockerfile_api_command() -> list[str]:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text().split("FROM ")
    api_stage = next(stage for stage in dockerfile if " AS api" in stage.splitlines()[0])
    cmd_line = next(line for line in api_stage.splitlines() if line.startswith("CMD "))
    return json.loads(cmd_line.removeprefix("CMD "))


def _with_port(command: list[str], port: int) -> list[str]:
    command = [sys.executable, "-m", command[0], *command[1:]]
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    return command


@pytest.fixture(scope="session")
def deployment_compose(service_settings: Settings, server_logs: Path, announce):
    settings = service_settings.model_copy(
        update={
            "api_keys": {hash_key(API_KEY): "ci"},
            "lease_s": 60.0,
            "progress_interval_s": 0.2,
            "webhook_secret": WEBHOOK_SECRET,
            "allow_private_callbacks": True,  # receivers run on loopback here
            "dataset_reference_prefixes": [REFERENCE_PREFIX],  # tests/integration/test_dataset_references.py
            # its own Redis database: the session's other worker must not take these jobs
            "broker_url": service_settings.broker_url.rsplit("/", 1)[0] + "/1",
        }
    )
    worker = servers.Process(
        "compose-worker", [sys.executable, "-m", *_compose_command("worker")], server_logs, settings.as_env()
    )
    port = servers.free_port()
    api = servers.Process("compose-api", _with_port(_dockerfile_api_command(), port), server_logs, settings.as_env())
    base = f"http://127.0.0.1:{port}"
    try:
        servers.wait_until(lambda: api.ensure_alive() and httpx.get(f"{base}/readyz").is_success, 60, "uvicorn api")
        announce(f"compose api (uvicorn) pid {api.pid} at {base}; compose worker pid {worker.pid}")
        yield base, API_KEY
    finally:
        api.stop()
        worker.stop()


@pytest.fixture(scope="session")
def deployment_embedded(tmp_path_factory, server_logs: Path, announce):
    data_dir = tmp_path_factory.mktemp("embedded")
    port = servers.free_port()
    up = servers.Process(
        "embedded-up",
        [sys.executable, "-m", "service.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
        server_logs,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        servers.wait_until(lambda: up.ensure_alive() and httpx.get(f"{base}/readyz").is_success, 90, "shears up")
        announce(f"shears up pid {up.pid} at {base}")
        yield base, (data_dir / "api-key").read_text().strip()
    finally:
        up.stop()


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.BatchNorm2d(32),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.classifier = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="session")
def model_and_data(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A small CNN trained on scikit-learn's digits, exported to ONNX, and its data as .npz."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    split = {"x_train": x[:1400], "y_train": y[:1400], "x_val": x[1400:], "y_val": y[1400:]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same model whatever other test modules set (bits differ with the thread count)
    try:
        torch.manual_seed(0)
        model = TinyCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        xt, yt = torch.from_numpy(split["x_train"]), torch.from_numpy(split["y_train"])
        for _ in range(20):
            for i in range(0, len(xt), 64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[i : i + 64]), yt[i : i + 64]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("e2e-inputs")
    model.eval()
    torch.onnx.export(
        model,
        (xt[:1],),
        folder / "model.onnx",
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}},
    )
    np.savez(folder / "data.npz", **split)
    return folder / "model.onnx", folder / "data.npz", split
