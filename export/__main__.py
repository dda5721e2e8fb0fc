"""Export the trained weights to ONNX (one file each + the fused graph) and check parity.

    python -m export [--out models] [--profile default] [--data data]

Reads ``OUT/weights/NAME/weights.safetensors`` for the ten registered models and writes
``OUT/onnx/NAME.onnx`` and ``OUT/ensemble.onnx``. The parity check runs on every export; a
failure stops with the numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ensemble.course_data import load_course_npz
from export.onnx_export import ParityError, check_parity, export_model, fuse_models
from training.data import make_pairs
from training.models import MODEL_NAMES
from training.profiles import PROFILES
from training.train import load_weights

FUSED = "ensemble.onnx"
PARITY_PAIRS = 512


def parity_pairs(data_dir: Path, n: int = PARITY_PAIRS) -> np.ndarray:
    """Course-like pairs for the parity check: fresh ones from the validation source digits when the
    data folder has them, else the first pairs of val.npz."""
    sources = data_dir / "sources.npz"
    if sources.is_file():
        with np.load(sources, allow_pickle=False) as npz:
            return make_pairs(npz["val_images"], npz["val_labels"], n, seed=12345, stream="val")["x"]
    return load_course_npz(data_dir / "val.npz").x[:n]


def export_all(out: str | Path, profile: str, data_dir: str | Path, names: tuple[str, ...] = MODEL_NAMES,
               progress: bool = True) -> dict:
    """Export every model and the fused graph under ``out``; returns the parity report."""
    out, data_dir = Path(out), Path(data_dir)
    models, paths = {}, {}
    for name in tqdm(names, desc="export to ONNX", unit="model", disable=not progress):
        models[name] = load_weights(name, out, profile)
        paths[name] = out / "onnx" / f"{name}.onnx"
        export_model(models[name], paths[name])
    fuse_models(paths, out / FUSED)
    return check_parity(models, paths, out / FUSED, parity_pairs(data_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models", help="folder with weights/ (default: models)")
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--data", default="data", help="data folder, for the parity pairs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        report = export_all(args.out, args.profile, args.data)
    except ParityError as err:
        print(f"export stopped: {err}", file=sys.stderr)
        return 1
    worst = max(v for k, v in report.items() if k != "fused")
    print(f"exported {len(report) - 1} models and {args.out}/{FUSED} in {time.perf_counter() - start:.1f}s; "
          f"parity on {PARITY_PAIRS} pairs: max |ORT - torch| = {worst:.2e}, fused vs single = {report['fused']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
