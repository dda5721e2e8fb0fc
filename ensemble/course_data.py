"""The course file format, read, validated and written in one place.

A course file is an ``.npz`` with

- ``x``: (N, 28, 56) uint8, two 28x28 digits side by side (left = columns 0-27): pairs as
  ``ensemble.contract`` defines them;
- ``y``: (N,) 0/1, 1 when the left digit is greater (train/val files);
- ``id``: (N,) unique strings such as ``PUB_0000000`` (test files);
- ``digits``: (N, 2) digit classes, an extra key only our own generated files carry.

Labels of a test file may come separately as a CSV with columns ``id,label``; predictions are
submitted in that same CSV format. Everything here is numpy only (no torch), because both the
training side and the run time read these files. Nothing is ever unpickled.
"""

from __future__ import annotations

import csv
import io
import math
import os
import typing as t
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.atomic import atomic_write_bytes, atomic_write_text
from ensemble.contract import PAIR_SHAPE, PAIRS_SHAPE_TEXT, PIXEL_DTYPE, PIXEL_MAX


class CourseDataError(ValueError):
    """A course file (or array) that breaks the format; the message names the file and the problem."""


@dataclass
class CourseData:
    """The validated content of one course file."""

    x: np.ndarray  # (N, 28, 56) uint8: PAIR_SHAPE pairs
    y: np.ndarray | None = None  # (N,) int64 0/1
    ids: np.ndarray | None = None  # (N,) str
    digits: np.ndarray | None = None  # (N, 2) int64 0-9

    def __len__(self) -> int:
        return len(self.x)

    def ids_or_row_numbers(self) -> np.ndarray:
        """The file's ids, or the row numbers as strings when it has none."""
        return self.ids if self.ids is not None else np.arange(len(self.x)).astype(str)


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` header declares, read without touching (or allocating) the data after it."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int  # bytes from the start of the .npy to its data

    @property
    def nbytes(self) -> int:
        """Bytes the data must have (Python ints: a forged shape cannot overflow this)."""
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(fp: t.BinaryIO) -> NpyHeader:
    """Read an ``.npy`` header from ``fp`` (positioned at its start); ValueError when it is malformed.

    Only the magic string and the header dict are read, so this is safe on untrusted input: a header
    that declares ``(10**13,)`` elements costs nothing until someone allocates it.
    """
    start = fp.tell()
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fp)
    else:  # 3.0 only exists for structured dtypes with non-latin-1 field names: never a course array
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    return NpyHeader(np.dtype(dtype), tuple(int(n) for n in shape), bool(fortran_order), fp.tell() - start)


def as_pairs_uint8(x: np.ndarray, source: str = "array") -> np.ndarray:
    """Validate an array of pairs and return it as (N, 28, 56) uint8 (``ensemble.contract``).

    The conversion rule for floats is explicit: a float array whose values all lie in [0, 1] is
    scaled by 255, one in [0, 255] is taken as pixel values; both are rounded. Anything else
    (other dtypes, NaN/inf, values out of range, other shapes) is refused.
    """
    x = np.asarray(x)
    if x.ndim == 2 and x.shape == PAIR_SHAPE:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != PAIR_SHAPE:
        raise CourseDataError(f"{source}: 'x' must have shape {PAIRS_SHAPE_TEXT}, got {x.shape}")
    if x.shape[0] == 0:
        raise CourseDataError(f"{source}: 'x' holds no pairs (N = 0)")
    if x.dtype == PIXEL_DTYPE:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise CourseDataError(f"{source}: 'x' contains NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > PIXEL_MAX:
            raise CourseDataError(
                f"{source}: float 'x' must lie in [0, 1] or [0, {PIXEL_MAX}], got values in [{lo:g}, {hi:g}]"
            )
        scale = float(PIXEL_MAX) if hi <= 1.0 else 1.0
        return np.rint(x * scale).astype(PIXEL_DTYPE)
    raise CourseDataError(
        f"{source}: 'x' must be {PIXEL_DTYPE} (or float in [0, 1] / [0, {PIXEL_MAX}]), got dtype {x.dtype}"
    )


def _labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    if y.shape != (n,):
        raise CourseDataError(f"{source}: 'y' must have shape ({n},) to match 'x', got {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool or np.issubdtype(y.dtype, np.floating)):
        raise CourseDataError(f"{source}: 'y' must hold integer labels 0/1, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CourseDataError(
            f"{source}: labels must be 0 or 1; {int(bad.sum())} are not (first at row {first}: {y[first]!r})"
        )
    return y.astype(np.int64)


def _ids(ids: np.ndarray, n: int, source: str) -> np.ndarray:
    if ids.shape != (n,):
        raise CourseDataError(f"{source}: 'id' must have shape ({n},) to match 'x', got {ids.shape}")
    if ids.dtype.kind == "S":
        ids = ids.astype(str)
    if ids.dtype.kind != "U":
        raise CourseDataError(f"{source}: 'id' must hold strings, got dtype {ids.dtype}")
    if (np.char.str_len(ids) == 0).any():
        raise CourseDataError(f"{source}: 'id' contains empty strings")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dupes = unique[counts > 1]
        raise CourseDataError(
            f"{source}: ids must be unique; {len(dupes)} repeat, e.g. {', '.join(map(str, dupes[:3]))}"
        )
    return ids


def _digits(digits: np.ndarray, y: np.ndarray | None, n: int, source: str) -> np.ndarray:
    if digits.shape != (n, 2) or not np.issubdtype(digits.dtype, np.integer):
        raise CourseDataError(f"{source}: 'digits' must be integers shaped ({n}, 2), got {digits.dtype} {digits.shape}")
    if digits.min() < 0 or digits.max() > 9 or (digits[:, 0] == digits[:, 1]).any():
        raise CourseDataError(f"{source}: 'digits' must be two different classes 0-9 per row")
    if y is not None and ((digits[:, 0] > digits[:, 1]).astype(np.int64) != y).any():
        raise CourseDataError(f"{source}: 'digits' disagree with 'y' (label must be left > right)")
    return digits.astype(np.int64)


def validate_course_arrays(arrays: dict[str, np.ndarray], source: str = "array") -> CourseData:
    """Validate course arrays (keys ``x`` and optionally ``y``, ``id``, ``digits``)."""
    if "x" not in arrays:
        raise CourseDataError(f"{source}: missing key 'x' (found keys: {sorted(arrays) or 'none'})")
    x = as_pairs_uint8(arrays["x"], source)
    n = len(x)
    y = _labels(np.asarray(arrays["y"]), n, source) if "y" in arrays else None
    ids = _ids(np.asarray(arrays["id"]), n, source) if "id" in arrays else None
    digits = _digits(np.asarray(arrays["digits"]), y, n, source) if "digits" in arrays else None
    return CourseData(x=x, y=y, ids=ids, digits=digits)


def load_course_npz(path: str | os.PathLike, require: tuple[str, ...] = ("x",)) -> CourseData:
    """Load and validate a course ``.npz`` file; ``require`` lists keys that must be present.

    Raises CourseDataError with a message naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CourseDataError(f"{path}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CourseDataError(f"{path}: a single .npy array, not an .npz archive with keys x, y/id")
        with loaded as npz:
            keys = list(npz.files)
            missing = [k for k in require if k not in keys]
            if missing:
                raise CourseDataError(f"{path}: missing key {', '.join(map(repr, missing))} (found: {keys})")
            arrays = {}
            for key in ("x", "y", "id", "digits"):
                if key in keys:
                    try:
                        arrays[key] = npz[key]
                    except ValueError as err:
                        raise CourseDataError(f"{path}: key {key!r}: {_npy_read_problem(npz, key, err)}") from err
    except CourseDataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CourseDataError(f"{path}: not a readable .npz file ({err})") from err
    return validate_course_arrays(arrays, str(path))


def _npy_read_problem(npz: np.lib.npyio.NpzFile, key: str, err: ValueError) -> str:
    """Say truthfully why numpy could not read a member: only an object dtype means a pickled array."""
    try:
        with npz.zip.open(f"{key}.npy") as member:
            header = read_npy_header(member)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as header_err:
        return f"malformed .npy header ({header_err})"
    if header.dtype.hasobject:
        return "holds Python objects (a pickled array); refused"
    return f"unreadable array data for shape {header.shape} of {header.dtype} ({err})"


def save_course_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write a course ``.npz`` atomically and byte-for-byte reproducibly.

    ``np.savez_compressed`` stamps the current time into the zip entries, so two identical
    datasets would differ in bytes; here every entry gets a fixed timestamp instead.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            value = np.asarray(value)
            if value.dtype == object:
                raise CourseDataError(f"{path}: refusing to write object array {key!r}")
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            entry = io.BytesIO()
            np.lib.format.write_array(entry, value, allow_pickle=False)
            zf.writestr(info, entry.getvalue())
    atomic_write_bytes(path, buffer.getvalue())


def read_labels_csv(path: str | os.PathLike) -> dict[str, int]:
    """Read an ``id,label`` CSV into a dict, refusing malformed rows with the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CourseDataError(f"{path}: no such file")
    labels: dict[str, int] = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["id", "label"]:
            raise CourseDataError(f"{path}: the first line must be the header 'id,label', got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) < 2:
                raise CourseDataError(f"{path}: line {line} has {len(row)} column(s), expected id,label")
            key, value = row[0].strip(), row[1].strip()
            if value not in ("0", "1"):
                raise CourseDataError(f"{path}: line {line}: label must be 0 or 1, got {value!r}")
            if key in labels:
                raise CourseDataError(f"{path}: line {line}: id {key!r} appears twice")
            labels[key] = int(value)
    return labels


def labels_for_ids(labels: dict[str, int], ids: np.ndarray, source: str) -> np.ndarray:
    """Look up a label for every id, refusing ids the CSV does not have."""
    missing = [str(i) for i in ids if i not in labels]  # str: numpy's own repr would say np.str_('...')
    if missing:
        raise CourseDataError(f"{source}: no label for {len(missing)} id(s), e.g. {missing[:3]}")
    return np.array([labels[i] for i in ids], dtype=np.int64)


def _csv_text(header: list[str], rows: t.Iterable[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def format_submission_csv(ids: np.ndarray, labels: np.ndarray) -> str:
    """Predictions in the course submission format: exactly the columns ``id,label``."""
    return _csv_text(["id", "label"], ([str(key), int(labels[i])] for i, key in enumerate(ids)))


def write_submission_csv(path: str | os.PathLike, ids: np.ndarray, labels: np.ndarray) -> None:
    """Write predictions in the course submission format, atomically."""
    atomic_write_text(path, format_submission_csv(ids, labels))


def write_probabilities_csv(path: str | os.PathLike, ids: np.ndarray, probabilities: np.ndarray) -> None:
    """Write ``id,probability`` (P(left > right), six decimals), atomically: beside a submission, never in it."""
    atomic_write_text(path, _csv_text(["id", "probability"],
                                      ([str(key), f"{float(probabilities[i]):.6f}"] for i, key in enumerate(ids))))
