"""Everything training reads from a data folder, loaded once.

A data folder is either our built dataset (``python -m training.data build``), which also holds
the split source digits so that fresh pairs can be drawn every epoch, or the course's own files
(``train.npz``, ``val.npz``, ``test_public.npz`` + ``test_public_labels.csv``, the same for
``test_private``), which carry no digit labels: then training uses the pair loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.course_data import CourseData, labels_for_ids, load_course_npz, read_labels_csv


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
