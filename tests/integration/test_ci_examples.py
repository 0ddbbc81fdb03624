"""The README's CI examples (examples/ci-*.sh) run as written against the embedded service."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT


@pytest.mark.parametrize("script", ["ci-cli.sh", "ci-curl.sh"])
def test_the_ci_example_prunes_a_model_and_downloads_the_artifacts(
    script: str, deployment_embedded, model_and_data, tmp_path: Path
) -> None:
    base, key = deployment_embedded
    model_path, data_path, _ = model_and_data
    shutil.copy(model_path, tmp_path / "model.onnx")
    shutil.copy(data_path, tmp_path / "data.npz")
    shutil.copy(REPO_ROOT / "examples" / "shears-job.yaml", tmp_path / "shears-job.yaml")
    env = {
        **os.environ,
        "SHEARS_URL": base,
        "SHEARS_API_KEY": key,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    run = subprocess.run(
        ["bash", str(REPO_ROOT / "examples" / script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("model.onnx", "model.torchscript.pt", "report.json", "report.html"):
        assert (tmp_path / "pruned" / name).stat().st_size > 0, name
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert report["structure"]["channels_removed"] is True
    assert report["acceptance"]["passed"] is True


def test_the_cli_exits_2_when_the_acceptance_gate_fails(deployment_embedded, model_and_data, tmp_path: Path) -> None:
    base, key = deployment_embedded
    model_path, data_path, _ = model_and_data
    (tmp_path / "strict.yaml").write_text(
        "pipeline: [{prune_channels: {criterion: random, ratio: 0.9}}]\nacceptance: {max_accuracy_drop: 0.0}\n"
    )
    env = {**os.environ, "SHEARS_URL": base, "SHEARS_API_KEY": key}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "submit",
            str(model_path),
            "--dataset",
            str(data_path),
            "--spec",
            str(tmp_path / "strict.yaml"),
            "--wait",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    job = json.loads(run.stdout)
    assert job["status"] == "succeeded"
    assert job["result"]["acceptance"]["passed"] is False


def _cli(base: str, key: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHEARS_URL": base, "SHEARS_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_status_cancel_and_download_commands_follow_a_job(deployment_embedded, model_and_data, tmp_path: Path) -> None:
    base, key = deployment_embedded
    model_path, data_path, _ = model_and_data
    (tmp_path / "long.yaml").write_text("pipeline: [{finetune: {epochs: 500}}]\n")
    submitted = _cli(
        base, key, "submit", str(model_path), "--dataset", "digits", "--spec", str(tmp_path / "long.yaml"), "--json"
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    status = _cli(base, key, "status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["id"] == job_id
    cancelled = _cli(base, key, "cancel", job_id, "--json")
    assert cancelled.returncode == 0
    assert json.loads(cancelled.stdout)["status"] in {"cancelled", "cancelling"}

    download = _cli(base, key, "download", job_id, str(tmp_path / "out"))
    assert download.returncode == 3  # nothing to download: the job did not succeed
    assert "409" in download.stderr and "job-not-succeeded" not in download.stdout


def test_a_request_error_is_reported_with_exit_code_3(deployment_embedded) -> None:
    base, _ = deployment_embedded
    run = _cli(base, "wrong-key", "status", "job_000000000000000000000000")
    assert run.returncode == 3
    assert "401" in run.stderr


def test_the_label_free_example_gates_on_fidelity_with_exit_codes_0_and_2(deployment_embedded, tmp_path: Path) -> None:
    from tests.images import flat_folder, zip_bytes
    from tests.worker.test_labelfree import tiny_detector_onnx

    base, key = deployment_embedded
    model = tiny_detector_onnx(tmp_path / "detector.onnx")
    (tmp_path / "images.zip").write_bytes(zip_bytes(flat_folder(48, size=16)))
    example = REPO_ROOT / "examples" / "shears-job-labelfree.yaml"
    passed = _cli(
        base,
        key,
        "submit",
        str(model),
        "--dataset",
        str(tmp_path / "images.zip"),
        "--spec",
        str(example),
        "--wait",
        "--json",
    )
    assert passed.returncode == 0, passed.stdout + passed.stderr
    checks = json.loads(passed.stdout)["result"]["acceptance"]["checks"]
    assert checks["max_relative_error"]["passed"] is True and "accuracy" not in checks
    strict = tmp_path / "strict.yaml"
    strict.write_text(example.read_text().replace("max_relative_error: 0.9", "max_relative_error: 0.0"))
    failed = _cli(
        base,
        key,
        "submit",
        str(model),
        "--dataset",
        str(tmp_path / "images.zip"),
        "--spec",
        str(strict),
        "--wait",
        "--json",
    )
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert json.loads(failed.stdout)["result"]["acceptance"]["checks"]["max_relative_error"]["passed"] is False


def _one_epoch_spec(tmp_path: Path) -> list[str]:
    """``--spec`` of a short prune + finetune job, and ``--json``."""
    (tmp_path / "spec.yaml").write_text("pipeline: [{prune_channels: {ratio: 0.5}}, {finetune: {epochs: 1}}]\n")
    return ["--spec", str(tmp_path / "spec.yaml"), "--json"]


def test_a_retried_submit_with_the_same_idempotency_key_returns_the_same_job(
    deployment_embedded, model_and_data, tmp_path: Path
) -> None:
    base, key = deployment_embedded
    model_path, data_path, _ = model_and_data
    argv = ["submit", str(model_path), "--dataset", str(data_path), *_one_epoch_spec(tmp_path)]
    first = _cli(base, key, *argv, "--idempotency-key", "ci-42-prune")
    again = _cli(base, key, *argv, "--idempotency-key", "ci-42-prune")
    other = _cli(base, key, *argv, "--idempotency-key", "ci-43-prune")
    assert first.returncode == again.returncode == other.returncode == 0, first.stderr + again.stderr + other.stderr
    assert json.loads(again.stdout)["id"] == json.loads(first.stdout)["id"]
    assert json.loads(other.stdout)["id"] != json.loads(first.stdout)["id"]


def test_submit_takes_the_id_of_an_uploaded_model_and_names_a_missing_file(
    deployment_embedded, model_and_data, tmp_path: Path
) -> None:
    base, key = deployment_embedded
    model_path, data_path, _ = model_and_data
    spec = _one_epoch_spec(tmp_path)
    first = _cli(base, key, "submit", str(model_path), "--dataset", str(data_path), *spec)
    assert first.returncode == 0, first.stderr
    model_id = json.loads(first.stdout)["model_id"]
    again = _cli(base, key, "submit", model_id, "--dataset", "digits", *spec)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["model_id"] == model_id  # no second upload
    missing = _cli(base, key, "submit", str(tmp_path / "nope.onnx"), "--dataset", "digits", *spec)
    assert missing.returncode == 3 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
