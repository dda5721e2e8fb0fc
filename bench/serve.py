"""Benchmark the served product, torch-free: in process, then over HTTP against a real server.

    python -m bench.serve [--models models] [--duration 10] [--concurrency 1,4,16,64]
                          [--batches 1,8,32,64,256] [--repeats 7] [--out docs] [--url URL]
                          [--serve-env NAME=VALUE ...] [--model ensemble|student|ensemble,student] [--in-process]

1. **In process**: pairs/s of ``Ensemble.predict`` (fused graph + stacker) with the fp32 and the int8
   graph at each batch size, median of ``--repeats``, the two precisions interleaved so that a noisy
   machine slows both alike. ``--in-process`` stops here and prints it, naming the CPU: int8 pays only on a
   CPU with an int8 dot product (docs/speed.md, "Per CPU").
2. **Over HTTP**: starts ``bentoml serve service:DigitCompare`` itself (or uses ``--url``), then a
   closed loop of ``compare_pair`` requests (one course pair each) at each concurrency for
   ``--duration`` seconds: answers/s, p50/p95/p99 latency, errors, and the batch sizes the server
   formed (every answer says how many pairs shared its inference call); then ``compare_batch`` with
   256 pairs per request.
3. Where the CPU goes (when it started the server): CPU milliseconds per answer of the API worker
   (HTTP, multipart, decoding, JSON), the scorer worker (its HTTP side, the batching dispatcher and
   inference) and this load generator, from /proc, so "the server is slow" and "the client eats a
   core" can be told apart. ``--serve-env NAME=VALUE`` (repeatable) sets the server's environment,
   e.g. ``DIGIT_COMPARE_MAX_BATCH_SIZE=32`` to compare batching settings.
4. Writes ``OUT/bench.md`` (the tables), ``OUT/bench.json`` (the numbers) and ``OUT/bench.png``
   (throughput and p99 against concurrency), as Triton's perf_analyzer reports do.

``--model ensemble,student`` measures the distilled student (``ensemble.student``) beside the ensemble in the same
run: both in process, then a server of each (``DIGIT_COMPARE_MODEL``) in turn, and a side-by-side table;
``bench.json`` then holds one entry per model, and each model after the first its own ``bench_MODEL.png``.

The load generator is ``bench.load``'s closed loop; the server, ``bench.server``'s launcher.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

from bench.load import course_like_pairs, measured, npz, png
from bench.server import ROOT, Server, serve_models
from ensemble.atomic import atomic_path, atomic_write_text
from ensemble.cpu import this_cpu
from ensemble.student import MODEL_ENV, load_model

CONCURRENCY = (1, 4, 16, 64)
BATCHES = (1, 8, 32, 64, 256)
BATCH_REQUEST_PAIRS = 256


# --------------------------------------------------------------------------- in process

INT8_ROLE = {"ensemble": "fused_int8", "student": "student_int8"}


def in_process(models: Path, pairs: np.ndarray, batches: tuple[int, ...], repeats: int,
               model: str = "ensemble") -> list[dict]:
    """Pairs/s per precision and batch size (median over repeats; precisions interleaved)."""
    ensembles = {"fp32": load_model(models, model, device="cpu", precision="fp32")}
    if INT8_ROLE[model] in ensembles["fp32"].manifest["artifacts"]:
        ensembles["int8"] = load_model(models, model, device="cpu", precision="int8")
    rows = []
    for batch in batches:
        x = pairs[:batch]
        calls = max(1, 512 // batch)  # about 512 pairs per timing, so small batches are not all noise
        times: dict[str, list[float]] = {name: [] for name in ensembles}
        for ens in ensembles.values():
            ens.predict(x)  # warm-up
        for _ in range(repeats):
            for name, ens in ensembles.items():
                start = time.perf_counter()
                for _ in range(calls):
                    ens.predict(x)
                times[name].append((time.perf_counter() - start) / calls)
        row = {"batch": batch}
        for name, seconds in times.items():
            median = statistics.median(seconds)
            row[f"{name} pairs/s"] = batch / median
            row[f"{name} ms"] = 1000 * median
        if "int8" in ensembles:
            row["int8 / fp32"] = row["int8 pairs/s"] / row["fp32 pairs/s"]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- over HTTP

def over_http(target: Server | str, pairs: np.ndarray, concurrency: tuple[int, ...],
              duration: float) -> tuple[list[dict], dict]:
    """The compare_pair concurrency sweep and the compare_batch run (256 pairs per request), against a server
    started here (its CPU per answer measured too) or a URL."""
    images = [png(p) for p in pairs[:256]]
    sweep = [measured(target, "compare_pair", "image", "pair.png", images, c, duration) for c in concurrency]
    uploads = [npz(pairs[i:i + BATCH_REQUEST_PAIRS]) for i in range(0, len(pairs) - BATCH_REQUEST_PAIRS + 1,
                                                                     BATCH_REQUEST_PAIRS)] or [npz(pairs)]
    batch = measured(target, "compare_batch", "file", "pairs.npz", uploads, 1, duration)
    batch["pairs/s"] = batch["answers/s"] * min(BATCH_REQUEST_PAIRS, len(pairs))
    return sweep, batch


# --------------------------------------------------------------------------- report

def _table(rows: list[dict], digits: int = 1) -> str:
    return tabulate([[f"{v:.{digits}f}" if isinstance(v, float) else v for v in r.values()] for r in rows],
                    headers=list(rows[0]), tablefmt="github")


def plot(sweep: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [r["clients"] for r in sweep]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(clients, [r["answers/s"] for r in sweep], "o-", color="tab:blue", label="answers/s")
    ax.set(xscale="log", xlabel="concurrent clients (closed loop, compare_pair)", ylabel="answers / s")
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot(clients, [r["p99 ms"] for r in sweep], "s--", color="tab:red", label="p99 latency")
    right.set_ylabel("p99 latency (ms)")
    fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88), fontsize=8)
    fig.suptitle("digit-compare over HTTP: throughput and tail latency")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def bench_model(model: str, models: Path, pairs: np.ndarray, args: argparse.Namespace,
                serve_env: dict[str, str]) -> dict:
    """One model's numbers: in process, then over HTTP against a server of it (or ``--url``)."""
    batches = tuple(int(b) for b in args.batches.split(","))
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    print(f"{model}, in process: batches {batches}, {args.repeats} repeats", file=sys.stderr)
    local = in_process(models, pairs, batches, args.repeats, model)
    print(_table(local))
    print(f"{model}, over HTTP: {concurrency} clients, {args.duration:g} s each", file=sys.stderr)
    env = {**serve_env, MODEL_ENV: model}
    with contextlib.nullcontext(args.url) if args.url else serve_models(models, env) as target:
        sweep, batch = over_http(target, pairs, concurrency, args.duration)
    print(_table(sweep))
    print(_table([batch]))
    return {"in_process": local, "compare_pair": sweep, "compare_batch": batch, "serve_env": serve_env}


