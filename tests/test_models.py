"""Tests of the model registry (training/models): the ten stable names, the shapes every model returns,
the antisymmetric comparison (swapping the two digits gives exactly the complementary probability),
docs/training.md's registry table, and the error for an unknown name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from training.models import REGISTRY, build_model, model_names, registry_table
from training.profiles import PROFILES

SMOKE = PROFILES["smoke"]
README = Path(__file__).resolve().parent.parent / "docs" / "training.md"  # where the registry table is shown
STABLE_NAMES = ["resnet_deep", "resnet_fusion", "resnet", "resnet_s2023", "resnet_s2024", "resnet_s2025", "fpn",
                "resnet_fusion_s123", "cbam_fusion", "vgg"]


def _swap(x: torch.Tensor) -> torch.Tensor:
    """Exchange the left (columns 0-27) and right (28-55) digits."""
    return torch.cat([x[:, :, 28:], x[:, :, :28]], dim=2)


def _random_pairs(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 28, 56, generator=g)


def _calibrate_batch_norm(model: torch.nn.Module) -> None:
    """Set every batch-norm's running statistics to the average over a few random batches, then eval().

    At initialisation the running statistics (mean 0, variance 1) squash the features of different
    inputs together, so every logit would be ~1e-7 and any head would look antisymmetric to 1e-5;
    calibrated statistics spread them as in a trained model.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for seed in range(4):
            model(_random_pairs(16, seed=100 + seed))
    model.eval()


# --------------------------------------------------------------------------- every model

@pytest.mark.parametrize("name", model_names())
def test_forward_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, SMOKE.width, SMOKE.feat_dim)
    x = _random_pairs()
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            logit, digit_logits = model(x)
        assert logit.shape == (3,)
        assert digit_logits.shape == (3, 2, 10)
        assert torch.isfinite(logit).all() and torch.isfinite(digit_logits).all()


@pytest.mark.parametrize("name", model_names())
def test_swapping_halves_is_antisymmetric(name):
    torch.manual_seed(0)
    model = build_model(name, SMOKE.width, SMOKE.feat_dim)
    _calibrate_batch_norm(model)
    x = _random_pairs()
    with torch.no_grad():
        logit, digits = model(x)
        logit_swapped, digits_swapped = model(_swap(x))

    # Not trivially antisymmetric: the logits are far from zero compared with the tolerance below.
    assert logit.abs().max() > 1e-3
    torch.testing.assert_close(logit_swapped, -logit, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sigmoid(logit_swapped), 1 - torch.sigmoid(logit), atol=1e-5, rtol=0)

    # The digit head sees the same digits, only in the other slot.
    assert (digits[:, 0] - digits[:, 1]).abs().max() > 1e-3
    torch.testing.assert_close(digits_swapped, digits.flip(1), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- the registry

def test_registry_starts_with_the_ten_stable_names():
    """The committed ensemble's names are a contract (manifest, service answers); new models go after them."""
    assert list(model_names())[:len(STABLE_NAMES)] == STABLE_NAMES
    assert len(set(model_names())) == len(model_names())
    assert all(REGISTRY[n].name == n for n in model_names())


def test_unknown_name_raises_key_error_naming_the_known_models():
    with pytest.raises(KeyError) as excinfo:
        build_model("resnet_does_not_exist", SMOKE.width, SMOKE.feat_dim)
    message = str(excinfo.value)
    assert "resnet_does_not_exist" in message
    for name in STABLE_NAMES:
        assert name in message


def test_readme_registry_table_is_current():
    text = README.read_text() if README.is_file() else ""
    match = re.search(r"<!-- registry-table -->(.*?)<!-- /registry-table -->", text, flags=re.DOTALL)
    assert match, f"{README} has no <!-- registry-table --> ... <!-- /registry-table --> section"
    default = PROFILES["default"]
    expected = registry_table(default.width, default.feat_dim)
    assert match.group(1).strip() == expected.strip()
