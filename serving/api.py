"""The HTTP API, written once: the types of the routes' parameters, and what follows from the routes' signatures.

``service.py``'s typed ``@bentoml.api`` signatures are the source. From each API's input spec (BentoML's pydantic
model of the signature) come:

- ``read_once``: the spec's own ``from_http_request`` (``IOMixin.from_http_request``, which BentoML's server calls
  with each request; overridden in a subclass, no code of BentoML's replaced). It parses the body once and checks
  it against the signature before BentoML's validation sees it: each file parameter is one file upload, each other
  parameter at most one text value, nothing else; a JSON body is an object of the non-file parameters. BentoML's
  own multipart reading would turn a non-UTF-8 extra part into a 500 and a text value where a file belongs into a
  download of that URL.
- ``route_rules``: what the front door (``serving.guard``) lets through to each route: its methods, content types
  and body sizes;
- the OpenAPI document (``serving.openapi``) and the README's API table (``tools.doc_examples``).

A parameter added to a signature is read, checked, let through and documented with no other edit.
"""

from __future__ import annotations

import functools
import json
import typing as t
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from pydantic import Field, StringConstraints, WithJsonSchema
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ensemble.contract import DIGIT_SIZE, PAIR_SHAPE, PAIR_SHAPE_TEXT, PAIRS_SHAPE_TEXT, PIXEL_MAX
from ensemble.preprocess import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from ensemble.priors import DESCRIPTIONS, Prior
from serving.guard import RouteRule
from serving.inputs import MAX_ID_CHARS, ClientError
from serving.settings import JSON_MAX_BYTES, JSON_MAX_PAIRS, Settings


@dataclass(frozen=True)
class Upload:
    """A file parameter's size limit (``None``: the service's ``max_request_bytes``)."""

    max_bytes: int | None = None


# --------------------------------------------------------------------------- the parameters' types

# A picture is read into memory, not written to a file per request as BentoML's `Path` would (0.3-0.4 ms of the API
# worker's CPU per answer, docs/speed.md): its JSON schema says "file", so BentoML's client uploads it as one.
Picture = t.Annotated[bytes, Upload(MAX_IMAGE_BYTES), WithJsonSchema({"type": "file", "format": "binary"}), Field(
    description=f"a picture in any format Pillow reads; at most {MAX_IMAGE_BYTES} bytes and {MAX_IMAGE_PIXELS} pixels")]
CourseFile = t.Annotated[Path, Upload(), Field(
    description=f"a course .npz: key x {PAIRS_SHAPE_TEXT} uint8 (or float), optionally id and y")]
IncludeInputs = t.Annotated[bool, Field(strict=True, description=(
    f"true: the answer's 'inputs' holds the preprocessed {DIGIT_SIZE}x{DIGIT_SIZE} halves as base64 PNG"))]
PriorChoice = t.Annotated[Prior, Field(description="the prior over digit pairs: " + "; ".join(
    f"{name}, {text}" for name, text in DESCRIPTIONS.items()))]
Format = t.Annotated[t.Literal["json", "csv"], Field(description="csv: the course submission file id,label")]
_PIXEL = {"type": "number", "minimum": 0, "maximum": PIXEL_MAX,
          "description": f"integers 0-{PIXEL_MAX}, or floats (all in [0, 1]: scaled by {PIXEL_MAX}; else [0, "
                         f"{PIXEL_MAX}])"}
_PAIR = {"type": "array", "minItems": PAIR_SHAPE[0], "maxItems": PAIR_SHAPE[0],
         "items": {"type": "array", "minItems": PAIR_SHAPE[1], "maxItems": PAIR_SHAPE[1], "items": _PIXEL}}
# Any: the pixels are checked by numpy (serving.inputs.parse_pairs), with a message for every way they can be wrong.
Pairs = t.Annotated[t.Any, WithJsonSchema({
    "oneOf": [{"type": "array", "minItems": 1, "maxItems": JSON_MAX_PAIRS, "items": _PAIR}, _PAIR],
    "description": f"{PAIRS_SHAPE_TEXT} course pairs (left digit in columns 0-{DIGIT_SIZE - 1}), N <= {JSON_MAX_PAIRS} "
                   f"(more as an .npz upload), or one {PAIR_SHAPE_TEXT} pair"})]
