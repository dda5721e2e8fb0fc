"""Mutation testing of the modules whose behaviour the fast tests must pin down: ``make mutation``.

    python -m tools.mutation run [--jobs 2] [--module serving/guard.py]   # mutmut over SCOPE (or one module)
    python -m tools.mutation report          # score per module, survivors, stale equivalent entries (exit 1)
    python -m tools.mutation key NAME...     # a mutant's change key and diff, to review it for the equivalent list

mutmut mutates every function of the files in ``[tool.mutmut] only_mutate``, records which of the selected fast
tests reach each function, and runs only those against each mutant. ``run`` asks it for the mutants of SCOPE:
whole modules, and of ``training/train.py`` only the step, loss and swap functions. ``report`` reads the
results mutmut left in ``mutants/`` and prints, per module, the mutants killed out of those that are not
equivalent, and every surviving one.

Equivalent mutants (a change no test can see) are listed in tools/mutation_equivalent.txt, each keyed by its
change, not by mutmut's name: mutmut numbers a function's mutants in order, so any edit of the function renumbers
them and a name would silently excuse another change. The key is a hash of the function's name and the mutant's
diff (the changed lines with up to three lines of context, without line numbers); an edit near the change makes
the entry stale, and it has to be reviewed again. ``report`` fails on a stale entry: one that matches no mutant
of the scope, or whose mutant the tests now kill (then it was not equivalent, or is no longer there to excuse).
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
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
_MUTANT_NUMBER = re.compile(r"__mutmut_\d+$")


@dataclass(frozen=True)
class Entry:
    """One line of the equivalent list: ``KEY FUNCTION  # reason``."""

    key: str
    function: str
    reason: str
    line: int


def equivalents(path: Path = EQUIVALENT_FILE) -> list[Entry]:
    """The mutants reviewed as equivalent, in the file's order."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text, _, reason = line.partition("#")
        if not text.strip():
            continue
        key, function = text.split()
        found.append(Entry(key, function, reason.strip(), number))
    return found


def function_of(name: str) -> str:
    """mutmut's name of the function a mutant belongs to (``serving.guard.xǁFrontDoorǁ_drain``)."""
    return _MUTANT_NUMBER.sub("", name)


def change_diff(orig_source: str, mutant_source: str, generated_name: str, orig_name: str) -> list[str]:
    """The mutant's change as unified-diff lines (context included, no file or line-number headers)."""
    plain = function_of(generated_name)  # the mutant's number must not enter its key
    orig = orig_source.replace(orig_name, plain, 1).strip("\n").splitlines()
    mutant = mutant_source.replace(generated_name, plain, 1).strip("\n").splitlines()
    return [line for line in difflib.unified_diff(orig, mutant, lineterm="", n=3)
            if not line.startswith(("---", "+++", "@@"))]


def change_key(function: str, diff: list[str]) -> str:
    return hashlib.sha256("\n".join([function, *diff]).encode()).hexdigest()[:16]


def mutant_diffs(mutants: Path, names: list[str]) -> dict[str, list[str]]:
    """name -> its diff, read from the mutated files mutmut wrote (each file read once, through mutmut's index of
    the lines each generated function occupies)."""
    by_path: dict[str, list[str]] = {}
    for meta in mutants.rglob("*.py.meta"):
        path = str(meta.relative_to(mutants))[: -len(".meta")]
        wanted = set(names)
        by_path[path] = [n for n in json.loads(meta.read_text())["exit_code_by_key"] if n in wanted]
    diffs: dict[str, list[str]] = {}
    for path, keys in by_path.items():
        if not keys:
            continue
        spans = json.loads((mutants / f"{path}.spans").read_text())["spans"]
        lines = (mutants / path).read_text().splitlines(keepends=True)
        source = {function: "".join(lines[start - 1:end]) for function, (start, end) in spans.items()}
        for name in keys:
            generated = name.rpartition(".")[2]
            orig = function_of(generated) + "__mutmut_orig"
            diffs[name] = change_diff(source[orig], source[generated], generated, orig)
    return diffs


