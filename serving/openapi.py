"""The service's answers (pydantic models) and its OpenAPI description, written to match what it serves.

BentoML generates a description from the API signatures, but for this service it was wrong in ways
that matter to any client generator or fuzzer: internal routes listed, a JSON body described as a flat
array, ``compare_batch``'s JSON body and ``GET /info`` missing, and none of the 4xx answers declared. So
the description is built here, by hand for the requests and from the same pydantic models the service
answers with; ``tests/test_schemathesis.py`` fuzzes a real server against it.

The image routes carry explicit examples: real MNIST digits written as plain-text PGM (``P2``), an
image format that Pillow reads and that fits in a JSON string, so a fuzzer's example phase reaches a
200 on every route.
"""

from __future__ import annotations

import base64
import typing as t
import zlib

import numpy as np
from pydantic import BaseModel, Field

from ensemble.contract import (
    DIGIT_SIZE,
    PAIR_SHAPE,
    PAIR_SHAPE_TEXT,
    PAIRS_SHAPE_TEXT,
    PIXEL_DTYPE,
    PIXEL_MAX,
    join_pair,
)
from ensemble.priors import DESCRIPTIONS, PRIORS

#: How descriptions write one digit and one pair picture: "28x28" and "28x56" (height x width).
_DIGIT_TEXT = f"{DIGIT_SIZE}x{DIGIT_SIZE}"
_PAIR_TEXT = f"{PAIR_SHAPE[0]}x{PAIR_SHAPE[1]}"

# --------------------------------------------------------------------------- answers


class Digits(BaseModel):
    left: int = Field(description="most likely class of the left digit (the models' digit heads averaged)")
    right: int = Field(description="most likely class of the right digit")


class DigitProbabilities(BaseModel):
    left: list[float] = Field(min_length=10, max_length=10,
                              description="P(the left digit is 0..9), the models' digit heads averaged; "
                                          "digits.left is its most likely class")
    right: list[float] = Field(min_length=10, max_length=10, description="the same for the right digit")


class PreparedInputs(BaseModel):
    left: str = Field(description=f"the left {_DIGIT_TEXT} half the models saw, as a base64 grayscale PNG "
                                  "(light ink on black)")
    right: str = Field(description=f"the right {_DIGIT_TEXT} half, the same way")


class Comparison(BaseModel):
    greater: bool = Field(description="is the left digit greater than the right one?")
    probability: float = Field(description="probability that left > right, under the answer's prior")
    prior: str = Field(description="which prior over digit pairs produced the probability: "
                                   + "; ".join(f"{name}: {text}" for name, text in DESCRIPTIONS.items()))
    digits: Digits
    models: dict[str, float] = Field(description="each base model's probability that left > right under the "
                                     "answer's prior: with `course`, its pair head; with `uniform`, the Bayes "
                                     "read-out of its own digit heads (as the answer's, for that model alone)")
    batch_size: int = Field(description="pairs in the inference call that served this request (adaptive batching)")
    # Added for the web page (issue 11); the fields above are unchanged, so older clients read answers as before.
    digit_probabilities: DigitProbabilities
    elapsed_ms: float = Field(description="milliseconds the service spent on this request, from the received "
                                          "upload to the answer (decoding, preprocessing, queueing, inference)")
    inputs: PreparedInputs | None = Field(default=None, description="the preprocessed halves; only when the "
                                                                    "request asks with include_inputs=true")


class BatchResult(BaseModel):
    n: int
    prior: str = Field(description="which prior over digit pairs produced the probabilities (see Comparison)")
    probabilities: list[float]
    labels: list[int]
    digits: list[list[int]] = Field(description="[left, right] most likely classes per pair")
    ids: list[str] | None = None
    accuracy: float | None = Field(default=None, description="against the file's labels 'y', when it has them")


# --------------------------------------------------------------------------- examples

# Two held-out MNIST digits (samples/digit_8_light_on_dark.png and digit_3_light_on_dark.png), 28x28
# uint8, zlib-compressed and base64-encoded.
_EIGHT = (
    "eNpjYBgwIDX7/4P9TdFMmDJMMdf+goE2plQuRObvNTVmNCmJ+SDxN52Zp37+XZIqiWJuP1DmR6cskNUIUqSIbCJI2yUgg7ttP0ju"
    "CBtCjvvV37/fixgYFBeCjb5UhmbmpxDlrhcgqUxDVLeA7Pv4DCTzOp4bzZ0GTyA+eBOnh+l1c4jc2wQ+TDm2AKjfLyZwY0g2/4WB"
    "LC40Kc69f/9e0fbcB5JczokqJwkUO8PAwOX5Gshww5S7DwqzCUDGFFQ55kKgmBdD4OmfQDoRzUKhq3//bnkDkvmbjRG9GTB3Ykox"
    "MEpDIn6a8EAlSgDkXrDT"
)
_THREE = (
    "eNpjYBh0gNN2wtl/e7ZszhTAkDK/9+8vEACJ20poUvO//f3RGamgqhd59e99aVS593+3KUNYUlf+1qDKJUfzwJg+fz9K43TVg/8+"
    "uKS4d/9bw4JDju/sv1ts6IIS2gx8erWH3v/9Nx9dn/v73w9egD15QBhdm/vPf//+/Qfif7GYFpmXl3vr6upO/vvTHJc7mdf+u8SG"
    "S1Lj319+nJ6/9Dcdp9yWf0twSQnd/jsJ1QX8/MzACOY3L934+d9PIRQ567//zhw69BTs96vWqAb5/AULf93U5CrHSdPEBwB45GjB"
)


