"""Command-line tools on the committed models (no torch needed).

    python -m ensemble predict IN.npz --out pred.csv [--proba proba.csv] [--prior course|uniform]
    python -m ensemble evaluate IN.npz [--labels LABELS.csv] [--json OUT.json] [--agreement OUT.png]
    python -m ensemble check-submission PRED.csv --data IN.npz
    python -m ensemble verify
    python -m ensemble install-student STUDENT_DIR        (a distilled student into --models' manifest)
    python -m ensemble reference VAL.npz                  (the monitoring's reference statistics into the manifest)

``--model student`` (or DIGIT_COMPARE_MODEL=student) predicts and evaluates with the distilled student
(``ensemble.student``) when the models folder lists one; the ensemble by default.

IN.npz is a course file (``ensemble.course_data``): ``x`` holds the pairs (``ensemble.contract``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ensemble.atomic import atomic_write_text
from ensemble.contract import PAIRS_SHAPE_TEXT, PIXEL_DTYPE
from ensemble.course_data import (
    CourseDataError,
    labels_for_ids,
    load_course_npz,
    read_labels_csv,
    write_probabilities_csv,
    write_submission_csv,
)
from ensemble.evaluation import agreement_matrix, evaluation_rows, format_rows, most_alike, plot_agreement
from ensemble.manifest import ManifestError, verify_recorded_artifacts
from ensemble.priors import PRIORS
from ensemble.reference import record_reference
from ensemble.student import MODELS, ModelChoiceError, install_student, load_model, resolve_model

DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "models"
#: What the input arguments' help says a course file holds.
COURSE_FILE_HELP = f"a course-format .npz: x {PAIRS_SHAPE_TEXT} {PIXEL_DTYPE} pairs, optionally y (0/1) and id"


def predict(args: argparse.Namespace) -> int:
    data = load_course_npz(args.input)
    ens = load_model(args.models, args.model)
    pred = ens.predict(data.x, progress=True, prior=args.prior)
    ids = data.ids_or_row_numbers()
    write_submission_csv(args.out, ids, pred.label)  # exactly id,label: what the course (and check-submission) accept
    if args.proba:
        write_probabilities_csv(args.proba, ids, pred.probability)
    print(f"wrote {len(data)} predictions ({resolve_model(args.model)}, {args.prior} prior) to {args.out} "
          f"({pred.label.mean():.1%} labelled 1)" + (f", probabilities to {args.proba}" if args.proba else ""),
          file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    data = load_course_npz(args.input)
    if args.labels:
        y = labels_for_ids(read_labels_csv(args.labels), data.ids_or_row_numbers(), str(args.labels))
    elif data.y is not None:
        y = data.y
    else:
        raise CourseDataError(f"{args.input}: has no labels ('y'); pass --labels LABELS.csv")
    ens = load_model(args.models, args.model)
    pred = ens.predict(data.x, progress=True)
    rows = evaluation_rows(ens, pred, y)
    print(f"{args.input}: {len(y)} labelled pairs\n")
    print(format_rows(rows))
    if len(ens.names) > 1:
        # How often each two base models give the same label: near-duplicates add little to the stack.
        agreement = agreement_matrix(pred.base_probabilities >= 0.5)
        print("\nmost alike base models (share of pairs labelled alike):")
        for a, b, share in most_alike(list(ens.names), agreement):
            print(f"  {a} ~ {b}: {share:.4f}")
        if args.agreement:
            plot_agreement(list(ens.names), agreement, args.agreement, f"{Path(args.input).name}: how often two "
                           f"models label a pair alike (%)")
            print(f"wrote {args.agreement}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"n": int(len(y)), "rows": rows}, indent=2) + "\n")
    return 0


def check_submission(args: argparse.Namespace) -> int:
    """Validate a submission against a test file; prints every problem found, exit 1 if any."""
    expected = load_course_npz(args.data).ids_or_row_numbers()
    path = Path(args.submission)
    if not path.is_file():
        raise CourseDataError(f"{path}: no such file")
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["id", "label"]:
            problems.append(f"header must be exactly 'id,label', got {','.join(header) if header else 'nothing'}")
        for line, row in enumerate(tqdm(reader, total=len(expected), desc="checking", unit="row",
                                        disable=len(expected) < 50_000), start=2):
            if len(row) != 2:
                problems.append(f"line {line}: {len(row)} columns, expected 2 (id,label)")
                continue
            key, label = row
            if label not in ("0", "1"):
                problems.append(f"line {line}: label must be 0 or 1, got {label!r}")
            if key in seen:
                problems.append(f"line {line}: id {key!r} already on line {seen[key]}")
            seen.setdefault(key, line)
    expected_set = set(expected.tolist())
    missing = [i for i in expected if i not in seen]
    extra = [i for i in seen if i not in expected_set]
    if missing:
        problems.append(f"{len(missing)} id(s) of {args.data} have no prediction, e.g. {', '.join(missing[:3])}")
    if extra:
        problems.append(f"{len(extra)} id(s) are not in {args.data}, e.g. {', '.join(extra[:3])}")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        print(f"{path}: INVALID submission\n" + "\n".join(f"  - {p}" for p in shown), file=sys.stderr)
        return 1
    print(f"{path}: OK, {len(seen)} predictions, one per id of {args.data}, labels 0/1")
    return 0


def verify(args: argparse.Namespace) -> int:
    """Check every file the manifest records (serving opens only the fused graph and the stackers)."""
    roles = verify_recorded_artifacts(args.models)
    print(f"every artifact the manifest records matches its sha256 ({len(roles)} files)")
    return 0


def install(args: argparse.Namespace) -> int:
    """Copy a distilled student into the models folder and record it in its manifest."""
    entry = install_student(args.student, args.models, force=args.force)
    print(f"installed the student of {args.student} into {args.models} (serve it with DIGIT_COMPARE_MODEL=student): "
          f"{entry['params']:,} parameters, distilled from the fused graph {entry['teacher']['fused_sha256'][:12]}...")
    return 0


def reference(args: argparse.Namespace) -> int:
    """Score a labelled course file and record what the answers look like on it in the manifest (monitoring)."""
    block = record_reference(args.models, args.input)
    course = block["models"]["ensemble"]["priors"]["course"]
    print(f"recorded the reference statistics of {', '.join(block['models'])} on {block['pairs']} pairs of "
          f"{args.input} in {Path(args.models) / 'manifest.json'} (course prior: mean confidence "
          f"{course['confidence']['mean']:.4f}, mean disagreement {course['disagreement']['mean']:.4f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(DEFAULT_MODELS), help="models folder (default: the committed one)")
    parser.add_argument("--model", choices=MODELS, help="which model predicts and evaluates: the ensemble or the "
                        "distilled student (default: $DIGIT_COMPARE_MODEL, else ensemble)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="write a submission CSV for a course-format .npz")
    p.add_argument("input", help=COURSE_FILE_HELP)
    p.add_argument("--out", required=True, help="CSV to write (id,label)")
    p.add_argument("--proba", metavar="PROBA_CSV",
                   help="also write id,probability (P(left > right)) to this CSV; --out stays id,label")
    p.add_argument("--prior", choices=PRIORS, default="course",
                   help="which pairs to expect (default: course, the course's pairs; uniform: any two digits "
                        "a != b, for pairs that are not the course's; ensemble/priors.py)")
    p.set_defaults(run=predict)
    e = sub.add_parser("evaluate", help="compare every base model, baseline and stacker on a labelled file")
    e.add_argument("input", help=f"{COURSE_FILE_HELP}; labelled by its y or --labels")
    e.add_argument("--labels", help="id,label CSV (for test files without 'y')")
    e.add_argument("--json", help="also write the table as JSON")
    e.add_argument("--agreement", metavar="OUT.png",
                   help="also plot how often each two base models agree (needs matplotlib: the training extra)")
    e.set_defaults(run=evaluate)
    c = sub.add_parser("check-submission", help="validate a submission CSV against a test file")
    c.add_argument("submission")
    c.add_argument("--data", required=True, help=f"the course file the submission answers ({COURSE_FILE_HELP})")
    c.set_defaults(run=check_submission)
    v = sub.add_parser("verify", help="check the sha256 of every artifact the manifest records")
    v.set_defaults(run=verify)
    i = sub.add_parser("install-student", help="copy a distilled student (python -m training.distill, then python -m "
                       "export.student) into --models and record it in the manifest")
    i.add_argument("student", help="the student folder (student.json, student.onnx, ...)")
    i.add_argument("--force", action="store_true", help="even when distilled from another ensemble than --models'")
    i.set_defaults(run=install)
    r = sub.add_parser("reference", help="score a course file (the course's val.npz) and record the monitoring's "
                       "reference statistics in --models' manifest (docs/monitoring.md); nothing is retrained")
    r.add_argument("input", help=COURSE_FILE_HELP)
    r.set_defaults(run=reference)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except (CourseDataError, ManifestError, ModelChoiceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    np.seterr(over="ignore")
    sys.exit(main())
