"""The criteria registry: names in the torch-free table, one Importance per file."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
import torch
from torch import nn

from service.core.registry import CRITERIA, CRITERION_NAMES
from service.core.spec import PruneChannelsParams
from tests.worker.pruning.tiny import ConvBN2d, make_data
from worker.pruning.channels import prune_channels
from worker.pruning.criteria import Importance, ScoringContext, get_criterion
from worker.pruning.layers import discover_layers

IMAGES = make_data((1, 8, 8), n_train=64, n_val=16)


@pytest.mark.parametrize("name", CRITERION_NAMES)
def test_every_registered_name_resolves_to_an_importance_of_that_name(name):
    importance = get_criterion(name)
    assert isinstance(importance, Importance)
    assert importance.name == name
    assert importance.global_normalizer in ("mean", "none")
    assert CRITERIA[name].startswith(f"worker.pruning.criteria.{name}:")


@pytest.mark.parametrize("name", CRITERION_NAMES)
def test_every_criterion_scores_each_channel_of_the_layers_it_can_score(name):
    torch.manual_seed(0)
    model = ConvBN2d().eval()
    layers = discover_layers(model)
    importance = get_criterion(name)
    probes = IMAGES.x_train[:32] if importance.needs_probes else None
    scores = importance(model, layers, ScoringContext(probes=probes, seed=1))
    assert scores, name
    by_name = {layer.name: layer for layer in layers}
    for layer_name, values in scores.items():
        assert values.shape == (by_name[layer_name].out_features,) and values.dtype == torch.float32


def test_the_job_spec_accepts_exactly_the_registered_criteria():
    field = PruneChannelsParams.model_fields["criterion"]
    assert typing.get_args(field.annotation) == CRITERION_NAMES
    with pytest.raises(ValueError):
        PruneChannelsParams(criterion="magic")


def test_an_unknown_criterion_name_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="spline"):
        get_criterion("magic")


def test_the_registry_of_names_imports_no_torch():
    code = "import sys, service.core.registry, service.core.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class LastChannelsFirst:
    """An ad-hoc criterion: prune the highest-numbered channels first."""

    name = "last_first"
    needs_probes = False
    global_normalizer = "none"

    def __call__(self, model: nn.Module, layers, context: ScoringContext) -> dict[str, torch.Tensor]:
        return {layer.name: -torch.arange(layer.out_features, dtype=torch.float32) for layer in layers}


def test_prune_channels_takes_an_importance_object_as_well_as_a_name():
    torch.manual_seed(0)
    result = prune_channels(ConvBN2d(), IMAGES, criterion=LastChannelsFirst(), ratio=0.5, scope="layerwise")
    assert result.criterion == "last_first"
    assert result.plan["conv1"] == [3, 4, 5]
