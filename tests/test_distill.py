"""The distilled student (python -m training.distill, ensemble.student): the loss worked out by hand, and distillation
on the smoke profile end to end: exported, listed in the manifest, refused when tampered, served when asked."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from ensemble.course_data import load_course_npz
from ensemble.manifest import ManifestError, read_manifest, sha256_file, write_manifest
from ensemble.preprocess import prepare_pair_bytes
from ensemble.priors import read_frequencies, uniform_greater_probability
from ensemble.runtime import Ensemble
from ensemble.student import Student, install_student, load_model, resolve_model
from export import student as export_student
from tests.server_process import serve_repository
from training import distill

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the loss, by hand

def test_the_distillation_loss_worked_out_by_hand():
    """One pair: the student says logit 0 and uniform digits; the teacher says P(left > right) = 0.8, left digit 0
    or 1 (0.64 / 0.36), right digit 2 for sure; the hard targets are y = 1 and digits (0, 2) (the loss takes them
    as given)."""
    t, alpha, w = 2.0, 0.7, 0.5
    logit, digit_logits = torch.zeros(1), torch.zeros(1, 2, 10)
    teacher_digits = torch.zeros(1, 2, 10)
    teacher_digits[0, 0, :2] = torch.tensor([0.64, 0.36])
    teacher_digits[0, 1, 2] = 1.0
    loss = distill.distillation_loss(logit, digit_logits, torch.tensor([0.8]), teacher_digits, torch.tensor([1]),
                                     torch.tensor([[0, 2]]), alpha, t, w)
    # Pair: logit(0.8) = ln 4, / T = ln 2, so the tempered teacher says 2/3; the student's logit 0 says 1/2.
    kl_pair = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)
    # Digits: q^(1/T) = sqrt(0.64), sqrt(0.36) = 0.8, 0.6 -> 4/7, 3/7; the student's tempered digits are uniform.
    kl_left = 4 / 7 * math.log(4 / 7 * 10) + 3 / 7 * math.log(3 / 7 * 10)
    kl_right = math.log(10)  # a certain 2 against uniform tenths
    soft = t * t * (kl_pair + w * (kl_left + kl_right) / 2)
    hard = math.log(2) + w * math.log(10)  # BCE of logit 0 for y = 1; cross-entropy of uniform digits
    assert loss.item() == pytest.approx(alpha * soft + (1 - alpha) * hard, abs=1e-4)
    # alpha 0 is the hard loss alone; a student that already says what the teacher says has no soft loss
    hard_only = distill.distillation_loss(logit, digit_logits, torch.tensor([0.8]), teacher_digits,
                                          torch.tensor([1]), torch.tensor([[0, 2]]), 0.0, t, w)
    assert hard_only.item() == pytest.approx(hard, abs=1e-5)
    same = torch.full((1, 2, 10), 0.1)
    matched = distill.distillation_loss(torch.tensor([math.log(4.0)]), torch.zeros(1, 2, 10), torch.tensor([0.8]),
                                        same, torch.tensor([1]), torch.tensor([[0, 2]]), 1.0, t, w)
    assert matched.item() == pytest.approx(0.0, abs=1e-5)


def test_tempering_softens_as_a_logit_divided_by_t():
    assert distill.tempered_probability(torch.tensor([0.8]), 2.0).item() == pytest.approx(2 / 3, abs=1e-6)
    assert distill.tempered_probability(torch.tensor([0.8]), 1.0).item() == pytest.approx(0.8, abs=1e-6)
    q = distill.tempered_distribution(torch.tensor([[0.64, 0.36]]), 2.0)
    np.testing.assert_allclose(q.numpy(), [[4 / 7, 3 / 7]], atol=1e-6)


# --------------------------------------------------------------------------- end to end on the smoke profile

@pytest.fixture(scope="module")
def distilled(smoke_models, tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the smoke ensemble with a student distilled from it and installed; (models copy, student folder)."""
    models = tmp_path_factory.mktemp("with_student") / "models"
    shutil.copytree(smoke_models, models)
    out = tmp_path_factory.mktemp("student")
    assert distill.main(["--teacher", str(models), "--data", str(tiny_data), "--out", str(out), "--profile", "smoke",
                         "--threads", "1"]) == 0
    # the export step is the export layer's own command (training never imports export)
    assert export_student.main([str(out), "--data", str(tiny_data), "--threads", "1", "--install-into",
                                str(models)]) == 0
    return models, out


