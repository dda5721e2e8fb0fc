"""The recipe search (python -m training.tune): a smoke study end to end, one study shared by two processes (SQLite,
and a real PostgreSQL server this file starts), pruning, and the best recipe's profile file trained by run_all."""

from __future__ import annotations

import glob
import json
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from safetensors.torch import load_file

from training import tune
from training.profiles import PROFILES, ProfileFileError, Recipe, load_profile_file, write_profile_file

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
SMOKE_ARGS = ["--base", "smoke", "--quiet", "--threads", "1"]


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_a_two_trial_smoke_study_writes_its_table_plots_and_best_profile(tiny_data, tmp_path):
    out = tmp_path / "tune"
    assert tune.main([*SMOKE_ARGS, "--data", str(tiny_data), "--out", str(out), "--n-trials", "2"]) == 0
    study = _study(f"sqlite:///{out / 'study.db'}", "resnet-smoke")
    trials = study.get_trials()
    assert [tr.state for tr in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    # the first trial of a new study is the hand-chosen recipe; each epoch's score was reported
    assert trials[0].params == tune.hand_chosen(PROFILES["smoke"], "resnet")
    assert all(sorted(tr.intermediate_values) == [1, 2] for tr in trials)
    table = (out / "trials.md").read_text()
    assert "hand-chosen" in table and table.count("| complete ") == 2
    for name in ("optimization_history.png", "param_importances.png", "intermediate_values.png"):
        assert (out / name).read_bytes().startswith(PNG), name
    # the best trial's recipe, on the base profile's own budget (not the trial's short one)
    best = load_profile_file(out / "best_profile.json")
    params = study.best_trial.params
    assert best.recipe == Recipe(lr=params["lr"], weight_decay=params["weight_decay"],
                                 aux_digit_weight=params["aux_digit_weight"],
                                 warmup_fraction=params["warmup_fraction"],
                                 final_lr_fraction=params["final_lr_fraction"])
    assert (best.width, best.clean_share) == (params["width"], params["clean_share"])
    assert (best.epochs, best.pairs_per_epoch) == (PROFILES["smoke"].epochs, PROFILES["smoke"].pairs_per_epoch)
    # a process with another budget cannot join the study
    assert tune.main([*SMOKE_ARGS, "--data", str(tiny_data), "--out", str(out), "--n-trials", "1",
                      "--epochs", "1"]) == 2


def test_a_pruned_trial_is_recorded_as_pruned_and_stops_training(tiny_data, tmp_path):
    budget = tune.default_budget("resnet", "smoke", None, None, None)
    # Every score is below 1.01: the pruner stops the trial at its first report, after epoch 1 of 2.
    study = tune.run(budget, out=tmp_path, data_dir=tiny_data, study_name="pruned", n_trials=1,
                     pruner=optuna.pruners.ThresholdPruner(lower=1.01), progress=False)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # epoch 2 never ran
    assert "| pruned " in (tmp_path / "trials.md").read_text()
    assert not (tmp_path / "best_profile.json").exists()  # no complete trial: no best recipe


def _tune_process(tiny_data: Path, out: Path, url: str, study: str, trials: int = 2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "training.tune", *SMOKE_ARGS, "--data", str(tiny_data),
                             "--out", str(out), "--n-trials", str(trials), "--study", study, "--storage", url],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_study(url: str, name: str, process: subprocess.Popen, timeout: float = 900) -> None:
    """Until ``process`` has created the study (its start imports torch: slow on a busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tune exited with {process.returncode} before the study existed:\n"
                                 f"{process.communicate()[0][-3000:]}")
        try:
            if _study(url, name).user_attrs.get("budget"):
                return
        except Exception:  # not created yet (KeyError), or its database not yet there
            pass
        time.sleep(0.5)
    raise AssertionError(f"study {name} never appeared in {url}")


def _two_processes_share_one_study(tiny_data: Path, tmp_path: Path, url: str) -> None:
    """Two tune processes, two trials each, on one study: one study of four trials, run by both, with one hand-chosen
    baseline, and each process's results (rewritten with --n-trials 0) list every trial."""
    first = _tune_process(tiny_data, tmp_path / "a", url, "shared")
    _wait_for_study(url, "shared", first)  # the first creates the study (and its baseline); the second joins it
    second = _tune_process(tiny_data, tmp_path / "b", url, "shared")
    outputs = [p.communicate(timeout=900)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    trials = _study(url, "shared").get_trials()
    assert [tr.number for tr in trials] == [0, 1, 2, 3]
    assert all(tr.state == TrialState.COMPLETE for tr in trials)
    workers = [tr.user_attrs["worker"] for tr in trials]
    assert len(set(workers)) == 2 and all(workers.count(w) == 2 for w in workers)
    assert sum(bool(tr.user_attrs.get("baseline")) for tr in trials) == 1
    for out, output in zip((tmp_path / "a", tmp_path / "b"), outputs, strict=True):
        assert output.count("trial ") >= 2  # a progress line per trial
        assert tune.main([*SMOKE_ARGS, "--data", str(tiny_data), "--out", str(out), "--n-trials", "0",
                          "--study", "shared", "--storage", url]) == 0
        table = (out / "trials.md").read_text()
        assert table.count("| complete ") == 4


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tiny_data, tmp_path):
    _two_processes_share_one_study(tiny_data, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


# --------------------------------------------------------------------------- a real PostgreSQL server

def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgresql_url():
    """A PostgreSQL server of its own in a temporary folder (initdb + pg_ctl, as an unprivileged user when run as
    root), stopped afterwards; skips, saying why, only where none can start."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql; `make test` does it "
                    "as root)")
    user = "nobody" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="tune-pg-"))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    port, data = _free_port(), folder / "data"
    run = dict(user=user, cwd=folder, capture_output=True, text=True, timeout=120)
    made = subprocess.run([initdb, "-D", str(data), "-U", "tune", "--auth=trust", "-E", "UTF8"], **run)
    if made.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb could not make a cluster: {made.stderr.strip()[-300:]}")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}"
    started = subprocess.run([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"], **run)
    if started.returncode != 0:
        log = (folder / "log").read_text()[-300:] if (folder / "log").exists() else started.stderr
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"pg_ctl could not start the server: {log.strip()}")
    try:
        yield f"postgresql+psycopg2://tune@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], **run)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_share_one_postgresql_study(tiny_data, tmp_path, postgresql_url):
    _two_processes_share_one_study(tiny_data, tmp_path, postgresql_url)


# --------------------------------------------------------------------------- the profile file

def test_the_best_profile_file_trains_with_run_all(tiny_data, tmp_path):
    from training.run_all import main as run_all

    recipe = Recipe(lr=3e-3, weight_decay=1e-4, aux_digit_weight=0.2, warmup_fraction=0.1, final_lr_fraction=0.05)
    profile = tune.recipe_profile(PROFILES["smoke"], {**recipe.overrides(), "width": 6, "clean_share": 0.3})
    path = write_profile_file(tmp_path / "best_profile.json", profile, {"study": "test"})
    out = tmp_path / "run"
    assert run_all(["--profile-file", str(path), "--models", "resnet", "--data", str(tiny_data), "--out", str(out),
                    "--skip-export"]) == 0
    history = json.loads((out / "weights" / "resnet" / "history.json").read_text())
    assert history["profile_settings"]["recipe"] == recipe.overrides()
    assert history["profile_settings"]["width"] == 6
    # the schedule ended at the profile's final fraction of its peak: the overrides were trained with
    assert history["history"][-1]["lr"] == pytest.approx(3e-3 * 0.05)
    weights = load_file(out / "weights" / "resnet" / "weights.safetensors")
    assert next(v for k, v in weights.items() if k.endswith("weight") and v.ndim == 4).shape[0] == 6  # width 6


def test_a_malformed_profile_file_is_refused_naming_the_field(tmp_path):
    from training.run_all import parse_args

    path = write_profile_file(tmp_path / "p.json", PROFILES["smoke"])
    document = json.loads(path.read_text())
    document["profile"]["recipe"]["lr"] = "fast"
    path.write_text(json.dumps(document))
    with pytest.raises(ProfileFileError, match=r"profile\.recipe\.lr must be float"):
        load_profile_file(path)
    with pytest.raises(SystemExit):
        parse_args(["--profile-file", str(path)])
    document["profile"]["recipe"] = {}
    document["profile"]["widht"] = 4
    path.write_text(json.dumps(document))
    with pytest.raises(ProfileFileError, match="unknown field.*widht"):
        load_profile_file(path)


#: python -m training.tune whose trials, instead of training, say so on stdout and wait for the signal: the test
#: sends Ctrl+C (SIGINT) once a trial is known to be running, not after a guessed delay.
_HELD_TUNE = """
import sys, threading
from training import tune

def _train(self, trial, config, prof):
    print("held: trial", trial.number, "running", flush=True)
    threading.Event().wait(900)  # until SIGINT (its handler raises KeyboardInterrupt here); 900 s: a hang
    raise AssertionError("no SIGINT came")

tune.Objective._train = _train
sys.exit(tune.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ctrl_c_leaves_the_study_consistent_and_a_rerun_resumes_it(tiny_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", _HELD_TUNE, *SMOKE_ARGS, "--data", str(tiny_data),
                                "--out", str(tmp_path), "--n-trials", "3", "--study", "cut", "--storage", url],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen = []
    while not seen or not seen[-1].startswith("held: trial"):  # until a trial is running (a hang: 900 s)
        line = lines.get(timeout=900)
        assert line is not None, f"tune ended before a trial ran:\n{''.join(seen)[-3000:]}"
        seen.append(line)
    process.send_signal(signal.SIGINT)
    process.wait(300)
    reader.join(60)
    while not lines.empty():
        line = lines.get_nowait()
        seen += [line] if line is not None else []
    output = "".join(seen)
    assert process.returncode == 130, output
    assert "the same command resumes the study" in output
    trials = _study(url, "cut").get_trials()
    assert not [tr for tr in trials if tr.state == TrialState.RUNNING]  # consistent: nothing left running
    cut = [tr for tr in trials if tr.state == TrialState.FAIL]
    assert len(cut) == 1 and cut[0].user_attrs["interrupted"] and cut[0].params
    assert "interrupted" in (tmp_path / "trials.md").read_text()  # the results were written on the way out
    # the same command again: the interrupted recipe runs first, and completes
    assert tune.main([*SMOKE_ARGS, "--data", str(tiny_data), "--out", str(tmp_path), "--n-trials", "1",
                      "--study", "cut", "--storage", url]) == 0
    retry = _study(url, "cut").get_trials()[-1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == cut[0].number
    assert retry.params == cut[0].params
