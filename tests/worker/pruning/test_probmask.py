"""ProbMask: global projection, schedules, relaxed masks, exact final sparsity, squash."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.nn.utils import parametrize

from tests.worker.pruning.tiny import MLP, ConvBN2d, make_data, onnx_bytes
from worker.pruning.probmask import (
    ProbMaskParametrization,
    ProbMaskSparsifier,
    finetune_with_masks,
    kept_fraction,
    project_scores_,
    run_probmask,
    temperature,
)
from worker.pruning.training import TrainConfig, evaluate, recalibrate_batchnorm

DATA = make_data((1, 16), n_train=96, n_val=32)


def random_scores(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=gen) * 1.5 - 0.2 for shape in [(40, 3), (7,), (5, 2, 3)]]


def test_projection_keeps_the_expected_number_of_kept_weights_under_budget():
    scores = random_scores()
    n = sum(s.numel() for s in scores)
    budget = 0.3 * n
    v = project_scores_(scores, budget)
    total = sum(float(s.sum()) for s in scores)
    assert v > 0
    assert total == pytest.approx(budget, rel=1e-5)
    assert all(float(s.min()) >= 0 and float(s.max()) <= 1 for s in scores)


def test_projection_uses_one_shared_shift_for_every_layer():
    scores = random_scores(1)
    original = [s.clone() for s in scores]
    v = project_scores_(scores, 0.4 * sum(s.numel() for s in scores))
    for before, after in zip(original, scores, strict=True):
        assert torch.allclose(after, (before - v).clamp(0, 1), atol=1e-6)


def test_exact_and_bisection_projections_agree():
    for seed in range(3):
        exact, bisect = random_scores(seed), random_scores(seed)
        n = sum(s.numel() for s in exact)
        budget = (0.1 + 0.3 * seed) * n
        v_exact = project_scores_(exact, budget, "exact")
        v_bisect = project_scores_(bisect, budget, "bisect")
        z_max = 1.3
        assert abs(v_exact - v_bisect) <= z_max / 2**20 + 1e-9
        assert sum(float(s.sum()) for s in bisect) <= budget + 1e-4
        for a, b in zip(exact, bisect, strict=True):
            assert torch.allclose(a, b, atol=1e-5)


def test_projection_only_clips_when_already_under_budget():
    scores = [torch.tensor([0.2, 1.4, -0.3])]
    assert project_scores_(scores, 10.0) == 0.0
    assert scores[0].tolist() == pytest.approx([0.2, 1.0, 0.0])


def test_the_sorted_projection_finds_the_same_shift_as_the_bracketing_one():
    from worker.pruning.probmask import _solve_sorted

    for seed in range(4):
        z = torch.cat([s.reshape(-1) for s in random_scores(seed)]).double()
        z[:10] = 1.0  # ties, as scores at 1 before the budget falls
        for fraction in (0.05, 0.3, 0.7):
            budget = fraction * z.numel()
            v = _solve_sorted(z, budget)
            assert v.dim() == 0 and v.device == z.device
            assert float(v) == pytest.approx(project_scores_([z.clone()], budget), abs=1e-9)  # the CPU path
            assert float(_solve_sorted(z, budget, chunk=7)) == pytest.approx(float(v), abs=1e-12)  # counted in chunks
            assert float((z - v).clamp(0, 1).sum()) <= budget + 1e-9
    z = torch.tensor([0.2, 1.4, -0.3], dtype=torch.float64)
    assert float(_solve_sorted(z, 10.0)) == 0.0  # under budget already: only clipped


def test_schedules_follow_the_specification():

    epochs = 50
    taus = [temperature(e, epochs) for e in range(epochs)]
    assert taus[0] == 1.0 and all(a > b for a, b in zip(taus, taus[1:], strict=False))
    assert temperature(epochs, epochs) == pytest.approx(0.03)
    r = [kept_fraction(e, epochs, 0.1) for e in range(epochs)]
    assert all(x == 1.0 for x in r[:8])  # e < 0.16 E
    assert all(x == 0.1 for x in r[30:])  # e >= 0.6 E
    assert all(a >= b for a, b in zip(r, r[1:], strict=False))
    assert r[19] == pytest.approx(0.1 + 0.9 * (1 - (19 - 8) / 22) ** 3)


def test_the_relaxed_mask_is_sampled_in_training_and_the_expectation_is_used_in_eval():
    weight = torch.ones(1000)
    p = ProbMaskParametrization(weight)
    with torch.no_grad():
        p.scores.fill_(0.3)
    p.temperature = 0.05
    sample = p(weight).detach()
    assert 0.2 < float(sample.mean()) < 0.4  # mostly near 0 or 1, about 30 % on
    assert float(((sample > 0.05) & (sample < 0.95)).float().mean()) < 0.1
    p.eval()
    assert torch.allclose(p(weight), torch.full((1000,), 0.3))
    p.train()
    p(weight).sum().backward()
    assert p.scores.grad is not None and float(p.scores.grad.abs().sum()) > 0


def test_the_sparsifier_draws_every_layers_mask_once_per_forward_pass():
    torch.manual_seed(0)
    model = MLP().train()
    sparsifier = ProbMaskSparsifier(model, sparsity=0.5).prepare()
    with torch.no_grad():
        for s in sparsifier.score_parameters():
            s.fill_(0.5)
    sampler = model.fc1.parametrizations.weight[0].sampler
    first_fc1 = model.fc1.weight.detach().clone()
    first_fc2 = model.fc2.weight.detach().clone()  # the same draw as fc1's
    assert torch.equal(first_fc2, model.fc2.parametrizations.weight.original.detach() * sampler._masks[1].detach())
    assert not torch.equal(model.fc1.weight.detach(), first_fc1)  # fc1 again: a new forward pass, a new draw
    masks = torch.cat([m.detach().reshape(-1) for m in sampler._masks])
    assert 0.4 < float((masks > 0.5).float().mean()) < 0.6  # Bernoulli(0.5) at τ = 1
    model(torch.randn(8, 1, 16)).sum().backward()
    assert all(s.grad is not None and float(s.grad.abs().sum()) > 0 for s in sparsifier.score_parameters())
    copied = copy.deepcopy(model)  # mid-training copies (best-epoch restore, targets) carry no drawn masks
    assert copied.fc1.parametrizations.weight[0].sampler._masks == []


def test_probmask_reaches_exactly_the_requested_sparsity_with_a_non_uniform_global_budget():
    torch.manual_seed(0)
    model = MLP()
    data = make_data((1, 16), n_train=192, n_val=64)
    result = run_probmask(model, data, TrainConfig(epochs=10, lr=0.05, batch_size=32), sparsity=0.7)
    assert result["undecided"] < 0.2  # the default (scaled) score lr: in ProbMask's regime
    weights = {n: m.weight for n, m in model.named_modules() if n in result["masks"]}
    assert set(weights) == {"fc1", "fc2", "fc3"}  # everything masked by default, classifier too
    n = sum(w.numel() for w in weights.values())
    kept = sum(int((w != 0).sum()) for w in weights.values())
    assert kept == round(0.3 * n) and result["sparsity"] == pytest.approx(1 - kept / n)
    assert evaluate(model, data.x_val, data.y_val) > 0.8  # the sparse model still solves the task
    per_layer = [v["sparsity"] for v in result["layers"].values()]
    assert max(per_layer) - min(per_layer) > 0.05  # learned, not uniform
    for name, w in weights.items():
        assert torch.equal(w != 0, result["masks"][name] & (w != 0))
        assert int(result["masks"][name].sum()) >= int((w != 0).sum())
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert [h["epoch"] for h in result["history"]] == list(range(1, 11))


def test_exclude_keeps_named_layers_dense_and_out_of_the_budget():
    torch.manual_seed(0)
    model = MLP()
    dense_fc3 = model.fc3.weight.detach().clone()
    result = run_probmask(
        model, DATA, TrainConfig(epochs=2, lr=0.01, batch_size=32, seed=1), sparsity=0.5, exclude=["last"]
    )
    assert set(result["masks"]) == {"fc1", "fc2"}
    assert model.fc3.weight.shape == dense_fc3.shape and bool((model.fc3.weight != 0).all())
    n = model.fc1.weight.numel() + model.fc2.weight.numel()
    assert int((model.fc1.weight != 0).sum() + (model.fc2.weight != 0).sum()) == round(0.5 * n)


def test_squash_mask_leaves_plain_weights_that_export_to_onnx():
    torch.manual_seed(0)
    model = MLP()
    sparsifier = ProbMaskSparsifier(model, sparsity=0.75).prepare()
    assert parametrize.is_parametrized(model.fc1, "weight")
    with torch.no_grad():
        for s in sparsifier.score_parameters():
            s.uniform_()
    masks = sparsifier.squash_mask()
    assert not parametrize.is_parametrized(model.fc1)
    assert all("scores" not in name for name, _ in model.named_parameters())
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.25 * total)
    assert torch.equal(model.fc2.weight != 0, masks["fc2"] & (model.fc2.weight != 0))
    x = torch.randn(4, 1, 16)
    session = ort.InferenceSession(onnx_bytes(model, x[:1]), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.allclose(session.run(None, {"x": x.numpy()})[0], model(x).numpy(), atol=1e-5)


def test_the_sample_final_mask_keeps_the_best_bernoulli_draw():
    torch.manual_seed(0)
    model = MLP()
    sparsifier = ProbMaskSparsifier(model, sparsity=0.5).prepare()
    with torch.no_grad():
        for s in sparsifier.score_parameters():
            s.fill_(0.5)
    seen = []

    def score() -> float:
        value = float(model.fc1.weight.ne(0).sum())  # any deterministic function of the mask
        seen.append(value)
        return value

    masks = sparsifier.choose_final_masks("sample", score_fn=score, samples=4, seed=0)
    assert len(seen) == 4 and float(masks["fc1"].sum()) == max(seen)
    assert sparsifier.masks()["fc1"].equal(masks["fc1"])


def test_finetuning_with_fixed_masks_keeps_pruned_weights_at_zero():
    torch.manual_seed(0)
    model = MLP()
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(m.weight.shape, generator=gen) > 0.6 for n, m in model.named_modules() if n}
    masks = {n: masks[n] for n in ("fc1", "fc2")}
    before = model.fc3.weight.detach().clone()
    finetune_with_masks(model, masks, DATA, TrainConfig(epochs=2, lr=0.1, batch_size=32))
    for name in masks:
        weight = dict(model.named_modules())[name].weight
        assert bool((weight[~masks[name]] == 0).all())
        assert bool((weight[masks[name]] != 0).all())
    assert not torch.equal(model.fc3.weight, before)  # the weights did train


def test_probmask_checkpoints_under_its_stage_name_and_resumes_to_the_same_masks(tmp_path):
    from worker.pruning.training import Cancelled, TrainHooks

    def run(hooks=None):
        torch.manual_seed(0)
        model = MLP()
        config = TrainConfig(epochs=4, lr=0.01, batch_size=32, seed=2, stage="s2_probmask", grad_clip=3.0)
        result = run_probmask(
            model, DATA, config, sparsity=0.6, callbacks=(hooks or TrainHooks()).callbacks(config.stage)
        )
        finetune = config.with_(epochs=1, lr=1e-3, stage="s2_probmask_finetune", grad_clip=None)
        result["finetune_history"] = finetune_with_masks(
            model, result["masks"], DATA, finetune, (hooks or TrainHooks()).callbacks(finetune.stage)
        )
        return result

    expected = run()
    steps = {"n": 0}

    def cancel_in_epoch_three() -> bool:
        steps["n"] += 1
        return steps["n"] == 8

    with pytest.raises(Cancelled):
        run(TrainHooks(checkpoint_dir=tmp_path, should_cancel=cancel_in_epoch_three))
    resumed = run(TrainHooks(checkpoint_dir=tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {"s2_probmask.pt", "s2_probmask_finetune.pt"}
    assert all(torch.equal(resumed["masks"][n], expected["masks"][n]) for n in expected["masks"])
    assert resumed["history"] == expected["history"]


def test_schedules_run_per_step_so_a_one_epoch_job_reaches_its_budget_and_final_temperature():
    torch.manual_seed(0)
    model = MLP()
    sparsifier = ProbMaskSparsifier(model, sparsity=0.8).prepare()
    sparsifier.configure_schedule(epochs=1, steps_per_epoch=50)
    budgets, taus = [], []
    for _ in range(50):
        budgets.append(sparsifier.budget)
        taus.append(sparsifier.temperature)
        sparsifier.step()
    assert budgets[0] == sparsifier.n and budgets[-1] == pytest.approx(0.2 * sparsifier.n)
    assert len(set(budgets)) > 20  # falls smoothly, not in one jump
    assert taus[-1] == pytest.approx(0.03 + 0.97 / 50)
    kept = sum(float(s.detach().sum()) for s in sparsifier.score_parameters())
    assert kept == pytest.approx(0.2 * sparsifier.n, rel=1e-4)


def test_the_default_score_lr_makes_the_cosine_sum_reach_the_fixed_total():
    from worker.pruning.probmask import SCORE_LR_TOTAL, scaled_score_lr

    for epochs, steps in [(30, 25), (3, 200), (1, 400)]:
        lr0 = scaled_score_lr(epochs, steps)
        per_epoch = [lr0 * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
        assert sum(lr * steps for lr in per_epoch) == pytest.approx(SCORE_LR_TOTAL)
    assert scaled_score_lr(30, 25) > 5 * scaled_score_lr(300, 25)  # fewer steps, larger lr
    assert scaled_score_lr(1, 2) == 1.0  # capped


LAYERS = ("fc1", "fc2", "fc3")


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


@pytest.mark.parametrize("rank_by", ["score", "expected_magnitude"])
def test_top_k_breaks_ties_between_equal_scores_by_weight_magnitude(rank_by):
    torch.manual_seed(0)
    model = MLP()
    magnitudes = flat(getattr(model, n).weight.abs() for n in LAYERS)
    sparsifier = ProbMaskSparsifier(model, sparsity=0.9).prepare()  # scores all 1: every score ties
    kept = flat(sparsifier.topk_masks(rank_by)[n] for n in LAYERS)
    threshold = torch.sort(magnitudes, descending=True).values[sparsifier.kept_target - 1]
    assert int(kept.sum()) == sparsifier.kept_target
    assert bool((magnitudes[kept] >= threshold).all()) and bool((magnitudes[~kept] <= threshold).all())


def test_ranked_by_score_a_higher_score_wins_over_a_larger_weight():
    torch.manual_seed(0)
    sparsifier = ProbMaskSparsifier(MLP(), sparsity=0.9).prepare()
    with torch.no_grad():
        sparsifier.score_parameters()[2].fill_(0.5)  # fc3
    masks = sparsifier.topk_masks("score")
    assert int(masks["fc3"].sum()) == 0 and int(masks["fc1"].sum() + masks["fc2"].sum()) == sparsifier.kept_target


def test_the_default_final_mask_keeps_the_largest_expected_magnitudes():
    torch.manual_seed(0)
    model = MLP()
    sparsifier = ProbMaskSparsifier(model, sparsity=0.8).prepare()
    with torch.no_grad():
        for scores in sparsifier.score_parameters():
            scores.uniform_(0.0, 1.0)
    weights = flat(getattr(model, n).parametrizations.weight.original.abs() for n in LAYERS)  # w, not w·m
    expected = flat(sparsifier.score_parameters()) * weights
    kept = flat(sparsifier.topk_masks()[n] for n in LAYERS)
    threshold = torch.sort(expected, descending=True).values[sparsifier.kept_target - 1]
    assert int(kept.sum()) == sparsifier.kept_target
    assert bool((expected[kept] >= threshold).all()) and bool((expected[~kept] <= threshold).all())
    by_score = flat(sparsifier.topk_masks("score")[n] for n in LAYERS)
    assert not torch.equal(kept, by_score)  # the two rules differ where the scores are undecided


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n].cpu(), b[n].cpu()) for n in a)


def test_the_final_mask_mode_chooses_the_ranking_that_validation_also_uses():
    torch.manual_seed(0)
    sparsifier = ProbMaskSparsifier(MLP(), sparsity=0.7, rank_by="score").prepare()
    with torch.no_grad():
        for scores in sparsifier.score_parameters():
            scores.uniform_(0.0, 1.0)
    by_score, by_expected = sparsifier.topk_masks("score"), sparsifier.topk_masks("expected_magnitude")
    assert not same(by_score, by_expected)
    sparsifier.refresh_eval_masks()
    assert same({n: p.eval_mask for n, p in sparsifier._params().items()}, by_score)
    assert same(sparsifier.choose_final_masks("topk"), by_score)
    assert same(sparsifier.choose_final_masks("expected_magnitude"), by_expected)
    with pytest.raises(ValueError, match="expected_magnitude, topk, sample"):
        sparsifier.choose_final_masks("largest")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["expected_magnitude", "topk"])
def test_probmask_runs_to_the_exact_sparsity_with_either_top_k_rule(mode):
    torch.manual_seed(0)
    result = run_probmask(MLP(), DATA, TrainConfig(epochs=2, lr=0.05, batch_size=32), sparsity=0.7, final_mask=mode)
    assert result["final_mask"] == mode
    assert result["sparsity"] == pytest.approx(0.7, abs=5e-3)  # K = round(0.3 n) of n = 372 weights


PM_CONFIG = TrainConfig(epochs=3, lr=0.05, batch_size=32, grad_clip=3.0)


def test_validation_during_training_uses_the_mask_that_will_be_exported():
    torch.manual_seed(0)
    model = MLP()
    data = make_data((1, 16), n_train=192, n_val=64)
    result = run_probmask(model, data, PM_CONFIG, sparsity=0.8)
    assert result["history"][-1]["val_accuracy"] == pytest.approx(evaluate(model, data.x_val, data.y_val))
    torch.manual_seed(0)
    other = MLP()
    sparsifier = ProbMaskSparsifier(other, sparsity=0.8).prepare()
    with torch.no_grad():
        for s in sparsifier.score_parameters():
            s.uniform_(0.2, 0.8)
    sparsifier.refresh_eval_masks()
    x = data.x_val[:8]
    with torch.no_grad():
        evaluated = other.eval()(x)
        masks = sparsifier.squash_mask()
        assert torch.allclose(evaluated, other(x), atol=1e-6)  # same function as the squashed model
    assert sum(int(m.sum()) for m in masks.values()) == sparsifier.kept_target


def test_many_undecided_scores_warn_and_the_default_score_lr_decides_them():
    data = make_data((1, 16), n_train=192, n_val=64)
    torch.manual_seed(0)
    slow = run_probmask(MLP(), data, PM_CONFIG, sparsity=0.8, score_lr=1e-4)
    assert slow["undecided"] > 0.1 and "undecided" in slow["warnings"][0]
    assert "the larger weights were kept" in slow["warnings"][0]  # what the default final mask did there
    torch.manual_seed(0)
    scaled = run_probmask(MLP(), data, PM_CONFIG, sparsity=0.8)
    assert scaled["undecided"] < slow["undecided"] and scaled["score_lr"] > 1e-2
    assert scaled["steps"] == 3 * 6


def test_batchnorm_statistics_are_re_estimated_under_the_final_mask():
    torch.manual_seed(0)
    model = ConvBN2d()
    data = make_data((1, 8, 8), n_train=96, n_val=32)
    config = TrainConfig(epochs=2, lr=0.05, batch_size=32, seed=3)
    result = run_probmask(model, data, config, sparsity=0.8)
    assert result["bn_recalibration_samples"] == 96
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
    # the same re-estimation on the exported (masked, plain) model gives the same statistics:
    # the ones left by training, under sampled relaxed masks, would differ
    recalibrate_batchnorm(model, data.x_train, batch_size=32, seed=3)
    for bn, (mean, var) in zip(bns, stats, strict=True):
        assert torch.allclose(bn.running_mean, mean, atol=1e-6) and torch.allclose(bn.running_var, var, atol=1e-6)


def test_a_budget_of_fewer_steps_than_the_measured_regime_warns_and_a_long_one_does_not(monkeypatch):
    import worker.pruning.probmask as probmask

    data = make_data((1, 16), n_train=192, n_val=64)
    torch.manual_seed(0)
    short = run_probmask(MLP(), data, PM_CONFIG, sparsity=0.8)
    assert short["steps"] < probmask.SHORT_BUDGET_STEPS
    assert any(f"ran {short['steps']} optimizer steps" in w for w in short["warnings"])
    monkeypatch.setattr(probmask, "SHORT_BUDGET_STEPS", short["steps"])  # the same run counts as long enough
    torch.manual_seed(0)
    assert not any("optimizer steps" in w for w in run_probmask(MLP(), data, PM_CONFIG, sparsity=0.8)["warnings"])
