"""Decided: the registry keeps resnet_s2023; CBAM in its slot did not pay (docs/training.md, "How alike the ten are").

Try another model in one registry slot, without touching the registry: does the stacker gain?

    python -m experiments.swap_trial --replace resnet_s2023 --name cbam_s7 --tower cbam --seed 7 \\
        --from models --out runs/swap --profile wide [--head concat] [--score ../shared/course/val.npz]

The ensemble's diversity check. The candidate (a new name: the registry's names are a stable contract) takes
``--replace``'s place for this process only; the other nine models' finished weights are copied from ``--from``
(``run_all`` skips them: same configuration, profile and data), the candidate is trained into ``--out``, and the
ten are exported and stacked there as ``run_all`` always does. Compare the two folders' five-fold out-of-fold
stacker scores on val.npz (``manifest.json``: ``metrics.stacking_cv.oof``) and, scored only, the course's file.
Keep the candidate only if the stacker gains; then it becomes a registry entry of its own (training.models).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ensemble.layout import ArtifactLayout
from training import run_all
from training.models import REGISTRY, TOWERS, ModelConfig, model_names


def swap_registry(replace: str, candidate: ModelConfig) -> None:
    """Put ``candidate`` in ``replace``'s slot (same position: the fused graph's output order), in place."""
    if replace not in REGISTRY:
        raise SystemExit(f"--replace {replace!r} is not a registered model; known: {', '.join(model_names())}")
    if candidate.name in REGISTRY:
        raise SystemExit(f"--name {candidate.name!r} is already registered: a candidate needs a new name")
    entries = [candidate if config.name == replace else config for config in REGISTRY.values()]
    REGISTRY.clear()
    REGISTRY.update({config.name: config for config in entries})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.swap_trial", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replace", required=True, help="the registered model whose slot the candidate takes")
    parser.add_argument("--name", required=True, help="the candidate's (new) name")
    parser.add_argument("--tower", required=True, choices=list(TOWERS))
    parser.add_argument("--head", default="concat", choices=["concat", "fusion"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--from", dest="source", type=Path, required=True,
                        help="a folder with the other models' finished weights (e.g. models)")
    parser.add_argument("--out", type=Path, required=True, help="where the trial trains, exports and stacks")
    parser.add_argument("--profile", default="wide", help="the profile the source folder was trained with")
    parser.add_argument("--score", action="append", default=[], metavar="FILE", help="labelled files to score")
    args = parser.parse_args(argv)

    swap_registry(args.replace, ModelConfig(args.name, args.tower, head=args.head, seed=args.seed,
                                            description=f"trial in {args.replace}'s slot"))
    source, out = ArtifactLayout(args.source), ArtifactLayout(args.out)
    for name in model_names():
        if name != args.name and not out.history(name).is_file():
            shutil.copytree(source.weights_dir(name), out.weights_dir(name), dirs_exist_ok=True)
    # One job: the swapped registry lives in this process only (run_all's workers are spawned afresh).
    return run_all.main(["--profile", args.profile, "--jobs", "1", "--out", str(args.out), "--resume",
                         *(f"--score={path}" for path in args.score)])


if __name__ == "__main__":
    sys.exit(main())
