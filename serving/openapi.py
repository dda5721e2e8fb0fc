"""The service's OpenAPI document, at ``/docs.json``: BentoML's own, generated from the routes' signatures, corrected
where it is wrong for this service.

BentoML 1.4.40 describes every ``@bentoml.api`` from its input spec and answer model. What it gets wrong here: a
route that also takes JSON is described as multipart only; the error answers are its own shapes (400, 404, 500)
rather than the one error shape and the service's 400/408/413/415/503; an API answering a ``Response`` (the CSV
batch) has no answer schema; the routes of the mounted app (the web page, ``GET /info``) are missing; and its
title and description are BentoML's. ``openapi_document`` fixes exactly those, and adds examples: the committed
held-out course pair written as plain-text PGM (``P2``), a format Pillow reads and that fits in a JSON string, so a
fuzzer's example phase (``tests/test_service.py`` runs schemathesis against a real server) reaches a 200 on every
route.
"""

from __future__ import annotations

import copy
import typing as t
from pathlib import Path

import numpy as np
from PIL import Image

from ensemble.contract import PIXEL_DTYPE, PIXEL_MAX, split_pair
from serving.answers import BatchResult, Comparison
from serving.guard import RouteRule

# --------------------------------------------------------------------------- examples


def plain_pgm(pixels: np.ndarray) -> str:
    """A grayscale uint8 image as plain-text PGM (P2): readable by Pillow, and valid JSON string content."""
    height, width = pixels.shape
    rows = "\n".join(" ".join(str(int(v)) for v in row) for row in pixels)
    return f"P2\n{width} {height}\n{PIXEL_MAX}\n{rows}\n"


def examples(samples_dir: Path) -> dict[str, dict]:
    """Request examples by route (a fuzzer's first requests) from the committed held-out course pair
    (``samples/pair.png``, shipped in the Bento): the pair, its halves, and its pixels; none without it."""
    path = samples_dir / "pair.png"
    if not path.is_file():
        return {}
    with Image.open(path) as image:
        pair = np.asarray(image.convert("L"), dtype=PIXEL_DTYPE)
    left, right = split_pair(pair)
    return {"/compare": {"left": plain_pgm(left), "right": plain_pgm(right)},
            "/compare_pair": {"image": plain_pgm(pair)},
            "/compare_batch": {"pairs": [pair.tolist()], "ids": ["PAIR_0"]}}


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
#: Answers BentoML cannot see (an API that answers a ``Response``).
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


def _post(operation: dict, path: str, rule: RouteRule, json_pairs: int, example: dict | None) -> dict:
    """One API's operation: its request bodies (JSON beside multipart where the route takes it), its answers."""
    body = operation.get("requestBody", {}).get("content", {})
    # A route that takes files needs its body (BentoML marks none as required); one without (/info) takes none.
    operation["requestBody"]["required"] = "multipart/form-data" in rule.limits
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
        if example and set(example) <= set(content["schema"]["properties"]):
            content["example"] = example
    ok = ANSWERS.get(path) or {str(code): answer for code, answer in operation["responses"].items()}["200"]
    operation["responses"] = {"200": ok, **{code: {"description": text, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for code, text in ERRORS.items()
        if code != "503" or path != "/info"}}
    return operation


def openapi_document(bentoml_document: dict, rules: dict[str, RouteRule], pages: dict[str, dict], *, version: str,
                     json_pairs: int, samples_dir: Path) -> dict:
    """BentoML's document (``Service.openapi_spec.asdict()``), corrected; ``pages``: the mounted app's GET
    operations by path; ``json_pairs``: how many pairs a JSON batch may hold; ``samples_dir``: the examples'."""
    document = copy.deepcopy(bentoml_document)
    document["info"] = {"title": "digit_compare", "version": version,
                        "description": "Is the left handwritten digit greater than the right one? Ten Siamese CNNs "
                                       "stacked by LightGBM. Every error answers {\"error\": \"...\", "
                                       "\"detail\": ...}."}
    paths, example = document["paths"], examples(samples_dir)
    for path, item in paths.items():
        if "post" in item and path in rules:
            _post(item["post"], path, rules[path], json_pairs, example.get(path))
    for path, operation in pages.items():
        paths.setdefault(path, {})["get"] = operation
    if "/info" in paths:  # the same answer as the GET of the mounted app
        paths["/info"]["post"]["responses"]["200"] = paths["/info"]["get"]["responses"]["200"]
    ours = _schemas()
    document["components"]["schemas"] = {name: schema for name, schema in document["components"]["schemas"].items()
                                         if name.endswith("__Input")} | ours
    return _answer_refs(document, ours)


def _answer_refs(value: t.Any, ours: dict[str, t.Any]) -> t.Any:
    """BentoML writes an answer model's schema inline, titled ``<Model>IODescriptor``: each becomes a reference to
    our component of that model."""
    if isinstance(value, dict):
        title = value.get("title")
        if isinstance(title, str) and title.endswith("IODescriptor") and title.removesuffix("IODescriptor") in ours:
            return {"$ref": f"#/components/schemas/{title.removesuffix('IODescriptor')}"}
        return {key: _answer_refs(item, ours) for key, item in value.items()}
    if isinstance(value, list):
        return [_answer_refs(item, ours) for item in value]
    return value