@pytest.mark.slow
def test_the_student_is_exported_and_listed_in_the_manifest(distilled, tiny_data):
    models, out = distilled
    record = json.loads((out / "student.json").read_text())
    assert record["artifacts"]["student"]["sha256"] == sha256_file(out / "student.onnx")
    assert record["student"]["parity"]["max_logit_diff"] <= 1e-4  # the export's parity check passed
    manifest = read_manifest(models)
    assert manifest["artifacts"]["student"]["sha256"] == sha256_file(models / "student.onnx")
    assert manifest["student"]["teacher"]["fused_sha256"] == manifest["artifacts"]["fused"]["sha256"]
    assert {"set", "teacher_accuracy", "student_accuracy", "agreement"} <= set(manifest["student"]["metrics"][0])
    # the student beside its teacher, worked out again: both answer the validation pairs here, and the recorded
    # accuracies and agreement are what those answers give
    val = load_course_npz(tiny_data / "val.npz", require=("x", "y"))
    teacher = Ensemble.load(models, device="cpu", precision="fp32").predict(val.x).label
    student = Student.load(models, device="cpu").predict(val.x).label
    row = next(r for r in manifest["student"]["metrics"] if r["set"].startswith("val.npz"))
    assert row["n"] == len(val.y)
    assert row["teacher_accuracy"] == pytest.approx(np.mean(teacher == val.y))
    assert row["student_accuracy"] == pytest.approx(np.mean(student == val.y))
    assert row["agreement"] == pytest.approx(np.mean(student == teacher))
    # the ensemble is served from the same folder as before
    x = load_course_npz(tiny_data / "val.npz").x[:32]
    assert Ensemble.load(models, device="cpu").predict(x).probability.shape == (32,)


@pytest.mark.slow
def test_the_student_answers_under_both_priors_with_the_same_prior_functions(distilled, tiny_data):
    models, _ = distilled
    x = load_course_npz(tiny_data / "val.npz").x[:64]
    student = load_model(models, "student", device="cpu", precision="fp32")
    assert isinstance(student, Student) and student.names == ("student",)
    course, uniform = student.predict(x), student.predict(x, prior="uniform")
    logit, digit_probs = student.session.run(None, {"pairs": x})
    np.testing.assert_allclose(course.probability, 1 / (1 + np.exp(-logit.astype(np.float64))), atol=1e-9)
    frequencies = read_frequencies(read_manifest(models).get("priors"))
    np.testing.assert_allclose(uniform.probability, uniform_greater_probability(digit_probs, frequencies), atol=1e-9)
    assert np.abs(uniform.probability - course.probability).max() > 1e-6  # two answers (a smoke student says ~0.5)
    assert course.base_probabilities.shape == (64, 1) and course.digits.shape == (64, 2)


@pytest.mark.slow
def test_the_cli_predicts_with_the_student(distilled, tiny_data, tmp_path):
    from ensemble.__main__ import main as cli

    models, _ = distilled
    csv = tmp_path / "pred.csv"
    assert cli(["--models", str(models), "--model", "student", "predict", str(tiny_data / "val.npz"), "--out",
                str(csv)]) == 0
    expected = Student.load(models, device="cpu").predict(load_course_npz(tiny_data / "val.npz").x).label
    assert [int(line.split(",")[1]) for line in csv.read_text().splitlines()[1:]] == expected.tolist()


