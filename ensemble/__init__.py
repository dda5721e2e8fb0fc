"""The torch-free run time: the input contract, the course file format, and the committed models scoring
digit pairs.

- ``ensemble.contract``: what one digit pair is (shape, dtype, pixel scale, left/right halves); numpy only.
- ``ensemble.course_data``: the course ``.npz`` / CSV format, read, validated and written; numpy only.
- ``ensemble.preprocess``: a person's picture -> an MNIST-style digit, or a course-style pair (Pillow + numpy).
- ``ensemble.manifest``: ``models/manifest.json``, the contract between training and serving, and its hashes.
- ``ensemble.features``: the stacking features, one function for training and serving.
- ``ensemble.runtime``: ``Ensemble``, the base models' fused ONNX graph and the stackers (onnxruntime + lightgbm).
- ``ensemble.student``: the distilled student served in the ensemble's place when asked (DIGIT_COMPARE_MODEL=student).
- ``ensemble.evaluation``, ``ensemble.metrics``: the comparison table of ``python -m ensemble evaluate``.
- ``ensemble.reference``: the answers' statistics, and their reference on course pairs (the monitoring's).
- ``ensemble.atomic``: atomic file writes. (The benchmarks live apart, in ``bench/``.)
- ``python -m ensemble``: predict, evaluate and check submissions on the command line.

numpy + onnxruntime + lightgbm (+ Pillow) only: importing torch anywhere in this package is a bug, and so is
importing the HTTP layer (``serving/``, BentoML, starlette), which sits on top of it.

The names below (``from ensemble import Ensemble``) are loaded on first use (PEP 562), so importing one
light module, e.g. ``ensemble.course_data``, does not import onnxruntime or lightgbm.
"""

from __future__ import annotations

import importlib
import typing as t

if t.TYPE_CHECKING:
    from ensemble.course_data import CourseData, CourseDataError, load_course_npz
    from ensemble.manifest import ManifestError
    from ensemble.runtime import Ensemble, Prediction

#: name -> the module that defines it, imported when the name is first asked for.
_LAZY = {
    "CourseData": "ensemble.course_data",
    "CourseDataError": "ensemble.course_data",
    "load_course_npz": "ensemble.course_data",
    "ManifestError": "ensemble.manifest",
    "Ensemble": "ensemble.runtime",
    "Prediction": "ensemble.runtime",
}

__all__ = ["CourseData", "CourseDataError", "Ensemble", "ManifestError", "Prediction", "load_course_npz"]


def __getattr__(name: str) -> t.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
