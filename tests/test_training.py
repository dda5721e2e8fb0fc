"""Tests of the training side (training/train.py, training/run_all.py) at the smoke profile on a tiny
dataset: every artefact of a full run, skipping of finished runs, --force, exact resumption after an
interruption, training on course files without digit labels, and building a missing dataset."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ensemble.course_data import load_course_npz, save_course_npz
from ensemble.cpu import this_cpu
from training import run_all
from training.models import REGISTRY, model_names
from training.precision import choose_mode, torch_threads
from training.profiles import PROFILES
from training.train import RunOptions, train_model

pytestmark = pytest.mark.slow

CHECKPOINT_KEYS = {"model", "averaged", "optimizer", "scheduler", "epoch", "best_acc", "rng"}


class Interrupted(Exception):
    pass


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module's training runs, as for the shared smoke run (tests/conftest.py): bit-exact
    results, and much faster on a busy 2-core machine (~110 s of training with torch's 2 threads next to another
    job, ~15 s with one). Put back after the module."""
    with torch_threads(1):
        yield


@pytest.fixture
def data_dir(tiny_data) -> Path:
    """The shared tiny dataset (tests/conftest.py): 300 train, 240 val, 120 test pairs, with source digits."""
    return tiny_data


@pytest.fixture
def smoke_run(smoke_models, tmp_path) -> Path:
    """A private copy (modification times kept) of the shared smoke-profile run of
    ``run_all.main(["--profile", "smoke", "--data", D, "--out", O])`` (tests/conftest.py)."""
    copy = tmp_path / "smoke_run"
    shutil.copytree(smoke_models, copy)
    return copy


def _weights(out: Path, name: str) -> Path:
    return out / "weights" / name / "weights.safetensors"