@pytest.mark.slow
def test_a_tampered_student_is_refused(distilled, tmp_path):
    models, out = distilled
    tampered = tmp_path / "models"
    shutil.copytree(models, tampered)
    graph = tampered / "student.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match=r"student\.onnx: sha256 .* does not match"):
        Student.load(tampered, device="cpu", precision="fp32")
    Ensemble.load(tampered, device="cpu")  # the ensemble does not open the student's graph
    # a student distilled from another ensemble is not installed
    other = tmp_path / "other"
    shutil.copytree(models, other)
    manifest = read_manifest(other)
    manifest["artifacts"]["fused"]["sha256"] = "0" * 64
    write_manifest(other, manifest)
    with pytest.raises(ManifestError, match="distilled from the ensemble"):
        install_student(out, other)


def test_the_model_choice_is_checked(monkeypatch):
    monkeypatch.delenv("DIGIT_COMPARE_MODEL", raising=False)
    assert resolve_model() == "ensemble"
    monkeypatch.setenv("DIGIT_COMPARE_MODEL", "Student")
    assert resolve_model() == "student"
    monkeypatch.setenv("DIGIT_COMPARE_MODEL", "teacher")
    with pytest.raises(ValueError, match="DIGIT_COMPARE_MODEL must be one of ensemble, student"):
        resolve_model()


@pytest.mark.slow
def test_a_folder_without_a_student_refuses_to_serve_it(smoke_models):
    env = {**os.environ, "DIGIT_COMPARE_MODELS": str(smoke_models), "DIGIT_COMPARE_MODEL": "student"}
    done = subprocess.run([sys.executable, "-c", "import service"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and "lists no student" in done.stderr


@pytest.mark.slow
def test_the_service_serves_the_student_when_asked(distilled, tmp_path):
    models, _ = distilled
    pair = (ROOT / "samples" / "pair.png").read_bytes()
    expected = Student.load(models, device="cpu").predict(prepare_pair_bytes(pair, "image")[None])
    with serve_repository(tmp_path / "bentoml", DIGIT_COMPARE_MODELS=str(models), DIGIT_COMPARE_MODEL="student") as srv:
        with httpx.Client(base_url=srv.url, timeout=120) as client:
            info = client.get("/info").json()
            answer = client.post("/compare_pair", files={"image": ("pair.png", pair, "image/png")}).json()
            uniform = client.post("/compare_pair", files={"image": ("pair.png", pair, "image/png")},
                                  data={"prior": "uniform"}).json()
    assert info["model"] == "student" and info["models"] == ["student"]
    assert info["artifacts"]["student"]["sha256"] == sha256_file(models / "student.onnx")
    assert list(answer["models"]) == ["student"]  # the answer names the model that gave it
    assert answer["probability"] == pytest.approx(float(expected.by_prior["course"][0]), abs=1e-5)
    assert uniform["probability"] == pytest.approx(float(expected.by_prior["uniform"][0]), abs=1e-5)


@pytest.mark.slow
def test_the_bench_measures_the_student_beside_the_ensemble(distilled, tmp_path):
    from bench.serve import main as bench

    models, _ = distilled
    out = tmp_path / "bench"
    assert bench(["--models", str(models), "--model", "ensemble,student", "--duration", "1", "--concurrency", "1,2",
                  "--batches", "1,4", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert list(result["models"]) == ["ensemble", "student"]
    for numbers in result["models"].values():
        assert all(r["fp32 pairs/s"] > 0 for r in numbers["in_process"])
        assert all(r["answers"] > 0 and r["errors"] == 0 for r in numbers["compare_pair"])
    rows = {r["measure"]: r for r in result["side_by_side"]}
    row = rows["in process, batch 4 (pairs/s)"]
    assert row["student / ensemble"] == pytest.approx(row["student"] / row["ensemble"])
    assert (out / "bench_student.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Side by side" in (out / "bench.md").read_text()
