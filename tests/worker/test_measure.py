"""What the report measures of a model: accuracy, MACs and onnxruntime latency at the asked batch sizes."""

from __future__ import annotations

import pytest
import torch

from service.core.spec import ExportParams
from tests.worker.pruning.tiny import MLP, make_data
from worker.measure import measure


@pytest.mark.parametrize("batch_sizes", [[1], [1, 4], [3]])
def test_latency_is_timed_at_exactly_the_batch_sizes_the_spec_asks_for(tmp_path, batch_sizes):
    torch.manual_seed(0)
    data = make_data()
    export = ExportParams(latency_batch_sizes=batch_sizes)
    result = measure(MLP(), data, data.x_val[:1], torch.device("cpu"), tmp_path / "m.onnx", export)
    latency = result["latency_ms"]
    assert sorted(latency["batch_sizes"], key=int) == [str(b) for b in batch_sizes]
    assert latency["source"] == "exported" and (tmp_path / "m.onnx").is_file()
    assert all(stats["median_ms"] > 0 and stats["repeats"] >= 1 for stats in latency["batch_sizes"].values())
    assert 0.0 <= result["accuracy"] <= 1.0 and result["macs"] > 0


def test_the_macs_of_an_upload_inspection_are_the_macs_the_report_counts(tmp_path):
    from worker.io import zoo
    from worker.io.models import inspect_model

    model = zoo.build("mnist1d_cnn")
    data = make_data(shape=(1, 40), classes=10)
    inspected = inspect_model(model, (1, 40))["macs"]
    measured = measure(model, data, torch.zeros(1, 1, 40), torch.device("cpu"), tmp_path / "m.onnx", ExportParams())
    assert inspected == measured["macs"] > 0
