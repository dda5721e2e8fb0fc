"""What serving costs, ensemble against ensemble: the fused graphs of model folders side by side, in one run.

    python -m bench.graph_cost models staging/wide_long [--batches 1,32,256] [--repeats 15] [--threads N]

Each folder's fused graph (the one its manifest lists, checked against its sha256) is opened on the CPU; then, at
every batch size, the graphs take turns, one call each per repeat, so that a machine that slows down slows them
all alike. Printed per graph and batch: the median wall milliseconds per pair and the median CPU milliseconds
per pair (this process's CPU time, all threads together), and each folder's ratio to the first. Run it on a
quiet machine: a training job beside it makes the numbers meaningless.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.load import course_like_pairs
from ensemble.manifest import ManifestError, read_manifest, verify_artifact
from ensemble.runtime import open_session, usable_cpus
from ensemble.tables import markdown_table

DEFAULT_BATCHES = (1, 32, 256)


def timed_call(session: ort.InferenceSession, pairs: np.ndarray) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one run of the graph on ``pairs``."""
    wall, cpu = time.perf_counter(), time.process_time()
    session.run(None, {"pairs": pairs})
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(folders: list[Path], batches: tuple[int, ...], repeats: int, threads: int) -> list[dict]:
    """One row per folder and batch: median wall and CPU milliseconds per pair over ``repeats`` interleaved runs."""
    sessions, shas = [], []
    for folder in folders:
        manifest = read_manifest(folder)
        sessions.append(open_session(verify_artifact(folder, manifest, "fused"), "cpu", threads=threads))
        shas.append(manifest["artifacts"]["fused"]["sha256"])
    rows = []
    for batch in batches:
        pairs = course_like_pairs(batch)
        for session in sessions:
            timed_call(session, pairs)  # warm-up: the first run allocates
        samples: list[list[tuple[float, float]]] = [[] for _ in sessions]
        for _ in range(repeats):
            for session, times in zip(sessions, samples, strict=True):
                times.append(timed_call(session, pairs))
        for folder, sha, times in zip(folders, shas, samples, strict=True):
            rows.append({"folder": str(folder), "fused_sha256": sha, "batch": batch,
                         "wall_ms_per_pair": 1e3 * statistics.median(w for w, _ in times) / batch,
                         "cpu_ms_per_pair": 1e3 * statistics.median(c for _, c in times) / batch})
    return rows


def report(rows: list[dict]) -> str:
    """The rows as a markdown table, each folder's CPU cost also as a ratio to the first folder's at that batch."""
    first = {row["batch"]: row for row in rows if row["folder"] == rows[0]["folder"]}
    return markdown_table(
        [[f"`{row['folder']}`", row["fused_sha256"][:12], row["batch"], f"{row['wall_ms_per_pair']:.3f}",
          f"{row['cpu_ms_per_pair']:.3f}", f"{row['cpu_ms_per_pair'] / first[row['batch']]['cpu_ms_per_pair']:.3f}"]
         for row in rows],
        ["models", "fused graph", "batch", "wall ms/pair", "CPU ms/pair", "CPU / first"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="model folders (manifest + fused graph); the first "
                                                                "is the reference of the ratios")
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)),
                        help="comma-separated batch sizes (pairs per call)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per graph and batch")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: one per CPU)")
    args = parser.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    if args.repeats < 1 or min(batches) < 1:
        parser.error("--repeats and every batch size must be at least 1")
    threads = args.threads or usable_cpus()
    print(f"{threads} ONNX Runtime thread(s), {args.repeats} interleaved repeats, median per pair\n")
    try:
        rows = measure(args.folders, batches, args.repeats, threads)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
