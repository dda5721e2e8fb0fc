"""Service settings side by side: one server per variant, each measured by ``bench.load``'s closed loop.

    python -m bench.serve_variants NAME:VAR=VALUE,VAR=VALUE [NAME:...] [--seconds 12]

For each variant (a name and the server's environment, e.g. ``t1:DIGIT_COMPARE_SCORER_THREADS=1`` or
``scorer:DIGIT_COMPARE_LAYOUT=scorer``; ``name:`` alone is the defaults) it starts ``bentoml serve``, warms it up,
then measures 64 clients of ``compare_pair`` (answers/s, p99, the API workers' CPU ms per answer, mean batch),
one client (p50) and ``compare_batch`` with 256 pairs a request (pairs/s), and prints one line of JSON per
variant. docs/speed.md's settings table came from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.load import course_like_pairs, measured, npz, png
from bench.server import ROOT, serve_models


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:VAR=VALUE,VAR=VALUE`` -> (NAME, environment)."""
    name, _, settings = text.partition(":")
    return name, dict(item.split("=", 1) for item in settings.split(",") if item)


def measure(env: dict[str, str], seconds: float, models: Path) -> dict[str, float]:
    pairs = course_like_pairs(512)
    images = [png(p) for p in pairs[:256]]
    uploads = [npz(pairs[i:i + 256]) for i in (0, 256)]
    with serve_models(models, env) as server:
        measured(server, "compare_pair", "image", "pair.png", images, 64, 3)  # warm-up
        crowd = measured(server, "compare_pair", "image", "pair.png", images, 64, seconds)
        alone = measured(server, "compare_pair", "image", "pair.png", images, 1, seconds * 2 / 3)
        batch = measured(server, "compare_batch", "file", "pairs.npz", uploads, 1, seconds * 5 / 6)
    return {"64 clients answers/s": crowd["answers/s"], "64 clients p99 ms": crowd["p99 ms"],
            "64 clients API cpu ms/answer": crowd.get("api cpu ms/ans", float("nan")),
            "mean batch": crowd["mean batch"], "1 client p50 ms": alone["p50 ms"],
            "compare_batch pairs/s": batch["answers/s"] * 256,
            "errors": crowd["errors"] + alone["errors"] + batch["errors"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_variants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="NAME:VAR=VALUE,...")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds of the 64-client loop")
    parser.add_argument("--models", default=str(ROOT / "models"))
    args = parser.parse_args(argv)
    for text in args.variants:
        name, env = parse_variant(text)
        print(name, json.dumps(measure(env, args.seconds, Path(args.models))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
