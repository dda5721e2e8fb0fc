"""The distilled student's export step: its weights (``python -m training.distill``) -> ONNX, int8, measured.

    python -m export.student STUDENT_DIR [--data data] [--teacher DIR] [--threads N] [--score FILE ...]
                             [--install-into MODELS_DIR]

Reads ``STUDENT_DIR/weights/student/weights.safetensors`` and the ``history.json`` beside them (what the student
is: its configuration, profile and teacher), and writes into ``STUDENT_DIR``:

1. ``student.onnx`` (the base models' interface: uint8 pairs in, logit and digit probabilities out) with the export
   step's parity check;
2. ``student_int8.onnx`` when the int8 graph's labels agree with fp32 on at least 99.5% of held-out validation
   pairs, its accuracy is within 0.3 points, and it is at least 1.5x as fast as fp32 at a batch of 256;
3. **measured**, never chosen on: the student beside its teacher (the ensemble whose folder the record names, or
   ``--teacher``; its fused graph must still be the one that taught) on the validation pairs, the built test split
   (``test_public`` + ``test_private`` with their labels) and each ``--score`` file: accuracy, agreement with the
   teacher; ``student.json`` (the record ``python -m ensemble install-student`` copies into a models folder's
   manifest) and ``STUDENT.md``.

``--install-into DIR`` installs the student into DIR at the end (its fused graph must be the teacher's).

This is the export layer's half of distillation: ``training.distill`` trains and never imports ``export``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ensemble.atomic import atomic_write_text
from ensemble.course_data import CourseData, load_course_npz
from ensemble.layout import ArtifactLayout
from ensemble.manifest import ManifestError, artifact_entry
from ensemble.runtime import Ensemble, open_session
from ensemble.student import NAME, ROLES, install_student
from ensemble.tables import markdown_table
from export.onnx_export import ParityError, export_model, model_parity
from export.pipeline import parity_pairs
from export.quantize import CALIBRATION_PAIRS, MAX_ACCURACY_DROP, MIN_LABEL_AGREEMENT, first_convs, quantize_graph
from training.datasets import load_labelled_test
from training.distill import teacher_scores
from training.models import ModelConfig, build_from_config
from training.precision import torch_threads
from training.profiles import get_profile

INT8_PAIRS = 2000  # held-out validation pairs on which the int8 student is checked
# The int8 student ships only where it pays: at least this many times the fp32 student's pairs/s at a batch of
# SPEED_BATCH (median of SPEED_REPEATS interleaved timings, ONNX Runtime's threads as served).
MIN_INT8_SPEEDUP, SPEED_BATCH, SPEED_REPEATS = 1.5, 256, 7


# --------------------------------------------------------------------------- the trained student

def load_trained_student(layout: ArtifactLayout) -> tuple[torch.nn.Module, dict]:
    """The student network with its trained weights (eval mode), and what ``training.distill`` recorded about it."""
    if not (layout.weights(NAME).is_file() and layout.history(NAME).is_file()):
        raise FileNotFoundError(f"{layout.weights_dir(NAME)}: no trained student (python -m training.distill --out "
                                f"{layout.root})")
    entry = json.loads(layout.history(NAME).read_text())["student"]
    config = dict(entry["config"])
    config["tower_kwargs"] = {k: tuple(v) if isinstance(v, list) else v for k, v in config["tower_kwargs"].items()}
    prof = get_profile(entry["profile"])
    model = build_from_config(ModelConfig(**config), prof.width, prof.feat_dim)
    model.load_state_dict(load_file(layout.weights(NAME)))
    return model.eval(), entry


def load_teacher(entry: dict, teacher_dir: Path | None, threads: int | None) -> Ensemble:
    """The ensemble that taught the student (ManifestError when its folder now holds another fused graph)."""
    folder = teacher_dir or Path(entry["teacher"]["folder"])
    teacher = Ensemble.load(folder, device="cpu", precision="fp32", threads=threads)
    if teacher.manifest["artifacts"]["fused"]["sha256"] != entry["teacher"]["fused_sha256"]:
        raise ManifestError(f"{folder}: its fused graph is not the one the student was distilled from "
                            f"({entry['teacher']['fused_sha256'][:12]}...); pass the teacher's folder as --teacher")
    return teacher


# --------------------------------------------------------------------------- export, int8, measurements

def export_student(student: torch.nn.Module, layout: ArtifactLayout, data_dir: Path) -> dict:
    """``student.onnx`` with the export step's parity check (ParityError when it misses)."""
    export_model(student, layout.student)
    pairs = parity_pairs(data_dir)
    diff, _, _ = model_parity(NAME, student, layout.student, pairs)
    return {"pairs": len(pairs), "max_logit_diff": diff}


