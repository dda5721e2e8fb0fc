"""The export, the stackers, the manifest and the torch-free run time, on smoke-profile models."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ensemble import Ensemble, ManifestError
from ensemble.__main__ import main as cli
from ensemble.course_data import load_course_npz, save_course_npz
from ensemble.manifest import MANIFEST, SERVING_ROLES, artifact_entry
from export.onnx_export import ParityError, check_parity, cpu_session
from training.models import load_weights, model_names

ROOT = Path(__file__).resolve().parent.parent


def serving_copy(smoke_models: Path, tmp_path: Path) -> Path:
    """A private copy of the serving artifacts, safe to tamper with."""
    manifest = json.loads((smoke_models / MANIFEST).read_text())
    dest = tmp_path / "models"
    for role in SERVING_ROLES:
        target = dest / manifest["artifacts"][role]["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(smoke_models / manifest["artifacts"][role]["file"], target)
    shutil.copy(smoke_models / MANIFEST, dest / MANIFEST)
    return dest


# --------------------------------------------------------------------------- export

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_export_into_a_folder_with_a_manifest_keeps_it_consistent(smoke_models, tiny_data, tmp_path, capsys):
    """`python -m export --out DIR` where DIR/manifest.json records graphs: byte-identical graphs leave DIR as it
    is; differing ones are refused with what to run instead, DIR untouched, the served models still loading."""
    from export.__main__ import main as export_cli

    models = tmp_path / "models"
    shutil.copytree(smoke_models, models)
    before = _snapshot(models)
    args = ["--out", str(models), "--profile", "smoke", "--data", str(tiny_data)]
    assert export_cli(args) == 0
    assert "byte-identical" in capsys.readouterr().out
    assert _snapshot(models) == before
    # The manifest records other bytes for one model's graph (as after a retrain): refused, nothing written.
    manifest = json.loads((models / MANIFEST).read_text())
    role = f"onnx:{model_names()[1]}"
    manifest["artifacts"][role]["sha256"] = "0" * 64
    (models / MANIFEST).write_text(json.dumps(manifest))
    before = _snapshot(models)
    assert export_cli(args) == 1
    err = capsys.readouterr().err
    assert manifest["artifacts"][role]["file"] in err and f"run_all --out {models}" in err
    assert _snapshot(models) == before
    Ensemble.load(models)


def test_every_onnx_file_passes_the_checker(smoke_models):
    files = [smoke_models / "ensemble.onnx"] + [smoke_models / "onnx" / f"{n}.onnx" for n in model_names()]
    for path in files:
        onnx.checker.check_model(onnx.load(path), full_check=True)
    fused = onnx.load(smoke_models / "ensemble.onnx").graph
    assert [i.name for i in fused.input] == ["pairs"]
    assert [o.name for o in fused.output] == ["logits", "digit_probs"]


def test_onnx_matches_pytorch_and_fused_matches_singles(smoke_models, tiny_data):
    pairs = load_course_npz(tiny_data / "val.npz").x[:200]
    models = {n: load_weights(n, smoke_models, "smoke") for n in model_names()}
    paths = {n: smoke_models / "onnx" / f"{n}.onnx" for n in model_names()}
    report = check_parity(models, paths, smoke_models / "ensemble.onnx", pairs)
    assert max(v for k, v in report.items() if k != "fused") <= 1e-4
    assert report["fused"] <= 1e-5
    fused_logits, fused_digits = cpu_session(smoke_models / "ensemble.onnx").run(None, {"pairs": pairs})
    assert fused_logits.shape == (200, 10) and fused_digits.shape == (200, 10, 2, 10)
    logit, digits = cpu_session(paths["fpn"]).run(None, {"pairs": pairs})
    np.testing.assert_allclose(fused_logits[:, model_names().index("fpn")], logit, atol=1e-5)
    np.testing.assert_allclose(digits.sum(-1), 1.0, atol=1e-5)


def test_parity_check_fails_loudly_on_a_mismatch(smoke_models, tiny_data):
    pairs = load_course_npz(tiny_data / "val.npz").x[:64]
    models = {"resnet": load_weights("resnet_s2023", smoke_models, "smoke")}  # the wrong weights
    with pytest.raises(ParityError, match="resnet: ONNX Runtime differs from PyTorch"):
        check_parity(models, {"resnet": smoke_models / "onnx" / "resnet.onnx"}, smoke_models / "ensemble.onnx", pairs)


# --------------------------------------------------------------------------- stacking and the run time

def test_training_and_serving_share_the_feature_function():
    import ensemble.features
    import ensemble.runtime
    import training.stacking

    assert training.stacking.stacking_features is ensemble.features.stacking_features
    assert ensemble.runtime.stacking_features is ensemble.features.stacking_features


def test_predict_is_lightgbms_own_answer_on_the_stacking_features(smoke_models):
    """Ensemble.predict against an independent path through the same files: ONNX Runtime's session on the
    fused graph, the stacking features (tested on hand-worked values in tests/test_features.py), and
    LightGBM's own Booster read from the manifest's file; the base probabilities are the sigmoid of the
    graph's logits, the digits the argmax of its averaged digit posteriors."""
    import lightgbm
    import onnxruntime

    from ensemble.features import stacking_features

    manifest = json.loads((smoke_models / MANIFEST).read_text())
    ens = Ensemble.load(smoke_models)
    with np.load(smoke_models / "reference_predictions.npz", allow_pickle=False) as ref:
        x, recorded = ref["x"], ref["probability"]
    pred = ens.predict(x)

    session = onnxruntime.InferenceSession(str(smoke_models / manifest["artifacts"]["fused"]["file"]),
                                           providers=["CPUExecutionProvider"])
    logits, digit_probs = session.run(None, {"pairs": x})
    features, _ = stacking_features(logits, digit_probs, model_names(), manifest["features"]["names"])
    booster = lightgbm.Booster(model_file=str(smoke_models / manifest["artifacts"]["lightgbm"]["file"]))
    expected = booster.predict(features)
    assert np.ptp(expected) > 0.01  # not a constant answer that anything would match (smoke models: 0.028)
    np.testing.assert_allclose(pred.probability, expected, atol=1e-9)
    np.testing.assert_array_equal(pred.label, (expected >= 0.5).astype(np.int64))
    np.testing.assert_allclose(pred.base_probabilities, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-9)
    np.testing.assert_array_equal(pred.digits, digit_probs.mean(axis=1).argmax(axis=-1))
    # what the stacking step recorded when it fitted the stackers: the files still answer the same
    np.testing.assert_allclose(pred.probability, recorded, atol=1e-6)
    assert ens.names == model_names() and ens.provider == "CPUExecutionProvider"


