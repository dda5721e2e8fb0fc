"""Free-form evaluation: two pictures of digits, as a user of ``/compare`` would send them.

    python -m ensemble.freeform [--pairs 2000] [--seed 0] [--out docs/freeform.md] [--models models]
    python -m ensemble.freeform --digits DIGITS.npz ...     # any labelled 28x28 digits instead

Pairs of MNIST *test* digits (t10k: evaluation only, never training), uniform over ordered digit pairs
a != b, each digit rendered as a picture several ways a person would send one (``RENDERINGS``), encoded to
bytes, and then taken through exactly the path of ``/compare``: ``ensemble.preprocess.open_image`` ->
``prepare_digit`` -> ``ensemble.contract.join_pair`` -> ``Ensemble.predict`` (the scorer's call). Per
rendering it reports the digit accuracy (the averaged digit heads' most likely class, both halves) and the
pair accuracy under each prior (``ensemble.priors``). A picture the preprocessing refuses (blank) counts
as wrong, as the service would answer it with a 400.

The digits come from ``data/cache/mnist.npz`` (written once by ``training.mnist.load_mnist``, e.g. by
``make data``; read here as a plain ``.npz``, so the run time never imports training), or from
``--digits FILE.npz`` with ``images`` (N, 28, 28) uint8 and ``labels`` (N,).
"""

from __future__ import annotations

import argparse
import io
import logging
import shlex
import sys
import time
import typing as t
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ensemble.atomic import atomic_write_text
from ensemble.contract import DIGIT_SIZE, PIXEL_DTYPE, join_pair
from ensemble.manifest import ManifestError
from ensemble.preprocess import BlankImageError, prepare_digit_bytes
from ensemble.priors import PRIORS
from ensemble.runtime import Ensemble
from ensemble.tables import markdown_table

DEFAULT_MNIST = Path("data") / "cache" / "mnist.npz"
#: Where each source keeps its labelled digits: (images key, labels key).
KEYS = {"mnist": ("test_images", "test_labels"), "digits": ("images", "labels")}
ENLARGED = 112  # px: a digit saved at four times MNIST's size
PHOTO = 160  # px


class FreeformDataError(ValueError):
    """The digits file is missing or not labelled 28x28 digits."""


# --------------------------------------------------------------------------- renderings


