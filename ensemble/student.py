"""The distilled student: one network of one tower's size, trained to imitate the ensemble (``training.distill``),
served in the ensemble's place when asked, torch-free.

    model = load_model("models", "student")      # or DIGIT_COMPARE_MODEL=student; "ensemble" is the default
    pred = model.predict(pairs_uint8, prior="uniform")

The student's graph has the base models' interface (``pairs`` uint8 in; ``logit`` (N,) and ``digit_probs``
(N, 2, 10) out), so its answers have the ensemble's shape with one model, named ``student``: under the course
prior its pair head's probability (it learnt the stacked one), under the uniform prior the same Bayes read-out
of its digit heads as the ensemble's (``ensemble.priors``, the manifest's digit frequencies).

A models folder serves the student once its manifest lists it (roles ``student``, ``student_int8`` when the int8
graph passed its bar, and a ``student`` entry saying what it is and how it measured). ``training.distill`` trains
a student and ``export.student`` completes its folder (its graphs and ``student.json``); ``install_student``
(``python -m ensemble install-student``) copies it into a models folder whose fused graph is the teacher it was
distilled from, and records it there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ensemble.atomic import atomic_path
from ensemble.course_data import as_pairs_uint8
from ensemble.features import sigmoid
from ensemble.layout import ArtifactLayout
from ensemble.manifest import MANIFEST, ManifestError, artifact_entry, read_manifest, verify_artifact, write_manifest
from ensemble.priors import DESCRIPTIONS, check_prior, read_frequencies, uniform_greater_probability
from ensemble.runtime import (
    CHUNK,
    Ensemble,
    PrecisionChoice,
    Prediction,
    hardware_info,
    open_session,
    resolve_device,
    resolve_precision,
)

MODEL_ENV = "DIGIT_COMPARE_MODEL"  # ensemble (default) | student: which model the service and the CLI run
MODELS = ("ensemble", "student")
NAME = "student"
ROLES = {"fp32": "student", "int8": "student_int8"}


class ModelChoiceError(ValueError):
    """A model choice other than MODELS."""


def resolve_model(model: str | None = None) -> str:
    """``ensemble`` or ``student`` from a setting (argument, else $DIGIT_COMPARE_MODEL, else ensemble)."""
    model = (model or os.environ.get(MODEL_ENV) or "ensemble").lower()
    if model not in MODELS:
        raise ModelChoiceError(f"{MODEL_ENV} must be one of {', '.join(MODELS)}, got {model!r}")
    return model


def served_names(manifest: dict, model: str) -> tuple[str, ...]:
    """The names of the networks whose probabilities an answer lists: the base models, or the student alone."""
    return (NAME,) if model == "student" else tuple(m["name"] for m in manifest["models"])


def verify_student(models_dir: str | os.PathLike, manifest: dict) -> list[Path]:
    """The student's graphs (fp32, and int8 where listed), checked against the manifest's hashes; ManifestError
    when the manifest lists no student or a file differs."""
    if ROLES["fp32"] not in manifest["artifacts"] or not isinstance(manifest.get(NAME), dict):
        raise ManifestError(f"{Path(models_dir) / MANIFEST}: lists no student (distill one with `python -m "
                            "training.distill` and `python -m export.student`, then `python -m ensemble "
                            "install-student`)")
    return [verify_artifact(models_dir, manifest, role) for role in ROLES.values() if role in manifest["artifacts"]]


class Student:
    """The student's ONNX graph, answering like ``Ensemble`` with one model."""

    names: tuple[str, ...] = (NAME,)

    def __init__(self, models_dir: Path, manifest: dict, session: ort.InferenceSession, precision: PrecisionChoice,
                 digit_frequencies: np.ndarray):
        self.models_dir, self.manifest, self.session = models_dir, manifest, session
        self.precision_choice, self.digit_frequencies = precision, digit_frequencies
        self.precision = precision.precision
        self.provider: str = session.get_providers()[0]
        self.best_single = NAME

    @classmethod
    def load(cls, models_dir: str | os.PathLike = "models", device: str | None = None, precision: str | None = None,
             threads: int | None = None, spinning: bool = True) -> Student:
        """Verify the manifest and the student's graph, then open it (``device``, ``precision`` and ``threads``
        as for ``Ensemble.load``: int8 on the CPU when the manifest lists the student's int8 graph)."""
        models_dir = Path(models_dir)
        manifest = read_manifest(models_dir)
        verify_student(models_dir, manifest)
        device = resolve_device(device)
        choice = resolve_precision(precision, device, ROLES["int8"] in manifest["artifacts"])
        path = verify_artifact(models_dir, manifest, ROLES[choice.precision])
        try:
            frequencies = read_frequencies(manifest.get("priors"))
        except ValueError as err:
            raise ManifestError(f"{models_dir / MANIFEST}: {err}") from err
        session = open_session(path, device, threads, spinning)
        shapes = {o.name: o.shape for o in session.get_outputs()}
        if len(shapes.get("logit", ())) != 1 or list(shapes.get("digit_probs", ()))[1:] != [2, 10]:
            raise ManifestError(f"{path}: not a single-model graph (outputs {shapes})")
        return cls(models_dir, manifest, session, choice, frequencies)

    def predict(self, pairs: np.ndarray, progress: bool = False, prior: str = "course") -> Prediction:
        """Score pairs as ``Ensemble.predict`` does; ``features`` is empty (no stacker)."""
        check_prior(prior)
        pairs = as_pairs_uint8(pairs, "pairs")
        parts = [self.session.run(None, {"pairs": pairs[i:i + CHUNK]}) for i in range(0, len(pairs), CHUNK)]
        logit = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.float32)
        digit_probs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 2, 10), np.float32)
        by_prior = {"course": sigmoid(logit.astype(np.float64)),
                    "uniform": uniform_greater_probability(digit_probs, self.digit_frequencies)}
        probability = by_prior[prior]
        return Prediction(probability=probability, label=(probability >= 0.5).astype(np.int64),
                          base_probabilities=by_prior["course"][:, None], digits=digit_probs.argmax(axis=-1),
                          logits=logit[:, None], digit_probs=digit_probs[:, None], features=np.zeros((len(pairs), 0)),
                          prior=prior, by_prior=by_prior,
                          base_by_prior={name: p[:, None] for name, p in by_prior.items()})

    def method_probabilities(self, pred: Prediction) -> dict[str, tuple[str, np.ndarray]]:
        """The evaluation table's rows: the student alone."""
        return {NAME: ("student", pred.by_prior["course"] if pred.by_prior else pred.probability)}

    def info(self) -> dict:
        """What is loaded: the student, its teacher, its hashes and metrics, the provider."""
        m = self.manifest
        return {"model": "student", "models": [NAME], "best_single": NAME, "format_version": m["format_version"],
                "created": m.get("created"), **hardware_info(self.precision_choice, self.provider),
                "student": m[NAME],
                "artifacts": {role: {"file": a["file"], "sha256": a["sha256"]} for role, a in m["artifacts"].items()
                              if role in ROLES.values()},
                "training": m.get("training", {}),
                "priors": {"choices": dict(DESCRIPTIONS), "digit_frequencies": self.digit_frequencies.round(6).tolist(),
                           "digit_frequencies_source": (m.get("priors") or {}).get(
                               "source", "the course pairing rule (not recorded in this manifest)")}}


