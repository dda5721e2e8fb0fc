"""One base model at a time, scored from its weights: how a retrain's members compare with the committed ones.

    python -m experiments.member_scores models:wide staging/wide_long:wide_long [--models resnet_s2025,fpn]

Each ``FOLDER:PROFILE`` is a folder of trained weights (``ensemble.layout``) and the profile that sized them; every
model named (default: those trained in every folder) is loaded from each folder in turn (``training.models.
load_weights``, one thread) and scored on:

- the built validation split (``DATA/val.npz``) and the course's ``val.npz``: pair accuracy;
- the built test (``DATA/test_public.npz`` + ``test_private.npz`` with their labels, 10,000 pairs of MNIST's test
  digits): pair accuracy, reported and never chosen on;
- digits read: the digit head's reading of the built validation pairs' corrupted digits, and of clean held-out
  digits (the validation pool's source digits).

Prints one markdown table, one row per model and folder, and writes the rows as JSON lines with ``--out FILE``.
docs/training.md's tables of a retrain's progress come from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ensemble.atomic import atomic_write_text
from ensemble.contract import join_pair
from ensemble.course_data import CourseData, load_course_npz
from ensemble.layout import ArtifactLayout
from ensemble.tables import markdown_table
from training.datasets import load_labelled_test
from training.models import load_weights, model_names
from training.train import predict_logits


@dataclass(frozen=True)
class ScoringSets:
    """Every pair set a member is scored on, read once; the test pairs only when asked (an A/B never sees them)."""
    built: CourseData  # with x, y, digits
    course: CourseData  # with x, y
    test: CourseData | None  # with y
    clean_pairs: np.ndarray
    clean_labels: np.ndarray

    @classmethod
    def read(cls, data_dir: Path, course_val: Path, with_test: bool = True) -> ScoringSets:
        with np.load(data_dir / "sources.npz", allow_pickle=False) as npz:
            images, labels = npz["val_images"], npz["val_labels"]
        half = len(images) // 2
        return cls(built=load_course_npz(data_dir / "val.npz", require=("x", "y", "digits")),
                   course=load_course_npz(course_val, require=("x", "y")),
                   test=load_labelled_test(data_dir) if with_test else None,
                   clean_pairs=join_pair(images[:half], images[half:2 * half]),
                   clean_labels=np.stack([labels[:half], labels[half:2 * half]], axis=1))


def score_model(model: torch.nn.Module, sets: ScoringSets) -> dict[str, float]:
    """Pair accuracy on each set, and the share of digits the digit head reads right (corrupted and clean)."""
    device = torch.device("cpu")
    logits, digit_logits = predict_logits(model, sets.built.x, device)
    course_logits, _ = predict_logits(model, sets.course.x, device)
    _, clean_digit_logits = predict_logits(model, sets.clean_pairs, device)
    scores = {"built_val_acc": float(((logits > 0) == sets.built.y).mean()),
              "course_val_acc": float(((course_logits > 0) == sets.course.y).mean()),
              "digits_read": float((digit_logits.argmax(-1) == sets.built.digits).mean()),
              "clean_digits_read": float((clean_digit_logits.argmax(-1) == sets.clean_labels).mean())}
    if sets.test is not None:
        test_logits, _ = predict_logits(model, sets.test.x, device)
        scores["built_test_acc"] = float(((test_logits > 0) == sets.test.y).mean())
    return scores


def parse_folder(text: str) -> tuple[Path, str]:
    """``FOLDER:PROFILE`` -> (FOLDER, PROFILE)."""
    folder, sep, profile = text.rpartition(":")
    if not sep or not folder or not profile:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FOLDER:PROFILE, e.g. models:wide")
    return Path(folder), profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=parse_folder, metavar="FOLDER:PROFILE")
    parser.add_argument("--models", default=None, help="comma-separated names (default: trained in every folder)")
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--course-val", type=Path, default=Path("../shared/course/val.npz"))
    parser.add_argument("--out", type=Path, default=None, help="also write the rows here, as JSON lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.models:
        names = args.models.split(",")
    else:
        names = [n for n in model_names()
                 if all(ArtifactLayout(folder).weights(n).is_file() for folder, _ in args.folders)]
    if not names:
        parser.error("no model is trained in every folder given")
    sets = ScoringSets.read(args.data, args.course_val)
    rows = []
    for name in names:
        for folder, profile in args.folders:
            rows.append({"model": name, "folder": str(folder), "profile": profile,
                         **score_model(load_weights(name, folder, profile), sets)})
            print(json.dumps(rows[-1]), flush=True)
    keys = ("built_val_acc", "course_val_acc", "built_test_acc", "digits_read", "clean_digits_read")
    print(markdown_table([[f"`{r['model']}`", f"`{r['folder']}` ({r['profile']})",
                           *(f"{r[k]:.4f}" if k in r else "-" for k in keys)] for r in rows],
                         ["model", "weights", "built val acc", "course val.npz acc", "built test acc", "digits read",
                          "clean digits read"]))
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
