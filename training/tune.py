"""Search one model's training recipe with Optuna: a study that several processes, or machines, can share.

    python -m training.tune [--model resnet] [--base default] [--epochs 3] [--pairs 4000] [--val-pairs 4000]
                            [--n-trials 12] [--timeout SECONDS] [--jobs 1] [--threads N]
                            [--pruner median|halving|none] [--study NAME] [--storage URL] [--out runs/tune]

Each trial trains ``--model`` (a registry entry) with one recipe drawn by Optuna's TPE sampler: peak learning
rate, weight decay, the auxiliary digit-loss weight, the tower width, the schedule's warm-up and final
learning-rate fractions, and the share of nearly clean digits (``training.profiles.Recipe``, ``Profile``).
It trains on a short budget (``--epochs`` x ``--pairs`` fresh pairs from the training digits, the base
profile's batch size) and is scored after every epoch on the built validation pairs (``DATA/val.npz``: held-out
training digits, the first ``--val-pairs`` of them; never the test digits); each epoch's score is reported
to the pruner, which stops a trial that trails the others (median: below the median of earlier trials at the
same epoch; halving: successive halving). The trial's value is its best epoch's accuracy (of the averaged
weights, as training keeps). The first trial of a new study is the hand-chosen recipe, as a baseline.

The study lives in a database: an SQLite file under ``--out`` by default, or any database URL Optuna accepts
(``--storage postgresql://user@host/db`` for a team). Processes started with the same ``--study`` and
``--storage`` join one study (Optuna's own way of spreading a search: no scheduler), each running
``--n-trials`` trials (``--jobs`` at a time, in threads); a process whose study was started with another
model or budget is refused. Ctrl+C (or SIGTERM) stops at once: the trial cut short is recorded as failed
(marked ``interrupted``), the results are written, and the same command resumes the study, running the
interrupted recipes again first. ``--n-trials 0`` writes the results of the study as it stands.

Written to ``--out``: ``trials.md`` (every trial: state, score, per-epoch scores, parameters, who ran it),
``optimization_history.png``, ``param_importances.png`` and ``intermediate_values.png`` (Optuna's
matplotlib plots) and ``best_profile.json``: the best recipe on the base profile's budget, which trains with

    python -m training.run_all --profile-file runs/tune/best_profile.json [--models resnet] --out runs/tuned
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import socket
import sys
import threading
import time
import typing as t
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from ensemble.atomic import atomic_path, atomic_write_text
from ensemble.course_data import CourseData, load_course_npz
from ensemble.tables import markdown_table
from training.datasets import TrainingData
from training.models import REGISTRY
from training.precision import choose_mode, torch_threads
from training.profiles import PROFILES, Profile, Recipe, write_profile_file
from training.train import EpochPairs, RunOptions, Trainer, resolve_device, steps_per_epoch

SEARCH_SPACE_VERSION = 1  # a study records it: processes searching another space cannot join
WIDTH_FACTORS = (0.75, 1.0, 1.25, 1.5)  # tower widths tried, relative to the base profile's
HEARTBEAT_S, GRACE_S = 30, 120  # a trial whose process stopped beating for GRACE_S is failed by the others
PARAMS = ("lr", "weight_decay", "aux_digit_weight", "width", "warmup_fraction", "final_lr_fraction", "clean_share")


@dataclass(frozen=True)
class Budget:
    """What one trial trains and is scored on; every process of a study must use the same."""

    model: str
    base: str  # the profile the trials shrink and the best recipe is written on
    epochs: int
    pairs: int  # fresh training pairs per epoch
    val_pairs: int  # validation pairs scored after each epoch (the first of val.npz)
    search_space: int = SEARCH_SPACE_VERSION


def default_budget(model: str, base: str, epochs: int | None, pairs: int | None, val_pairs: int | None) -> Budget:
    """A short budget: at most 3 epochs of 4,000 pairs, scored on 4,000 validation pairs (less for small bases)."""
    prof = PROFILES[base]
    return Budget(model, base, epochs or min(prof.epochs, 3), pairs or min(prof.pairs_per_epoch, 4_000),
                  val_pairs or min(prof.max_val_pairs or 4_000, 4_000))


def hand_chosen(base: Profile, model: str) -> dict[str, t.Any]:
    """The recipe as committed (the base profile's): the baseline trial of every new study."""
    recipe = base.recipe
    return {"lr": recipe.lr, "weight_decay": recipe.weight_decay, "aux_digit_weight": recipe.aux_digit_weight,
            "width": base.width, "warmup_fraction": recipe.warmup_fraction,
            "final_lr_fraction": recipe.final_lr_fraction, "clean_share": base.clean_share}


def suggest(trial: optuna.Trial, base: Profile) -> dict[str, t.Any]:
    """The search space: one recipe."""
    widths = sorted({max(2, round(base.width * f)) for f in WIDTH_FACTORS})
    return {
        "lr": trial.suggest_float("lr", 5e-4, 8e-3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 5e-3, log=True),
        "aux_digit_weight": trial.suggest_float("aux_digit_weight", 0.1, 1.5),
        "width": trial.suggest_categorical("width", widths),
        "warmup_fraction": trial.suggest_float("warmup_fraction", 0.0, 0.15),
        "final_lr_fraction": trial.suggest_float("final_lr_fraction", 1e-3, 0.1, log=True),
        "clean_share": trial.suggest_float("clean_share", 0.0, 0.4),
    }


def recipe_profile(base: Profile, params: dict[str, t.Any], epochs: int | None = None, pairs: int | None = None,
                   val_pairs: int | None = None) -> Profile:
    """``base`` with a trial's recipe (and, for a trial, its short budget)."""
    recipe = Recipe(lr=params["lr"], weight_decay=params["weight_decay"], aux_digit_weight=params["aux_digit_weight"],
                    warmup_fraction=params["warmup_fraction"], final_lr_fraction=params["final_lr_fraction"])
    prof = replace(base, width=int(params["width"]), clean_share=float(params["clean_share"]), recipe=recipe)
    if epochs is not None:
        prof = replace(prof, epochs=epochs, patience=epochs, pairs_per_epoch=pairs, max_val_pairs=val_pairs)
    return prof


class Interrupted(Exception):
    """Ctrl+C or SIGTERM reached a trial running in a worker thread (checked after each epoch)."""


class Objective:
    """Train one trial's recipe on the short budget; report each epoch's validation accuracy to the pruner."""

    def __init__(self, budget: Budget, data: TrainingData, device: torch.device, stop: threading.Event,
                 progress: bool):
        self.budget, self.data, self.device, self.stop, self.progress = budget, data, device, stop, progress
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial: optuna.Trial) -> float:
        base, config = PROFILES[self.budget.base], REGISTRY[self.budget.model]
        prof = recipe_profile(base, suggest(trial, base), self.budget.epochs, self.budget.pairs, self.budget.val_pairs)
        trial.set_user_attr("worker", self.worker)
        try:
            if self.stop.is_set():  # stopping: a trial another thread started meanwhile does not train
                raise Interrupted("stopped before training")
            return self._train(trial, config, prof)
        except (KeyboardInterrupt, Interrupted):
            trial.set_user_attr("interrupted", True)  # the trial is failed; a resumed study runs it again
            raise

    def _train(self, trial: optuna.Trial, config, prof: Profile) -> float:
        mode = choose_mode(self.device, config.tower, "auto")
        trainer = Trainer(config, prof, self.device, steps_per_epoch(self.data, prof), mode)
        pairs = EpochPairs(self.data, config.seed, prof)
        options = RunOptions(progress=self.progress)
        val = self.data.val
        try:
            for epoch in range(prof.epochs):
                started = time.perf_counter()
                x, y, digits, clean = pairs.get(epoch)
                trainer.train_one_epoch(x, y, digits, epoch, options, clean)
                acc = trainer.evaluate(val.x[:prof.max_val_pairs], val.y[:prof.max_val_pairs])["acc"]
                trainer.end_epoch({"epoch": epoch + 1, "val_acc": acc, "seconds": time.perf_counter() - started})
                trial.report(acc, epoch + 1)
                if self.stop.is_set():
                    raise Interrupted(f"stopped after epoch {epoch + 1}")
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch + 1}: val acc {acc:.4f}")
        finally:
            pairs.close()
        return trainer.state["best_acc"]


