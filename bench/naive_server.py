"""The naive alternative, for the benchmark only: a per-request PyTorch eager server.

    python -m bench.naive_server [--models models] [--profile default] [--port 3001]

What one would write first: the ten trained PyTorch models, run one after another on every single
request, no batching, no ONNX. It answers ``POST /compare_pair`` like the real service (same
preprocessing, the mean of the ten probabilities), so ``python -m bench.serve --url
http://127.0.0.1:3001`` loads both the same way. Starlette + uvicorn (they come with BentoML), never
the served path: that one stays torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ensemble.contract import PIXEL_MAX
from ensemble.preprocess import open_image, prepare_pair
from training.models import load_weights, model_names


def build_app(models_dir: Path, profile: str) -> Starlette:
    models = [load_weights(name, models_dir, profile) for name in model_names()]

    def score(pair) -> dict:
        x = torch.from_numpy(pair[None]).float() / PIXEL_MAX
        with torch.no_grad():
            probabilities = [torch.sigmoid(model(x)[0]).item() for model in models]
        mean = sum(probabilities) / len(probabilities)
        return {"greater": mean >= 0.5, "probability": mean, "batch_size": 1}

    async def compare_pair(request: Request) -> JSONResponse:
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"error": "multipart file field 'image' is required"}, status_code=400)
        pair = prepare_pair(open_image(await upload.read()))
        return JSONResponse(await run_in_threadpool(score, pair))

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/compare_pair", compare_pair, methods=["POST"]),
                             Route("/readyz", ready, methods=["GET"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="models", help="folder with weights/NAME/weights.safetensors")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--port", type=int, default=3001)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(Path(args.models), args.profile), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
