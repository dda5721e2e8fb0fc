"""A/B of learning from the clean digit (``training.privileged``) on one model, at equal compute.

Decided: whether a reconstruction head, distillation from a clean-digit teacher, or both, earn a place in the
training recipe; the table and the decision are in docs/training.md ("Reading hidden strokes").

    python -m experiments.privileged_ab --data data --out runs/privileged_ab --jobs 2 [--budget 0.5] [--seeds 2025]

Arms, all ``resnet_s2025``'s network with the ``wide`` recipe:

- ``baseline``: the recipe as it is;
- ``recon``: plus the reconstruction head;
- ``distill``: plus distillation from a teacher (``teacher``: the same network trained on clean digits first);
- ``both``: the two together;
- ``double``: the baseline with twice the pairs: what compute alone buys.

Equal compute: each arm's CPU time per training pair is measured first (``calibrate``, a few dozen steps on one
thread), and an arm that costs more per pair gets proportionally fewer pairs per epoch. The teacher is trained
once and would serve all ten models of a retrain, so its cost is reported apart, not charged to its students.

Scored on the built validation split (``DATA/val.npz``) and the course's ``val.npz`` only, never on test digits:
pair accuracy, the digit head's reading of the corrupted digits, and its reading of clean held-out digits (the
validation pool's source digits, as people draw them). Writes ``OUT/results.json`` and ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ensemble.atomic import atomic_write_text
from ensemble.tables import markdown_table

MODEL = "resnet_s2025"
BASE_PROFILE = "wide"
TEACHER_BUDGET = 0.25  # of a full model's pairs: clean digits are easy to read
RECONSTRUCTION_WEIGHT = 1.0
DISTILL_WEIGHT = 1.0
CALIBRATION_STEPS = 30


@dataclass(frozen=True)
class Arm:
    name: str
    reconstruction: bool = False
    distill: bool = False
    budget: float = 1.0  # times the base budget, before the equal-compute correction
    teacher: bool = False  # the arm that trains the teacher

    @property
    def kind(self) -> str:
        """What its steps cost: arms of one kind cost the same per pair."""
        return {(False, False): "plain", (True, False): "recon", (False, True): "distill",
                (True, True): "both"}[(self.reconstruction, self.distill)]


# In the order they start: the teacher first (two arms wait for it), the longest next.
ARMS = {a.name: a for a in [
    Arm("teacher", teacher=True, budget=TEACHER_BUDGET), Arm("double", budget=2.0), Arm("baseline"),
    Arm("recon", reconstruction=True), Arm("distill", distill=True), Arm("both", reconstruction=True, distill=True)]}


def arm_profile(arm: Arm, budget: float, cost_ratio: float):
    """The arm's profile: the base profile at ``budget`` (times its pairs) divided by the arm's cost per pair."""
    from training.profiles import get_profile

    base = get_profile(BASE_PROFILE)
    pairs = int(round(base.pairs_per_epoch * budget * arm.budget / cost_ratio / base.batch_size)) * base.batch_size
    recipe = replace(base.recipe, clean_reconstruction_weight=RECONSTRUCTION_WEIGHT if arm.reconstruction else 0.0,
                     teacher_distill_weight=DISTILL_WEIGHT if arm.distill else 0.0, train_on_clean=arm.teacher)
    return replace(base, pairs_per_epoch=pairs, recipe=recipe)


def model_name(seed: int) -> str:
    """The model trained: ``MODEL`` itself for its own seed, else a copy of it registered under another seed."""
    from training.models import REGISTRY, register

    if seed == REGISTRY[MODEL].seed:
        return MODEL
    name = f"{MODEL}_seed{seed}"
    if name not in REGISTRY:
        register(replace(REGISTRY[MODEL], name=name, seed=seed, description=f"{MODEL} at seed {seed} (A/B only)"))
    return name


# --------------------------------------------------------------------------- calibration

def calibrate(data_dir: Path, steps: int = CALIBRATION_STEPS) -> dict[str, float]:
    """CPU seconds per training step of each kind of arm, relative to the plain one, on one thread."""
    import torch

    from training.data import make_pairs
    from training.models import REGISTRY, build_model
    from training.precision import choose_mode
    from training.train import Trainer, to_input

    torch.set_num_threads(1)
    with np.load(data_dir / "sources.npz", allow_pickle=False) as npz:
        images, labels = npz["train_images"], npz["train_labels"]
    base = arm_profile(ARMS["baseline"], 1.0, 1.0)
    pairs = make_pairs(images, labels, base.batch_size * 8, seed=0, with_clean=True)
    x, y, digits, clean = (torch.from_numpy(pairs[k]) for k in ("x", "y", "digits", "clean"))
    device = torch.device("cpu")
    mode = choose_mode(device, REGISTRY[MODEL].tower)
    seconds = {}
    for kind, arm in {"plain": ARMS["baseline"], "recon": ARMS["recon"], "distill": ARMS["distill"],
                      "both": ARMS["both"]}.items():
        prof = arm_profile(arm, 1.0, 1.0)
        teacher = build_model(MODEL, prof.width, prof.feat_dim).eval() if arm.distill else None
        trainer = Trainer(REGISTRY[MODEL], prof, device, steps_per_epoch=1000, mode=mode, teacher=teacher)
        trainer.model.train()
        batches = [slice(i * prof.batch_size, (i + 1) * prof.batch_size) for i in range(8)]
        for i in range(5 + steps):  # 5 to warm up (allocations, oneDNN's kernel choice), then timed
            if i == 5:
                started = time.process_time()
            b = batches[i % 8]
            trainer.step(to_input(x[b], device), y[b].float(), digits[b], to_input(clean[b], device))
        seconds[kind] = (time.process_time() - started) / steps
    return {kind: s / seconds["plain"] for kind, s in seconds.items()} | {"plain_step_s": seconds["plain"]}


# --------------------------------------------------------------------------- one arm

def train_arm(arm_name: str, seed: int, profile_file: str, out: str, data_dir: str, teacher: str | None) -> dict:
    """Train one arm in this (worker) process on one thread; its result row and the process CPU time it took."""
    from training.train import RunOptions, train_model

    name = model_name(seed)
    started_cpu, started = time.process_time(), time.perf_counter()
    options = RunOptions(data_dir=Path(data_dir), out=Path(out), profile=profile_file, threads=1, progress=False,
                         resume=True, teacher=None if teacher is None else Path(teacher))
    result = train_model(name, options)
    return {"arm": arm_name, "seed": seed, "name": name, "status": result["status"],
            "val_acc_epochs": result["val_acc"],
            "cpu_s": round(time.process_time() - started_cpu, 1), "wall_s": round(time.perf_counter() - started, 1),
            "train_seconds": result["train_seconds"]}


def score_arm(row: dict, out: Path, profile_file: str, data_dir: Path, course_val: Path) -> dict:
    """Accuracy on the built validation split and the course's val.npz, and how the digit head reads (no test
    digits: the A/B chooses on these)."""
    from experiments.member_scores import ScoringSets, score_model
    from training.models import load_weights

    model = load_weights(model_name(row["seed"]), out, profile_file)
    return {**row, **score_model(model, ScoringSets.read(data_dir, course_val, with_test=False))}


# --------------------------------------------------------------------------- the A/B

def run(data_dir: Path, out: Path, course_val: Path, arms: list[str], seeds: list[int], budget: float,
        jobs: int) -> list[dict]:
    from training.profiles import write_profile_file

    out.mkdir(parents=True, exist_ok=True)
    calibration_file = out / "calibration.json"
    if calibration_file.is_file():  # measured once per A/B folder, so that a resumed A/B keeps its budgets
        ratios = json.loads(calibration_file.read_text())
    else:
        print("calibrating the cost per pair of each arm (one thread) ...", flush=True)
        ratios = calibrate(data_dir)
        atomic_write_text(calibration_file, json.dumps(ratios, indent=2) + "\n")
    print("cost per pair, relative to the baseline: " + ", ".join(
        f"{k} {v:.2f}" for k, v in ratios.items() if k != "plain_step_s"), flush=True)

    wanted = [a for a in ARMS if a in arms or (a == "teacher" and any(ARMS[b].distill for b in arms))]
    tasks = {}  # (arm, seed) -> (profile file, out folder, teacher folder)
    for seed in seeds:
        for arm_name in wanted:
            arm = ARMS[arm_name]
            prof = arm_profile(arm, budget, 1.0 if arm.teacher else ratios[arm.kind])
            profile_file = write_profile_file(out / "profiles" / f"{arm_name}.json", prof,
                                              {"experiment": "privileged_ab", "arm": arm_name, "budget": budget})
            teacher = str(out / f"teacher_s{seed}") if arm.distill else None
            tasks[arm_name, seed] = (str(profile_file), str(out / f"{arm_name}_s{seed}"), teacher)

    rows, pending, running = [], list(tasks), {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("forkserver")) as pool:
        while pending or running:
            for key in [k for k in pending if ARMS[k[0]].distill is False or ("teacher", k[1]) not in pending
                        and ("teacher", k[1]) not in running.values()]:
                if len(running) >= jobs:
                    break
                pending.remove(key)
                profile_file, arm_out, teacher = tasks[key]
                running[pool.submit(train_arm, key[0], key[1], profile_file, arm_out, str(data_dir), teacher)] = key
                print(f"started {key[0]} (seed {key[1]})", flush=True)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                key = running.pop(future)
                try:
                    row = future.result()
                except Exception as error:  # one failed arm should not lose the others' results
                    print(f"arm {key[0]} (seed {key[1]}) failed: {error!r}", flush=True)
                    pending = [k for k in pending if not (key[0] == "teacher" and k[1] == key[1])]  # its students
                    continue
                if key[0] != "teacher":
                    row = score_arm(row, Path(tasks[key][1]), tasks[key][0], data_dir, course_val)
                row["pairs_per_epoch"] = json.loads(Path(tasks[key][0]).read_text())["profile"]["pairs_per_epoch"]
                rows.append(row)
                atomic_write_text(out / "results.json", json.dumps(
                    {"calibration": ratios, "budget": budget, "rows": rows}, indent=2) + "\n")
                print(json.dumps(row), flush=True)
    atomic_write_text(out / "table.md", results_table(rows) + "\n")
    return rows


def results_table(rows: list[dict]) -> str:
    body = [[f"`{r['arm']}`", r["seed"], f"{r['pairs_per_epoch']:,}", f"{r.get('built_val_acc', float('nan')):.4f}",
             f"{r.get('course_val_acc', float('nan')):.4f}", f"{r.get('digits_read', float('nan')):.4f}",
             f"{r.get('clean_digits_read', float('nan')):.4f}", f"{r['cpu_s'] / 60:.1f}", f"{r['wall_s'] / 60:.1f}"]
            for r in rows]
    return markdown_table(body, ["arm", "seed", "pairs per epoch", "built val acc", "course val.npz acc",
                                 "digits read (built val)", "clean digits read", "CPU min", "wall min"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.privileged_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"), help="a built data folder (make data)")
    parser.add_argument("--out", type=Path, default=Path("runs/privileged_ab"))
    parser.add_argument("--course-val", type=Path, default=Path("../shared/course/val.npz"))
    parser.add_argument("--arms", default="baseline,recon,distill,both,double")
    parser.add_argument("--seeds", default="2025", help="comma-separated model seeds (2025 is resnet_s2025's own)")
    parser.add_argument("--budget", type=float, default=1.0, help="times the wide profile's pairs per epoch")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    rows = run(args.data, args.out, args.course_val, arms, [int(s) for s in args.seeds.split(",")], args.budget,
               args.jobs)
    print(results_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
