"""The export step of the pipeline: every registered model's trained weights -> ONNX, fused, checked.

Reads ``OUT/weights/NAME/weights.safetensors`` for the registered models and writes ``OUT/onnx/NAME.onnx``
and the fused ``OUT/ensemble.onnx`` (``ensemble.layout``). The parity check runs on every export; a
failure raises ``ParityError`` with the numbers. ``python -m export`` and ``training.run_all`` call it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ensemble.course_data import load_course_npz
from ensemble.layout import ArtifactLayout
from export.onnx_export import check_parity, export_model, fuse_models
from training.data import make_pairs
from training.models import model_names
from training.train import load_weights

PARITY_PAIRS = 512
PARITY_SEED = 12345  # the parity pairs are fresh draws, fixed so every export checks the same ones


def parity_pairs(data_dir: Path, n: int = PARITY_PAIRS) -> np.ndarray:
    """Course-like pairs for the parity check: fresh ones from the validation source digits when the
    data folder has them, else the first pairs of val.npz."""
    sources = data_dir / "sources.npz"
    if sources.is_file():
        with np.load(sources, allow_pickle=False) as npz:
            return make_pairs(npz["val_images"], npz["val_labels"], n, seed=PARITY_SEED, stream="val")["x"]
    return load_course_npz(data_dir / "val.npz").x[:n]


def export_all(out: str | Path, profile: str, data_dir: str | Path, names: tuple[str, ...] | None = None,
               progress: bool = True) -> dict:
    """Export the models (default: every registered one, in registry order) and the fused graph under
    ``out``; returns the parity report: ``pairs`` checked, ``models`` (max |ONNX Runtime - PyTorch|
    logit per model), ``worst`` (the largest of those) and ``fused`` (fused graph vs single graphs)."""
    layout, data_dir = ArtifactLayout(out), Path(data_dir)
    names = model_names() if names is None else names
    models, paths = {}, {}
    for name in tqdm(names, desc="export to ONNX", unit="model", disable=not progress):
        models[name] = load_weights(name, layout.root, profile)
        paths[name] = layout.onnx(name)
        export_model(models[name], paths[name])
    fuse_models(paths, layout.fused)
    pairs = parity_pairs(data_dir)
    per_model = check_parity(models, paths, layout.fused, pairs)
    fused = per_model.pop("fused")
    return {"pairs": len(pairs), "models": per_model, "worst": max(per_model.values()), "fused": fused}