def tuning_data(data_dir: Path, val_pairs: int) -> TrainingData:
    """What trials read: the training source digits (or train.npz) and the first ``val_pairs`` of val.npz.
    The test files are not even loaded."""
    sources = None
    if (data_dir / "sources.npz").is_file():
        with np.load(data_dir / "sources.npz", allow_pickle=False) as npz:
            sources = {k: npz[k] for k in ("train_images", "train_labels")}
    val = load_course_npz(data_dir / "val.npz", require=("x", "y"))
    train = load_course_npz(data_dir / "train.npz", require=("x", "y")) if sources is None else val
    return TrainingData(train=train, val=CourseData(x=val.x[:val_pairs], y=val.y[:val_pairs]), shifted_val={},
                        test=None, sources=sources)


# --------------------------------------------------------------------------- the study

def storage_url(storage: str | None, out: Path) -> str:
    """``--storage`` as given, or the SQLite file under ``out``."""
    return storage or f"sqlite:///{(out / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """The URL without its password, for logs and the results."""
    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's database storage with heartbeats (a killed process's trial is failed by the others); SQLite
    waits for its lock rather than failing when several processes write at once."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental" since 2.8
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S, heartbeat_stale_trial_callback=retry)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":  # from the second epoch on, once four trials have finished
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


class StudyMismatch(Exception):
    """The study was started with another model, base profile, budget or search space."""


def open_study(url: str, name: str, budget: Budget, pruner: optuna.pruners.BasePruner,
               baseline: bool = True) -> optuna.Study:
    """Create the study, or join it when it exists with the same budget (StudyMismatch otherwise)."""
    study = optuna.create_study(storage=open_storage(url), study_name=name, direction="maximize",
                                load_if_exists=True, sampler=optuna.samplers.TPESampler(n_startup_trials=5),
                                pruner=pruner)
    recorded = study.user_attrs.get("budget")
    if recorded is None:
        study.set_user_attr("budget", asdict(budget))
        if baseline and not study.trials:
            study.enqueue_trial(hand_chosen(PROFILES[budget.base], budget.model), user_attrs={"baseline": True})
    elif recorded != asdict(budget):
        raise StudyMismatch(f"study {name!r} was started with {recorded}, not {asdict(budget)}: use the same "
                            "--model, --base, --epochs, --pairs and --val-pairs, or another --study")
    requeue_interrupted(study)
    return study


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Enqueue again, once, the recipes of trials cut short by Ctrl+C (a process that died without a word is
    failed by the heartbeat, and Optuna's RetryFailedTrialCallback enqueues its trial again)."""
    trials = study.get_trials(deepcopy=False)
    retried = {tr.user_attrs.get("retry_of") for tr in trials}
    again = [tr for tr in trials if tr.state == TrialState.FAIL and tr.user_attrs.get("interrupted")
             and tr.number not in retried and "retry_of" not in tr.user_attrs]
    for tr in again:
        study.enqueue_trial(tr.params, user_attrs={"retry_of": tr.number})
    return [tr.number for tr in again]


