"""Mutation testing of the modules whose behaviour the fast tests must pin down: ``make mutation``.

    python -m tools.mutation run [--jobs 2]     # mutmut over SCOPE (config: [tool.mutmut] in pyproject.toml)
    python -m tools.mutation report [--out docs/mutation.md]

mutmut mutates every function of the files in ``[tool.mutmut] only_mutate``, records which of the selected fast
tests reach each function, and runs only those against each mutant. ``run`` asks it for the mutants of SCOPE:
whole modules, and of ``training/train.py`` only the step, loss and swap functions. ``report`` reads the
results mutmut left in ``mutants/`` and prints, per module, the mutants killed out of those that are not
equivalent (``EQUIVALENT`` below: a change no test can see, each with its reason), and every surviving one.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: module -> the mutant name patterns in scope (mutmut names a mutant module.x_function__mutmut_N, a method
#: module.xǁClassǁmethod__mutmut_N).
SCOPE: dict[str, tuple[str, ...]] = {
    "ensemble/features.py": ("ensemble.features.*",),
    "ensemble/priors.py": ("ensemble.priors.*",),
    "ensemble/contract.py": ("ensemble.contract.*",),
    "ensemble/course_data.py": ("ensemble.course_data.*",),
    "serving/guard.py": ("serving.guard.*",),
    "serving/inputs.py": ("serving.inputs.*",),
    "training/data.py": ("training.data.*",),
    "training/train.py (step, losses, swap)": tuple(f"training.train.{name}__mutmut_*" for name in (
        "x_focal_loss", "x_pair_loss", "x_training_loss", "x_swap_halves", "x_apply_step", "xǁTrainerǁstep")),
}
#: exit code -> verdict, as mutmut records them (mutmut.stats): a timeout is a kill (the tests noticed).
VERDICTS = {1: "killed", 3: "killed", -24: "killed", 24: "killed", 152: "killed", 255: "killed", 36: "killed",
            -9: "killed", -11: "killed", 0: "survived", 5: "no tests", 33: "no tests", None: "not run"}
EQUIVALENT_FILE = ROOT / "tools" / "mutation_equivalent.txt"


def equivalents() -> dict[str, str]:
    """The mutants reviewed as equivalent, name -> reason (tools/mutation_equivalent.txt: ``name  # reason``)."""
    found = {}
    for line in EQUIVALENT_FILE.read_text().splitlines():
        name, _, reason = line.partition("#")
        if name.strip():
            found[name.strip()] = reason.strip()
    return found


def results(mutants: Path) -> dict[str, int | None]:
    """Every mutant mutmut generated -> its recorded exit code (None: not run yet)."""
    codes: dict[str, int | None] = {}
    for meta in mutants.rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def in_scope(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def score_table(codes: dict[str, int | None], equivalent: dict[str, str]) -> tuple[list[dict], list[str]]:
    """Per module: mutants, equivalent, killed, survived, no tests, not run, score; and the survivors."""
    rows, survivors = [], []
    for module, patterns in SCOPE.items():
        names = sorted(n for n in codes if in_scope(n, patterns))
        verdicts = Counter("equivalent" if n in equivalent else VERDICTS.get(codes[n], "killed") for n in names)
        counted = len(names) - verdicts["equivalent"]
        rows.append({"module": module, "mutants": len(names), "equivalent": verdicts["equivalent"],
                     "killed": verdicts["killed"], "survived": verdicts["survived"], "no tests": verdicts["no tests"],
                     "not run": verdicts["not run"],
                     "score": verdicts["killed"] / counted if counted else float("nan")})
        survivors += [n for n in names if n not in equivalent and VERDICTS.get(codes[n]) in ("survived", "no tests")]
    return rows, survivors


def markdown(rows: list[dict]) -> str:
    lines = ["| module | mutants | equivalent | killed | survived | no tests | not run | score |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| `{r['module']}` | {r['mutants']} | {r['equivalent']} | {r['killed']} | {r['survived']} | "
              f"{r['no tests']} | {r['not run']} | {r['score']:.1%} |" for r in rows]
    return "\n".join(lines)


def run(jobs: int) -> int:
    patterns = [p for group in SCOPE.values() for p in group]
    return subprocess.call([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *patterns],
                           cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="mutmut over the scope")
    run_parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    report = sub.add_parser("report", help="the score per module and the surviving mutants")
    report.add_argument("--mutants", type=Path, default=ROOT / "mutants", help="mutmut's folder (default mutants/)")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.jobs)
    rows, survivors = score_table(results(args.mutants), equivalents())
    print(markdown(rows))
    print(f"\n{len(survivors)} surviving (or untested) mutants that are not listed as equivalent:")
    print("\n".join(f"  {name}" for name in survivors) or "  none")
    return 0 if all(r["score"] >= 0.9 for r in rows) and not any(r["not run"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
