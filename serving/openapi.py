"""The service's OpenAPI document, at ``/docs.json``: BentoML's own, generated from the routes' signatures, corrected
where it is wrong for this service.

BentoML 1.4.40 describes every ``@bentoml.api`` from its input spec and answer model. What it gets wrong here: a
route that also takes JSON is described as multipart only; the error answers are its own shapes (400, 404, 500)
rather than the one error shape and the service's 400/408/413/415/503; an API answering a ``Response`` (the CSV
batch) has no answer schema; the routes of the mounted app (the web page, ``GET /info``) are missing; and its
title and description are BentoML's. ``openapi_document`` fixes exactly those, and adds examples: real MNIST
digits written as plain-text PGM (``P2``), a format Pillow reads and that fits in a JSON string, so a fuzzer's
example phase (``tests/test_service.py`` runs schemathesis against a real server) reaches a 200 on every route.
"""

from __future__ import annotations

import base64
import copy
import typing as t
import zlib

import numpy as np

from ensemble.contract import DIGIT_SIZE, PIXEL_DTYPE, PIXEL_MAX, join_pair
from serving.answers import BatchResult, Comparison
from serving.guard import RouteRule

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



# --------------------------------------------------------------------------- the corrections

ERRORS = {
    "400": "the request is malformed or its content is unusable (the message says what is wrong)",
    "408": "the request body did not arrive in time",
    "413": "the request, an image or the number of pairs is over a limit",
    "415": "the request's content type is not accepted here",
    "503": "overloaded; retry after the Retry-After seconds",
}
ERROR_SCHEMA = {"type": "object", "required": ["error"], "additionalProperties": False,
                "properties": {"error": {"type": "string", "description": "what is wrong, for a person"},
                               "detail": {"description": "structured detail, when there is any"}}}
#: Request examples by route (a fuzzer's first requests), and answers BentoML cannot see (a ``Response``).
EXAMPLES = {"/compare": {"left": EXAMPLE_LEFT, "right": EXAMPLE_RIGHT},
            "/compare_pair": {"image": plain_pgm(EXAMPLE_PAIR)},
            "/compare_batch": {"pairs": [EXAMPLE_PAIR.tolist()], "ids": ["PAIR_0"]}}
ANSWERS = {"/compare_batch": {"description": "probabilities, labels and digits (format=csv: the submission file, "
                                             "its prior in the header X-Prior)",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}},
                                          "text/csv": {"schema": {"type": "string"}}}}}


def _schemas() -> dict[str, t.Any]:
    """Component schemas of the answers (nested models become their own components) and the error shape."""
    schemas: dict[str, t.Any] = {"Error": ERROR_SCHEMA}
    for model in (Comparison, BatchResult):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _post(operation: dict, path: str, rule: RouteRule, json_pairs: int) -> dict:
    """One API's operation: its request bodies (JSON beside multipart where the route takes it), its answers."""
    body = operation.get("requestBody", {}).get("content", {})
    if path != "/info":  # every comparing route needs its body (BentoML marks none as required)
        operation["requestBody"]["required"] = True
    form = body.get("multipart/form-data")
    if form is not None and "application/json" in rule.limits:  # the non-file fields, as a JSON object
        schema = copy.deepcopy(form["schema"])
        schema["properties"] = {k: v for k, v in schema["properties"].items() if v.get("format") != "binary"}
        schema["required"] = [k for k in schema.get("required", []) if k in schema["properties"]]
        body["application/json"] = {"schema": schema}
    for content in body.values():
        content["schema"].update(additionalProperties=False)
        content["schema"].pop("title", None)
        for name, field in content["schema"]["properties"].items():
            if field.get("type") == "file":  # what BentoML's client reads as a file; OpenAPI says it so:
                field["type"] = "string"
                content.get("encoding", {}).pop(name, None)
            if "default" in field and field["default"] is None and field.get("format") != "binary":
                field["nullable"] = True  # BentoML drops the null of `X | None = None`
        pairs = content["schema"]["properties"].get("pairs")
        if pairs is not None:
            pairs["oneOf"][0]["maxItems"] = json_pairs
        if path in EXAMPLES and set(EXAMPLES[path]) <= set(content["schema"]["properties"]):
            content["example"] = EXAMPLES[path]
    ok = ANSWERS.get(path) or {str(code): answer for code, answer in operation["responses"].items()}["200"]
    if path in ("/compare", "/compare_pair"):
        ok["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/Comparison"}
    operation["responses"] = {"200": ok, **{code: {"description": text, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for code, text in ERRORS.items()
        if code != "503" or path != "/info"}}
    return operation


def openapi_document(bentoml_document: dict, rules: dict[str, RouteRule], pages: dict[str, dict], *, version: str,
                     json_pairs: int) -> dict:
    """BentoML's document (``Service.openapi_spec.asdict()``), corrected; ``pages``: the mounted app's GET
    operations by path; ``json_pairs``: how many pairs a JSON batch may hold."""
    document = copy.deepcopy(bentoml_document)
    document["info"] = {"title": "digit_compare", "version": version,
                        "description": "Is the left handwritten digit greater than the right one? Ten Siamese CNNs "
                                       "stacked by LightGBM. Every error answers {\"error\": \"...\", "
                                       "\"detail\": ...}."}
    paths = document["paths"]
    for path, item in paths.items():
        if "post" in item and path in rules:
            _post(item["post"], path, rules[path], json_pairs)
    for path, operation in pages.items():
        paths.setdefault(path, {})["get"] = operation
    if "/info" in paths:  # the same answer as the GET of the mounted app
        paths["/info"]["post"]["responses"]["200"] = paths["/info"]["get"]["responses"]["200"]
    document["components"]["schemas"] = {name: schema for name, schema in document["components"]["schemas"].items()
                                         if name.endswith("__Input")} | _schemas()
    return document