def _stamp(path: Path) -> tuple[int, int]:
    """(inode, mtime in ns): changes when the file is rewritten, also by an atomic replace."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _results(out: Path) -> list[dict]:
    return json.loads((out / "training_results.json").read_text())


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# --------------------------------------------------------------------------- run_all, smoke profile

def test_smoke_run_writes_every_artefact(smoke_models):
    out = smoke_models
    assert sorted(p.stem for p in (out / "checkpoints").glob("*.pt")) == sorted(model_names())
    assert sorted(p.parent.name for p in (out / "weights").glob("*/weights.safetensors")) == sorted(model_names())
    assert sorted(p.parent.name for p in (out / "weights").glob("*/curves.png")) == sorted(model_names())
    histories = sorted((out / "weights").glob("*/history.json"))
    assert sorted(p.parent.name for p in histories) == sorted(model_names())
    for path in histories:
        history = json.loads(path.read_text())
        assert history["name"] == path.parent.name
        assert isinstance(history["history"], list) and history["history"]
        assert history["result"]["name"] == path.parent.name
        assert history["result"]["epochs"] == len(history["history"])
        # the mode this CPU trained it in, and why (training.precision.choose_mode: the CPU's flags)
        tower = REGISTRY[history["name"]].tower
        assert history["step_mode"] == choose_mode(torch.device("cpu"), tower).name
        assert this_cpu().model in history["step_mode_reason"]
        assert (path.parent / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _results(out)
    assert [r["name"] for r in rows] == list(model_names())
    assert {r["status"] for r in rows} == {"trained"}
    # The stackers fitted on the stacking set (fresh pairs of the held-out digits), not on early stopping's val.npz.
    fitted_on = json.loads((out / "manifest.json").read_text())["training"]["stacker_training_set"]
    assert fitted_on.startswith(f"stacking set ({PROFILES['smoke'].stacking_pairs} ")
    assert all(0.0 <= r["val_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0 for r in rows)


def test_rerun_skips_and_force_retrains_only_the_named_model(smoke_run, data_dir, monkeypatch):
    out = smoke_run
    # Export and stacking are tested elsewhere (tests/test_ensemble.py); here they would only cost time.
    exported: list[list[dict]] = []
    monkeypatch.setattr(run_all, "export_and_stack",
                        lambda out, data_dir, profile, rows, score_files=(): exported.append(rows))
    args = ["--profile", "smoke", "--data", str(data_dir), "--out", str(out)]
    before = {name: _stamp(_weights(out, name)) for name in model_names()}

    assert run_all.main(args) == 0
    rows = _results(out)
    assert len(exported) == 1 and exported[0] == rows
    assert [r["name"] for r in rows] == list(model_names())
    assert [r["status"] for r in rows] == ["skipped"] * len(model_names())
    assert {name: _stamp(_weights(out, name)) for name in model_names()} == before

    assert run_all.main([*args, "--force", "--models", "resnet"]) == 0
    statuses = {r["name"]: r["status"] for r in _results(out)}
    assert statuses["resnet"] == "trained"
    assert all(status != "trained" for name, status in statuses.items() if name != "resnet")
    after = {name: _stamp(_weights(out, name)) for name in model_names()}
    assert after["resnet"] != before["resnet"]
    assert {n: s for n, s in after.items() if n != "resnet"} == {n: s for n, s in before.items() if n != "resnet"}


# --------------------------------------------------------------------------- resuming

def test_resume_after_interruption_is_exact(data_dir, tmp_path):
    common = dict(data_dir=data_dir, profile="smoke", device="cpu", threads=1, progress=False)
    a, b = tmp_path / "a", tmp_path / "b"

    result_a = train_model("resnet", RunOptions(out=a, **common))
    assert result_a["status"] == "trained" and result_a["epochs"] >= 2

    def interrupt_after_first(epoch: int) -> None:
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_model("resnet", RunOptions(out=b, **common), on_epoch_end=interrupt_after_first)
    assert not _weights(b, "resnet").exists()

    ckpt_path = b / "checkpoints" / "resnet.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert CHECKPOINT_KEYS <= set(ckpt)
    assert ckpt["epoch"] == 1

    resumed_epochs: list[int] = []
    result_b = train_model("resnet", RunOptions(out=b, resume=True, **common), on_epoch_end=resumed_epochs.append)
    assert result_b["status"] == "trained"
    # It continued from the checkpoint: epoch 1 was not trained again.
    assert resumed_epochs == list(range(2, result_a["epochs"] + 1))

    weights_a, weights_b = load_file(_weights(a, "resnet")), load_file(_weights(b, "resnet"))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key

    # The last (not only the best) state and the optimiser agree too.
    ckpt_a = torch.load(a / "checkpoints" / "resnet.pt", weights_only=True)
    ckpt_b = torch.load(ckpt_path, weights_only=True)
    assert CHECKPOINT_KEYS <= set(ckpt_a)
    for key in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][key], ckpt_b["model"][key]), key
    for param, state in ckpt_a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ckpt_b["optimizer"]["state"][param][name]))

    history_a = json.loads((a / "weights" / "resnet" / "history.json").read_text())
    history_b = json.loads((b / "weights" / "resnet" / "history.json").read_text())
    assert len(history_a["history"]) == len(history_b["history"]) == result_a["epochs"]
    assert _without_seconds(history_a["history"]) == _without_seconds(history_b["history"])


def test_the_schedule_spends_the_budget_and_ends_at_its_floor(data_dir, tmp_path):
    """The learning rate warms up, peaks at the configured rate and reaches the floor at the last step."""

    options = RunOptions(out=tmp_path, data_dir=data_dir, profile="smoke", device="cpu", threads=1, progress=False)
    train_model("resnet", options)
    ckpt = torch.load(tmp_path / "checkpoints" / "resnet.pt", weights_only=True)
    prof = PROFILES["smoke"]
    peak, FINAL_LR_FRACTION = prof.recipe.lr, prof.recipe.final_lr_fraction
    steps = prof.epochs * -(-prof.pairs_per_epoch // prof.batch_size)
    assert ckpt["scheduler"]["last_epoch"] == steps
    # The last step ran at the floor: the learning rate recorded after the final epoch.
    assert ckpt["history"][-1]["lr"] == pytest.approx(peak * FINAL_LR_FRACTION)
    assert ckpt["scheduler"]["_last_lr"][0] == pytest.approx(peak * FINAL_LR_FRACTION)


def test_a_larger_epoch_budget_is_another_run(data_dir, tmp_path, monkeypatch):
    """The schedule spans the budget, so raising the epochs trains afresh instead of extending."""

    common = dict(data_dir=data_dir, profile="smoke", device="cpu", threads=1, progress=False)
    assert train_model("resnet", RunOptions(out=tmp_path, **common))["epochs"] == 2
    assert train_model("resnet", RunOptions(out=tmp_path, **common))["status"] == "skipped"
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], epochs=3))
    epochs: list[int] = []
    result = train_model("resnet", RunOptions(out=tmp_path, resume=True, **common), on_epoch_end=epochs.append)
    assert result["status"] == "trained" and epochs == [1, 2, 3]


def test_background_drawing_gives_the_same_pairs(data_dir):
    """With several drawing processes the next epoch is drawn while this one trains: same pairs."""
    from training.datasets import TrainingData
    from training.train import EpochPairs, epoch_pairs

    data = TrainingData.load(data_dir, 256, 128)
    prof = replace(PROFILES["smoke"], data_workers=2, epochs=3)
    pairs = EpochPairs(data, 1, prof)
    try:
        assert pairs._pool is not None
        for epoch in range(3):
            drawn = pairs.get(epoch)
            direct = epoch_pairs(data, 1, epoch, replace(prof, data_workers=1))
            for a, b in zip(drawn, direct, strict=True):
                assert (a is None and b is None) or torch.equal(a, b)
    finally:
        pairs.close()


def test_gpu_profile_trains_on_cpu_at_a_tiny_size(data_dir, tmp_path, monkeypatch):
    """The GPU profile's recipe (wider, larger batches, pairs drawn by several processes in the
    background) end to end on the CPU, shrunk: no GPU here, so its 8-minute claim is not tested."""

    gpu = PROFILES["gpu"]
    assert gpu.data_workers > 1 and gpu.batch_size > PROFILES["default"].batch_size
    assert gpu.width > PROFILES["default"].width
    monkeypatch.setitem(PROFILES, "gpu", replace(gpu, width=4, feat_dim=16, epochs=2, pairs_per_epoch=256,
                                                 batch_size=128, max_val_pairs=128, data_workers=2))
    result = train_model("resnet", RunOptions(out=tmp_path, data_dir=data_dir, profile="gpu", device="cpu",
                                              threads=1, progress=False))
    assert result["status"] == "trained" and result["epochs"] == 2
    assert _weights(tmp_path, "resnet").is_file()


# --------------------------------------------------------------------------- course files

def test_trains_on_course_files_without_digit_labels(data_dir, tmp_path):
    course = tmp_path / "course"
    for split in ("train", "val"):
        data = load_course_npz(data_dir / f"{split}.npz", require=("x", "y"))
        save_course_npz(course / f"{split}.npz", x=data.x, y=data.y)
    assert sorted(p.name for p in course.iterdir()) == ["train.npz", "val.npz"]
    with np.load(course / "train.npz") as npz:
        assert sorted(npz.files) == ["x", "y"]

    out = tmp_path / "out"
    result = train_model("resnet_fusion", RunOptions(course, out, "smoke", device="cpu", threads=1, progress=False))
    assert result["status"] == "trained"
    assert "test_acc" not in result  # the folder has no labelled test file
    history = json.loads((out / "weights" / "resnet_fusion" / "history.json").read_text())
    assert len(history["history"]) == result["epochs"] >= 1
    assert [row["epoch"] for row in history["history"]] == list(range(1, result["epochs"] + 1))
    assert _weights(out, "resnet_fusion").is_file()


# --------------------------------------------------------------------------- building a missing dataset

def test_ensure_dataset_builds_a_missing_dataset(tmp_path):
    data = tmp_path / "data"
    run_all.ensure_dataset(data, "smoke")
    for name in ("train.npz", "val.npz", "sources.npz", "test_public.npz", "test_public_labels.csv"):
        assert (data / name).is_file(), name
    train = load_course_npz(data / "train.npz", require=("x", "y", "digits"))
    val = load_course_npz(data / "val.npz", require=("x", "y"))
    assert len(train) > 0 and len(val) > 0
    assert train.x.shape[1:] == (28, 56) and train.x.dtype == np.uint8


def test_ensure_dataset_keeps_an_existing_dataset(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.npz").write_bytes(b"placeholder")
    stamp = _stamp(data / "train.npz")
    run_all.ensure_dataset(data, "smoke")
    assert sorted(os.listdir(data)) == ["train.npz"]
    assert _stamp(data / "train.npz") == stamp
