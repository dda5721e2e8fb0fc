"""Load against a served model: course-like pairs, the request bodies made of them, and a closed loop of clients.

The closed loop is asyncio + aiohttp (a BentoML dependency, so it runs in the run-time environment): one Python
thread driving 64 connections costs a 2-core server far less CPU than 64 client threads would.
"""

from __future__ import annotations

import asyncio
import io
import time

import aiohttp
import numpy as np
from PIL import Image

from bench.server import ROOT, Server, server_cpu


def course_like_pairs(n: int) -> np.ndarray:
    """Pairs to send: the course-format sample batch, tiled (no training data needed to benchmark)."""
    with np.load(ROOT / "samples" / "batch.npz", allow_pickle=False) as npz:
        x = npz["x"]
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])))


def varied_course_pairs(n: int, seed: int) -> np.ndarray:
    """Course-like pairs that differ from each other: held-out digits (samples/batch.npz), each copy shifted and
    lightly re-noised. Light: strong added noise would make a few halves read as blank (400), which real course
    halves never do."""
    base = np.load(ROOT / "samples" / "batch.npz")["x"]
    rng = np.random.default_rng(seed)
    pairs = base[rng.integers(0, len(base), n)].astype(np.int16)
    pairs = np.roll(pairs, rng.integers(-2, 3), axis=2) + rng.integers(0, 4, pairs.shape)
    return np.clip(pairs, 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    """A picture (a pair, or one digit) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npz(pairs: np.ndarray) -> bytes:
    """Pairs as a course ``.npz`` upload."""
    buffer = io.BytesIO()
    np.savez(buffer, x=pairs)
    return buffer.getvalue()


async def closed_loop(url: str, route: str, field: str, filename: str, payloads: list[bytes], clients: int,
                      duration: float) -> dict:
    """``clients`` workers, each sending its next request (a multipart upload of the next payload as ``field``) as
    soon as the last answer came back, for ``duration`` seconds: answers/s, latency percentiles, errors and the
    batch sizes the server formed (every answer says how many pairs shared its inference call)."""
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors = 0
    stop = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.monotonic() < stop:
                form = aiohttp.FormData()
                form.add_field(field, payloads[i % len(payloads)], filename=filename)
                i += clients
                start = time.perf_counter()
                try:
                    async with session.post(f"{url}/{route}", data=form) as answer:
                        body = await answer.json(content_type=None)
                        ok = answer.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ok, body = False, {}
                if ok:
                    latencies.append(time.perf_counter() - start)
                    if isinstance(body, dict) and "batch_size" in body:
                        batch_sizes.append(int(body["batch_size"]))
                else:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "answers": len(latencies), "errors": errors, "answers/s": len(latencies) / elapsed,
            "p50 ms": float(np.percentile(ms, 50)), "p95 ms": float(np.percentile(ms, 95)),
            "p99 ms": float(np.percentile(ms, 99)),
            "mean batch": float(np.mean(batch_sizes)) if batch_sizes else float("nan"),
            "max batch": max(batch_sizes, default=0)}


def measured(target: Server | str, route: str, field: str, filename: str, payloads: list[bytes], clients: int,
             duration: float) -> dict:
    """One closed loop, with the CPU milliseconds per answer of each server role (for a ``Server`` started here;
    a URL alone is a server measured from outside) and of this client."""
    url, root = (target.url, target.pid) if isinstance(target, Server) else (target, None)
    before, client = server_cpu(root), time.process_time()
    row = asyncio.run(closed_loop(url, route, field, filename, payloads, clients, duration))
    client = time.process_time() - client
    after = server_cpu(root)
    answers = max(row["answers"], 1)
    if root is not None:
        for role in ("api", "scorer"):
            row[f"{role} cpu ms/ans"] = 1000 * (after.get(role, 0.0) - before.get(role, 0.0)) / answers
    row["client cpu ms/ans"] = 1000 * client / answers
    return row