Ids = t.Annotated[list[t.Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]] | None, Field(
    description="one unique id per pair (optional; row numbers stand in)")]


# --------------------------------------------------------------------------- one parse per body


def media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
#: JSON above this size is parsed in a thread, so the event loop keeps answering meanwhile, and one at a time per
#: worker: a 16 MiB body of integer pixels is about 70 MB of Python lists at its peak (``bench/json_cap``).
THREAD_PARSE_BYTES = 256 * 1024
_large_parses: list[anyio.CapacityLimiter] = []  # made in the worker's event loop, on first use


async def parse_large(parse: t.Callable[[t.Any], t.Any], text: t.Any) -> t.Any:
    """``parse(text)`` in a thread, one large text at a time in this worker."""
    if not _large_parses:
        _large_parses.append(anyio.CapacityLimiter(1))
    return await anyio.to_thread.run_sync(parse, text, limiter=_large_parses[0])


@functools.cache  # per input spec: read with every request
def file_fields(spec: type) -> tuple[str, ...]:
    """The file parameters: BentoML's (``Path``) and ours (``Upload`` in their metadata, read as bytes)."""
    return tuple(name for name, field in spec.model_fields.items() if name in spec.multipart_fields
                 or any(isinstance(m, Upload) for m in field.metadata))


@functools.cache
def text_fields(spec: type) -> tuple[str, ...]:
    files = file_fields(spec)
    return tuple(name for name in spec.model_fields if name not in files)


@functools.cache
def required_files(spec: type) -> tuple[str, ...]:
    return tuple(name for name in file_fields(spec) if spec.model_fields[name].is_required())


def read_once(spec: type) -> type:
    """``spec`` whose ``from_http_request`` reads the body once and checks it against the signature."""

    async def from_http_request(cls: type, request: Request, serde: t.Any) -> t.Any:
        kind = media_type(request.headers.get("content-type", "application/json"))
        data = await read_form(request, cls) if kind in FORM_TYPES else await read_json(request, cls)
        return cls.model_validate(data)

    media = "multipart/form-data" if file_fields(spec) else None  # BentoML counts only its `Path` as a file
    return type(spec.__name__, (spec,), {"from_http_request": classmethod(from_http_request),
                                         "__module__": spec.__module__, "media_type": media})


async def read_form(request: Request, spec: type) -> dict[str, t.Any]:
    """A multipart or urlencoded body -> the parameters' values (a file as its bytes, or as the upload for a
    ``Path`` parameter; texts JSON-decoded where they are JSON, as BentoML's own client sends them), or a
    ClientError naming what is wrong."""
    path, files, texts = request.url.path, file_fields(spec), text_fields(spec)
    try:
        form = await request.form(max_files=len(files) + 8, max_fields=len(texts) + 8, max_part_size=JSON_MAX_BYTES)
    except HTTPException as err:  # Starlette's 400 for a multipart body its parser refuses
        raise ClientError(f"{path}: malformed multipart body ({err.detail})") from None
    except Exception as err:  # noqa: BLE001 - any parser failure on these bytes means a malformed body
        raise ClientError(f"{path}: malformed multipart body ({type(err).__name__}: {err})") from None
    # BentoML closes the request, and with it this form and its spooled files, once the answer is sent.
    check_form(path, form, files, texts, required=required_files(spec))
    data: dict[str, t.Any] = {}
    for name in files:
        if name in form:  # an upload: its bytes for a `bytes` parameter, the upload itself for BentoML's `Path`
            upload = t.cast(UploadFile, form[name])
            data[name] = upload if name in spec.multipart_fields else await upload.read()
    for name in texts:
        if name in form:
            value = t.cast(str, form[name])
            data[name] = await parse_large(_json_or_text, value) if len(value) > THREAD_PARSE_BYTES \
                else _json_or_text(value)
    return data


