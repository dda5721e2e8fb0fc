"""Memory under sustained load: every server process's resident memory while clients hammer the service.

    python -m bench.soak [--minutes 15] [--clients 64] [--every 30] [--serve-env NAME=VALUE ...]
                         [--tracemalloc DIR] [--out docs/soak] [--url URL --pid PID]

Starts ``bentoml serve`` (or measures a running one: ``--url`` and the pid of its ``bentoml serve``), then
``--clients`` closed-loop clients send a mix of ``compare_pair`` (one course pair), ``compare`` (two digit
pictures) and ``compare_batch`` (16 pairs as JSON) for ``--minutes``. Every ``--every`` seconds it samples the
resident memory of each server process (the API workers, the scorer when the layout has one, the process
manager) and the requests answered so far. At the end: a table per process of its memory after the first 1,000
requests, at the end, and the difference (the bound docs/reliability.md holds the service to: +50 MB at most),
every status seen, ``OUT.md`` (the table and samples) and ``OUT.png`` (memory against requests).

``--tracemalloc DIR`` makes each worker report its Python allocations' growth to ``DIR`` (serving/memory.py).
A script, not a test: it measures for minutes and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
import time
import typing as t
from pathlib import Path

import aiohttp
from tabulate import tabulate

from bench.load import course_like_pairs, png
from bench.server import ROOT, serve_models, server_processes
from ensemble.atomic import atomic_path, atomic_write_text
from serving.memory import resident_bytes
from serving.settings import variable

FIRST_REQUESTS = 1000  # the baseline: memory once this many requests were answered
BOUND_MB = 50


def digit_png(seed: int) -> bytes:
    """A picture of one digit-like half: the left half of a course pair."""
    pair = course_like_pairs(64)[seed % 64]
    return png(pair[:, :pair.shape[1] // 2])


class Mix:
    """The requests, in turn: two compare_pair, one compare, one compare_batch of 16 pairs."""

    def __init__(self) -> None:
        pairs = course_like_pairs(256)
        self.pair_pngs = [png(p) for p in pairs]
        self.digit_pngs = [digit_png(i) for i in range(64)]
        self.batches = [json.dumps({"pairs": pairs[i:i + 16].tolist()}) for i in range(0, 256, 16)]

    def request(self, i: int) -> tuple[str, dict[str, t.Any]]:
        kind = i % 4
        if kind in (0, 1):
            form = aiohttp.FormData()
            form.add_field("image", self.pair_pngs[i % 256], filename="pair.png")
            return "compare_pair", {"data": form}
        if kind == 2:
            form = aiohttp.FormData()
            form.add_field("left", self.digit_pngs[i % 64], filename="left.png")
            form.add_field("right", self.digit_pngs[(i + 7) % 64], filename="right.png")
            return "compare", {"data": form}
        return "compare_batch", {"data": self.batches[i % 16], "headers": {"content-type": "application/json"}}


async def soak(url: str, root: int, clients: int, seconds: float, every: float) -> tuple[list[dict], dict]:
    mix = Mix()
    statuses: collections.Counter[str] = collections.Counter()
    answered = 0
    samples: list[dict] = []
    stop = time.monotonic() + seconds
    names = server_processes(root)

    def sample() -> None:
        row: dict[str, t.Any] = {"seconds": round(seconds - (stop - time.monotonic())), "requests": answered}
        for pid, name in names.items():
            with contextlib.suppress(OSError):
                row[name] = resident_bytes(pid) / 2**20
        samples.append(row)

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal answered
        i = k
        while time.monotonic() < stop:
            route, kwargs = mix.request(i)
            i += clients
            try:
                async with session.post(f"{url}/{route}", **kwargs) as answer:
                    await answer.read()
                    statuses[f"{route} {answer.status}"] += 1
            except (TimeoutError, aiohttp.ClientError) as err:
                statuses[f"{route} {type(err).__name__}"] += 1
            answered += 1

    async def sampler() -> None:
        baseline_taken = False
        next_sample = time.monotonic() + every
        while time.monotonic() < stop:
            await asyncio.sleep(0.25)
            if not baseline_taken and answered >= FIRST_REQUESTS:
                sample()
                samples[-1]["baseline"] = True
                baseline_taken = True
            if time.monotonic() >= next_sample:
                sample()
                next_sample += every
        sample()

    sample()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(sampler(), *(client(k, session) for k in range(clients)))
    return samples, dict(statuses)


def summary(samples: list[dict]) -> list[dict]:
    baseline = next((s for s in samples if s.get("baseline")), samples[0])
    last = samples[-1]
    names = [k for k in last if k not in ("seconds", "requests", "baseline")]
    return [{"process": name, f"MiB after {FIRST_REQUESTS} requests": baseline.get(name, float("nan")),
             f"MiB after {last['requests']} requests": last[name],
             "growth MiB": last[name] - baseline.get(name, float("nan")),
             f"within +{BOUND_MB} MB": last[name] - baseline.get(name, 0.0) <= BOUND_MB * 1e6 / 2**20}
            for name in names]


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in samples[-1] if k not in ("seconds", "requests", "baseline")]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name in names:
        points = [(s["requests"], s[name]) for s in samples if name in s]
        ax.plot(*zip(*points, strict=True), "o-", markersize=3, label=name)
    ax.set(xlabel="requests answered", ylabel="resident memory (MiB)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _table(rows: list[dict]) -> str:
    return tabulate([[f"{v:.1f}" if isinstance(v, float) else v for v in r.values()] for r in rows],
                    headers=list(rows[0]), tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(ROOT / "models"))
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between memory samples")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--tracemalloc", metavar="DIR", help="each worker reports its Python allocations' growth here")
    parser.add_argument("--url", help="soak this running server (with --pid: its `bentoml serve` process)")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--out", default=str(ROOT / "docs" / "soak"), help="writes OUT.md and OUT.png")
    args = parser.parse_args(argv)
    if bool(args.url) != bool(args.pid):
        parser.error("--url and --pid go together")
    env = dict(item.split("=", 1) for item in args.serve_env)
    if args.tracemalloc:
        env[variable("tracemalloc")] = str(Path(args.tracemalloc).resolve())
    if args.url:
        url, root = args.url, args.pid
        print(f"soaking {url} with {args.clients} clients for {args.minutes:g} min", file=sys.stderr)
        samples, statuses = asyncio.run(soak(url, root, args.clients, 60 * args.minutes, args.every))
    else:
        with serve_models(Path(args.models), env) as server:
            print(f"soaking {server.url} with {args.clients} clients for {args.minutes:g} min", file=sys.stderr)
            samples, statuses = asyncio.run(soak(server.url, server.pid, args.clients, 60 * args.minutes,
                                                 args.every))
    rows = summary(samples)
    head = (f"{args.clients} clients, {args.minutes:g} min, mix of compare_pair x2, compare, compare_batch (16 pairs); "
            f"{samples[-1]['requests']} requests; statuses {statuses}"
            + (f"; server environment {', '.join(args.serve_env)}" if args.serve_env else ""))
    print(head)
    print(_table(rows))
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".md"), f"{head}\n\n{_table(rows)}\n\nSamples (MiB):\n\n{_table(samples)}\n")
    plot(samples, out.with_suffix(".png"), f"{args.clients} clients, {args.minutes:g} min")
    return 0 if all(r[f"within +{BOUND_MB} MB"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