def progress_line(study: optuna.Study, trial: FrozenTrial) -> str:
    """One line per finished trial: its outcome, the best so far, its recipe, and where the study stands."""
    value = trial.value if trial.value is not None else trial.intermediate_values.get(trial.last_step or -1)
    states = [tr.state for tr in study.get_trials(deepcopy=False)]
    done = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    try:
        best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "no complete trial yet"
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0
    shown = "" if value is None else f" val acc {value:.4f}"
    return (f"trial {trial.number} {trial.state.name.lower()}{shown} after {len(trial.intermediate_values)} "
            f"epoch(s), {seconds:.0f}s; {best}; {format_params(trial.params)}; study: {done} done, "
            f"{states.count(TrialState.RUNNING)} running")


def format_params(params: dict[str, t.Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# --------------------------------------------------------------------------- results

def trials_table(study: optuna.Study) -> str:
    """Every trial as a markdown table, best first among the complete ones, then the rest by number."""
    trials = study.get_trials(deepcopy=False)
    complete = sorted((tr for tr in trials if tr.state == TrialState.COMPLETE), key=lambda tr: -tr.value)
    rest = [tr for tr in trials if tr.state != TrialState.COMPLETE]
    rows = []
    for tr in [*complete, *rest]:
        seconds = (tr.datetime_complete - tr.datetime_start).total_seconds() if tr.datetime_complete else math.nan
        epochs = " ".join(f"{tr.intermediate_values[s]:.4f}" for s in sorted(tr.intermediate_values))
        retry_of = tr.user_attrs.get("retry_of", tr.system_attrs.get("failed_trial"))
        note = ", ".join(word for word, applies in (("hand-chosen", tr.user_attrs.get("baseline")),
                                                    ("interrupted", tr.user_attrs.get("interrupted")),
                                                    (f"retry of {retry_of}", retry_of is not None)) if applies)
        rows.append([tr.number, tr.state.name.lower(), "" if tr.value is None else f"{tr.value:.4f}", epochs,
                     "" if math.isnan(seconds) else f"{seconds:.0f}",
                     *(_cell(tr.params.get(p)) for p in PARAMS), tr.user_attrs.get("worker", ""), note])
    return markdown_table(rows, ["trial", "state", "val acc", "per epoch", "s", *PARAMS, "worker", "note"])


def _cell(value: t.Any) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def save_plot(axes: t.Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(8, 4.5)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)


def write_plots(study: optuna.Study, out: Path) -> list[str]:
    """Optuna's optimisation history, parameter importances (two complete trials at least) and per-epoch values."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots

    complete = [tr for tr in study.get_trials(deepcopy=False) if tr.state == TrialState.COMPLETE]
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if complete:
            save_plot(plots.plot_optimization_history(study, target_name="val acc"), out / "optimization_history.png")
            save_plot(plots.plot_intermediate_values(study), out / "intermediate_values.png")
            written += ["optimization_history.png", "intermediate_values.png"]
        if len(complete) >= 2:
            save_plot(plots.plot_param_importances(study, target_name="val acc"), out / "param_importances.png")
            written.append("param_importances.png")
    return written


def write_results(study: optuna.Study, out: Path, budget: Budget, url: str) -> dict[str, Path]:
    """trials.md, the plots and best_profile.json (when a trial is complete) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(study, out)
    complete = [tr for tr in study.get_trials(deepcopy=False) if tr.state == TrialState.COMPLETE]
    written = {name: out / name for name in plots}
    lines = [f"# Study `{study.study_name}`", "",
             f"`{budget.model}` on a short budget: {budget.epochs} epoch(s) x {budget.pairs:,} fresh pairs, scored "
             f"on the first {budget.val_pairs:,} pairs of val.npz (held-out training digits) after each epoch; base "
             f"profile `{budget.base}`. Storage: `{shown_url(url)}`.", ""]
    if complete:
        best = study.best_trial
        written["best_profile.json"] = write_profile_file(
            out / "best_profile.json", recipe_profile(PROFILES[budget.base], best.params),
            {"study": study.study_name, "trial": best.number, "val_acc": best.value, "budget": asdict(budget),
             "note": f"the recipe of the best trial, on the {budget.base} profile's budget"})
        lines += [f"Best: trial {best.number}, val acc {best.value:.4f}: {format_params(best.params)}. "
                  f"Train it: `python -m training.run_all --profile-file {out / 'best_profile.json'} "
                  f"--models {budget.model}`.", ""]
    lines += [trials_table(study), ""]
    lines += [f"![{name}]({name})" for name in plots]
    atomic_write_text(out / "trials.md", "\n".join(lines) + "\n")
    written["trials.md"] = out / "trials.md"
    return written


# --------------------------------------------------------------------------- running

@contextlib.contextmanager
def stopping_on_signals(stop: threading.Event) -> t.Iterator[None]:
    """Ctrl+C and SIGTERM set ``stop`` (trials in worker threads end after their epoch) and raise
    KeyboardInterrupt in the main thread (a trial running there ends at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        stop.set()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _print_progress(study: optuna.Study, trial: FrozenTrial) -> None:
    print(progress_line(study, trial), flush=True)


def _stop_when(stop: threading.Event) -> t.Callable[[optuna.Study, FrozenTrial], None]:
    """A callback that ends the optimisation once ``stop`` is set (no new trial starts)."""
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if stop.is_set():
            study.stop()
    return callback


def run(budget: Budget, *, out: Path, data_dir: Path, study_name: str, storage: str | None = None,
        n_trials: int | None = 12, timeout: float | None = None, jobs: int = 1,
        pruner: optuna.pruners.BasePruner | None = None, progress: bool = True) -> optuna.Study:
    """Run (or join) the study and write its results; KeyboardInterrupt (Ctrl+C, SIGTERM in the main thread)
    stops it consistently: the running trials are failed and marked, the results written, then it re-raises."""
    url = storage_url(storage, out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(url, study_name, budget, pruner or make_pruner("median"))
    data = tuning_data(data_dir, budget.val_pairs)
    stop = threading.Event()
    objective = Objective(budget, data, resolve_device("auto"), stop, progress and jobs == 1)
    try:
        if n_trials != 0:
            with stopping_on_signals(stop):
                study.optimize(objective, n_trials=n_trials, timeout=timeout, n_jobs=jobs,
                               callbacks=[_print_progress, _stop_when(stop)], catch=(Interrupted,))
            # The signal's KeyboardInterrupt can land where Python only prints it (a weakref callback during
            # garbage collection); the event cannot be lost, so the run still ends as interrupted.
            if stop.is_set():
                raise KeyboardInterrupt
    finally:
        written = write_results(study, out, budget, url)
        print(f"results: {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    return study


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(REGISTRY), default="resnet", help="the architecture whose recipe "
                        "is searched (a registry entry)")
    parser.add_argument("--base", choices=list(PROFILES), default="default",
                        help="profile the trials shrink, and the best recipe's budget (default: default)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: 3, fewer if the base has fewer)")
    parser.add_argument("--pairs", type=int, help="fresh training pairs per epoch (default: 4,000)")
    parser.add_argument("--val-pairs", type=int, help="validation pairs scored each epoch (default: 4,000)")
    parser.add_argument("--n-trials", type=int, default=12, help="trials this process runs (0: write the results)")
    parser.add_argument("--timeout", type=float, help="seconds after which this process starts no new trial")
    parser.add_argument("--jobs", type=int, default=1, help="trials at once in this process (threads)")
    parser.add_argument("--threads", type=int, help="torch CPU threads in all (default: torch's)")
    parser.add_argument("--pruner", choices=["median", "halving", "none"], default="median")
    parser.add_argument("--study", help="study name: processes with the same one (and storage) share the "
                        "study (default: MODEL-BASE)")
    parser.add_argument("--storage", help="an Optuna database URL (default: sqlite under --out), e.g. "
                        "postgresql://user:password@host/db")
    parser.add_argument("--data", default="data", help="data folder (val.npz and the training source digits)")
    parser.add_argument("--out", default="runs/tune", help="results and the default SQLite study")
    parser.add_argument("--quiet", action="store_true", help="no per-batch progress bar")
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.n_trials is not None and args.n_trials < 0):
        parser.error("--jobs must be at least 1 and --n-trials at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = default_budget(args.model, args.base, args.epochs, args.pairs, args.val_pairs)
    try:
        with torch_threads(args.threads):
            run(budget, out=Path(args.out), data_dir=Path(args.data),
                study_name=args.study or f"{args.model}-{args.base}", storage=args.storage, n_trials=args.n_trials,
                timeout=args.timeout, jobs=args.jobs, progress=not args.quiet)
    except StudyMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the trials cut short are recorded as failed (interrupted); the same command resumes "
              "the study and runs them again first", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
