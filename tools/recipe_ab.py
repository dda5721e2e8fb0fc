"""A/B runs of the training recipe on one model, each at the same budget: which knobs pay.

    python tools/recipe_ab.py [--model resnet] [--epochs 3] [--pairs 16000] [--jobs 2] [--out runs/ab]
    python tools/recipe_ab.py --variants wide --seconds 1200 [--model resnet] [--epochs 4] [--out runs/ab_wide]

Each variant trains ``--model`` from the built dataset in ``data/`` (training digits only) in its own
process with one thread, and is scored on the built validation pairs (``val.npz``, all 10,000; training
digits held out, never the test digits) and on clean pairs (severity 0, from the validation digits).
Prints and writes ``OUT/recipe_ab.md``.

``--variants recipe`` (the default) is the table that chose the recipe: every variant at ``--pairs`` per epoch.
``--variants wide`` is the ``wide`` profile's choice (issue 26): width 16 or 32 with the hand-chosen recipe, 16, 24
or 32 with the tuned one, each at 20% clean digits. Wider towers cost more per pair, so with ``--seconds S`` every
variant gets the same wall-clock budget instead of the same pairs: its step rate is timed first (``training.bench``,
its own step mode, one thread) and its pairs per epoch set to rate x S / epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> (what it changes, overrides of training.train's recipe constants and of the run)
VARIANTS = {
    "old recipe: constant lr 1e-3, no EMA, fp32": dict(final=1.0, warmup=0.0, ema=0.0, precision="fp32"),
    "constant lr 1e-3, no EMA, bf16": dict(final=1.0, warmup=0.0, ema=0.0),
    "warm-up + cosine, peak 1e-3, no EMA": dict(ema=0.0),
    "warm-up + cosine, peak 2e-3, no EMA": dict(lr=2e-3, ema=0.0),
    "warm-up + cosine, peak 2e-3, EMA": dict(lr=2e-3),
    "warm-up + cosine, peak 2e-3, EMA, 15% clean digits": dict(lr=2e-3, clean=0.15),
}
# The wide profile's candidates: the hand-chosen recipe (peak 2e-3, weight decay 5e-4, digit-loss weight 0.5) and
# the tuning study's best trial (docs/tuning.md), at widths 16 (the default), 24 (the study's) and 32 (bf16's).
HAND, TUNED = dict(lr=2e-3, clean=0.2), dict(lr=3.3e-3, wd=1.65e-3, aux=1.39, clean=0.2)
WIDE_VARIANTS = {
    "hand recipe, width 16": dict(HAND, width=16),
    "hand recipe, width 32": dict(HAND, width=32),
    "tuned recipe, width 16": dict(TUNED, width=16),
    "tuned recipe, width 24": dict(TUNED, width=24),
    "tuned recipe, width 32": dict(TUNED, width=32),
}
VARIANT_SETS = {"recipe": VARIANTS, "wide": WIDE_VARIANTS}


def pairs_for_seconds(pairs_per_second: float, seconds: float, epochs: int, batch: int) -> int:
    """Pairs per epoch that fill ``seconds`` of training at this rate: whole batches, at least one."""
    return max(batch, int(pairs_per_second * seconds / epochs) // batch * batch)


def run_variant(args: tuple[str, dict, str, int, int, str, float | None]) -> dict:
    label, knobs, model, epochs, pairs, out, seconds = args
    import numpy as np
    import torch

    from ensemble.course_data import load_course_npz
    from training import train
    from training.bench import train_throughput
    from training.data import make_pairs
    from training.models import REGISTRY
    from training.precision import choose_mode
    from training.profiles import PROFILES, Recipe
    from training.train import RunOptions, load_weights, predict_logits, train_model

    torch.set_num_threads(1)
    train.FINAL_LR_FRACTION = knobs.get("final", train.FINAL_LR_FRACTION)
    train.WARMUP_FRACTION = knobs.get("warmup", train.WARMUP_FRACTION)
    train.EMA_DECAY = knobs.get("ema", train.EMA_DECAY)
    REGISTRY[model] = replace(REGISTRY[model], lr=knobs.get("lr", 1e-3))
    PROFILES["ab"] = replace(PROFILES["default"], epochs=epochs, pairs_per_epoch=pairs, patience=epochs,
                             clean_share=knobs.get("clean", 0.0), width=knobs.get("width", 16),
                             recipe=Recipe(weight_decay=knobs.get("wd"), aux_digit_weight=knobs.get("aux")))
    folder = Path(out) / label.replace(" ", "_").replace(",", "").replace("%", "pct").replace(":", "")
    if (folder / "result.json").is_file():  # measured before: a rerun adds only new variants
        return json.loads((folder / "result.json").read_text())
    if seconds:  # equal wall-clock: this variant's own step rate decides its pairs
        mode = choose_mode(torch.device("cpu"), REGISTRY[model].tower, knobs.get("precision", "bf16"))
        rate, _ = train_throughput(model, "ab", steps=8, mode=mode)
        pairs = pairs_for_seconds(rate, seconds, epochs, PROFILES["ab"].batch_size)
        PROFILES["ab"] = replace(PROFILES["ab"], pairs_per_epoch=pairs)
    trained = train_model(model, RunOptions(data_dir=ROOT / "data", out=folder, profile="ab", device="cpu",
                                  precision=knobs.get("precision", "bf16"), progress=False))
    seconds = trained["train_seconds"]  # stored with the run: the same when a rerun finds it trained
    net = load_weights(model, folder, "ab")
    val = load_course_npz(ROOT / "data" / "val.npz", require=("x", "y"))
    logits, _ = predict_logits(net, val.x, torch.device("cpu"))
    with np.load(ROOT / "data" / "sources.npz", allow_pickle=False) as src:
        clean = make_pairs(src["val_images"], src["val_labels"], 4000, seed=7, stream="val", severity=0.0)
    clean_logits, clean_digits = predict_logits(net, clean["x"], torch.device("cpu"))
    result = {"variant": label, "pairs_per_epoch": PROFILES["ab"].pairs_per_epoch,
              "val_acc": float(((logits > 0) == val.y).mean()),
              "clean_pair_acc": float(((clean_logits > 0) == clean["y"]).mean()),
              "clean_digit_acc": float((clean_digits.argmax(-1) == clean["digits"]).mean()), "seconds": seconds}
    (folder / "result.json").write_text(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=16_000, help="fresh pairs per epoch")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="runs/ab")
    parser.add_argument("--variants", choices=list(VARIANT_SETS), default="recipe",
                        help="recipe: the table that chose the recipe; wide: the wide profile's candidates")
    parser.add_argument("--seconds", type=float,
                        help="equal wall-clock: each variant trains about this long (its pairs from its step rate)")
    args = parser.parse_args(argv)
    from ensemble.atomic import atomic_write_text
    from ensemble.tables import markdown_table

    tasks = [(label, knobs, args.model, args.epochs, args.pairs, args.out, args.seconds)
             for label, knobs in VARIANT_SETS[args.variants].items()]
    # One process per variant: each patches the recipe's module constants, which must not leak into the next.
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        results = list(pool.map(run_variant, tasks))
    rows = [[r["variant"], f"{r.get('pairs_per_epoch', args.pairs):,}", f"{r['val_acc']:.4f}",
             f"{r['clean_pair_acc']:.4f}", f"{r['clean_digit_acc']:.4f}", f"{r['seconds']:.0f}"] for r in results]
    table = markdown_table(rows, ["variant", "pairs per epoch", "val acc (built, 10,000)", "clean pairs acc",
                                  "clean digits acc", "seconds"])
    budget = f"about {args.seconds:.0f} s of training each" if args.seconds else f"{args.pairs:,} fresh pairs"
    command = " ".join(["python tools/recipe_ab.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"`{args.model}`, {args.epochs} epochs, {budget}, batch 128, one thread per run (`{command}`)\n\n")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out) / "recipe_ab.md", header + table + "\n")
    (Path(args.out) / "recipe_ab.json").write_text(json.dumps(results, indent=2))
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