def test_predict_is_the_same_in_chunks(smoke_models, tiny_data, monkeypatch):
    import ensemble.runtime

    ens = Ensemble.load(smoke_models)
    pairs = load_course_npz(tiny_data / "val.npz").x[:100]
    whole = ens.predict(pairs).probability
    monkeypatch.setattr(ensemble.runtime, "CHUNK", 7)
    np.testing.assert_allclose(ens.predict(pairs).probability, whole, atol=1e-6)


def test_manifest_records_the_contract(smoke_models):
    manifest = json.loads((smoke_models / MANIFEST).read_text())
    assert [m["name"] for m in manifest["models"]] == list(model_names())
    assert manifest["input"]["dtype"] == "uint8" and manifest["input"]["shape"] == [None, 28, 56]
    assert manifest["training"]["data"]["severity"] == 6.0
    assert manifest["best_single"] in model_names()
    assert "torch" in manifest["versions"] and "lightgbm" in manifest["versions"]
    for entry in manifest["artifacts"].values():
        assert len(entry["sha256"]) == 64 and (smoke_models / entry["file"]).is_file()


def test_report_has_one_meaning_of_val(smoke_models):
    """REPORT.md's "val acc" is the manifest's (the whole val.npz, exported graph); training's per-epoch score on
    the profile's subset is titled "early-stop", never "val"."""
    manifest = json.loads((smoke_models / MANIFEST).read_text())
    report = (smoke_models / "REPORT.md").read_text()
    section = report[report.index("## Base models (training)"):]
    table = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert "val acc" in header and "early-stop sev6" in header and "val" not in header
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    for model in manifest["models"]:
        history = json.loads((smoke_models / "weights" / model["name"] / "history.json").read_text())["result"]
        cells = rows[model["name"]]
        assert float(cells[header.index("val acc")]) == pytest.approx(model["val_acc"], abs=5e-5)
        assert float(cells[header.index("early-stop sev6")]) == pytest.approx(history["val_acc"], abs=5e-5)


