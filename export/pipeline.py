"""The export step of the pipeline: every registered model's trained weights -> ONNX, fused, checked.

Reads ``OUT/weights/NAME/weights.safetensors`` for the registered models and writes ``OUT/onnx/NAME.onnx``
and the fused ``OUT/ensemble.onnx`` (``ensemble.layout``). The parity check runs on every export; a
failure raises ``ParityError`` with the numbers. ``python -m export`` and ``training.run_all`` call it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ensemble.course_data import load_course_npz
from ensemble.layout import ArtifactLayout
from ensemble.manifest import read_manifest, sha256_file
from export.onnx_export import check_parity, export_model, fuse_models
from training.data import make_pairs
from training.models import load_weights, model_names

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
               progress: bool = True, into: str | Path | None = None) -> dict:
    """Export the models (default: every registered one, in registry order) and the fused graph under
    ``out`` (or, reading the weights from ``out``, under ``into``); returns the parity report: ``pairs``
    checked, ``models`` (max |ONNX Runtime - PyTorch| logit per model), ``worst`` (the largest of those) and
    ``fused`` (fused graph vs single graphs)."""
    layout, data_dir = ArtifactLayout(out), Path(data_dir)
    target = ArtifactLayout(into) if into is not None else layout
    names = model_names() if names is None else names
    models, paths = {}, {}
    for name in tqdm(names, desc="export to ONNX", unit="model", disable=not progress):
        models[name] = load_weights(name, layout.root, profile)
        paths[name] = target.onnx(name)
        export_model(models[name], paths[name])
    fuse_models(paths, target.fused)
    pairs = parity_pairs(data_dir)
    per_model = check_parity(models, paths, target.fused, pairs)
    fused = per_model.pop("fused")
    return {"pairs": len(pairs), "models": per_model, "worst": max(per_model.values()), "fused": fused}


class ManifestMismatch(Exception):
    """Re-exported graphs that differ from those a folder's manifest records (the message says what to do)."""


def reexport_recorded(out: str | Path, profile: str, data_dir: str | Path, progress: bool = True) -> dict:
    """Export again into a folder whose manifest records graphs, keeping the folder consistent.

    The export runs into a scratch folder beside the manifest. When every graph comes out byte-identical to the
    one the manifest records, the folder (already holding those bytes) is left as it is and the parity report
    returned. When any differs, nothing in ``out`` changes and ManifestMismatch names the files: the stackers
    and the reference predictions were made with the recorded graphs, so only a re-stack may replace them.
    """
    layout = ArtifactLayout(out)
    manifest = read_manifest(layout.root)
    recorded = manifest["artifacts"]
    # A promoted folder (training.promote) leaves the per-model graphs out on purpose: the fused graph holds them.
    left_out = set(manifest.get("promoted", {}).get("left_out", ()))
    names = model_names()
    with tempfile.TemporaryDirectory(prefix=".reexport-", dir=layout.root) as scratch:
        report = export_all(out, profile, data_dir, names, progress, into=scratch)
        fresh = ArtifactLayout(scratch)
        produced = {"fused": fresh.fused, **{f"onnx:{name}": fresh.onnx(name) for name in names
                                             if f"onnx:{name}" not in left_out}}
        differing = [layout.root / recorded[role]["file"] if role in recorded else f"{role} (not recorded)"
                     for role, path in produced.items()
                     if role not in recorded or recorded[role]["sha256"] != sha256_file(path)]
    if differing:
        shown = ", ".join(str(p) for p in differing[:4]) + (f" and {len(differing) - 4} more" if len(differing) > 4
                                                           else "")
        raise ManifestMismatch(
            f"the graphs exported now differ from those {layout.manifest} records ({shown}); the stackers and "
            f"reference predictions were made with the recorded ones, so {layout.root} is left unchanged. To "
            f"re-export and re-stack consistently: python -m training.run_all --out {layout.root} --profile "
            f"{profile} (trained models are kept, not retrained); to only export, use a folder without a manifest.")
    return report
