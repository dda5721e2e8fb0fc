"""Training throughput per architecture on this machine.

    python -m training.bench [--profile default] [--threads N] [--steps 10]

Times full training steps (forward, focal loss + digit cross-entropy, backward, AdamW) on random
pairs at the profile's width and batch size, and prints pairs/second (median over steps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from ensemble.contract import PAIR_SHAPE
from ensemble.tables import markdown_table
from training.models import REGISTRY, build_model, count_parameters, model_names
from training.profiles import PROFILES
from training.train import training_loss


def train_throughput(name: str, profile: str, steps: int) -> tuple[float, int]:
    prof = PROFILES[profile]
    torch.manual_seed(0)
    model = build_model(name, prof.width, prof.feat_dim).train()
    optimizer = torch.optim.AdamW(model.parameters())
    batch = prof.batch_size
    x, y = torch.rand(batch, *PAIR_SHAPE), torch.randint(0, 2, (batch,)).float()
    digits = torch.randint(0, 10, (batch, 2))
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        logits, digit_logits = model(x)
        loss = training_loss(REGISTRY[name], logits, y, digit_logits, digits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:  # the first steps warm up the allocator and oneDNN
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times), count_parameters(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"profile {args.profile}, {args.threads} thread(s), batch {PROFILES[args.profile].batch_size}\n")
    rows, seen = [], set()
    for name in model_names():
        config = REGISTRY[name]
        arch = (config.tower, config.head, tuple(config.tower_kwargs.get("layers", ())), config.width_scale)
        if arch in seen:  # the seed variants train exactly as fast
            continue
        seen.add(arch)
        rate, params = train_throughput(name, args.profile, args.steps)
        rows.append([name, f"{params:,}", f"{rate:.0f}"])
    print(markdown_table(rows, ["model", "parameters", "train pairs/s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
