"""What a JSON batch of compare_batch costs to read, by size: the measurement behind ``serving.settings``'
``JSON_MAX_PAIRS`` and ``JSON_MAX_BYTES``.

    python -m bench.json_cap [--pairs 100,1000,2800,10000] [--repeats 5]

For each size: the body's bytes (integer pixels, as clients send them, and floats written by ``json.dumps``), the
median seconds of ``json.loads`` (what ``serving.api.read_json`` runs, in a thread for large bodies) and of
``serving.inputs.json_batch`` (the pixels into uint8 pairs), and the Python memory at its peak while both run
(tracemalloc). Run it on a quiet machine: it times code.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc

import numpy as np
from tabulate import tabulate

from serving.inputs import json_batch


def measure(body: bytes, repeats: int) -> tuple[float, float, float]:
    """(median s of json.loads, median s of json_batch, peak MB of both) for one body."""
    loads, converts = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        value = json.loads(body)
        parsed = time.perf_counter()
        json_batch(value["pairs"], None, max_pairs=len(value["pairs"]))
        loads.append(parsed - started)
        converts.append(time.perf_counter() - parsed)
        del value
    tracemalloc.start()
    json_batch(json.loads(body)["pairs"], None, max_pairs=10**9)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(loads), statistics.median(converts), peak / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.json_cap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="100,1000,2800,10000", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for n in (int(v) for v in args.pairs.split(",")):
        pixels = rng.integers(0, 256, (n, 28, 56))
        for kind, pairs in (("integers", pixels), ("floats", pixels / 255.0)):
            body = json.dumps({"pairs": pairs.tolist()}).encode()
            loads_s, convert_s, peak_mb = measure(body, args.repeats)
            rows.append([n, kind, f"{len(body) / 2**20:.1f}", f"{loads_s * 1000:.0f}", f"{convert_s * 1000:.0f}",
                         f"{peak_mb:.0f}"])
    print(tabulate(rows, ["pairs", "pixels", "body MiB", "json.loads ms", "to uint8 ms", "peak MB"],
                   tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
