"""Model/dataset pairing at job creation: what the inspections recorded decides, nothing else."""

from __future__ import annotations

from service.core.intake.pairing import input_shape_conflict, sample_shape

SYMBOLIC_IMAGE_MODEL = {"input_shape": None, "io": {"inputs": [{"name": "x", "dims": ["N", 3, "H", "W"]}]}}


def test_a_static_input_that_differs_from_the_samples_is_a_conflict_naming_both_shapes():
    conflict = input_shape_conflict("onnx", {"input_shape": [1, 40]}, [1, 8, 8])
    assert conflict is not None and "[1, 40]" in conflict and "[1, 8, 8]" in conflict


def test_equal_shapes_and_symbolic_dims_of_the_samples_rank_fit():
    assert input_shape_conflict("onnx", {"input_shape": [1, 8, 8]}, [1, 8, 8]) is None
    assert input_shape_conflict("onnx", SYMBOLIC_IMAGE_MODEL, [3, 32, 32]) is None
    assert "[3, '?', '?']" in input_shape_conflict("onnx", SYMBOLIC_IMAGE_MODEL, [1, 32, 32])
    assert input_shape_conflict("onnx", SYMBOLIC_IMAGE_MODEL, [3, 32]) is not None  # rank differs


def test_pairs_only_a_job_can_size_are_left_to_the_job():
    assert input_shape_conflict("safetensors", {"input_shape": [3, 224, 224]}, [3, 32, 32]) is None  # zoo: any size
    assert sample_shape({"input_shape": [3, 64, 64], "format": "image-zip"}, None) is None  # spec.preprocessing
    assert input_shape_conflict("onnx", {"input_shape": [1, 40]}, None) is None
    assert sample_shape(None, "digits") == [1, 8, 8] and sample_shape({"input_shape": [4]}, None) == [4]
