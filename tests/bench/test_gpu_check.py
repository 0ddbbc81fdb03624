"""bench/gpu_check.py's CPU self-test: the GPU script's every step, same code path, tiny sizes,
so that it still runs the day a CUDA machine is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1800)  # ~2 min on a quiet machine; 10 min were measured at load average 19
def test_the_gpu_check_runs_every_step_on_the_cpu_and_writes_one_json_file(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--device",
            "cpu",
            "--bootstrap",
            "never",
            "--time-scale",
            "6",
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    report = json.loads(out.read_text())
    failed = {name: step for name, step in report["steps"].items() if step.get("rc") != 0}
    assert done.returncode == 0 and report["ok"] and not failed, json.dumps(failed)[:4000]
    steps = report["steps"]
    assert set(steps) == {"env", "engine_tests", "probmask_step", "side_by_side", "parity"}
    assert steps["env"]["result"]["torch"].startswith("2.")
    train = steps["probmask_step"]["result"]["train"][0]
    assert train["dense"]["step_ms"] > 0 and train["probmask"]["step_ms"] > 0
    cases = steps["side_by_side"]["result"]["cases"]
    assert set(cases) == {"mnist1d", "resnet18"}
    for case in cases.values():
        assert case["wall_ratio_vs_bare"]["prune"] > 0 and case["rss_ratio_vs_bare"]["prune"] > 0
    assert steps["parity"]["result"]["max_param_diff"] == 0.0  # the CPU against itself is exact
