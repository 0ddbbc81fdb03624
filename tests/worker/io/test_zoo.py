"""Built-in architectures: nominal shapes, options, safetensors loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from service.core.intake import Rejected
from worker.io import zoo


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_every_zoo_model_builds_and_runs_at_its_nominal_input_shape(name):
    model = zoo.build(name, num_classes=7).eval()
    shape = zoo.nominal_input_shape(name)
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)
    assert any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())


def test_resnets_have_the_papers_depth_and_three_stages_of_16_32_64_channels():
    for depth in (20, 32, 56):
        for prefix in ("resnet", "preresnet"):
            model = zoo.build(f"{prefix}{depth}")
            convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
            assert len(convs) + 1 == depth  # 3×3 convs + the classifier
            assert sorted({c.out_channels for c in convs}) == [16, 32, 64]


def test_width_and_input_channels_change_the_network():
    narrow = zoo.build("vgg16_bn", width=0.25, in_channels=1)
    convs = [m for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].out_channels == 16 and convs[-1].out_channels == 128
    assert narrow(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(Rejected) as err:
        zoo.build("resnet18")
    assert err.value.code == "unknown-architecture"


def test_the_mnist1d_cnn_matches_the_reference_convbase_and_takes_flat_or_channel_inputs():
    plain = zoo.build("mnist1d_cnn", batchnorm=False)
    assert sum(p.numel() for p in plain.parameters()) == 5210  # ConvBase(10, channels=25, linear_in=125)
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0], c.out_channels) for c in convs] == [
        (5, 2, 1, 25),
        (3, 2, 1, 25),
        (3, 2, 1, 25),
    ]
    model = zoo.build("mnist1d_cnn").eval()
    x = torch.randn(3, 40)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))


def test_zoo_weights_round_trip_through_safetensors_and_num_classes_is_read_from_the_file(tmp_path):
    torch.manual_seed(1)
    model = zoo.build("resnet20", num_classes=100, width=0.5).eval()
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = zoo.load_zoo_model("resnet20", path, width=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))


def test_weights_of_another_shape_are_rejected_with_the_mismatching_keys(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(zoo.build("resnet20").state_dict(), str(path))
    with pytest.raises(Rejected) as err:
        zoo.load_zoo_model("resnet20", path, width=0.5)
    assert err.value.code == "weights-mismatch" and "conv1.weight" in str(err.value)
    state = zoo.build("resnet20").state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    save_file(state, str(path))
    with pytest.raises(Rejected) as err:
        zoo.load_zoo_model("resnet20", path)
    assert "fc.bias" in str(err.value) and "extra.weight" in str(err.value)