def _digit(encoded: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(encoded)), dtype=PIXEL_DTYPE).reshape(DIGIT_SIZE, DIGIT_SIZE)


def plain_pgm(pixels: np.ndarray) -> str:
    """A grayscale uint8 image as plain-text PGM (P2): readable by Pillow, and valid JSON string content."""
    height, width = pixels.shape
    rows = "\n".join(" ".join(str(int(v)) for v in row) for row in pixels)
    return f"P2\n{width} {height}\n{PIXEL_MAX}\n{rows}\n"


EXAMPLE_LEFT = plain_pgm(_digit(_EIGHT))
EXAMPLE_RIGHT = plain_pgm(_digit(_THREE))
EXAMPLE_PAIR = join_pair(_digit(_EIGHT), _digit(_THREE))  # 8 | 3: left is greater


# --------------------------------------------------------------------------- the description

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERRORS = {
    "400": "the request is malformed or its content is unusable (the message says what is wrong)",
    "408": "the request body did not arrive in time",
    "413": "the request, an image or the number of pairs is over a limit",
    "415": "the request's content type is not accepted here",
    "503": "overloaded; retry after the Retry-After seconds",
}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _responses(ok: dict, *errors: str) -> dict:
    answers = {"200": ok}
    for code in errors:
        answers[code] = {"description": _ERRORS[code], "content": _json(_ERROR)}
    return answers


def _schemas() -> dict:
    """Component schemas from the pydantic models (nested models become their own components)."""
    schemas: dict[str, t.Any] = {}
    for model in (Comparison, BatchResult):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Error"] = {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {"type": "string", "description": "what is wrong, for a person"},
                       "detail": {"description": "structured detail, when there is any"}},
    }
    return schemas