def test_tampered_artifact_is_refused_naming_the_file(smoke_models, tmp_path):
    models = serving_copy(smoke_models, tmp_path)
    path = models / "ensemble.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"ensemble\.onnx: sha256 .* does not match"):
        Ensemble.load(models)


def test_verify_checks_every_recorded_file_and_load_every_file_it_opens(smoke_models, tmp_path, capsys):
    """Ensemble.load opens the fused graph and the stackers and checks those; the per-model graphs and the
    weights are recorded but never opened by serving: `python -m ensemble verify` checks them."""
    models = tmp_path / "models"
    shutil.copytree(smoke_models, models)
    manifest = json.loads((models / MANIFEST).read_text())
    assert cli(["--models", str(models), "verify"]) == 0
    assert f"matches its sha256 ({len(manifest['artifacts'])} files)" in capsys.readouterr().out
    single = models / manifest["artifacts"][f"onnx:{model_names()[0]}"]["file"]
    single.write_bytes(single.read_bytes() + b"\0")
    Ensemble.load(models)  # serving does not open the per-model graphs
    assert cli(["--models", str(models), "verify"]) == 2
    assert re.search(rf"{re.escape(single.name)}: sha256 .* does not match", capsys.readouterr().err)
    single.unlink()
    assert cli(["--models", str(models), "verify"]) == 2
    assert f"{single.name}: missing" in capsys.readouterr().err


def test_missing_artifact_is_refused_naming_the_file(smoke_models, tmp_path):
    models = serving_copy(smoke_models, tmp_path)
    (models / "stacker_lightgbm.txt").unlink()
    with pytest.raises(ManifestError, match=r"stacker_lightgbm\.txt: missing"):
        Ensemble.load(models)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"format_version": 1}', "missing field"),
    ("[1, 2]", "JSON object"),
])
def test_malformed_manifest_is_refused_naming_the_file(smoke_models, tmp_path, content, message):
    models = serving_copy(smoke_models, tmp_path)
    (models / MANIFEST).write_text(content)
    with pytest.raises(ManifestError, match=message) as err:
        Ensemble.load(models)
    assert str(models / MANIFEST) in str(err.value)


@pytest.mark.parametrize("edit, message", [
    (lambda f: {**f, "names": f["names"][:-1] + ["feature_from_the_future"]}, "unknown stacking feature"),
    (lambda f: {**f, "names": f["names"][:-1]}, "LightGBM stacker was fitted on .* not the .* the manifest names"),
    # Same features, two swapped: the counts agree, the names LightGBM recorded do not.
    (lambda f: {**f, "names": [f["names"][1], f["names"][0], *f["names"][2:]]},
     "LightGBM stacker was fitted on .* not the .* the manifest names"),
    (lambda f: {**f, "version": 2}, "stacking features version 2, this code computes version 3"),
    (lambda f: {"version": 3}, "non-empty list"),
])
def test_stacking_features_that_do_not_match_the_stackers_are_refused(smoke_models, tmp_path, edit, message):
    models = serving_copy(smoke_models, tmp_path)
    manifest = json.loads((models / MANIFEST).read_text())
    manifest["features"] = edit(manifest["features"])
    (models / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message):
        Ensemble.load(models)