def _encode(pixels: np.ndarray, fmt: str = "PNG", **options: t.Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _enlarged(digit: np.ndarray, size: int) -> np.ndarray:
    """The digit, light on dark, enlarged smoothly (as an image viewer or a browser enlarges it), float [0, 1]."""
    image = Image.fromarray(digit.astype(np.float32) / 255.0).resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def render_original(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The 28-px MNIST digit itself, light ink on black, as PNG."""
    return _encode(digit)


def render_enlarged(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Enlarged to 112 px, dark ink on white paper, PNG."""
    return _encode(np.rint(255.0 * (1.0 - _enlarged(digit, ENLARGED))).astype(PIXEL_DTYPE))


def render_photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo of ink on paper: 160 px, greyish paper lit unevenly (brighter on one side), ink not quite
    black, a warm colour cast, sensor noise, JPEG at quality 60-85."""
    ink = _enlarged(digit, PHOTO)
    rows, cols = np.mgrid[0:PHOTO, 0:PHOTO] / (PHOTO - 1)
    angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 - rng.uniform(0.25, 0.45) * (np.cos(angle) * cols + np.sin(angle) * rows + 1) / 2  # falloff
    paper, dark = rng.uniform(0.75, 0.92), rng.uniform(0.10, 0.30)
    grey = light * (paper - (paper - dark) * ink) + rng.normal(0.0, 0.02, ink.shape)
    tint = np.array([1.0, rng.uniform(0.93, 0.98), rng.uniform(0.82, 0.92)])  # warm indoor light
    rgb = np.clip(np.rint(255.0 * grey[..., None] * tint), 0, 255).astype(PIXEL_DTYPE)
    return _encode(rgb, "JPEG", quality=int(rng.integers(60, 86)))


def render_thick_pen(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A felt pen: the digit's strokes, made binary and about twice as thick, dark on white, PNG."""
    ink = (_enlarged(digit, ENLARGED) >= 0.5).astype(PIXEL_DTYPE) * 255
    thick = Image.fromarray(ink).filter(ImageFilter.MaxFilter(7))  # grows each stroke by 3 px on every side
    return _encode(255 - np.asarray(thick))


Renderer = Callable[[np.ndarray, np.random.Generator], bytes]
#: name -> how a digit becomes the bytes of a picture; the table's rows, in this order.
RENDERINGS: dict[str, Renderer] = {
    "28-px original, light on dark (PNG)": render_original,
    "enlarged to 112 px, dark on light (PNG)": render_enlarged,
    "photo-like: uneven light, colour cast, noise (JPEG)": render_photo,
    "thick pen strokes, dark on light (PNG)": render_thick_pen,
}


# --------------------------------------------------------------------------- digits and pairs


def load_digits(path: str | Path, source: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) from the MNIST cache (``source="mnist"``: its test
    digits) or a ``--digits`` file (``source="digits"``)."""
    path = Path(path)
    if not path.is_file():
        hint = (" (it is written once by `make data`, or by `python -c \"from training.mnist import load_mnist; "
                "load_mnist()\"`)") if source == "mnist" else ""
        raise FreeformDataError(f"{path}: no such file{hint}")
    images_key, labels_key = KEYS[source]
    with np.load(path, allow_pickle=False) as npz:
        if images_key not in npz.files or labels_key not in npz.files:
            raise FreeformDataError(f"{path}: needs keys {images_key!r} and {labels_key!r}, has {npz.files}")
        images, labels = npz[images_key], npz[labels_key]
    if images.dtype != PIXEL_DTYPE or images.ndim != 3 or images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE):
        raise FreeformDataError(f"{path}: {images_key!r} must be (N, {DIGIT_SIZE}, {DIGIT_SIZE}) {PIXEL_DTYPE}, "
                                f"got {images.shape} {images.dtype}")
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
        raise FreeformDataError(f"{path}: {labels_key!r} must be one class 0-9 per image")
    return images, labels.astype(np.int64)


def uniform_pairs(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) indices into ``labels``: ordered digit classes (a, b), a != b, uniform over the 90 such pairs,
    then a random digit of each class."""
    present = np.unique(labels)
    if len(present) < 2:
        raise FreeformDataError("the digits must hold at least two classes")
    ordered = np.array([(a, b) for a in present for b in present if a != b])
    classes = ordered[rng.integers(0, len(ordered), n)]
    pools = {c: np.flatnonzero(labels == c) for c in present}
    return np.stack([[pools[c][rng.integers(0, len(pools[c]))] for c in column] for column in classes.T], axis=1)


def picture_to_digit(data: bytes, name: str) -> np.ndarray | None:
    """``/compare``'s preprocessing of one uploaded picture; None where it refuses the picture as blank."""
    try:
        return prepare_digit_bytes(data, name)
    except BlankImageError:
        return None


# --------------------------------------------------------------------------- the evaluation


@dataclass
class RenderingResult:
    """One rendering's pairs as the models read them, and the truth: enough to work every number out again."""

    name: str
    digits: np.ndarray  # (N, 2) true classes, left and right
    read: np.ndarray  # (N, 2) the averaged digit heads' most likely class; -1 where the picture was refused
    probabilities: dict[str, np.ndarray]  # prior -> (N,) P(left > right); NaN where a picture was refused

    @property
    def refused(self) -> int:
        return int((self.read < 0).any(axis=1).sum())

    def digit_accuracy(self) -> float:
        return float((self.read == self.digits).mean())

    def pair_accuracy(self, prior: str) -> float:
        truth = self.digits[:, 0] > self.digits[:, 1]
        p = self.probabilities[prior]
        return float(np.where(np.isnan(p), False, (p >= 0.5) == truth).mean())


def evaluate_rendering(ensemble: Ensemble, name: str, render: Renderer, images: np.ndarray, labels: np.ndarray,
                       pairs: np.ndarray, seed: int) -> RenderingResult:
    """Render both digits of every pair, read them through /compare's path, and score the pairs."""
    rng = np.random.default_rng(seed)
    blank = np.zeros((DIGIT_SIZE, DIGIT_SIZE), dtype=PIXEL_DTYPE)
    halves = [[picture_to_digit(render(images[i], rng), side) for i, side in zip(pair, ("left", "right"),
                                                                                 strict=True)] for pair in pairs]
    refused = np.array([[half is None for half in pair] for pair in halves])
    # A refused half is scored as a blank one so that its pair's other half is still read; it counts as wrong.
    x = np.stack([join_pair(*(blank if half is None else half for half in pair)) for pair in halves])
    prediction = ensemble.predict(x)
    read = np.where(refused, -1, prediction.digits)
    probabilities = {prior: np.where(refused.any(axis=1), np.nan, prediction.by_prior[prior]) for prior in PRIORS}
    return RenderingResult(name, labels[pairs], read, probabilities)


def evaluate(ensemble: Ensemble, images: np.ndarray, labels: np.ndarray, n_pairs: int, seed: int = 0,
             renderings: dict[str, Renderer] | None = None) -> list[RenderingResult]:
    """The same ``n_pairs`` uniform pairs through every rendering."""
    pairs = uniform_pairs(labels, n_pairs, np.random.default_rng(seed))
    return [evaluate_rendering(ensemble, name, render, images, labels, pairs, seed + 1 + k)
            for k, (name, render) in enumerate((renderings or RENDERINGS).items())]


def table(results: list[RenderingResult]) -> str:
    """The markdown table: per rendering, digit accuracy and pair accuracy under each prior."""
    headers = ["pictures", "digits read right (averaged heads)",
               *(f"pair right, {prior} prior" for prior in PRIORS), "pairs refused (blank)"]
    rows = [[r.name, f"{r.digit_accuracy():.3f}", *(f"{r.pair_accuracy(prior):.3f}" for prior in PRIORS),
             str(r.refused)] for r in results]
    return markdown_table(rows, headers)


def report(results: list[RenderingResult], *, n_pairs: int, seed: int, source: str, models: str,
           created: str | None, command: str) -> str:
    """docs/freeform.md: what was measured, how, and the table."""
    return "\n".join([
        "# Free-form pairs: two pictures, as `/compare` receives them",
        "",
        f"{n_pairs} pairs of {source}, uniform over ordered digit pairs a != b, each digit rendered as a picture "
        "and taken through `/compare`'s own path (`open_image` -> `prepare_digit` -> `join_pair` -> "
        "`Ensemble.predict`). \"Digits read right\" counts both halves (the ten models' digit heads averaged); "
        "\"pair right\" is the answer P(left > right) >= 0.5 under each prior (`ensemble/priors.py`: `course`, "
        "the LightGBM stacker fitted on course pairs; `uniform`, the Bayes read-out of the averaged digit heads "
        "with a uniform prior over a != b). A refused picture counts as wrong.",
        "",
        table(results),
        "",
        f"Models: `{models}` (manifest created {created or 'unknown'}); seed {seed}. Regenerate with:",
        "",
        "```bash",
        command,
        "```",
        "",
    ])


# --------------------------------------------------------------------------- command line


def _shown(path: str) -> str:
    """A path as the report shows it: relative to the working folder when it lies inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.freeform", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(Path(__file__).resolve().parent.parent / "models"),
                        help="models folder (default: the committed one)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mnist", default=str(DEFAULT_MNIST),
                        help=f"the MNIST cache whose test digits are used (default: {DEFAULT_MNIST})")
    source.add_argument("--digits", help="instead: an .npz with 'images' (N, 28, 28) uint8 and 'labels' (N,)")
    parser.add_argument("--pairs", type=int, default=2000, help="pairs per rendering (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the markdown report here (e.g. docs/freeform.md)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        images, labels = load_digits(args.digits or args.mnist, "digits" if args.digits else "mnist")
        ensemble = Ensemble.load(args.models)
    except (FreeformDataError, ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results = evaluate(ensemble, images, labels, args.pairs, args.seed)
    print(table(results))
    print(f"\n{args.pairs} pairs per rendering, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.out:
        source_text = (f"digits from `{args.digits}`" if args.digits else
                       "MNIST test digits (t10k, never used for training)")
        command = "python -m ensemble.freeform " + shlex.join(argv if argv is not None else sys.argv[1:])
        atomic_write_text(args.out, report(results, n_pairs=args.pairs, seed=args.seed, source=source_text,
                                           models=_shown(args.models), created=ensemble.manifest.get("created"),
                                           command=command.strip()))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
