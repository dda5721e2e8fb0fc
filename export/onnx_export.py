"""Trained PyTorch models -> one ONNX file each, and one fused graph holding all of them.

Every graph takes ``pairs``: uint8 (N, 28, 56) raw course pixels (scaling to [0, 1] and the split
into halves happen inside), and returns ``logit`` (N,) and ``digit_probs`` (N, 2, 10). The fused
graph returns ``logits`` (N, M) and ``digit_probs`` (N, M, 2, 10) for all M models in one call.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, compose, helper
from torch import nn

from ensemble.atomic import atomic_path
from ensemble.contract import PAIR_SHAPE, PIXEL_MAX

OPSET = 17
INPUT = "pairs"


class ExportWrapper(nn.Module):
    """Raw uint8 pairs in, pair logit and digit probabilities out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, digit_logits = self.model(pairs.float() / PIXEL_MAX)
        return logit, torch.softmax(digit_logits, dim=-1)


def _save_atomic(model_proto: onnx.ModelProto, path: Path) -> None:
    with atomic_path(path) as tmp:
        onnx.save(model_proto, tmp)


def export_model(model: nn.Module, path: Path) -> None:
    """Export one model; the batch dimension stays dynamic."""
    dummy = torch.zeros(2, *PAIR_SHAPE, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.export.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # dynamo=False: the TorchScript-based exporter gives a compact, fully static graph for these small
        # CNNs and needs no onnxscript; dynamic_axes keeps the batch dimension free.
        torch.onnx.export(ExportWrapper(model), (dummy,), str(tmp), input_names=[INPUT],
                          output_names=["logit", "digit_probs"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT: {0: "batch"}, "logit": {0: "batch"}, "digit_probs": {0: "batch"}})
    proto = onnx.load(tmp)
    tmp.unlink()
    onnx.checker.check_model(proto, full_check=True)
    _save_atomic(proto, path)


def fuse_models(paths: dict[str, Path], out_path: Path) -> None:
    """Merge the single-model graphs behind one shared ``pairs`` input with onnx.compose's tools:
    each graph's names get a ``NAME/`` prefix (the input keeps its name, so all share it), then
    Unsqueeze + Concat stack the per-model outputs into ``logits`` (N, M) and ``digit_probs`` (N, M, 2, 10)."""
    nodes, initializers, logit_names, digit_names = [], [], [], []
    for name, path in paths.items():
        graph = compose.add_prefix(onnx.load(path), prefix=f"{name}/", rename_inputs=False).graph
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        logit_names.append(f"{name}/logit")
        digit_names.append(f"{name}/digit_probs")
    axis_1 = helper.make_tensor("fused/axis_1", TensorProto.INT64, [1], [1])
    initializers.append(axis_1)
    for i, (logit, digits) in enumerate(zip(logit_names, digit_names, strict=True)):
        nodes.append(helper.make_node("Unsqueeze", [logit, "fused/axis_1"], [f"fused/logit_{i}"]))
        nodes.append(helper.make_node("Unsqueeze", [digits, "fused/axis_1"], [f"fused/digits_{i}"]))
    nodes.append(helper.make_node("Concat", [f"fused/logit_{i}" for i in range(len(paths))], ["logits"], axis=1))
    nodes.append(helper.make_node("Concat", [f"fused/digits_{i}" for i in range(len(paths))], ["digit_probs"], axis=1))
    m = len(paths)
    graph = helper.make_graph(
        nodes, "digit_compare_ensemble",
        [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", *PAIR_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", m]),
         helper.make_tensor_value_info("digit_probs", TensorProto.FLOAT, ["batch", m, 2, 10])],
        initializer=initializers)
    fused = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="digit-compare export")
    fused.ir_version = onnx.load(next(iter(paths.values()))).ir_version
    onnx.checker.check_model(fused, full_check=True)
    _save_atomic(fused, out_path)


def cpu_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


def model_parity(name: str, model: nn.Module, path: Path, pairs: np.ndarray,
                 torch_tol: float = 1e-4) -> tuple[float, np.ndarray, np.ndarray]:
    """One exported graph against its PyTorch model: ParityError when a logit or digit probability differs by
    more than ``torch_tol``; else (the largest logit difference, ONNX Runtime's logits and digit probabilities)."""
    with torch.no_grad():
        ref_logit, ref_digits = ExportWrapper(model)(torch.from_numpy(pairs))
    logit, digits = cpu_session(path).run(None, {INPUT: pairs})
    diff = float(np.abs(logit - ref_logit.numpy()).max())
    if diff > torch_tol or float(np.abs(digits - ref_digits.numpy()).max()) > torch_tol:
        raise ParityError(f"{name}: ONNX Runtime differs from PyTorch by {diff:.3g} on logits "
                          f"(tolerance {torch_tol:g}) over {len(pairs)} pairs")
    return diff, logit, digits


def check_parity(models: dict[str, nn.Module], paths: dict[str, Path], fused_path: Path, pairs: np.ndarray,
                 torch_tol: float = 1e-4, fused_tol: float = 1e-5) -> dict:
    """Every logit of ONNX Runtime within ``torch_tol`` of PyTorch, the fused graph within ``fused_tol``
    of the single files; raises ParityError with the numbers otherwise. Returns the worst differences."""
    report: dict[str, float] = {}
    singles_logits, singles_digits = [], []
    for name, model in models.items():
        report[name], logit, digits = model_parity(name, model, paths[name], pairs, torch_tol)
        singles_logits.append(logit)
        singles_digits.append(digits)
    fused_logits, fused_digits = cpu_session(fused_path).run(None, {INPUT: pairs})
    fused_diff = max(float(np.abs(fused_logits - np.stack(singles_logits, 1)).max()),
                     float(np.abs(fused_digits - np.stack(singles_digits, 1)).max()))
    report["fused"] = fused_diff
    if fused_diff > fused_tol:
        raise ParityError(f"fused graph differs from the single graphs by {fused_diff:.3g} (tolerance {fused_tol:g})")
    return report
