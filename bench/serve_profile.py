"""Where the served answer's CPU goes: py-spy on every server process under a closed loop of clients.

    python -m bench.serve_profile [--clients 64] [--duration 20] [--serve-env NAME=VALUE ...] [--out FILE]

Starts ``bentoml serve`` (``bench.server``), sends ``compare_pair`` requests from ``--clients``
closed-loop clients for ``--duration`` seconds while ``py-spy record`` samples each worker process (API
workers, the scorer when the layout has one), then splits each process's measured CPU time (from /proc) by
stage: every sampled stack is given to the stage (``STAGES``) of its innermost frame that a pattern matches.
The result is a table of CPU milliseconds per answer by stage and process, printed, and written as Markdown to
``--out`` when given; docs/speed.md ("Where the CPU goes") holds the profiles measured so far.

Why py-spy: it samples a running process from outside (no code change, no restart, native frames of
ONNX Runtime attributed to the Python call that entered them), so the service is measured as it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from bench.load import closed_loop, course_like_pairs, png
from bench.server import ROOT, cpu_seconds, serve_models, worker_pids
from ensemble.atomic import atomic_write_text

#: (stage, regular expression over one stack frame "function (file:line)"). A sample goes to the stage of its
#: innermost frame that any pattern matches (the first such stage in this order): the code that was running,
#: not the middleware around it.
STAGES: tuple[tuple[str, str], ...] = (
    ("inference (ONNX Runtime, stacker, read-outs)", r"onnxruntime|lightgbm|ensemble/runtime\.py|ensemble/student\.py"
                                                     r"|ensemble/features\.py|ensemble/priors\.py|score_rows"),
    ("decoding the picture", r"ensemble/preprocess\.py|PIL/"),
    ("hop to the scorer (pickle, internal HTTP)", r"_bentoml_impl/client|aiohttp/|pickle|PickleSerde"),
    ("batching (dispatcher, coalescing)", r"marshal/dispatcher|serving/coalesce\.py"),
    ("multipart, the body, upload files", r"multipart|formparsers|serving/guard\.py|tempfile|TempfilePool|UploadFile"
                                         r"|MultipartSerde|FileSchema|read_bytes"),
    ("validation (pydantic, inputs)", r"pydantic|serving/inputs\.py|validate_"),
    ("the answer (model, JSON)", r"serving/scoring\.py|json|serving/openapi\.py|JSONResponse|render"),
    ("metrics and tracing", r"prometheus|opentelemetry|serving/metrics\.py"),
    ("logging", r"logging/|access_log|AccessLog"),
    ("HTTP server (uvicorn, starlette, routing)", r"uvicorn|h11|httptools|starlette|_bentoml_impl/server"),
    ("event loop, sockets (uvloop; threads handing work over)", r"asyncio|uvloop|anyio|selectors|Runner\.run"),
)
OTHER = "other"
#: A stack whose innermost frame is one of these is a thread waiting, not working (py-spy's idle detection
#: misses some of them): such samples are left out.
WAITING = re.compile(r"^(Condition\.wait|Queue\.get|_acquire_restore|select|poll|epoll_wait|wait) ")
PY_SPY = str(Path(sys.executable).parent / "py-spy")  # the venv's (pip's py-spy wheel), not whatever PATH has


def classify(stack: str) -> str:
    """The stage of one collapsed stack (frames joined by ';', outermost first)."""
    for frame in reversed(stack.split(";")):
        for stage, pattern in STAGES:
            if re.search(pattern, frame):
                return stage
    return OTHER


def read_collapsed(path: Path) -> collections.Counter[str]:
    """py-spy's raw output (``stack count`` per line) -> samples per stage."""
    samples: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit() and not WAITING.match(stack.rsplit(";", 1)[-1]):
            samples[classify(stack)] += int(count)
    return samples


def cpu_by_pid(pids: dict[int, str]) -> dict[int, float]:
    """CPU seconds so far of each process still running."""
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            seconds[pid] = cpu_seconds(pid)
    return seconds


def profile(url: str, root: int, clients: int, duration: float, rate: int,
            keep: Path | None = None) -> tuple[list[dict], dict]:
    """Per stage and role: CPU ms per answer; and the loop's own numbers."""
    pairs = course_like_pairs(256)
    images = [png(p) for p in pairs]
    pids = worker_pids(root)
    # Warm-up: every worker has loaded its models and seen a burst before the samples count.
    asyncio.run(closed_loop(url, "compare_pair", "image", "pair.png", images, clients, 3.0))
    with tempfile.TemporaryDirectory() as tmp:
        recorders = {pid: subprocess.Popen(
            [PY_SPY, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--nonblocking",
             "--duration", str(int(duration)), "--output", f"{tmp}/{pid}.txt"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in pids}
        time.sleep(1.0)  # py-spy attaches
        before = cpu_by_pid(pids)
        loop = asyncio.run(closed_loop(url, "compare_pair", "image", "pair.png", images, clients, duration - 2))
        after = cpu_by_pid(pids)
        for recorder in recorders.values():
            recorder.wait(timeout=duration + 60)
        samples = {pid: read_collapsed(Path(f"{tmp}/{pid}.txt")) for pid in pids
                   if Path(f"{tmp}/{pid}.txt").exists()}
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for pid, role in pids.items():
                if Path(f"{tmp}/{pid}.txt").exists():
                    shutil.copyfile(f"{tmp}/{pid}.txt", keep / f"{role}-{pid}.txt")
    answers = max(loop["answers"], 1)
    by_stage: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    for pid, counts in samples.items():
        total = sum(counts.values()) or 1
        cpu_ms = 1000 * (after.get(pid, 0.0) - before.get(pid, 0.0)) / answers
        for stage, count in counts.items():
            by_stage[stage][pids[pid]] += cpu_ms * count / total
    roles = sorted({pids[pid] for pid in samples})
    order = [stage for stage, _ in STAGES] + [OTHER]
    rows = []
    for stage in order:
        if stage in by_stage:
            row = {"stage": stage, **{f"{role} ms/answer": by_stage[stage][role] for role in roles}}
            row["all ms/answer"] = sum(by_stage[stage].values())
            rows.append(row)
    rows.append({"stage": "**all**", **{f"{role} ms/answer": sum(by_stage[s][role] for s in by_stage)
                                        for role in roles},
                 "all ms/answer": sum(sum(v.values()) for v in by_stage.values())})
    return rows, loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(ROOT / "models"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds sampled")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", help="write the table here as Markdown")
    parser.add_argument("--keep", help="keep py-spy's collapsed stacks in this folder (one file per process)")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.serve_env)
    with serve_models(Path(args.models), env) as server:
        rows, loop = profile(server.url, server.pid, args.clients, args.duration, args.rate,
                             Path(args.keep) if args.keep else None)
    table = tabulate([[f"{v:.2f}" if isinstance(v, float) else v for v in r.values()] for r in rows],
                     headers=list(rows[0]), tablefmt="github")
    head = (f"{args.clients} clients, compare_pair, {loop['answers/s']:.1f} answers/s, p50 {loop['p50 ms']:.1f} ms, "
            f"p99 {loop['p99 ms']:.1f} ms, {loop['errors']} errors"
            + (f"; server environment {', '.join(args.serve_env)}" if args.serve_env else ""))
    print(head)
    print(table)
    if args.out:
        atomic_write_text(Path(args.out), f"{head}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
