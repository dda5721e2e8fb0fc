"""One training step of the resnet model in a given step mode: the check ``tests/test_precision.py`` runs in
process for the modes this CPU's training picks, and in a child process for the others (a kernel that crashes
there fails that test with its output, instead of ending the suite).

    python -m tests.training_step "fp32 + channels-last"
"""

from __future__ import annotations

import argparse
import sys

import torch

from training.models import REGISTRY, build_model
from training.precision import FAST_CPU_MODE, FP32, StepMode
from training.train import training_loss

CPU = torch.device("cpu")
MODES = {m.name: m for m in (FP32, StepMode(None, channels_last=True), FAST_CPU_MODE)}


def check_training_step(mode: StepMode) -> None:
    """A step gives a finite loss, moves the weights, keeps them fp32, and really computes in the mode's dtype."""
    torch.manual_seed(0)
    model = mode.prepare_model(build_model("resnet", 4, 16).train())
    optimizer = torch.optim.AdamW(model.parameters())
    x, y, digits = torch.rand(8, 28, 56), torch.randint(0, 2, (8,)).float(), torch.randint(0, 10, (8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with mode.autocast(CPU):
        logits, digit_logits = model(x)
        loss = training_loss(REGISTRY["resnet"], logits, y, digit_logits, digits, 0.5)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32 under autocast
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    if mode.dtype is torch.bfloat16:
        assert logits.dtype == torch.bfloat16  # the arithmetic really ran in bf16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.training_step")
    parser.add_argument("mode", choices=list(MODES))
    args = parser.parse_args(argv)
    check_training_step(MODES[args.mode])
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