def build_openapi(*, version: str, max_pairs: int, max_request_bytes: int, max_image_bytes: int,
                  max_image_pixels: int, id_max_chars: int) -> dict:
    """The OpenAPI 3.0 description of every route the service answers."""
    pixel = {"type": "number", "minimum": 0, "maximum": PIXEL_MAX,
             "description": f"a pixel: integers 0-{PIXEL_MAX}, or floats (all in [0, 1]: scaled by {PIXEL_MAX}; "
                            f"else [0, {PIXEL_MAX}])"}
    height, width = PAIR_SHAPE
    pair = {"type": "array", "minItems": height, "maxItems": height,
            "items": {"type": "array", "minItems": width, "maxItems": width, "items": pixel}}
    image = {"type": "string", "format": "binary",
             "description": f"a picture in any format Pillow reads; at most {max_image_bytes} bytes and "
                          f"{max_image_pixels} pixels"}
    include_inputs = {"type": "boolean", "default": False,
                      "description": f"true: the answer's 'inputs' holds the preprocessed {_DIGIT_TEXT} halves as "
                                     "base64 PNG (JSON spelling: true or false)"}
    text = {"text/plain": {"schema": {"type": "string"}}}

    def prior(default: str) -> dict:
        return {"type": "string", "enum": list(PRIORS), "default": default,
                "description": f"the prior over digit pairs (default here: {default}): "
                               + "; ".join(f"{name}, {text}" for name, text in DESCRIPTIONS.items())}

    pair_pgm = plain_pgm(EXAMPLE_PAIR)
    batch_json = {
        "type": "object", "required": ["pairs"], "additionalProperties": False,
        "properties": {
            "pairs": {"oneOf": [{"type": "array", "minItems": 1, "maxItems": max_pairs, "items": pair}, pair],
                      "description": f"{PAIRS_SHAPE_TEXT} course pairs (left digit in columns 0-{DIGIT_SIZE - 1}), "
                                     f"N <= {max_pairs}, or one {PAIR_SHAPE_TEXT} pair"},
            "ids": {"type": "array", "nullable": True, "uniqueItems": True,
                    "items": {"type": "string", "minLength": 1, "maxLength": id_max_chars},
                    "description": "one unique id per pair (optional; row numbers stand in)"},
            "format": {"type": "string", "enum": ["json", "csv"], "default": "json",
                       "description": "csv: the course submission file id,label"},
            "prior": prior("course"),
        },
    }
    batch_multipart = {
        "type": "object", "required": ["file"], "additionalProperties": False,
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": f"a course .npz: key x {PAIRS_SHAPE_TEXT} {PIXEL_DTYPE} (or float), "
                                    "optionally id and y"},
            "format": {"type": "string", "enum": ["json", "csv"], "default": "json"},
            "prior": prior("course"),
        },
    }
    comparison = {"description": "the comparison", "content": _json({"$ref": "#/components/schemas/Comparison"})}
    info = {"type": "object", "required": ["models", "provider", "format_version", "artifacts", "batching", "limits",
                                           "priors"],
            "properties": {"models": {"type": "array", "items": {"type": "string"}},
                           "priors": {"type": "object", "description": "the priors a request may choose (field "
                                      "'prior'), each route's default, and the digit frequencies the uniform prior "
                                      "divides out"},
                           "provider": {"type": "string"}, "format_version": {"type": "integer"},
                           "artifacts": {"type": "object"}, "batching": {"type": "object"},
                           "limits": {"type": "object"}}}
    info_ok = {"description": "models, manifest, provider, batching and limits", "content": _json(info)}
    probe = {"200": {"description": "OK", "content": text}}
    png = {"type": "string", "format": "byte", "description": "a base64 PNG"}
    samples = {"type": "object", "required": ["pairs"], "properties": {"pairs": {"type": "array", "items": {
        "type": "object", "required": ["id", "label", "digits", "pair", "left", "right"],
        "properties": {
            "id": {"type": "string", "description": "pair.png, or the pair's id in samples/batch.npz"},
            "label": {"type": "integer", "enum": [0, 1], "nullable": True,
                      "description": "the truth, 1: left > right (null where samples/expected.json does not say)"},
            "digits": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "nullable": True,
                       "minItems": 2, "maxItems": 2, "description": "the two digits, where known"},
            "pair": {**png, "description": f"the {_PAIR_TEXT} course picture (base64 PNG)"},
            "left": {**png, "description": f"its left {_DIGIT_TEXT} half"},
            "right": {**png, "description": "its right half"},
        }}}}}

    def page_file(summary: str, media_type: str) -> dict:
        # ETag + Cache-Control: no-cache on every page file, so a browser may revalidate with If-None-Match.
        return {"get": {"summary": summary, "responses": {
            "200": {"description": "OK", "content": {media_type: {"schema": {"type": "string"}}}},
            "304": {"description": "not modified (the If-None-Match ETag is current)"}}}}

    ui_samples = page_file("the sample course pairs the page offers (samples/), as PNG", "application/json")
    ui_samples["get"]["responses"]["200"]["content"]["application/json"]["schema"] = samples
    return {
        "openapi": "3.0.3",
        "info": {"title": "digit_compare", "version": version,
                 "description": "Is the left handwritten digit greater than the right one? Ten Siamese CNNs "
                                "stacked by LightGBM. Every error answers {\"error\": \"...\", \"detail\": ...}."},
        "paths": {
            "/compare": {"post": {
                "summary": "two pictures of single digits: is left > right?",
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["left", "right"], "additionalProperties": False,
                               "properties": {"left": image, "right": image,
                                              "include_inputs": include_inputs, "prior": prior("uniform")}},
                    "example": {"left": EXAMPLE_LEFT, "right": EXAMPLE_RIGHT}}}},
                "responses": _responses(comparison, "400", "408", "413", "415", "503")}},
            "/compare_pair": {"post": {
                "summary": f"one course-style {_PAIR_TEXT} pair picture (other sizes are resized): is left > right?",
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["image"], "additionalProperties": False,
                               "properties": {"image": image, "include_inputs": include_inputs,
                                              "prior": prior("course")}},
                    "example": {"image": pair_pgm}}}},
                "responses": _responses(comparison, "400", "408", "413", "415", "503")}},
            "/compare_batch": {"post": {
                "summary": f"many pairs at once: JSON pairs or a course .npz upload (at most {max_request_bytes} "
                           "bytes)",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": batch_json,
                                         "example": {"pairs": [EXAMPLE_PAIR.tolist()], "ids": ["PAIR_0"]}},
                    "multipart/form-data": {"schema": batch_multipart}}},
                "responses": _responses(
                    {"description": "probabilities, labels and digits (format=csv: the submission file, its prior "
                                    "in the header X-Prior)",
                     "content": {**_json({"$ref": "#/components/schemas/BatchResult"}),
                                 "text/csv": {"schema": {"type": "string"}}}},
                    "400", "408", "413", "415", "503")}},
            "/info": {
                "get": {"summary": "models, manifest, provider, batching and limits", "responses": {"200": info_ok}},
                "post": {"summary": "the same as GET (for BentoML's clients)",
                         "responses": _responses(info_ok, "400", "415")}},
            "/healthz": {"get": {"summary": "liveness", "responses": probe}},
            "/livez": {"get": {"summary": "liveness", "responses": probe}},
            "/readyz": {"get": {"summary": "readiness (200 once the models are loaded)", "responses": probe}},
            "/metrics": {"get": {"summary": "Prometheus metrics: requests and latency per route, batch sizes",
                                 "responses": probe}},
            "/ui": page_file("a web page to try the service: draw or drop two digits, see the answer", "text/html"),
            "/ui/style.css": page_file("the page's style sheet", "text/css"),
            "/ui/app.js": page_file("the page's script", "text/javascript"),
            "/ui/samples.json": ui_samples,
        },
        "components": {"schemas": _schemas()},
    }
