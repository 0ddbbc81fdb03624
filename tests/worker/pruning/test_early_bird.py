"""Early-bird detectors: fire on converged toy runs, stay quiet while the model changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.worker.pruning.tiny import MLP, ConvBN1d, make_data
from worker.pruning.early_bird import BNScaleDetector, SplineDetector
from worker.pruning.layers import discover_layers
from worker.pruning.regions import select_probes
from worker.pruning.training import TrainConfig, TrainHooks, train

DATA = make_data((1, 16), n_train=128, n_val=32)


def test_bn_detector_fires_on_a_converged_toy_run_and_records_its_curve():
    torch.manual_seed(0)
    model = ConvBN1d()
    detector = BNScaleDetector(ratio=0.5)
    history = train(model, DATA, TrainConfig(epochs=30, lr=0.05, batch_size=32), [detector])
    assert detector.found_epoch is not None and detector.found_epoch >= 5  # needs 5 masks
    assert len(history) == detector.found_epoch < 30  # training stopped at the ticket
    # one curve point per epoch after the first; the last one is under the threshold
    assert detector.distance_epochs == list(range(2, detector.found_epoch + 1))
    assert detector.distances[-1] < 0.1
    assert [p["epoch"] for p in detector.curve()] == detector.distance_epochs


def test_spline_detector_fires_on_a_model_without_batchnorm():
    torch.manual_seed(0)
    model = MLP()
    detector = SplineDetector(select_probes(DATA.x_train, n=128), discover_layers(model))
    history = train(model, DATA, TrainConfig(epochs=30, lr=0.05, batch_size=32), [detector])
    assert detector.found_epoch is not None and detector.found_epoch >= 4  # 3 earlier epochs
    assert len(history) == detector.found_epoch
    assert detector.distances[-1] < detector.effective_threshold <= 0.25
    assert all(0.0 <= d <= 1.0 for d in detector.distances)


def test_detectors_stay_quiet_while_the_model_keeps_changing():
    probes = torch.randn(64, 1, 16)
    spline = SplineDetector(probes, discover_layers(MLP()), window=3)
    bn = BNScaleDetector(ratio=0.5, window=3)
    for epoch in range(8):
        torch.manual_seed(epoch)
        model = MLP()
        assert not spline.step(model)
        torch.manual_seed(epoch)
        conv = ConvBN1d()
        with torch.no_grad():
            for m in conv.modules():
                if isinstance(m, nn.BatchNorm1d):
                    m.weight.uniform_(0.1, 1.0)
        assert not bn.step(conv)
    assert spline.found_epoch is None and bn.found_epoch is None
    assert min(spline.distances) > spline.effective_threshold and len(spline.distances) == 7


def test_bn_masks_use_a_global_quantile_and_keep_one_channel_per_layer():
    model = ConvBN1d()
    with torch.no_grad():
        model.bn1.weight.fill_(1e-3)  # every channel of bn1 below the global threshold
        model.bn2.weight.copy_(torch.linspace(0.5, 1.0, 16))
    masks = BNScaleDetector(ratio=0.5).layer_masks(model)
    assert int(masks[0].sum()) == 1  # kept one anyway
    assert int(masks[1].sum()) == 24 - 12  # threshold at the 12th smallest of 24: 8 of bn1 + 4 of bn2
    assert masks[1][-12:].all() and not masks[1][:4].any()


def test_bn_l1_penalty_adds_lambda_times_sign_of_gamma_to_the_gradient():
    model = ConvBN1d()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([1.0, -1.0] * 4))
    model(torch.randn(4, 1, 16)).sum().backward()
    before = model.bn1.weight.grad.clone()
    BNScaleDetector(ratio=0.3, l1_lambda=0.5).add_l1_subgradient(model)
    assert torch.allclose(model.bn1.weight.grad - before, 0.5 * torch.tensor([1.0, -1.0] * 4))


def test_detector_state_survives_a_resumed_early_bird_run(tmp_path):
    def run(checkpoint_dir, cancel_after=None):
        torch.manual_seed(0)
        model = MLP()
        detector = SplineDetector(select_probes(DATA.x_train, n=64), discover_layers(model), threshold=0.05)
        steps = {"n": 0}

        def should_cancel():
            steps["n"] += 1
            return cancel_after is not None and steps["n"] > cancel_after

        try:
            hooks = TrainHooks(checkpoint_dir=checkpoint_dir, should_cancel=should_cancel)
            train(
                model,
                DATA,
                TrainConfig(epochs=6, lr=0.05, batch_size=32, stage="eb"),
                [detector, *hooks.callbacks("eb")],
            )
        except Exception:  # noqa: BLE001 - the Cancelled of the interrupted run
            pass
        return detector

    uninterrupted = run(None)
    run(tmp_path, cancel_after=4 * 3 + 1)  # dies in epoch 5
    resumed = run(tmp_path)
    assert resumed.distances == uninterrupted.distances
    assert resumed.found_epoch == uninterrupted.found_epoch


def _bn_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    conv = ConvBN1d()
    with torch.no_grad():
        for m in conv.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.1, 1.0)
    return conv


def test_window_counts_the_earlier_epochs_compared_for_both_detectors_and_one_works():
    probes = torch.randn(64, 1, 16)
    torch.manual_seed(0)
    mlp, conv = MLP(), _bn_model(0)
    for window in (1, 2):
        spline = SplineDetector(probes, discover_layers(mlp), window=window, relative_threshold=None)
        bn = BNScaleDetector(ratio=0.5, window=window)
        fired = [(spline.step(mlp), bn.step(conv)) for _ in range(4)]  # the same model every epoch
        assert spline.found_epoch == bn.found_epoch == window + 1  # needs `window` earlier epochs
        assert fired[window] == (True, True) and fired[window - 1] == (False, False)


def test_detector_defaults_are_the_papers():
    from service.core.spec import EarlyBirdParams
    from worker.pruning.early_bird import DETECTOR_DEFAULTS

    bn, spline = EarlyBirdParams(detector="bn"), EarlyBirdParams(detector="spline")
    assert (bn.window, bn.threshold) == (4, 0.1) and (spline.window, spline.threshold) == (3, 0.25)
    assert BNScaleDetector(ratio=0.5).window == 4 and BNScaleDetector(ratio=0.5).threshold == 0.1
    for detector, params in (("bn", bn), ("spline", spline)):
        expected = DETECTOR_DEFAULTS[detector]
        assert (params.window, params.threshold, params.relative_threshold) == (
            expected["window"],
            expected["threshold"],
            expected["relative_threshold"],
        )
    assert EarlyBirdParams(detector="bn", window=1, threshold=0.2).window == 1


def test_the_spline_threshold_is_calibrated_to_the_largest_distance_of_the_run():
    probes = torch.randn(128, 1, 16)
    torch.manual_seed(0)
    base = MLP()
    gen = torch.Generator().manual_seed(1)
    noises = [0.3, 0.3, 0.3, 0.3, 0.1, 0.05, 0.01, 0.01]  # distances fall after the first epochs
    absolute, calibrated = _absolute_and_calibrated(base, probes, gen, noises)
    assert absolute.found_epoch == 4  # the earliest epoch the window allows
    scale = max(calibrated.distances)  # the run's own scale: its largest distance so far
    assert calibrated.effective_threshold == pytest.approx(0.5 * scale)
    assert calibrated.found_epoch is not None and calibrated.found_epoch > 4
    assert calibrated.distances[calibrated.distance_epochs.index(calibrated.found_epoch)] < 0.5 * scale


def test_the_calibrated_threshold_follows_a_distance_that_still_rises_after_the_first_epochs():
    torch.manual_seed(0)
    base = MLP()
    probes = select_probes(DATA.x_train, n=128)
    gen = torch.Generator().manual_seed(1)
    noises = [0.02, 0.02, 0.02, 0.02, 0.4, 0.4, 0.4, 0.02, 0.02]  # the largest movement comes at epochs 5-7
    _, calibrated = _absolute_and_calibrated(base, probes, gen, noises)
    early = max(calibrated.distances[:3])
    assert max(calibrated.distances) > 2 * early  # the first window understated the scale
    assert calibrated.effective_threshold == pytest.approx(0.5 * max(calibrated.distances))


def _absolute_and_calibrated(base, probes, gen, noises):
    def models():
        for sigma in noises:
            m = MLP()
            m.load_state_dict(base.state_dict())
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * sigma)
            yield m

    absolute = SplineDetector(probes, discover_layers(base), threshold=1.0, relative_threshold=None)
    calibrated = SplineDetector(probes, discover_layers(base), threshold=1.0, relative_threshold=0.5)
    for m in models():
        absolute.step(m)
        calibrated.step(m)
    return absolute, calibrated


def test_the_early_bird_phase_trains_at_a_constant_learning_rate():
    torch.manual_seed(0)
    history = train(MLP(), DATA, TrainConfig(epochs=4, lr=0.05, batch_size=32, lr_schedule="constant"))
    assert [h["lr"] for h in history] == [0.05] * 4
    cosine = train(MLP(), DATA, TrainConfig(epochs=4, lr=0.05, batch_size=32))
    assert cosine[-1]["lr"] < 0.05


def test_a_bn_ticket_without_a_prune_stage_is_applied_with_one_global_threshold():
    from service.core.spec import EarlyBirdParams, JobSpec
    from worker.pruning.stages import EngineState, StageContext
    from worker.pruning.stages.early_bird import apply_ticket

    model = ConvBN1d()
    with torch.no_grad():
        model.bn1.weight.fill_(1e-3)  # all of bn1 below the global threshold: layerwise would keep half
        model.bn2.weight.copy_(torch.linspace(0.5, 1.0, 16))
    drawn = BNScaleDetector(ratio=0.5).layer_masks(model)
    context = StageContext(
        data=DATA,
        spec=JobSpec(),
        device=torch.device("cpu"),
        hooks=TrainHooks(),
        teacher=model,
        stage_id="0-early_bird",
    )
    state = EngineState(model=model)
    apply_ticket(EarlyBirdParams(detector="bn", ratio=0.5), context, state)
    assert state.channels_removed and state.pruned_accuracy is not None
    assert model.bn1.num_features == int(drawn[0].sum()) == 1  # layerwise 50 % would have kept 4
    assert abs(model.bn2.num_features - int(drawn[1].sum())) <= 1
    assert float(model.bn2.weight.detach().min()) >= 0.5 + 0.5 * 3 / 15 - 1e-6  # the largest scales stayed
