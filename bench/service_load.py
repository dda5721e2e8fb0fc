"""Load and memory check of the service (a real ``bentoml serve``, started here): docs/reliability.md's numbers.

    python -m bench.service_load [--clients 64] [--seconds 60] [--bad 0.1] [--device cpu] [--skip-batches]

1. ``--clients`` concurrent clients post ``compare_pair`` for ``--seconds`` seconds; a ``--bad`` share of
   the requests is an undecodable picture. Reports answers per second, latency percentiles, the largest
   adaptive batch, and every status: a good request must get 200, a bad one 400, none a 5xx.
2. Eight maximum-size bodies at once: ~60 MiB JSON bodies to ``compare_batch`` (one pair over the limit,
   so each is parsed and refused), then ~16 MiB pictures to ``compare_pair``. Reports the API worker's
   peak resident memory and the slowest ``/readyz`` meanwhile.
3. Two concurrent 10,000-pair ``.npz`` uploads (unless ``--skip-batches``): time and pairs/s.

The server runs with the service's default limits on a free loopback port and is stopped at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import sys
import tempfile
import threading
import time
from collections import Counter

import httpx
import numpy as np

from bench.load import png, varied_course_pairs
from bench.server import Server, api_worker_pid, bentoml_serve
from ensemble.contract import PAIR_SHAPE
from ensemble.runtime import DEVICE_ENV
from serving.memory import resident_bytes
from serving.settings import JSON_MAX_BYTES


class Watch:
    """``with Watch(server) as watch:`` samples an API worker's resident memory (``peak_rss``) and how long
    ``/readyz`` takes to answer (``worst_readyz``, seconds) until the block ends; ``bad_answers`` lists any
    ``/readyz`` status other than 200."""

    def __init__(self, server: Server) -> None:
        self.server, self.pid = server, api_worker_pid(server.pid)
        self.peak_rss, self.worst_readyz = resident_bytes(self.pid), 0.0
        self.probes, self.bad_answers = 0, []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            while not self._done.is_set():
                self.peak_rss = max(self.peak_rss, resident_bytes(self.pid))
                start = time.monotonic()
                status = client.get("/readyz").status_code
                self.worst_readyz = max(self.worst_readyz, time.monotonic() - start)
                self.probes += 1
                if status != 200:
                    self.bad_answers.append(status)
                time.sleep(0.05)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(30)


def mixed_load(url: str, clients: int, seconds: float, bad_share: float) -> None:
    good = [png(p) for p in varied_course_pairs(clients, seed=1)]
    bad = b"this is not an image"
    results: list[tuple[bool, int, float, int]] = []  # bad?, status, latency, batch size
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(index: int) -> None:
        rng = np.random.default_rng(index)
        with httpx.Client(base_url=url, timeout=300) as client:
            while time.monotonic() < deadline:
                is_bad = rng.random() < bad_share
                start = time.monotonic()
                response = client.post("/compare_pair", files={"image": ("p.png", bad if is_bad else good[index])})
                latency = time.monotonic() - start
                size = response.json().get("batch_size", 0) if response.status_code == 200 else 0
                with lock:
                    results.append((is_bad, response.status_code, latency, size))

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    elapsed = time.monotonic() - start
    good_results = [r for r in results if not r[0]]
    bad_results = [r for r in results if r[0]]
    latencies = np.array([r[2] for r in good_results])
    print(f"mixed load: {clients} clients, {elapsed:.0f} s, {len(results)} requests ({bad_share:.0%} bad)")
    print(f"  good requests: {len(good_results)}, statuses {dict(Counter(r[1] for r in good_results))}, "
          f"{sum(r[1] == 200 for r in good_results) / elapsed:.1f} good answers/s")
    print(f"  bad requests:  {len(bad_results)}, statuses {dict(Counter(r[1] for r in bad_results))}")
    print(f"  latency of good requests: p50 {np.percentile(latencies, 50):.2f} s, p95 "
          f"{np.percentile(latencies, 95):.2f} s, p99 {np.percentile(latencies, 99):.2f} s; "
          f"largest batch {max(r[3] for r in results)}")
    false_errors = sum(r[1] != 200 for r in good_results)
    server_errors = sum(r[1] >= 500 for r in results)
    print(f"  false errors (good request, not 200): {false_errors}; 5xx: {server_errors}")


def eight_bodies(server: Server) -> None:
    row = ",".join(["123"] * PAIR_SHAPE[1])
    pair = "[" + ",".join([f"[{row}]"] * PAIR_SHAPE[0]) + "]"
    # The largest JSON body compare_batch reads (serving.settings.JSON_MAX_BYTES), holding more pairs than its JSON
    # cap: parsed whole, then refused with 413.
    body = ('{"pairs": [' + ",".join([pair] * (JSON_MAX_BYTES // (len(pair) + 1))) + "]}").encode()
    picture = png(np.random.default_rng(3).integers(0, 256, (4000, 4000), dtype=np.uint8))
    cases = [(f"8 x {len(body) / 2**20:.0f} MiB JSON", "/compare_batch",
              {"content": body, "headers": {"content-type": "application/json"}}),
             (f"8 x {len(picture) / 2**20:.0f} MiB pictures", "/compare_pair",
              {"files": {"image": ("p.png", picture)}})]
    for name, path, kwargs in cases:
        before = resident_bytes(api_worker_pid(server.pid))
        with Watch(server) as watch:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _, p=path, kw=kwargs: httpx.post(
                    f"{server.url}{p}", timeout=300, **kw).status_code, range(8)))
        print(f"{name}: statuses {dict(Counter(statuses))}; API worker RSS {before / 2**20:.0f} MiB before, "
              f"peak {watch.peak_rss / 2**20:.0f} MiB, {resident_bytes(watch.pid) / 2**20:.0f} MiB after; "
              f"slowest /readyz {watch.worst_readyz * 1000:.0f} ms, /readyz other than 200: {watch.bad_answers}")


def two_batches(url: str) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=varied_course_pairs(10_000, seed=2))
    data = buffer.getvalue()
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(lambda _: httpx.post(f"{url}/compare_batch", files={"file": ("x.npz", data)},
                                                      timeout=600).status_code, range(2)))
    elapsed = time.monotonic() - start
    print(f"two concurrent 10,000-pair uploads: statuses {statuses}, {elapsed:.0f} s "
          f"({20_000 / elapsed:.0f} pairs/s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--bad", type=float, default=0.1, help="share of bad requests")
    parser.add_argument("--device", default=os.environ.get(DEVICE_ENV, "auto"))
    parser.add_argument("--skip-batches", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="digit-compare-load-") as home:
        env = {"BENTOML_HOME": home, DEVICE_ENV: args.device}
        with bentoml_serve(env=env) as server:
            mixed_load(server.url, args.clients, args.seconds, args.bad)
            eight_bodies(server)
            if not args.skip_batches:
                two_batches(server.url)
            log = server.log_text()
            print(f"server log: {log.count('status=5')} answers with a 5xx, {log.count('Traceback')} tracebacks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
