"""Unit tests of the training loop's pieces (training/train.py), each against values worked out by hand from
its definition: the swap augmentation, the focal loss, the pair loss with label smoothing, the training loss
with its auxiliary digit term, and one optimiser step (what it computes, what it updates, what it leaves)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.models import REGISTRY, ModelConfig
from training.precision import FP32, cpu_has_native_bf16, torch_threads
from training.profiles import PROFILES, Recipe
from training.train import Trainer, focal_loss, pair_loss, swap_halves, training_loss

LN3 = math.log(3.0)  # the logit of p = 0.75


def _bce(p: float, target: float) -> float:
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


# --------------------------------------------------------------------------- swap augmentation

def test_swap_halves_swaps_the_masked_pairs_flips_their_labels_and_digits():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (3, 28, 56), dtype=np.uint8))
    before = x.clone()
    y = torch.tensor([1.0, 0.0, 1.0])
    digits = torch.tensor([[7, 3], [2, 5], [9, 8]])
    mask = torch.tensor([True, True, False])

    xs, ys, ds = swap_halves(x, y, digits, mask)

    for i in (0, 1):  # swapped: right digit now on the left, column order inside each digit kept
        expected = np.concatenate([before[i, :, 28:].numpy(), before[i, :, :28].numpy()], axis=1)
        np.testing.assert_array_equal(xs[i].numpy(), expected)
    np.testing.assert_array_equal(xs[2].numpy(), before[2].numpy())
    assert ys.tolist() == [0.0, 1.0, 1.0]  # left > right flips exactly where the digits were swapped
    assert ds.tolist() == [[3, 7], [5, 2], [9, 8]]
    assert torch.equal(x, before), "swap_halves must not change its input batch"


def test_swap_halves_without_digit_labels_and_with_an_empty_mask():
    x = torch.arange(2 * 28 * 56, dtype=torch.int32).reshape(2, 28, 56)
    y = torch.tensor([1.0, 0.0])
    xs, ys, ds = swap_halves(x, y, None, torch.tensor([False, True]))
    assert ds is None and ys.tolist() == [1.0, 1.0]
    assert torch.equal(xs[0], x[0]) and torch.equal(xs[1, :, :28], x[1, :, 28:])
    xs, ys, _ = swap_halves(x, y, None, torch.tensor([False, False]))
    assert torch.equal(xs, x) and ys.tolist() == [1.0, 0.0]


def test_a_swapped_pair_keeps_its_truth():
    """The label of a swapped pair is the truth of the swapped digits: left > right, recomputed from them."""
    digits = torch.tensor([[4, 1], [0, 6], [3, 2], [8, 9]])
    y = (digits[:, 0] > digits[:, 1]).float()
    _, ys, ds = swap_halves(torch.zeros(4, 28, 56), y, digits, torch.tensor([True, False, True, True]))
    assert ys.tolist() == (ds[:, 0] > ds[:, 1]).float().tolist()


# --------------------------------------------------------------------------- losses

def test_focal_loss_worked_out_by_hand():
    logits = torch.tensor([0.0, LN3, LN3])
    targets = torch.tensor([1.0, 1.0, 0.0])
    # (1 - p_true)^2 * BCE per element, alpha 1: p = 0.5, 0.75, 0.75; p_true = 0.5, 0.75, 0.25
    expected = (0.5 ** 2 * math.log(2) + 0.25 ** 2 * _bce(0.75, 1) + 0.75 ** 2 * _bce(0.75, 0)) / 3
    assert focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert focal_loss(logits, targets, alpha=0.25).item() == pytest.approx(0.25 * expected, rel=1e-6)
    expected_gamma1 = (0.5 * math.log(2) + 0.25 * _bce(0.75, 1) + 0.75 * _bce(0.75, 0)) / 3
    assert focal_loss(logits, targets, gamma=1.0).item() == pytest.approx(expected_gamma1, rel=1e-6)
    plain = (math.log(2) + _bce(0.75, 1) + _bce(0.75, 0)) / 3  # gamma 0: plain binary cross-entropy
    assert focal_loss(logits, targets, gamma=0.0).item() == pytest.approx(plain, rel=1e-6)


def test_focal_loss_with_a_smoothed_target():
    # target 0.9, p = 0.75: p_true = 0.75 * 0.9 + 0.25 * 0.1 = 0.7
    value = focal_loss(torch.tensor([LN3]), torch.tensor([0.9])).item()
    assert value == pytest.approx(0.3 ** 2 * _bce(0.75, 0.9), rel=1e-6)


@pytest.mark.parametrize("loss", ["bce", "focal"])
def test_pair_loss_smooths_labels_towards_one_half(loss):
    config = ModelConfig("t", "resnet", loss=loss, label_smoothing=0.2)
    logits, y = torch.tensor([LN3, LN3]), torch.tensor([1.0, 0.0])
    # smoothing 0.2: targets 1 -> 0.9, 0 -> 0.1
    if loss == "bce":
        expected = (_bce(0.75, 0.9) + _bce(0.75, 0.1)) / 2
    else:  # p_true = 0.7 and 0.3
        expected = (0.3 ** 2 * _bce(0.75, 0.9) + 0.7 ** 2 * _bce(0.75, 0.1)) / 2
    assert pair_loss(config, logits, y).item() == pytest.approx(expected, rel=1e-6)


def test_pair_loss_follows_each_registered_models_loss():
    logits, y = torch.tensor([LN3, -LN3]), torch.tensor([1.0, 1.0])
    for config in REGISTRY.values():
        smoothed = 1 - 0.5 * config.label_smoothing
        p = (0.75, 0.25)
        bce = [_bce(pi, smoothed) for pi in p]
        if config.loss == "focal":
            weights = [(1 - (pi * smoothed + (1 - pi) * (1 - smoothed))) ** 2 for pi in p]
            expected = sum(w * b for w, b in zip(weights, bce, strict=True)) / 2
        else:
            assert config.loss == "bce", config
            expected = sum(bce) / 2
        assert pair_loss(config, logits, y).item() == pytest.approx(expected, rel=1e-6), config.name


def test_training_loss_adds_the_weighted_digit_cross_entropy():
    config = ModelConfig("t", "resnet", loss="bce")
    logits, y = torch.tensor([0.0, LN3]), torch.tensor([1.0, 0.0])
    pair = (math.log(2) + _bce(0.75, 0)) / 2
    assert training_loss(config, logits, y, torch.zeros(2, 2, 10), None, 0.5).item() == pytest.approx(pair, rel=1e-6)
    # uniform digit logits: cross-entropy ln 10 per half, whatever the labels
    digits = torch.tensor([[3, 1], [0, 9]])
    uniform = torch.zeros(2, 2, 10)
    total = training_loss(config, logits, y, uniform, digits, 0.5).item()
    assert total == pytest.approx(pair + 0.5 * math.log(10), rel=1e-6)
    assert training_loss(config, logits, y, uniform, digits, aux_weight=2.0).item() == pytest.approx(
        pair + 2.0 * math.log(10), rel=1e-6)
    # a confident, right digit head: logit 10 on the true class -> cross-entropy log(1 + 9 e^-10)
    sure = torch.zeros(2, 2, 10)
    sure[torch.arange(2)[:, None], torch.arange(2)[None, :], digits] = 10.0
    right = math.log(1 + 9 * math.exp(-10))
    assert training_loss(config, logits, y, sure, digits, aux_weight=1.0).item() == pytest.approx(
        pair + right, rel=1e-5)


# --------------------------------------------------------------------------- one step

@pytest.fixture(autouse=True)
def one_torch_thread():
    """The steps below on one torch thread (bit-exact), put back after each test."""
    with torch_threads(1):
        yield


def _trainer(steps_per_epoch: int = 10) -> Trainer:
    prof = replace(PROFILES["smoke"], epochs=1)
    return Trainer(REGISTRY["resnet"], prof, torch.device("cpu"), steps_per_epoch, FP32)


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 28, 56, generator=g)
    digits = torch.randint(0, 10, (n, 2), generator=g)
    return x, (digits[:, 0] > digits[:, 1]).float(), digits


def _reference_loss_and_grads(trainer: Trainer, x, y, digits) -> tuple[float, list[torch.Tensor]]:
    """The loss and gradients of this batch alone, on a copy of the model as it is now (the head's dropout
    draws the same mask as the step's, both seeded 0 just before)."""
    model = copy.deepcopy(trainer.model).train()
    torch.manual_seed(0)
    logits, digit_logits = model(x)
    loss = training_loss(trainer.config, logits, y, digit_logits, digits, trainer.prof.recipe.aux_digit_weight)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def test_a_step_returns_this_batchs_loss_and_steps_on_its_gradient_alone():
    trainer = _trainer(steps_per_epoch=100)  # warm-up over the first 5 steps
    trainer.model.train()
    batches = [_batch(seed=s) for s in (0, 1)]
    lrs = []
    for x, y, digits in batches:
        expected_loss, expected_grads = _reference_loss_and_grads(trainer, x, y, digits)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        torch.manual_seed(0)
        loss, logits = trainer.step(x, y, digits)
        assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
        assert logits.shape == (16,) and not logits.requires_grad and not loss.requires_grad
        # the gradients are this batch's alone (zeroed before each backward), and the weights moved
        for grad, expected in zip((p.grad for p in trainer.model.parameters()), expected_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
        assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters(), strict=True))
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    # the schedule advanced once per step (warm-up: rising to the peak), the weight average took both steps
    peak = trainer.prof.recipe.lr
    assert trainer.scheduler.last_epoch == 2 and lrs[0] < lrs[1] < peak
    assert int(trainer.averaged.n_averaged) == 2


