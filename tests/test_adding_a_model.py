"""Adding a model is one registry entry: `run_all --models NEW` trains it, then re-exports and re-stacks
the whole ensemble, and the run time serves it, with no other code touched."""

from __future__ import annotations

import json
import shutil

import lightgbm
import numpy as np
import onnxruntime
import pytest

from ensemble import Ensemble
from ensemble.course_data import load_course_npz
from ensemble.features import stacking_features
from training.models import REGISTRY, ModelConfig
from training.run_all import main as run_all

STABLE_MODELS = 10  # the committed ensemble's size; the new model makes it eleven


@pytest.mark.slow
def test_a_new_registry_entry_is_trained_exported_stacked_and_served(smoke_models, tiny_data, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "models"
    shutil.copytree(smoke_models, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "weights").glob("*/weights.safetensors")}
    monkeypatch.setitem(REGISTRY, "tiny_extra", ModelConfig("tiny_extra", "resnet", tower_kwargs={"layers": (1, 1, 1)},
                                                            seed=7, description="a test's extra model"))

    assert run_all(["--profile", "smoke", "--data", str(tiny_data), "--out", str(out), "--models", "tiny_extra"]) == 0

    # Only the new model was trained; the ten kept their weights.
    assert (out / "weights" / "tiny_extra" / "weights.safetensors").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "weights").glob("*/weights.safetensors")
            if p.parent.name != "tiny_extra"} == before
    rows = json.loads((out / "training_results.json").read_text())
    assert len(rows) == STABLE_MODELS + 1 and rows[-1]["name"] == "tiny_extra" and rows[-1]["status"] == "trained"

    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]][-1] == "tiny_extra" and len(manifest["models"]) == 11
    assert {"logit.tiny_extra", "digit_greater.tiny_extra", "prior_greater.tiny_extra"} <= set(
        manifest["features"]["names"])
    assert (out / "onnx" / "tiny_extra.onnx").is_file() and "onnx:tiny_extra" in manifest["artifacts"]

    ens = Ensemble.load(out, device="cpu", precision="fp32")
    x = load_course_npz(tiny_data / "val.npz").x[:8]
    pred = ens.predict(x)
    assert ens.names[-1] == "tiny_extra"
    assert pred.base_probabilities.shape == (8, 11) and pred.digit_probs.shape == (8, 11, 2, 10)
    # The new model's column is its own graph's answer (onnx/tiny_extra.onnx, run here by ONNX Runtime), and
    # the stacked answer is what the re-fitted LightGBM file says of the features with the new columns.
    own = onnxruntime.InferenceSession(str(out / "onnx" / "tiny_extra.onnx"), providers=["CPUExecutionProvider"])
    logit, digit_probs = own.run(None, {"pairs": x})
    np.testing.assert_allclose(pred.base_probabilities[:, -1], 1 / (1 + np.exp(-logit.astype(np.float64))), atol=1e-5)
    np.testing.assert_allclose(pred.digit_probs[:, -1], digit_probs, atol=1e-5)
    booster = lightgbm.Booster(model_file=str(out / manifest["artifacts"]["lightgbm"]["file"]))
    assert "logit.tiny_extra" in booster.feature_name()
    features, _ = stacking_features(pred.logits, pred.digit_probs, ens.names, booster.feature_name())
    np.testing.assert_allclose(pred.probability, booster.predict(features), atol=1e-9)
    assert "tiny_extra" in {name for name, (kind, _) in ens.method_probabilities(pred).items() if kind == "base"}