def results(mutants: Path) -> dict[str, int | None]:
    """Every mutant mutmut generated -> its recorded exit code (None: not run yet)."""
    codes: dict[str, int | None] = {}
    for meta in mutants.rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def in_scope(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def match_equivalents(codes: dict[str, int | None], diffs: dict[str, list[str]],
                      entries: list[Entry]) -> tuple[set[str], list[tuple[Entry, str]]]:
    """The mutants the list excuses, and its stale entries with why: an entry that matches no mutant of the scope,
    or one whose mutant was killed (the tests see the change: it is not equivalent)."""
    by_key: dict[str, list[str]] = {}
    for name, diff in diffs.items():
        by_key.setdefault(change_key(function_of(name), diff), []).append(name)
    excused, stale = set(), []
    for entry in entries:
        matched = by_key.get(entry.key, [])
        killed = [n for n in matched if VERDICTS.get(codes[n], "killed") == "killed"]
        if not matched:
            stale.append((entry, "matches no mutant: the code changed, review the change again (tools.mutation key)"))
        elif killed:
            stale.append((entry, f"killed by the tests: {', '.join(killed)}"))
        else:
            excused.update(matched)
    return excused, stale


def score_table(codes: dict[str, int | None], equivalent: set[str]) -> tuple[list[dict], list[str]]:
    """Per module: mutants, equivalent, killed, survived, no tests, not run, score; and the survivors."""
    rows, survivors = [], []
    for module, patterns in SCOPE.items():
        names = sorted(n for n in codes if in_scope(n, patterns))
        verdicts = Counter("equivalent" if n in equivalent else VERDICTS.get(codes[n], "killed") for n in names)
        counted = len(names) - verdicts["equivalent"] - verdicts["not run"]
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


def run(jobs: int, modules: list[str]) -> int:
    unknown = [m for m in modules if m not in SCOPE]
    if unknown:
        sys.exit(f"unknown module(s) {', '.join(unknown)}; the scope: {', '.join(SCOPE)}")
    patterns = [p for module, group in SCOPE.items() if not modules or module in modules for p in group]
    return subprocess.call([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *patterns],
                           cwd=ROOT)


def report(mutants: Path) -> int:
    codes = results(mutants)
    scoped = [n for n in codes if any(in_scope(n, patterns) for patterns in SCOPE.values())]
    diffs = mutant_diffs(mutants, scoped)
    excused, stale = match_equivalents(codes, diffs, equivalents())
    rows, survivors = score_table({n: codes[n] for n in scoped}, excused)
    print(markdown(rows))
    print(f"\n{len(survivors)} surviving (or untested) mutants that are not listed as equivalent:")
    for name in survivors:
        print(f"  {name}  (key {change_key(function_of(name), diffs[name])})")
        print("\n".join(f"      {line}" for line in diffs[name] if line[:1] in "+-"))
    if not survivors:
        print("  none")
    print(f"\n{len(stale)} stale entries in {EQUIVALENT_FILE.relative_to(ROOT)}:")
    print("\n".join(f"  line {e.line}: {e.key} {e.function}: {why}" for e, why in stale) or "  none")
    run_rows = [r for r in rows if r["mutants"] > r["not run"]]
    passed = all(r["score"] >= 0.9 for r in run_rows) and not stale
    return 0 if passed and not any(r["not run"] for r in rows) else 1


def show_keys(mutants: Path, names: list[str]) -> int:
    """Each named mutant's line for the equivalent list (reason still to write) and its diff."""
    diffs = mutant_diffs(mutants, names)
    for name in names:
        if name not in diffs:
            print(f"# {name}: no such mutant in {mutants}", file=sys.stderr)
            return 1
        print(f"{change_key(function_of(name), diffs[name])} {function_of(name)}  # REASON  ({name})")
        print("\n".join(f"#   {line}" for line in diffs[name]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants", help="mutmut's folder (default mutants/)")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="mutmut over the scope")
    run_parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    run_parser.add_argument("--module", action="append", default=[], choices=list(SCOPE),
                            help="only this module's mutants (repeatable; default: the whole scope)")
    sub.add_parser("report", help="the score per module, the surviving mutants and stale equivalent entries")
    key_parser = sub.add_parser("key", help="mutants' change keys and diffs, for the equivalent list")
    key_parser.add_argument("names", nargs="+", help="mutmut's names of the mutants (mutmut results)")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.jobs, args.module)
    os.chdir(ROOT)
    if args.command == "key":
        return show_keys(args.mutants, args.names)
    return report(args.mutants)


if __name__ == "__main__":
    sys.exit(main())
