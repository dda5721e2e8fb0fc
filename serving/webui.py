"""The web page at ``/ui``: static files from ``ui/`` and the sample course pairs from ``samples/``, served by
the service's own mounted Starlette app (the same Bento and port as the API, no second server).

The page is plain HTML + JavaScript + CSS, no build step. Its files are read once when the service is
imported (a missing file stops ``bentoml serve`` with a message, like a missing model), answered from
memory with an ETag and ``Cache-Control: no-cache`` (a browser revalidates, so an upgraded service never
runs a stale script), and the page carries a Content-Security-Policy that lets it load nothing but its own
origin: nothing comes from the internet at run time, and the policy makes a slip fail loudly in the browser.

``/ui/samples.json`` hands the page the committed held-out course pairs (``samples/pair.png`` and the 16
pairs of ``samples/batch.npz``) as PNGs, whole and as halves, with what ``samples/expected.json`` says each
shows.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import typing as t
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ensemble.contract import PIXEL_DTYPE, split_pair
from ensemble.course_data import load_course_npz

#: path -> (file in ui/, media type). The page is /ui itself; its assets are referenced relative to it.
UI_FILES: dict[str, tuple[str, str]] = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
}
SAMPLES_PATH = "/ui/samples.json"
UI_PATHS: tuple[str, ...] = (*UI_FILES, SAMPLES_PATH)

#: Only this origin: scripts and styles from files (no inline code), pictures also from data:/blob: URLs
#: (the preprocessed inputs arrive as base64 PNG; dropped files are previewed from blobs).
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class UIError(Exception):
    """The page's files are not where the service expects them."""


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str
    headers: tuple[tuple[str, str], ...] = ()


def _asset(body: bytes, media_type: str, **headers: str) -> Asset:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, media_type, etag, tuple(headers.items()))


def load_assets(ui_dir: Path) -> dict[str, Asset]:
    """Every file of ``UI_FILES`` from ``ui_dir``, in memory (UIError naming the first one missing)."""
    assets = {}
    for path, (name, media_type) in UI_FILES.items():
        try:
            body = (ui_dir / name).read_bytes()
        except OSError as err:
            raise UIError(f"the page's file {ui_dir / name} cannot be read: {err.strerror or err}") from None
        headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY} if path == "/ui" else {}
        assets[path] = _asset(body, media_type, **headers)
    return assets


def png_base64(pixels: np.ndarray) -> str:
    """A grayscale uint8 image as a base64 PNG (what the page shows with a data: URL)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=PIXEL_DTYPE), mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def sample_pairs(samples_dir: Path) -> dict[str, t.Any]:
    """The committed sample course pairs for the page: ``{"pairs": [{id, label, digits, pair, left, right}]}``.

    ``pair`` is the 28x56 picture, ``left``/``right`` its halves (base64 PNG); ``label`` (1: left > right)
    and ``digits`` are what ``samples/expected.json`` says the pair shows (null where it does not say).
    A folder without samples gives no pairs (the page then says so) rather than a broken service.
    """
    expected_path = samples_dir / "expected.json"
    expected = json.loads(expected_path.read_text()) if expected_path.is_file() else {}
    pairs: list[tuple[str, np.ndarray, int | None, list[int] | None]] = []
    if (samples_dir / "pair.png").is_file():
        with Image.open(samples_dir / "pair.png") as image:
            pixels = np.asarray(image.convert("L"), dtype=PIXEL_DTYPE)
        truth = expected.get("pair.png", {})
        pairs.append(("pair.png", pixels, truth.get("label"), truth.get("digits")))
    if (samples_dir / "batch.npz").is_file():
        data = load_course_npz(samples_dir / "batch.npz")
        truth = expected.get("batch.npz", {})
        labels = dict(zip(truth.get("ids", []), truth.get("labels", []), strict=False))
        for i, pid in enumerate(data.ids_or_row_numbers()):
            label = labels.get(str(pid), None if data.y is None else int(data.y[i]))
            digits = None if data.digits is None else [int(d) for d in data.digits[i]]
            pairs.append((str(pid), data.x[i], label, digits))
    return {"pairs": [_sample(pid, x, label, digits) for pid, x, label, digits in pairs]}


def _sample(pid: str, pair: np.ndarray, label: int | None, digits: list[int] | None) -> dict[str, t.Any]:
    left, right = split_pair(pair)
    return {"id": pid, "label": label, "digits": digits, "pair": png_base64(pair), "left": png_base64(left),
            "right": png_base64(right)}


def asset_response(request: Request, asset: Asset) -> Response:
    """The asset, or 304 when the browser already holds this version."""
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               **dict(asset.headers)}
    if asset.etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def routes(ui_dir: Path, samples_dir: Path) -> list[Route]:
    """The page's routes (GET; HEAD comes with it), for the service's Starlette app."""
    assets = load_assets(ui_dir)
    samples: list[Asset] = []  # built on first use: a worker that never serves the page never encodes them

    def serve(path: str) -> t.Callable[[Request], t.Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return asset_response(request, assets[path])
        return endpoint

    async def serve_samples(request: Request) -> Response:
        if not samples:
            body = JSONResponse(sample_pairs(samples_dir)).body
            samples.append(_asset(bytes(body), "application/json"))
        return asset_response(request, samples[0])

    return [*(Route(path, serve(path), methods=["GET"]) for path in UI_FILES),
            Route(SAMPLES_PATH, serve_samples, methods=["GET"])]


def _page_operation(summary: str, media_type: str, schema: dict | None = None) -> dict:
    # ETag + Cache-Control: no-cache on every page file, so a browser may revalidate with If-None-Match.
    return {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {media_type: {"schema": schema or {"type": "string"}}}},
        "304": {"description": "not modified (the If-None-Match ETag is current)"}}}


_PNG = {"type": "string", "format": "byte", "description": "a base64 PNG"}
_SAMPLES_SCHEMA = {"type": "object", "required": ["pairs"], "properties": {"pairs": {"type": "array", "items": {
    "type": "object", "required": ["id", "label", "digits", "pair", "left", "right"],
    "properties": {
        "id": {"type": "string", "description": "pair.png, or the pair's id in samples/batch.npz"},
        "label": {"type": "integer", "enum": [0, 1], "nullable": True,
                  "description": "the truth, 1: left > right (null where samples/expected.json does not say)"},
        "digits": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "nullable": True,
                   "minItems": 2, "maxItems": 2, "description": "the two digits, where known"},
        "pair": {**_PNG, "description": "the 28x56 course picture"},
        "left": {**_PNG, "description": "its left 28x28 half"},
        "right": {**_PNG, "description": "its right half"}}}}}}
#: The page's routes in the OpenAPI document (serving.openapi), by path.
OPENAPI: dict[str, dict] = {
    "/ui": _page_operation("a web page to try the service: draw or drop two digits, see the answer", "text/html"),
    "/ui/style.css": _page_operation("the page's style sheet", "text/css"),
    "/ui/app.js": _page_operation("the page's script", "text/javascript"),
    SAMPLES_PATH: _page_operation("the sample course pairs the page offers (samples/), as PNG", "application/json",
                                  _SAMPLES_SCHEMA),
}