def test_steps_on_one_batch_lower_its_loss():
    trainer = _trainer(steps_per_epoch=40)
    trainer.model.train()
    x, y, digits = _batch(32, seed=3)
    losses = [trainer.step(x, y, digits)[0].item() for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_step_weights_the_digit_loss_as_the_profiles_recipe_says():
    """A tuned profile may set the digit cross-entropy's weight (Recipe.aux_digit_weight); the step uses it."""

    prof = replace(PROFILES["smoke"], epochs=1, recipe=Recipe(aux_digit_weight=3.0))
    trainer = Trainer(REGISTRY["resnet"], prof, torch.device("cpu"), 10, FP32)
    trainer.model.train()
    x, y, digits = _batch(seed=5)
    model = copy.deepcopy(trainer.model)
    torch.manual_seed(0)
    logits, digit_logits = model(x)
    expected = training_loss(trainer.config, logits, y, digit_logits, digits, aux_weight=3.0).item()
    default = training_loss(trainer.config, logits, y, digit_logits, digits, Recipe().aux_digit_weight).item()
    assert abs(expected - default) > 0.1  # the weight matters here
    torch.manual_seed(0)
    assert trainer.step(x, y, digits)[0].item() == pytest.approx(expected, rel=1e-5)


def test_a_step_adds_the_clean_digit_terms_as_the_recipe_weights_them():
    """With a reconstruction weight and a distillation weight (training.privileged), the step's loss is the pair and
    digit loss plus each term at its weight: the decoder drawing the clean digits from the tower's features, and
    the digit head's KL to the teacher's posteriors on the clean digits (never on the corrupted ones)."""
    from training.models import build_model
    from training.privileged import distillation_loss, reconstruction_loss

    recipe = Recipe(clean_reconstruction_weight=2.5, teacher_distill_weight=4.0, distill_temperature=3.0)
    prof = replace(PROFILES["smoke"], epochs=1, recipe=recipe)
    torch.manual_seed(1)
    teacher = build_model("resnet", prof.width, prof.feat_dim)
    with torch.no_grad():  # a sure teacher, whose posteriors differ from picture to picture
        teacher.digit_head[1].weight.mul_(30.0)
    trainer = Trainer(REGISTRY["resnet"], prof, torch.device("cpu"), 10, FP32, teacher)
    trainer.model.train()
    x, y, digits = _batch(seed=8)
    clean = (torch.rand(x.shape, generator=torch.Generator().manual_seed(9)) > 0.8).float()  # other pictures
    model, decoder = copy.deepcopy(trainer.model), copy.deepcopy(trainer.decoder)
    torch.manual_seed(0)
    logits, digit_logits, features = model.forward_with_features(x)
    with torch.no_grad():
        teacher_on_clean, teacher_on_corrupted = trainer.teacher(clean)[1], trainer.teacher(x)[1]
    base = training_loss(trainer.config, logits, y, digit_logits, digits, recipe.aux_digit_weight)
    recon = reconstruction_loss(decoder(features), clean)
    distill = distillation_loss(digit_logits, teacher_on_clean, 3.0)
    assert recon.item() > 0.01 and distill.item() > 0.01  # both terms count here
    assert abs(distillation_loss(digit_logits, teacher_on_corrupted, 3.0).item() - distill.item()) > 1e-3
    assert abs(distillation_loss(digit_logits, teacher_on_clean, 2.0).item() - distill.item()) > 1e-3
    expected = (base + 2.5 * recon + 4.0 * distill).item()
    torch.manual_seed(0)
    assert trainer.step(x, y, digits, clean)[0].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16: training never runs a bf16 step "
                                                     "here (tests/test_precision.py runs one in a child process)")
