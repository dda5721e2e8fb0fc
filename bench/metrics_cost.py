"""What recording the model-level metrics costs per answer: the CPU behind docs/monitoring.md's "Cost".

    python -m bench.metrics_cost [--answers 20000] [--repeats 5] [--batch 10000]

Times, in this process and with prometheus_client in multiprocess mode (as in a BentoML worker: every value a file
write under a lock), what an API worker adds to one answer when ``DIGIT_COMPARE_MODEL_METRICS`` is on: the
statistics of the answer's score row (``serving.scoring.row_statistics``) and their recording
(``serving.model_metrics.ModelMetrics.record``), for a single-pair answer and per pair of a ``compare_batch`` of
``--batch`` pairs; then the refusal watch the front door puts around every request to an answering route. Prints the
median CPU microseconds per answer over ``--repeats``. Run it on a quiet machine: it times code.

The served cost, end to end, is the benchmark's API worker CPU per answer with the metrics on and off (``python -m
bench.serve ... --serve-env DIGIT_COMPARE_MODEL_METRICS=0``, docs/monitoring.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def per_answer_us(run: callable, answers: int, repeats: int) -> float:
    """The median over ``repeats`` of CPU microseconds per answer of ``run()`` (which answers ``answers``)."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        times.append((time.process_time() - started) / answers * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=20_000, help="single answers recorded per repeat")
    parser.add_argument("--batch", type=int, default=10_000, help="pairs of the compare_batch recorded per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before prometheus_client is imported, as BentoML does
        from ensemble import Ensemble
        from ensemble.course_data import load_course_npz
        from ensemble.manifest import read_manifest
        from ensemble.reference import read_reference
        from serving.model_metrics import ModelMetrics, RefusalCounter
        from serving.scoring import row_statistics, score_rows

        ens = Ensemble.load(ROOT / "models", device="cpu")
        pairs = load_course_npz(ROOT / "samples" / "batch.npz").x
        rows = score_rows(ens.predict(pairs), len(pairs))
        batch = rows[np.arange(args.batch) % len(rows)]
        metrics = ModelMetrics(ens.names, read_reference(read_manifest(ROOT / "models")))
        m = len(ens.names)
        refusals = RefusalCounter(["/compare_pair"])

        def single() -> None:
            for i in range(args.answers):
                metrics.record("/compare_pair", "course", row_statistics(rows[i % len(rows)], "course", m))

        def many() -> None:
            metrics.record_batch("course", row_statistics(batch, "course", m))

        def watched() -> None:
            for _ in range(args.answers):
                refusals.watch("/compare_pair").finish()

        results = [("one compare_pair answer: statistics + recording", per_answer_us(single, args.answers,
                                                                                    args.repeats)),
                   (f"one pair of a {args.batch}-pair compare_batch", per_answer_us(many, args.batch, args.repeats)),
                   ("the front door's refusal watch, per request", per_answer_us(watched, args.answers, args.repeats))]
    for what, us in results:
        print(f"{us:8.1f} us CPU  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