def test_a_logistic_stacker_fitted_on_other_features_is_refused(smoke_models, tmp_path):
    """Its file hash re-recorded (so only the feature check can catch it): two columns swapped."""
    models = serving_copy(smoke_models, tmp_path)
    spec = json.loads((models / "stacker_logreg.json").read_text())
    spec["features"][0], spec["features"][1] = spec["features"][1], spec["features"][0]
    (models / "stacker_logreg.json").write_text(json.dumps(spec))
    manifest = json.loads((models / MANIFEST).read_text())
    manifest["artifacts"]["logreg"] = artifact_entry(models, models / "stacker_logreg.json")
    (models / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="logistic stacker was fitted on features other than the manifest's"):
        Ensemble.load(models)


def test_served_features_follow_the_manifest_order(smoke_models, tmp_path, tiny_data):
    """The run time computes exactly the columns the manifest names, in its order: the order the stackers
    were fitted on."""
    from ensemble.features import stacking_features

    x = load_course_npz(tiny_data / "val.npz").x[:16]
    ens = Ensemble.load(smoke_models)
    pred = ens.predict(x)
    reversed_names = list(reversed(ens.feature_names))
    features, names = stacking_features(pred.logits, pred.digit_probs, ens.names, reversed_names)
    assert names == reversed_names
    np.testing.assert_array_equal(features, pred.features[:, ::-1])


def test_no_manifest_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        Ensemble.load(tmp_path)


# --------------------------------------------------------------------------- command line