def load_model(models_dir: str | os.PathLike = "models", model: str | None = None, device: str | None = None,
               precision: str | None = None, threads: int | None = None, spinning: bool = True) -> Ensemble | Student:
    """The model to serve: ``model`` (default $DIGIT_COMPARE_MODEL, else the ensemble), loaded and verified."""
    if resolve_model(model) == "student":
        return Student.load(models_dir, device, precision, threads, spinning)
    return Ensemble.load(models_dir, device, precision, threads, spinning)


# --------------------------------------------------------------------------- installing a student

def install_student(student_dir: str | os.PathLike, models_dir: str | os.PathLike, force: bool = False) -> dict:
    """Copy a distilled student (``training.distill --out DIR``) into a models folder and record it in the manifest.

    The student must have been distilled from this folder's ensemble: its record names the teacher's fused graph
    by sha256, which must be this manifest's (``force`` installs it anyway). Every file is checked against the
    student's record before it is copied; returns the manifest's new ``student`` entry.
    """
    student_dir, models_dir = Path(student_dir), Path(models_dir)
    record_path = ArtifactLayout(student_dir).student_record
    if not record_path.is_file():
        raise ManifestError(f"{record_path}: no student record (write one with `python -m export.student`)")
    record = json.loads(record_path.read_text())
    manifest = read_manifest(models_dir)
    teacher = record["student"]["teacher"]["fused_sha256"]
    if teacher != manifest["artifacts"]["fused"]["sha256"] and not force:
        raise ManifestError(f"{record_path}: distilled from the ensemble whose fused graph is {teacher[:12]}..., "
                            f"not {models_dir}'s ({manifest['artifacts']['fused']['sha256'][:12]}...); distil again "
                            "from it (or force)")
    for role in ROLES.values():
        manifest["artifacts"].pop(role, None)
    for role, entry in record["artifacts"].items():
        source = verify_artifact(student_dir, record, role)
        target = models_dir / entry["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        manifest["artifacts"][role] = artifact_entry(models_dir, target)
    manifest[NAME] = record["student"]
    write_manifest(models_dir, manifest)
    return manifest[NAME]
