"""The layout of an output folder (``models/`` or a ``runs/NAME`` experiment): where every artifact lives.

Training writes checkpoints and weights, export writes the ONNX graphs, stacking writes the stackers,
the manifest and the report, the bench and the run time read them: all of them ask this one object
for paths, so the layout is written down once::

    OUT/
      checkpoints/NAME.pt                  resumable training state (never committed)
      weights/NAME/weights.safetensors     best weights, with history.json and curves.png beside them
      onnx/NAME.onnx                       one graph per base model
      ensemble.onnx, ensemble_int8.onnx    all base models fused into one graph (fp32, int8)
      stacker_lightgbm.txt, stacker_logreg.json, reference_predictions.npz
      manifest.json                        the contract between training and serving (ensemble.manifest)
      student.onnx, student_int8.onnx      the distilled student (training.distill), student.json its record
      training_results.json, REPORT.md, report/   the results table, the report and its figures

The manifest names each artifact by a role (``fused``, ``lightgbm``, ``onnx:NAME``, ...); ``role_paths``
maps roles to these paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ensemble.manifest import MANIFEST


@dataclass(frozen=True)
class ArtifactLayout:
    """Paths of every artifact under one output folder ``root``."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # --- training
    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / f"{name}.pt"

    def weights_dir(self, name: str) -> Path:
        return self.root / "weights" / name

    def weights(self, name: str) -> Path:
        return self.weights_dir(name) / "weights.safetensors"

    def history(self, name: str) -> Path:
        return self.weights_dir(name) / "history.json"

    def curves(self, name: str) -> Path:
        return self.weights_dir(name) / "curves.png"

    @property
    def training_results(self) -> Path:
        return self.root / "training_results.json"

    # --- export
    def onnx(self, name: str) -> Path:
        return self.root / "onnx" / f"{name}.onnx"

    @property
    def fused(self) -> Path:
        return self.root / "ensemble.onnx"

    @property
    def fused_int8(self) -> Path:
        return self.root / "ensemble_int8.onnx"

    # --- stacking and serving
    @property
    def lightgbm(self) -> Path:
        return self.root / "stacker_lightgbm.txt"

    @property
    def logreg(self) -> Path:
        return self.root / "stacker_logreg.json"

    @property
    def reference(self) -> Path:
        return self.root / "reference_predictions.npz"

    # --- the distilled student (training.distill, ensemble.student); its weights: weights("student")
    @property
    def student(self) -> Path:
        return self.root / "student.onnx"

    @property
    def student_int8(self) -> Path:
        return self.root / "student_int8.onnx"

    @property
    def student_record(self) -> Path:
        return self.root / "student.json"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def report(self) -> Path:
        return self.root / "REPORT.md"

    @property
    def figures(self) -> Path:
        return self.root / "report"

    def role_paths(self, names: tuple[str, ...] | list[str]) -> dict[str, Path]:
        """Manifest role -> path of every artifact of an ensemble of these base models; FileNotFoundError
        naming the first one missing. The reference predictions are listed when they exist; the int8
        graph is not: it is listed only once it passes its parity check (``export.quantize``)."""
        files = {"fused": self.fused, "lightgbm": self.lightgbm, "logreg": self.logreg}
        for name in names:
            files[f"onnx:{name}"] = self.onnx(name)
            files[f"weights:{name}"] = self.weights(name)
        missing = [path for path in files.values() if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: missing ({len(missing)} artifact(s) of the ensemble are)")
        if self.reference.is_file():
            files["reference"] = self.reference
        return files
