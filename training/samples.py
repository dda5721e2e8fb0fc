"""Write the sample images that README's curl examples and the service tests use.

    python -m training.samples [--out samples]

From MNIST's *test* digits (t10k), which no model trains on: single digits as PNG (some light-on-dark like MNIST, some
dark-on-light like ink on paper, some enlarged as a phone photo would be), one course-style 28x56
pair as PNG, and a small course-format ``.npz`` batch with ids. ``samples/expected.json`` records
what each file shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ensemble.course_data import save_course_npz
from training.data import make_pairs
from training.mnist import load_mnist


def write_samples(out: str | Path, seed: int = 7) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mnist = load_mnist()
    images, labels = mnist["test_images"], mnist["test_labels"]
    rng = np.random.default_rng(seed)
    expected: dict = {"digits": {}}
    for digit, style in ((3, "light"), (5, "dark"), (7, "dark"), (8, "light")):
        source = images[rng.choice(np.flatnonzero(labels == digit))]
        if style == "dark":  # ink on paper: invert and enlarge, as a scan or photo would be
            image = Image.fromarray(255 - source).resize((140, 140), Image.Resampling.BICUBIC).convert("RGB")
        else:
            image = Image.fromarray(source)
        name = f"digit_{digit}_{'dark_on_light' if style == 'dark' else 'light_on_dark'}.png"
        image.save(out / name)
        expected["digits"][name] = digit
    pair = make_pairs(images, labels, 1, seed=seed, stream="test", severity=3.0)
    Image.fromarray(pair["x"][0]).save(out / "pair.png")
    expected["pair.png"] = {"digits": pair["digits"][0].tolist(), "label": int(pair["y"][0])}
    batch = make_pairs(images, labels, 16, seed=seed + 1, stream="test")
    ids = np.array([f"SAMPLE_{i:04d}" for i in range(16)])
    save_course_npz(out / "batch.npz", x=batch["x"], id=ids)
    expected["batch.npz"] = {"ids": ids.tolist(), "labels": batch["y"].tolist()}
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.samples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="samples")
    args = parser.parse_args(argv)
    expected = write_samples(args.out)
    print(f"wrote {len(expected['digits'])} digit PNGs, pair.png and batch.npz to {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
