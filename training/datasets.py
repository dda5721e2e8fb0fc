"""Everything training reads from a data folder, loaded once.

A data folder is either our built dataset (``python -m training.data build``), which also holds
the split source digits so that fresh pairs can be drawn every epoch, or the course's own files
(``train.npz``, ``val.npz``, ``test_public.npz`` + ``test_public_labels.csv``, the same for
``test_private``), which carry no digit labels: then training uses the pair loss alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.course_data import CourseData, labels_for_ids, load_course_npz, read_labels_csv
from training.corrupt import COURSE_SEVERITY
from training.data import make_pairs


@dataclass
class TrainingData:
    train: CourseData
    val: CourseData
    shifted_val: dict[str, CourseData]  # e.g. {"val_sev5": ..., "val_sev7": ...}
    test: CourseData | None  # with labels, when the folder has them
    sources: dict[str, np.ndarray] | None  # train_images / train_labels ... when the folder has them

    @classmethod
    def load(cls, data_dir: str | Path, max_train: int | None = None, max_val: int | None = None) -> TrainingData:
        data_dir = Path(data_dir)
        train = _head(load_course_npz(data_dir / "train.npz", require=("x", "y")), max_train)
        val = _head(load_course_npz(data_dir / "val.npz", require=("x", "y")), max_val)
        shifted = {p.stem: _head(load_course_npz(p, require=("x", "y")), max_val)
                   for p in sorted(data_dir.glob("val_sev*.npz"))}
        test = load_labelled_test(data_dir)
        sources = None
        if (data_dir / "sources.npz").is_file():
            with np.load(data_dir / "sources.npz", allow_pickle=False) as npz:
                sources = {k: npz[k] for k in npz.files}
        return cls(train, val, shifted, test, sources)


def stacking_set(data_dir: str | Path, n: int, workers: int = 1, progress: bool = False) -> CourseData | None:
    """``n`` fresh course-process pairs of the held-out validation digits (``sources.npz``), drawn from their own
    random stream: what the stackers are fitted on. Early stopping and the weight average watch ``val.npz`` (other
    pairs of the same digits) and never see these; no test digit is in them. None when the folder has no source
    digits (the course's own files): the stackers then fit on ``val.npz``, as before."""
    data_dir = Path(data_dir)
    if not (data_dir / "sources.npz").is_file():
        return None
    with np.load(data_dir / "sources.npz", allow_pickle=False) as npz:
        images, labels = npz["val_images"], npz["val_labels"]
    meta_path = data_dir / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    pairs = make_pairs(images, labels, n, seed=meta.get("seed", 0), stream="stack",
                       severity=meta.get("severity", COURSE_SEVERITY), workers=workers, progress=progress)
    return CourseData(x=pairs["x"], y=pairs["y"])


TEST_FILES = ("test_public", "test_private")


def load_labelled_test(data_dir: str | Path) -> CourseData | None:
    """The labelled test pairs: ``test_public.npz`` and ``test_private.npz`` (each with its
    ``*_labels.csv``) concatenated, public first; None when the folder has neither."""
    data_dir = Path(data_dir)
    parts = []
    for name in TEST_FILES:
        npz, csv = data_dir / f"{name}.npz", data_dir / f"{name}_labels.csv"
        if npz.is_file() and csv.is_file():
            part = load_course_npz(npz, require=("x", "id"))
            part.y = labels_for_ids(read_labels_csv(csv), part.ids, str(csv))
            parts.append(part)
    if not parts:
        return None
    return CourseData(x=np.concatenate([p.x for p in parts]), y=np.concatenate([p.y for p in parts]),
                      ids=np.concatenate([p.ids for p in parts]))


def _head(data: CourseData, n: int | None) -> CourseData:
    """The first n pairs (the smoke profile trains on a sliver)."""
    if n is None or n >= len(data):
        return data
    return CourseData(x=data.x[:n], y=None if data.y is None else data.y[:n],
                      ids=None if data.ids is None else data.ids[:n],
                      digits=None if data.digits is None else data.digits[:n])
