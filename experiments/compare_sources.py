"""Decided: train on fresh pairs, not the course's files (0.84 against 0.69 on its val.npz): docs/compare_sources.md.

The course's fixed files against our fresh pairs: one architecture, the same budget, side by side.

    python -m experiments.compare_sources [--model resnet] [--course ../shared/course] [--data data]
                                       [--out runs/compare] [--profile compare] [--jobs 2]

Trains ``--model`` twice with the same profile (so the same number of pair presentations):

- **course files**: the course's ``train.npz`` as it is, validated on its ``val.npz``, pair loss
  only (the files carry no digit labels), as a student of the course would;
- **fresh pairs**: pairs drawn anew every epoch by our generator from the training digits, with
  digit labels, validated on our built ``val.npz`` (held-out digits).

Both are then scored on the course's ``val.npz`` (real pairs) and on our built test files (MNIST's
test digits, which neither run saw in any form); the table goes to ``OUT/compare.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from ensemble.atomic import atomic_write_text
from ensemble.course_data import load_course_npz
from ensemble.tables import markdown_table
from training.datasets import TEST_FILES, load_labelled_test
from training.models import REGISTRY, load_weights, model_names
from training.profiles import PROFILES
from training.train import RunOptions, predict_logits, train_model

COURSE_FILES = ("train.npz", "val.npz")


def course_data_folder(course: Path, built: Path, folder: Path) -> Path:
    """A data folder holding the course's train/val files, plus links to our built test files so
    that both runs are scored on the same honest test pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in COURSE_FILES:
        if not (course / name).is_file():
            raise FileNotFoundError(f"{course / name} not found (the course's own {name})")
    links = [course / name for name in COURSE_FILES]
    links += [built / f"{test}{suffix}" for test in TEST_FILES for suffix in (".npz", "_labels.csv")]
    for target in links:
        link = folder / target.name
        if target.is_file() and not link.exists():
            link.symlink_to(target.resolve())
    return folder


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    logits, _ = predict_logits(model, x, torch.device("cpu"))
    return float(((logits > 0) == y).mean())


def _train(name: str, options: RunOptions) -> dict:
    return train_model(name, options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.compare_sources", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet", choices=model_names())
    parser.add_argument("--course", default="../shared/course", help="folder with the course's train.npz, val.npz")
    parser.add_argument("--data", default="data", help="our built dataset (python -m training.data build)")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--profile", default="compare", choices=list(PROFILES))
    parser.add_argument("--jobs", type=int, default=2, help="1 trains the two runs one after the other")
    args = parser.parse_args(argv)
    course, built, out = Path(args.course), Path(args.data), Path(args.out)
    if not (built / "sources.npz").is_file():
        parser.error(f"{built}/sources.npz not found: build the dataset first (python -m training.data build)")
    try:
        course_folder = course_data_folder(course, built, out / "course_data")
    except FileNotFoundError as err:
        parser.error(str(err))

    runs = {"course files": course_folder, "fresh pairs": built}
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    tasks = [RunOptions(data_dir=data, out=out / key.replace(" ", "_"), profile=args.profile, threads=threads,
                        resume=True, position=i) for i, (key, data) in enumerate(runs.items())]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_train, [args.model] * len(tasks), tasks))
    else:
        results = [_train(args.model, task) for task in tasks]

    course_val = load_course_npz(course / "val.npz", require=("x", "y"))
    test = load_labelled_test(built)
    rows = []
    for (key, _), task, result in zip(runs.items(), tasks, results, strict=True):
        model = load_weights(args.model, task.out, args.profile)
        rows.append([key, f"{result['epochs']} x {PROFILES[args.profile].pairs_per_epoch:,}",
                     f"{result['train_seconds']:.0f}", f"{accuracy(model, course_val.x, course_val.y):.4f}",
                     f"{accuracy(model, test.x, test.y):.4f}" if test is not None else "-"])
    table = markdown_table(rows, ["trained on", "epochs x pairs", "train s", "course val.npz (real)",
                                  f"built test ({len(test) if test is not None else 0:,}, t10k digits)"])
    note = (f"`{args.model}` ({REGISTRY[args.model].description}), profile `{args.profile}`; "
            "the course-files run chose its best epoch on the course's val.npz, the fresh-pairs run on our built val.")
    print(table)
    atomic_write_text(out / "compare.md", f"{note}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