def model_sections(name: str, result: dict, plot_file: str) -> list[str]:
    """One model's part of bench.md."""
    local, sweep, batch, serve_env = (result[k] for k in ("in_process", "compare_pair", "compare_batch", "serve_env"))
    what = "`Ensemble.predict`: fused graph + stacker" if name == "ensemble" else f"the {name}: one graph"
    best = max(local, key=lambda r: r["fp32 pairs/s"])
    env_words = ", ".join(f"`{k}={v}`" for k, v in serve_env.items())
    title = "" if name == "ensemble" else f" ({name})"
    return [f"## In process ({what})", "", _table(local), "",
            f"Best fp32 batch: {best['batch']} ({best['fp32 pairs/s']:.0f} pairs/s).", "",
            f"## Over HTTP: `compare_pair`, closed loop{title}", "",
            *([f"Server environment: {env_words}.", ""] if serve_env else []),
            "`api`/`scorer`/`client cpu ms/ans`: CPU milliseconds per answer (all threads) of the API workers "
            "(the models included in the in-process layout), the scorer worker (0 without one) and this load "
            "generator.", "", _table(sweep), "",
            f"## Over HTTP: `compare_batch`, {BATCH_REQUEST_PAIRS} pairs per request, one client{title}", "",
            _table([batch]), "", f"![throughput and p99 against concurrency]({plot_file})", ""]


def side_by_side(results: dict[str, dict]) -> list[dict]:
    """Each model's fp32 pairs/s in process at each batch, and answers/s at each concurrency (its server's default
    precision), with the ratio of each model to the first."""
    first = next(iter(results))
    rows = []
    for i, row in enumerate(results[first]["in_process"]):
        rows.append({"measure": f"in process, batch {row['batch']} (pairs/s)",
                     **{m: r["in_process"][i]["fp32 pairs/s"] for m, r in results.items()}})
    for i, row in enumerate(results[first]["compare_pair"]):
        rows.append({"measure": f"compare_pair, {row['clients']} clients (answers/s)",
                     **{m: r["compare_pair"][i]["answers/s"] for m, r in results.items()}})
    for row in rows:
        for m in list(results)[1:]:
            row[f"{m} / {first}"] = row[m] / row[first]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(ROOT / "models"))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where bench.md and bench.png go")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the server it starts, e.g. DIGIT_COMPARE_MAX_BATCH_SIZE=32 (repeatable)")
    parser.add_argument("--model", default="ensemble", help="ensemble, student, or both side by side: "
                        "ensemble,student (the student: a models folder that lists one)")
    parser.add_argument("--in-process", action="store_true",
                        help="only step 1 (fp32 against int8 in process, on this CPU), printed; nothing written")
    args = parser.parse_args(argv)
    serve_env = dict(item.split("=", 1) for item in args.serve_env)
    names = [m.strip() for m in args.model.split(",") if m.strip()]
    if not names or any(m not in INT8_ROLE for m in names) or (args.url and len(names) > 1):
        parser.error("--model: ensemble, student or ensemble,student (one model with --url)")
    batches = tuple(int(b) for b in args.batches.split(","))
    models, out = Path(args.models), Path(args.out)
    pairs = course_like_pairs(max(max(batches), 2 * BATCH_REQUEST_PAIRS))
    if args.in_process:  # whether int8 pays depends on the CPU (ensemble.cpu): the table says which one measured it
        print(f"in process, {this_cpu().label()}")
        for name in names:
            print(f"\n{name}\n{_table(in_process(models, pairs, batches, args.repeats, name), 2)}")
        return 0
    results = {name: bench_model(name, models, pairs, args, serve_env) for name in names}

    plots = {name: "bench.png" if i == 0 else f"bench_{name}.png" for i, name in enumerate(names)}
    text = [line for name in names for line in model_sections(name, results[name], plots[name])]
    if len(names) > 1:
        comparison = side_by_side(results)
        print(_table(comparison))
        # Over HTTP each server runs its default precision (auto: int8 on the CPU where the folder ships it).
        text += ["## Side by side (in process: fp32; over HTTP: each server's default precision)", "",
                 _table(comparison, 2), ""]
    atomic_write_text(out / "bench.md", "\n".join(text))
    numbers = results[names[0]] if len(names) == 1 else {"models": results, "side_by_side": comparison}
    atomic_write_text(out / "bench.json", json.dumps(numbers, indent=2) + "\n")
    for name in names:
        plot(results[name]["compare_pair"], out / plots[name])
    print(f"wrote {out / 'bench.md'} and {', '.join(str(out / p) for p in plots.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