def test_predict_then_check_submission_round_trip(smoke_models, tiny_data, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    test_file = tiny_data / "test_public.npz"
    assert cli(["--models", str(smoke_models), "predict", str(test_file), "--out", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    ids = load_course_npz(test_file).ids
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == list(ids)
    assert {r[1] for r in rows[1:]} <= {"0", "1"}
    assert cli(["check-submission", str(out), "--data", str(test_file)]) == 0

    # --proba writes the probabilities to their own file: the submission stays one the checker accepts.
    again, proba = tmp_path / "again.csv", tmp_path / "proba.csv"
    assert cli(["--models", str(smoke_models), "predict", str(test_file), "--out", str(again), "--proba",
                str(proba)]) == 0
    assert again.read_bytes() == out.read_bytes()
    assert cli(["check-submission", str(again), "--data", str(test_file)]) == 0
    proba_rows = list(csv.reader(proba.open()))
    assert proba_rows[0] == ["id", "probability"] and [r[0] for r in proba_rows[1:]] == list(ids)
    probabilities = np.array([float(r[1]) for r in proba_rows[1:]])
    labels = np.array([int(r[1]) for r in rows[1:]])
    np.testing.assert_array_equal(probabilities >= 0.5, labels == 1)  # the file's labels follow its probabilities
    expected = Ensemble.load(smoke_models).predict(load_course_npz(test_file).x).probability
    np.testing.assert_allclose(probabilities, expected, atol=5e-7)
    # The course accepts exactly id,label: a third column is reported.
    three = tmp_path / "three.csv"
    three.write_text("id,label,probability\n" + "".join(f"{i},{v},0.5\n" for i, v in zip(ids, labels, strict=True)))
    assert cli(["check-submission", str(three), "--data", str(test_file)]) == 1


def test_check_submission_reports_each_problem(tiny_data, tmp_path, capsys):
    test_file = tiny_data / "test_public.npz"
    ids = list(load_course_npz(test_file).ids)
    bad = tmp_path / "bad.csv"
    lines = ["id,label"] + [f"{i},1" for i in ids[2:]] + [f"{ids[3]},0", "NOPE_1,1", f"{ids[0]},2"]
    bad.write_text("\n".join(lines) + "\n")
    assert cli(["check-submission", str(bad), "--data", str(test_file)]) == 1
    err = capsys.readouterr().err
    assert "label must be 0 or 1, got '2'" in err
    assert f"id '{ids[3]}' already on line" in err
    assert "1 id(s) of" in err and ids[1] in err  # ids[1] has no prediction
    assert "not in" in err and "NOPE_1" in err


def test_evaluate_prints_and_writes_the_table(smoke_models, tiny_data, tmp_path, capsys):
    from sklearn import metrics as sk

    out = tmp_path / "eval.json"
    labels = tiny_data / "test_public_labels.csv"
    assert cli(["--models", str(smoke_models), "evaluate", str(tiny_data / "test_public.npz"),
                "--labels", str(labels), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 24  # a fifth of the tiny dataset's 120 test pairs is public
    names = [r["name"] for r in result["rows"]]
    assert names == [*model_names(), "best_single", "mean", "vote", "logreg", "lightgbm"]
    kinds = {r["name"]: r["kind"] for r in result["rows"]}
    assert kinds["resnet"] == "base" and kinds["mean"] == "baseline" and kinds["lightgbm"] == "stack"
    assert re.search(r"^\| lightgbm +\| stack +\| 0\.\d{4} ", capsys.readouterr().out, flags=re.MULTILINE)
    # The numbers themselves, worked out here from the predictions and the labels as the CSV states them
    # (read with the csv module, matched to the file's ids): labels read reversed, or matched to the wrong
    # ids, give other accuracies (reversed: 1 - accuracy) and other log-losses.
    data = load_course_npz(tiny_data / "test_public.npz")
    with labels.open(newline="") as f:
        truth = {row["id"]: int(row["label"]) for row in csv.DictReader(f)}
    y = np.array([truth[i] for i in data.ids])
    assert 0 < y.mean() < 1
    ens = Ensemble.load(smoke_models)
    pred = ens.predict(data.x)
    rows = {r["name"]: r for r in result["rows"]}
    for name, p in [*zip(ens.names, pred.base_probabilities.T, strict=True), ("lightgbm", pred.probability)]:
        q = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
        assert rows[name]["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y)), name
        assert rows[name]["log_loss"] == pytest.approx(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))), name
        assert rows[name]["roc_auc"] == pytest.approx(sk.roc_auc_score(y, p)), name
        assert rows[name]["f1"] == pytest.approx(sk.f1_score(y, p >= 0.5, zero_division=0.0)), name
    # A file with y needs no CSV; its own labels are the truth.
    val_out = tmp_path / "val.json"
    assert cli(["--models", str(smoke_models), "evaluate", str(tiny_data / "val.npz"), "--json", str(val_out)]) == 0
    with np.load(tiny_data / "val.npz", allow_pickle=False) as val:
        x_val, y_val = val["x"], val["y"]
    p_val = ens.predict(x_val).probability
    lightgbm = {r["name"]: r for r in json.loads(val_out.read_text())["rows"]}["lightgbm"]
    assert lightgbm["accuracy"] == pytest.approx(np.mean((p_val >= 0.5) == y_val))


def test_agreement_counts_the_pairs_two_models_label_alike():
    from ensemble.evaluation import agreement_matrix, most_alike

    # Four pairs, three models: a and b differ on pair 3 only, c is a's opposite except on pair 0.
    labels = np.array([[1, 1, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1]])
    agreement = agreement_matrix(labels)
    assert agreement.tolist() == [[1.0, 0.75, 0.25], [0.75, 1.0, 0.5], [0.25, 0.5, 1.0]]
    assert most_alike(["a", "b", "c"], agreement, top=2) == [("a", "b", 0.75), ("b", "c", 0.5)]


def test_evaluate_names_the_most_alike_models_and_plots_the_agreement(smoke_models, tiny_data, tmp_path, capsys):
    png = tmp_path / "agreement.png"
    assert cli(["--models", str(smoke_models), "evaluate", str(tiny_data / "val.npz"), "--agreement", str(png)]) == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^  (\w+) ~ (\w+): (\d\.\d{4})$", out, flags=re.MULTILINE)
    assert len(listed) == 5 and all(a in model_names() and b in model_names() and a != b for a, b, _ in listed)
    shares = [float(share) for _, _, share in listed]
    assert shares == sorted(shares, reverse=True)
    with np.load(tiny_data / "val.npz", allow_pickle=False) as val:
        labels = Ensemble.load(smoke_models).predict(val["x"]).base_probabilities >= 0.5
    a, b = model_names().index(listed[0][0]), model_names().index(listed[0][1])
    assert shares[0] == pytest.approx(np.mean(labels[:, a] == labels[:, b]), abs=5e-5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_malformed_input_cleanly(smoke_models, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    save_course_npz(bad, x=np.zeros((4, 28, 28), np.uint8))
    assert cli(["--models", str(smoke_models), "predict", str(bad), "--out", str(tmp_path / "p.csv")]) == 2
    assert "shape (N, 28, 56)" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    unlabelled = tmp_path / "unlabelled.npz"
    save_course_npz(unlabelled, x=np.zeros((4, 28, 56), np.uint8))
    assert cli(["--models", str(smoke_models), "evaluate", str(unlabelled)]) == 2
    assert "no labels" in capsys.readouterr().err
    assert cli(["--models", str(tmp_path), "predict", str(unlabelled), "--out", str(tmp_path / "p.csv")]) == 2
    assert "no manifest" in capsys.readouterr().err


# --------------------------------------------------------------------------- layering and metrics

def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; its last line of output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGIT_COMPARE_")}  # the committed models/
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


_NO_TORCH = ("bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
             "assert not bad, bad\n")


def test_no_ensemble_module_imports_torch():
    code = ("import pkgutil, importlib, sys, ensemble\n"
            "for m in pkgutil.walk_packages(ensemble.__path__, 'ensemble.'):\n"
            "    importlib.import_module(m.name)\n"
            + _NO_TORCH +
            "print(len([m for m in sys.modules if m.startswith('ensemble')]))\n")
    assert int(_python(code)) >= 8  # every module really was imported


def test_neither_the_service_nor_the_http_layer_imports_torch():
    """service.py (which verifies the committed models/ when imported) and every serving.* module."""
    code = ("import pkgutil, importlib, sys, serving, service\n"
            "names = [m.name for m in pkgutil.walk_packages(serving.__path__, 'serving.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            + _NO_TORCH +
            "assert 'bentoml' in sys.modules and service.DigitCompare\n"
            "print(len(names))\n")
    assert int(_python(code)) >= 4  # guard, inputs, openapi, webui


def test_the_course_format_does_not_import_the_model_run_time():
    """``import ensemble.course_data`` (training's and the tools' way in) loads neither onnxruntime nor lightgbm;
    ``from ensemble import Ensemble`` still works, and does load them."""
    code = ("import sys\n"
            "import ensemble.course_data, ensemble.contract\n"
            "heavy = [m for m in ('onnxruntime', 'lightgbm', 'torch') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from ensemble import Ensemble\n"
            "assert Ensemble.__module__ == 'ensemble.runtime'\n"
            "print(sorted(m for m in ('onnxruntime', 'lightgbm') if m in sys.modules))\n")
    assert _python(code) == "['lightgbm', 'onnxruntime']"


def test_metrics_match_scikit_learn():
    from sklearn import metrics as sk

    from ensemble.metrics import binary_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    p[:50] = 0.5  # ties
    ours = binary_metrics(y, p)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(y, p >= 0.5))
    assert ours["f1"] == pytest.approx(sk.f1_score(y, p >= 0.5))
    assert ours["roc_auc"] == pytest.approx(sk.roc_auc_score(y, p))
    assert ours["log_loss"] == pytest.approx(sk.log_loss(y, p))