def _json_or_text(value: str) -> t.Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def check_form(path: str, form: FormData, files: t.Sequence[str], texts: t.Sequence[str],
               required: t.Sequence[str]) -> None:
    """Refuse unexpected fields, missing or repeated files, text where a file belongs, and repeated or file-valued
    text fields (ClientError, 400)."""
    known = [*files, *texts]
    unexpected = sorted({name for name in form.keys() if name not in known})
    if unexpected:
        raise ClientError(f"{path}: unexpected field(s) {', '.join(map(repr, unexpected))}; this route takes "
                          f"{', '.join(map(repr, known))}")
    for name in known:
        values = form.getlist(name)
        if name in required and not values:
            raise ClientError(f"{path}: missing file field {name!r} (send it as a file upload)")
        if len(values) > 1:
            once = "; send one file" if name in files else ""
            raise ClientError(f"{path}: field {name!r} was sent {len(values)} times{once}")
        if values and (name in files) != isinstance(values[0], UploadFile):
            wanted, got = ("a file upload", "a text value") if name in files else ("a text value", "a file upload")
            raise ClientError(f"{path}: field {name!r} must be {wanted}, got {got}")


async def read_json(request: Request, spec: type) -> dict[str, t.Any]:
    """A JSON body -> an object of the non-file parameters (empty: ``{}``), or a ClientError."""
    body = await request.body()
    if not body:
        return {}
    value = await parse_large(_parse_json, body) if len(body) > THREAD_PARSE_BYTES else _parse_json(body)
    if not isinstance(value, dict):
        raise ClientError(f"body: must be a JSON object, got {type(value).__name__}")
    keys = text_fields(spec)
    for key in value:
        if key not in keys:
            raise ClientError(f"body: unknown key {key!r}; this route takes {', '.join(map(repr, keys))}")
    return value


def _parse_json(body: bytes) -> t.Any:
    try:
        return json.loads(body)  # UTF-8, or UTF-16/32 with their marks
    except RecursionError:  # '[[[[...' nested thousands deep
        raise ClientError("body: JSON nested too deeply") from None
    except (UnicodeDecodeError, LookupError) as err:
        raise ClientError(f"body: not valid JSON (not UTF-8 text: {err})") from None
    except ValueError as err:
        raise ClientError(f"body: not valid JSON ({err})") from None


# --------------------------------------------------------------------------- what the front door lets through

#: Multipart boundaries, part headers and text fields around the files; the body of a route without files.
SLACK = 64 * 1024


def upload_limit(spec: type, name: str, settings: Settings) -> int:
    limit = next((m for m in spec.model_fields[name].metadata if isinstance(m, Upload)), Upload())
    return limit.max_bytes or settings.max_request_bytes


def route_rule(spec: type, settings: Settings) -> RouteRule:
    """POST with the content types and sizes the signature implies: multipart when it has file parameters
    (their limits plus SLACK); JSON (and the urlencoded form BentoML's client sends without files) when every file
    parameter is optional, at most JSON_MAX_BYTES (or max_request_bytes, when smaller)."""
    files = file_fields(spec)
    limits: dict[str, int] = {}
    if not any(spec.model_fields[name].is_required() for name in files):
        limits["application/json"] = min(JSON_MAX_BYTES, settings.max_request_bytes) if files else SLACK
    if files:
        limits["multipart/form-data"] = sum(upload_limit(spec, name, settings) for name in files) + SLACK
    if "application/json" in limits:
        limits.update({"application/x-www-form-urlencoded": limits["application/json"], "": limits["application/json"]})
    hint = f"send larger inputs as a multipart upload (file field {files[0]!r})" if files else ""
    return RouteRule(("POST",), limits, too_large_hint=hint)


def route_rules(apis: t.Iterable[t.Any], get_paths: t.Iterable[str], settings: Settings) -> dict[str, RouteRule]:
    """Every documented path's rule: each API's (``route_rule``), and GET on ``get_paths``."""
    rules = {api.route: route_rule(api.input_spec, settings) for api in apis}
    for path in get_paths:
        rule = rules.get(path, RouteRule(()))
        rules[path] = RouteRule(("GET", *rule.methods), rule.limits, rule.too_large_hint)
    return rules