def student_scores(path: Path, x: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A student graph's P(left > right) and digit probabilities (ONNX Runtime on the CPU)."""
    logit, digit_probs = open_session(path, "cpu", threads).run(None, {"pairs": x})
    return 1 / (1 + np.exp(-logit.astype(np.float64))), digit_probs


def int8_speedup(layout: ArtifactLayout, pairs: np.ndarray) -> float:
    """The int8 student's pairs/s over the fp32 one's on ``pairs`` (one call each, interleaved; medians)."""
    sessions = {name: open_session(path, "cpu") for name, path in (("fp32", layout.student),
                                                                    ("int8", layout.student_int8))}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        session.run(None, {"pairs": pairs})  # warm-up
    for _ in range(SPEED_REPEATS):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, {"pairs": pairs})
            times[name].append(time.perf_counter() - started)
    return float(np.median(times["fp32"]) / np.median(times["int8"]))


def add_int8(layout: ArtifactLayout, val: CourseData, threads: int | None = None) -> dict:
    """Quantize the student (calibrated on the last validation pairs), check it on the first ones; the int8 graph is
    kept only when it passes (labels agree on >= 99.5%, accuracy at most 0.3 points lower) and pays (at least
    MIN_INT8_SPEEDUP x the fp32 student's pairs/s at a batch of SPEED_BATCH)."""
    calibration = val.x[-CALIBRATION_PAIRS:]
    check = slice(0, max(1, min(INT8_PAIRS, len(val) - CALIBRATION_PAIRS)))
    quantize_graph(layout.student, layout.student_int8, calibration, first_convs)
    fp32, _ = student_scores(layout.student, val.x[check], threads)
    int8, _ = student_scores(layout.student_int8, val.x[check], threads)
    y = val.y[check]
    report = {"pairs": int(len(y)), "label_agreement": float(((fp32 >= 0.5) == (int8 >= 0.5)).mean()),
              "max_probability_diff": float(np.abs(fp32 - int8).max()),
              "fp32_accuracy": float(((fp32 >= 0.5) == y).mean()), "int8_accuracy": float(((int8 >= 0.5) == y).mean())}
    report["speedup_batch_256"] = int8_speedup(layout, val.x[:SPEED_BATCH])
    report["shipped"] = (report["label_agreement"] >= MIN_LABEL_AGREEMENT
                         and report["fp32_accuracy"] - report["int8_accuracy"] <= MAX_ACCURACY_DROP
                         and report["speedup_batch_256"] >= MIN_INT8_SPEEDUP)
    if not report["shipped"]:
        layout.student_int8.unlink()
    return report


def compare(teacher: Ensemble, layout: ArtifactLayout, name: str, data: CourseData,
            threads: int | None = None) -> dict:
    """The student beside its teacher on labelled pairs: accuracy of each, and how often they agree."""
    student, _ = student_scores(layout.student, data.x, threads)
    teacher_p, _ = teacher_scores(teacher, data.x)
    row = {"set": name, "n": int(len(data)), "teacher_accuracy": float(((teacher_p >= 0.5) == data.y).mean()),
           "student_accuracy": float(((student >= 0.5) == data.y).mean()),
           "agreement": float(((teacher_p >= 0.5) == (student >= 0.5)).mean())}
    if layout.student_int8.is_file():
        int8, _ = student_scores(layout.student_int8, data.x, threads)
        row["int8_accuracy"] = float(((int8 >= 0.5) == data.y).mean())
    return row


def measured_sets(data_dir: Path, val: CourseData, score_files: list[Path]) -> list[tuple[str, CourseData]]:
    sets = [("val.npz (built validation)", val)]
    test = load_labelled_test(data_dir)
    if test is not None:
        sets.append(("built test (test_public + test_private)", test))
    sets += [(str(path), load_course_npz(path, require=("x", "y"))) for path in score_files]
    return sets