def test_a_step_in_bf16_runs_the_model_in_bf16_on_its_device():
    """The step mode's autocast is opened for the trainer's device: the logits come out in bf16, the loss in
    fp32 (training_loss casts), the weights stay fp32."""
    from training.precision import FAST_CPU_MODE

    trainer = Trainer(REGISTRY["resnet"], replace(PROFILES["smoke"], epochs=1), torch.device("cpu"), 10,
                      FAST_CPU_MODE)
    trainer.model.train()
    loss, logits = trainer.step(*_batch(seed=6))
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_a_step_without_digit_labels_leaves_the_digit_head_as_it_is():
    """Pairs without digit labels (a supported path: training.train takes a folder without them) give the digit
    head no gradient, and the step must leave it alone: no weight decay, no momentum from earlier steps."""
    trainer = _trainer(steps_per_epoch=100)
    trainer.model.train()
    x, y, digits = _batch(seed=7)
    trainer.step(x, y, digits)  # a step with digit labels first: the digit head has gradients and Adam state
    probe = copy.deepcopy(trainer.model)
    logits, digit_logits = probe(x)
    training_loss(trainer.config, logits, y, digit_logits, None, trainer.prof.recipe.aux_digit_weight).backward()
    digit_only = {name for name, p in probe.named_parameters() if p.grad is None}
    assert digit_only, "the model has a digit head the pair loss does not reach"
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.step(*_batch(seed=8)[:2], None)
    after = dict(trainer.model.named_parameters())
    for name in digit_only:
        assert torch.equal(after[name], before[name]), f"{name} changed without a digit label"
    assert any(not torch.equal(after[name], before[name]) for name in before if name not in digit_only)
