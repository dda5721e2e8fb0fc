"""Training in installments: the ``wide`` profile is selectable and is another run than ``default``; a
``run_all`` killed after some models finished trains only the rest when the same command runs again; a finished
staging folder promotes to a lean models folder that ``python -m ensemble verify`` accepts, and lets go of what it
promoted."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.course_data import load_course_npz
from ensemble.manifest import MANIFEST, ManifestError, read_manifest
from ensemble.runtime import Ensemble
from training import promote, run_all
from training.models import REGISTRY
from training.precision import FP32
from training.profiles import PROFILES
from training.train import Trainer, run_key

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the wide profile

def test_the_wide_profile_is_selectable_and_another_run_than_default(tiny_data, capsys):
    assert run_all.parse_args(["--profile", "wide"]).profile == "wide"
    with pytest.raises(SystemExit):
        run_all.parse_args(["--help"])
    assert "{smoke,default,long,wide," in capsys.readouterr().out.replace("\n", "").replace(" ", "")
    keys = {profile: run_key("resnet", profile, tiny_data, FP32) for profile in ("default", "wide", "long")}
    assert len(set(keys.values())) == 3  # a default model is never "skipped" as a wide one, nor a long one
    assert keys["wide"] == run_key("resnet", "wide", tiny_data, FP32)  # and a wide run is found again


def test_the_wide_profile_trains_longer_with_the_tuned_recipe():
    wide, default = PROFILES["wide"], PROFILES["default"]
    assert wide.width >= default.width and wide.width % 16 == 0  # bf16's fast channel counts
    assert wide.epochs * wide.pairs_per_epoch >= 3 * default.epochs * default.pairs_per_epoch
    assert wide.clean_share == default.clean_share == 0.2  # not the study's 0.025, which cost clean digits
    # The overrides reach the optimiser: every model trains at the tuned peak and weight decay.
    trainer = Trainer(REGISTRY["vgg"], wide, torch.device("cpu"), steps_per_epoch=10, mode=FP32)
    group = trainer.optimizer.param_groups[0]
    assert group["initial_lr"] == pytest.approx(3.3e-3) and group["weight_decay"] == pytest.approx(1.65e-3)
    assert wide.recipe.aux_digit_weight == pytest.approx(1.39)


# --------------------------------------------------------------------------- interrupted and resumed

NAMES = ("resnet", "vgg", "cbam_fusion")  # trained in this order with --jobs 1


def _run_all_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "training.run_all", "--profile", "smoke", "--models", ",".join(NAMES),
            "--jobs", "1", "--device", "cpu", "--data", str(data), "--out", str(out), "--skip-export", "--resume"]


def _finished(out: Path) -> list[str]:
    """Models whose history.json exists: it is written last, after the weights, so these are complete."""
    return [name for name in NAMES if (out / "weights" / name / "history.json").is_file()]


def _checkpoint_epoch(path: Path) -> int:
    """Epochs a checkpoint holds (0 without one)."""
    return int(torch.load(path, weights_only=True)["epoch"]) if path.is_file() else 0


def _epochs_in(log: str, name: str) -> list[int]:
    """The epochs of ``name`` a run_all log reports as trained (one line each: "NAME epoch N: ...")."""
    return [int(n) for n in re.findall(rf"^{re.escape(name)} epoch (\d+):", log, re.MULTILINE)]


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.mark.slow
def test_an_interrupted_run_resumes_with_only_the_missing_models(tiny_data, tmp_path):
    out, log = tmp_path / "staging", tmp_path / "first.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(_run_all_command(tiny_data, out), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not _finished(out):
            assert process.poll() is None, f"run_all ended before it was interrupted:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no model finished in 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # as a power cut would: nothing of run_all runs again
        process.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    done = _finished(out)
    assert done == list(NAMES[:len(done)]) and 1 <= len(done) < len(NAMES), f"finished before the kill: {done}"
    assert not (out / "training_results.json").exists()  # the first run never got to its end
    before = {name: _stamp(out / "weights" / name / "weights.safetensors") for name in done}
    # The model in training when the run was killed continues from its last checkpoint (--resume), the others
    # start from nothing.
    checkpointed = {name: _checkpoint_epoch(out / "checkpoints" / f"{name}.pt") for name in NAMES}

    again = subprocess.run(_run_all_command(tiny_data, out), cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = {row["name"]: row["status"] for row in json.loads((out / "training_results.json").read_text())}
    assert statuses == {name: "skipped" if name in done else "trained" for name in NAMES}
    # The finished ones were not touched, and the second run trained no epoch of theirs (its log names each epoch
    # it trains); the model never started before the kill trained all of its epochs now.
    assert {name: _stamp(out / "weights" / name / "weights.safetensors") for name in done} == before
    second_log = again.stdout + again.stderr
    assert {name: _epochs_in(second_log, name) for name in NAMES} == {
        name: [] if name in done else list(range(checkpointed[name] + 1, PROFILES["smoke"].epochs + 1))
        for name in NAMES}
    assert _finished(out) == list(NAMES)


# --------------------------------------------------------------------------- promotion

def _verify(models: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ensemble", "--models", str(models), "verify"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_staging_folder_promotes_to_a_models_folder_that_verify_accepts(smoke_models, tiny_data, tmp_path):
    staging, models = smoke_models, tmp_path / "models"
    assert promote.main([str(staging), "--to", str(models), "--keep-staging"]) == 0

    checked = _verify(models)
    assert checked.returncode == 0, checked.stderr
    manifest = read_manifest(models)
    assert f"matches its sha256 ({len(manifest['artifacts'])} files)" in checked.stdout
    # What serving and verify need, and not the per-model graphs the fused graph already holds.
    names = [m["name"] for m in manifest["models"]]
    assert {"fused", "lightgbm", "logreg", "reference"} <= set(manifest["artifacts"])
    assert {f"weights:{n}" for n in names} <= set(manifest["artifacts"])
    assert not [role for role in manifest["artifacts"] if role.startswith("onnx:")]
    assert not (models / "onnx").exists() and not (models / "checkpoints").exists()
    assert sorted(manifest["promoted"]["left_out"]) == sorted(f"onnx:{n}" for n in names)
    assert all((models / "weights" / n / "history.json").is_file() for n in names)
    assert promote.folder_bytes(models) < promote.folder_bytes(staging)
    assert (models / "ensemble.onnx").read_bytes() == (staging / "ensemble.onnx").read_bytes()
    # It serves what the staging folder serves.
    x = load_course_npz(tiny_data / "val.npz").x[:64]
    np.testing.assert_array_equal(Ensemble.load(models, device="cpu").predict(x).probability,
                                  Ensemble.load(staging, device="cpu").predict(x).probability)
    # verify really checks the promoted files: one changed byte in a weights file is refused.
    weights = models / manifest["artifacts"][f"weights:{names[0]}"]["file"]
    weights.write_bytes(weights.read_bytes() + b"\0")
    refused = _verify(models)
    assert refused.returncode == 2 and f"{weights.name}: sha256" in refused.stderr


@pytest.mark.slow
def test_the_promoted_folder_regenerates_its_graphs_from_the_weights(smoke_models, tiny_data, tmp_path, capsys):
    """The per-model graphs were left out because the weights give them back: the export into the promoted folder
    comes out byte-identical to its fused graph (and writes nothing there)."""
    from export.__main__ import main as export_cli

    models = tmp_path / "models"
    promote.promote(smoke_models, models, keep_staging=True)
    before = sorted(p.relative_to(models) for p in models.rglob("*"))
    assert export_cli(["--out", str(models), "--profile", "smoke", "--data", str(tiny_data)]) == 0
    assert "byte-identical" in capsys.readouterr().out
    assert sorted(p.relative_to(models) for p in models.rglob("*")) == before


def test_promotion_replaces_an_old_models_folder_whole_and_refuses_other_folders(smoke_models, tmp_path):
    models = tmp_path / "models"
    (models / "onnx").mkdir(parents=True)
    (models / "onnx" / "retired.onnx").write_bytes(b"old")
    (models / "student.onnx").write_bytes(b"a student of the old ensemble")
    (models / "report").mkdir()
    (models / "report" / "realism.md").write_text("the data's realism gate")  # about the data: carried over
    (models / "report" / "metrics.json").write_text("{}")  # about the old ensemble: replaced
    (models / MANIFEST).write_text("{}")
    promote.promote(smoke_models, models, keep_staging=True)
    assert not (models / "onnx").exists() and not (models / "student.onnx").exists()
    assert (models / "report" / "realism.md").read_text() == "the data's realism gate"
    assert not (models / "report" / "realism.json").exists()  # none before, none invented
    assert (models / "report" / "metrics.json").read_text() != "{}"
    assert read_manifest(models)["artifacts"]["fused"]["sha256"] == read_manifest(smoke_models)["artifacts"]["fused"][
        "sha256"]
    assert not list(tmp_path.glob(".models.*"))  # no scratch folder left beside it

    other = tmp_path / "not_models"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ManifestError, match="not a models folder"):
        promote.promote(smoke_models, other, keep_staging=True)
    assert (other / "notes.txt").read_text() == "mine"
    unfinished = tmp_path / "unfinished"
    shutil.copytree(smoke_models / "weights", unfinished / "weights")
    assert promote.main([str(unfinished), "--to", str(tmp_path / "m2")]) == 2  # no manifest: not exported yet
    assert not (tmp_path / "m2").exists()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_promotion_removes_the_promoted_copies_from_staging_and_keeps_a_retrain_in_progress(smoke_models, tmp_path):
    """Git keeps no second copy of the promoted weights under staging/: what was promoted leaves the staging folder.
    What a retrain not done yet left there (its finished models, its checkpoints) and what was not promoted (the
    per-model graphs) stay."""
    staging, models = tmp_path / "staging", tmp_path / "models"
    shutil.copytree(smoke_models, staging)
    retrain = {"weights/next_model/weights.safetensors": b"a model of the next retrain",
               "weights/next_model/history.json": b"{}", "checkpoints/next_model.pt": b"half-trained"}
    for name, content in retrain.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(content)
    assert promote.main([str(staging), "--to", str(models)]) == 0

    assert _verify(models).returncode == 0
    promoted, left = _files(models), _files(staging)
    assert not [name for name, content in left.items() if promoted.get(name) == content]  # no promoted copy stays
    assert {name: left.get(name) for name in retrain} == retrain
    names = [m["name"] for m in read_manifest(models)["models"]]
    assert not (staging / "weights" / names[0]).exists() and not (staging / MANIFEST).exists()
    assert all((staging / "onnx" / f"{n}.onnx").is_file() for n in names)  # left out of the models folder: kept
    # What was promoted is what the staging folder held.
    original = _files(smoke_models)
    assert all(original[name] == content for name, content in promoted.items() if name != MANIFEST)


# --------------------------------------------------------------------------- a candidate in one slot


@pytest.fixture
def registry_restored():
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


def test_a_swap_trial_puts_the_candidate_in_the_replaced_slot_only(registry_restored):
    from experiments.swap_trial import swap_registry
    from training.models import ModelConfig, model_names

    before = model_names()
    swap_registry("resnet_s2023", ModelConfig("cbam_trial", "cbam", seed=7))
    after = model_names()
    assert after.index("cbam_trial") == before.index("resnet_s2023")  # the fused graph's output order
    assert [n for n in after if n != "cbam_trial"] == [n for n in before if n != "resnet_s2023"]
    with pytest.raises(SystemExit, match="already registered"):  # a candidate needs a new name
        swap_registry("resnet", ModelConfig("vgg", "vgg"))
    with pytest.raises(SystemExit, match="not a registered model"):
        swap_registry("resnet_s2023", ModelConfig("another", "vgg"))  # already swapped out
    assert model_names() == after  # a refused swap changes nothing
