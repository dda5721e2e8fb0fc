"""Training throughput per architecture and step mode on this machine.

    python -m bench.training [--profile default] [--threads N] [--steps 10] [--modes]

Times full training steps (forward, focal loss + digit cross-entropy, backward, AdamW) on random
pairs at the profile's width and batch size, and prints pairs/second (median over steps). With
``--modes`` every architecture is timed in each step mode training may pick on this CPU, side by side (fp32; on a
CPU with native bf16 also fp32 + channels-last and bf16 autocast + channels-last), with the mode training picks
(``training.precision.choose_mode``) marked. The first line names the CPU and its deciding flags.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from ensemble.contract import PAIR_SHAPE
from ensemble.cpu import this_cpu
from ensemble.tables import markdown_table
from training.models import REGISTRY, build_model, count_parameters, model_names
from training.precision import FP32, StepMode, choose_mode, cpu_modes
from training.profiles import PROFILES
from training.train import training_loss

CPU = torch.device("cpu")


def train_throughput(name: str, profile: str, steps: int, mode: StepMode = FP32) -> tuple[float, int]:
    """Training pairs per second (median over ``steps`` timed steps) and the parameter count."""
    prof = PROFILES[profile]
    torch.manual_seed(0)
    model = mode.prepare_model(build_model(name, prof.width, prof.feat_dim).train())
    optimizer = torch.optim.AdamW(model.parameters())
    batch = prof.batch_size
    x, y = torch.rand(batch, *PAIR_SHAPE), torch.randint(0, 2, (batch,)).float()
    digits = torch.randint(0, 10, (batch, 2))
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        with mode.autocast(CPU):
            logits, digit_logits = model(x)
            loss = training_loss(REGISTRY[name], logits, y, digit_logits, digits, prof.recipe.aux_digit_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:  # the first steps warm up the allocator and oneDNN
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times), count_parameters(model)


def distinct_architectures() -> list[str]:
    """One model name per architecture: the seed variants train exactly as fast."""
    names, seen = [], set()
    for name in model_names():
        config = REGISTRY[name]
        arch = (config.tower, config.head, tuple(config.tower_kwargs.get("layers", ())), config.width_scale)
        if arch not in seen:
            seen.add(arch)
            names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--modes", action="store_true", help="time every step mode side by side")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = cpu_modes() if args.modes else [None]
    print(f"profile {args.profile}, {args.threads} thread(s), batch {PROFILES[args.profile].batch_size}, "
          f"on {this_cpu().label()}")
    if args.modes:
        # Only the modes training may pick on this CPU: the others are slower here (bf16 emulated) or take a kernel
        # that crashes (channels-last fp32 on AVX2: tests/test_torch_bugs.py).
        print(f"modes training may pick here: {', '.join(m.name for m in modes)}")
    print()
    rows = []
    for name in distinct_architectures():
        chosen = choose_mode(CPU, REGISTRY[name].tower)
        row, params = [name], 0
        for mode in modes:
            rate, params = train_throughput(name, args.profile, args.steps, mode or chosen)
            row.append(f"{rate:.0f}" + (" *" if args.modes and mode == chosen else ""))
        rows.append([row[0], f"{params:,}", *row[1:]])
    headers = [f"{m.name} pairs/s" for m in modes] if args.modes else [f"train pairs/s ({chosen.name})"]
    print(markdown_table(rows, ["model", "parameters", *headers]))
    if args.modes:
        print("\n* the mode training uses for this architecture (training.precision.choose_mode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
