"""Inference benchmark: eager PyTorch vs one ONNX Runtime session per model vs the fused graph.

    python -m bench.inference [--models models] [--profile default] [--repeats 7]

Prints, at batch sizes 1, 32 and 256, the in-process throughput (pairs/s, median of repeats) of
the PyTorch models run one after another in eager mode, one ONNX Runtime session per model and
the fused graph; then the ensemble's FLOPs per pair (counted from the graphs) and the achieved FLOP
rate against this CPU's fp32 matrix-multiply rate, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper, shape_inference

from ensemble.contract import DIGIT_SIZE
from ensemble.layout import ArtifactLayout
from ensemble.runtime import open_session
from ensemble.tables import markdown_table
from export.onnx_export import ExportWrapper
from training.data import make_pairs
from training.models import load_weights, model_names

BATCHES = (1, 32, 256)


def graph_flops(path: Path) -> int:
    """FLOPs of one pair through an ONNX graph: 2 x multiply-adds of Conv, Gemm and MatMul nodes
    (everything else is negligible here). Shapes come from ONNX shape inference at batch 1."""
    model = onnx.load(path)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    flops = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            cout, cin_per_group, kh, kw = weights[node.input[1]]
            flops += 2 * int(np.prod(out)) * cin_per_group * kh * kw
        elif node.op_type in ("Gemm", "MatMul"):
            out = shapes.get(node.output[0])
            inner = weights[node.input[1]] if node.input[1] in weights else shapes[node.input[1]]
            k = inner[1] if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute) \
                else inner[0]
            flops += 2 * int(np.prod(out)) * k
    return flops


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flop_rate(n: int = 1024, repeats: int = 9) -> float:
    """This CPU's fp32 matrix-multiply rate (FLOP/s) with torch's BLAS on all threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), repeats)


def run(models_dir: Path, profile: str, repeats: int, pairs: np.ndarray) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    layout, names = ArtifactLayout(models_dir), model_names()
    eager = [ExportWrapper(load_weights(n, models_dir, profile)) for n in names]
    singles = [open_session(layout.onnx(n), "cpu") for n in names]
    fused = open_session(layout.fused, "cpu")

    def run_eager(x):
        with torch.inference_mode():
            t = torch.from_numpy(x)
            for model in eager:
                model(t)

    rows = []
    for batch in BATCHES:
        x = pairs[:batch]
        timings = {
            "pytorch eager": median_seconds(lambda x=x: run_eager(x), repeats),
            "onnxruntime per model": median_seconds(lambda x=x: [s.run(None, {"pairs": x}) for s in singles], repeats),
            "onnxruntime fused": median_seconds(lambda x=x: fused.run(None, {"pairs": x}), repeats),
        }
        rows.append((batch, {k: batch / v for k, v in timings.items()}))

    flops = graph_flops(layout.fused)
    peak = matmul_flop_rate()
    print(f"threads: {torch.get_num_threads()}, repeats: {repeats} (medians)\n")
    methods = list(rows[0][1])
    print(markdown_table([[batch, *(f"{rate[k]:.0f}" for k in methods),
                           f"{rate['onnxruntime fused'] / rate['pytorch eager']:.2f}x"] for batch, rate in rows],
                         ["batch", *(f"{k} (pairs/s)" for k in methods), "fused / eager"]))
    fused_256 = rows[-1][1]["onnxruntime fused"]
    print(f"\nensemble FLOPs per pair: {flops / 1e6:.1f} MFLOP (Conv + Gemm + MatMul, from the fused graph)")
    print(f"fp32 matmul rate (torch.mm 1024x1024): {peak / 1e9:.1f} GFLOP/s")
    print(f"fused graph at batch 256: {fused_256 * flops / 1e9:.1f} GFLOP/s = "
          f"{100 * fused_256 * flops / peak:.0f}% of the matmul rate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="models")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    digits = np.random.default_rng(0).integers(0, 256, (50, DIGIT_SIZE, DIGIT_SIZE), dtype=np.uint8)
    pairs = make_pairs(digits, np.arange(50) % 10, max(BATCHES), seed=0)["x"]
    run(Path(args.models), args.profile, args.repeats, pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