def write_record(layout: ArtifactLayout, entry: dict) -> dict:
    """``student.json``: the student's manifest entries (its graphs with their hashes, and what it is)."""
    artifacts = {ROLES["fp32"]: artifact_entry(layout.root, layout.student)}
    if layout.student_int8.is_file():
        artifacts[ROLES["int8"]] = artifact_entry(layout.root, layout.student_int8)
    record = {"artifacts": artifacts, "student": entry}
    atomic_write_text(layout.student_record, json.dumps(record, indent=2) + "\n")
    return record


def report_text(entry: dict) -> str:
    rows = [[r["set"], f"{r['n']:,}", f"{r['teacher_accuracy']:.4f}", f"{r['student_accuracy']:.4f}",
             f"{r['int8_accuracy']:.4f}" if "int8_accuracy" in r else "not shipped", f"{r['agreement']:.4f}"]
            for r in entry["metrics"]]
    d = entry["distillation"]
    return "\n".join([
        "# The distilled student", "",
        f"`{entry['architecture']}`'s network ({entry['params']:,} parameters), started from {entry['init']}, "
        f"distilled from the ensemble whose fused graph is `{entry['teacher']['fused_sha256'][:12]}...` on "
        f"{d['pairs']:,} transfer pairs x {d['epochs']} epochs (alpha {d['alpha']:g}, T {d['temperature']:g}, "
        f"digit weight {d['digit_weight']:g}) in {d['seconds']:.0f} s, exported and measured in "
        f"{entry.get('export_seconds', 0):.0f} s.", "",
        markdown_table(rows, ["pairs", "n", "ensemble (stacked)", "student fp32", "student int8",
                              "student = ensemble"]), "",
        f"int8: {json.dumps(entry['int8'])}", ""])


# --------------------------------------------------------------------------- the whole step

def export_student_folder(out: Path, data_dir: Path, teacher_dir: Path | None = None, threads: int | None = None,
                          score_files: list[Path] | None = None) -> dict:
    """Export, int8 and measurements of the student trained in ``out`` (module docstring); returns its manifest
    entry, also written to ``student.json`` with its graphs' hashes, and ``STUDENT.md``."""
    started = time.perf_counter()
    layout = ArtifactLayout(out)
    with torch_threads(threads):  # put back after: a caller in this process keeps its own
        student, entry = load_trained_student(layout)
        teacher = load_teacher(entry, teacher_dir, threads)
        val_all = load_course_npz(data_dir / "val.npz", require=("x", "y"))
        entry = {**entry, "parity": export_student(student, layout, data_dir),
                 "int8": add_int8(layout, val_all, threads)}
        entry["metrics"] = [compare(teacher, layout, name, data, threads)
                            for name, data in measured_sets(data_dir, val_all, score_files or [])]
        entry["export_seconds"] = round(time.perf_counter() - started, 1)
        write_record(layout, entry)
        atomic_write_text(layout.root / "STUDENT.md", report_text(entry))
        return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.student", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student", metavar="STUDENT_DIR", help="the folder python -m training.distill wrote (--out)")
    parser.add_argument("--data", default="data", help="data folder: parity pairs, val.npz, test files")
    parser.add_argument("--teacher", help="the teacher's folder (default: the one the student's record names)")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: one per CPU)")
    parser.add_argument("--score", action="append", default=[], metavar="FILE",
                        help="a labelled course file to measure the student on (e.g. ../shared/course/val.npz)")
    parser.add_argument("--install-into", metavar="MODELS_DIR", help="install the student there at the end")
    args = parser.parse_args(argv)
    try:
        entry = export_student_folder(Path(args.student), Path(args.data),
                                      Path(args.teacher) if args.teacher else None, args.threads,
                                      [Path(p) for p in args.score])
        print(report_text(entry))
        if args.install_into:
            install_student(args.student, args.install_into)
            print(f"installed into {args.install_into}: serve it with DIGIT_COMPARE_MODEL=student", file=sys.stderr)
    except (FileNotFoundError, ManifestError, ParityError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
