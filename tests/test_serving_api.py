"""The API written once (serving/api.py): the routes' signatures are the source of how a body is read, what the
front door lets through and what /docs.json says.

In process, no server: a toy signature behind ``read_once`` for the reading rules, and the real service as an ASGI
app (``Service.to_asgi``, the models loaded in this process) for "a field added once is read, let through and
documented" and "each body is parsed once".
"""

from __future__ import annotations

import gc
import importlib.util
import io
import json
import sys
import tracemalloc
import typing as t
from pathlib import Path

import numpy as np
import pytest
from _bentoml_sdk.io_models import IODescriptor
from PIL import Image
from starlette import formparsers
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.api import FORM_TYPES, SLACK, CourseFile, Picture, media_type, read_form, read_json, route_rule
from serving.inputs import ClientError
from serving.settings import JSON_MAX_BYTES, JSON_MAX_PAIRS, Settings

ROOT = Path(__file__).resolve().parents[1]


def _toy(file: CourseFile = None, note: str = "", count: int = 1, flag: bool = False) -> None:
    """A signature like compare_batch's: an optional file and text fields."""


def _picture(image: Picture, prior: str = "course") -> None:
    """A signature like compare_pair's: one required file."""


def _reader(func: t.Callable[..., None]) -> TestClient:
    """An app whose one route reads its body as the service's routes do, answering the values read (an upload's
    bytes as text) or the refusal."""
    spec = IODescriptor.from_input(func)

    async def read(request: Request) -> JSONResponse:
        kind = media_type(request.headers.get("content-type", ""))
        try:
            values = await (read_form if kind in FORM_TYPES else read_json)(request, spec)
        except ClientError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        uploads = {name: (await value.read()).decode() for name, value in values.items() if hasattr(value, "read")}
        return JSONResponse({**values, **uploads})

    return TestClient(Starlette(routes=[Route("/r", read, methods=["POST"])]))


# --------------------------------------------------------------------------- reading a body


def test_a_form_gets_the_signatures_values_texts_read_as_bentomls_client_sends_them():
    client = _reader(_toy)
    answer = client.post("/r", files={"file": ("a.npz", b"npz bytes")}, data={"count": "3", "flag": "true"}).json()
    assert answer == {"file": "npz bytes", "count": 3, "flag": True}
    assert client.post("/r", data={"note": "hello"}).json() == {"note": "hello"}  # not JSON: the text itself
    assert client.post("/r", data={"note": '"quoted"'}).json() == {"note": "quoted"}  # JSON, as BentoML's client sends


@pytest.mark.parametrize("files, data, message", [
    ({"file": ("a", b"x"), "other": ("o", b"\xff\xfe")}, {}, "/r: unexpected field(s) 'other'; this route takes "
                                                           "'file', 'note', 'count', 'flag'"),
    ([("file", ("a", b"x")), ("file", ("b", b"y"))], {}, "/r: field 'file' was sent 2 times; send one file"),
    ({}, {"file": "http://127.0.0.1:1/x.npz"}, "/r: field 'file' must be a file upload, got a text value"),
    ({}, {"note": ["a", "b"]}, "/r: field 'note' was sent 2 times"),
    ({"note": ("n.txt", b"a")}, {}, "/r: field 'note' must be a text value, got a file upload"),
])
def test_a_form_that_does_not_fit_the_signature_is_refused_saying_why(files, data, message):
    answer = _reader(_toy).post("/r", files=files, data=data)
    assert answer.status_code == 400 and answer.json() == {"error": message}


def test_a_required_file_must_be_there():
    answer = _reader(_picture).post("/r", data={"prior": "uniform"})
    assert answer.status_code == 400
    assert answer.json() == {"error": "/r: missing file field 'image' (send it as a file upload)"}


def test_a_multipart_body_the_parser_refuses_is_malformed():
    answer = _reader(_toy).post("/r", content=b"x", headers={"content-type": "multipart/form-data"})
    assert answer.status_code == 400 and answer.json()["error"].startswith("/r: malformed multipart body (")


def test_a_json_body_gets_the_signatures_values_and_an_empty_one_none():
    client = _reader(_toy)
    assert client.post("/r", json={"note": "n", "count": 2}).json() == {"note": "n", "count": 2}
    assert client.post("/r", content=b"", headers={"content-type": "application/json"}).json() == {}
    assert client.post("/r", content=json.dumps({"note": "é"}).encode("utf-16"),
                       headers={"content-type": "application/json"}).json() == {"note": "é"}


@pytest.mark.parametrize("body, message", [
    (b'{"note": "a', "body: not valid JSON ("),
    (b"[" * 100_000, "body: JSON nested too deeply"),
    (b'{"note": "\xff"}', "body: not valid JSON (not UTF-8 text: "),
    (b"[1, 2]", "body: must be a JSON object, got list"),
    (b'{"note": "a", "file": null}', "body: unknown key 'file'; this route takes 'note', 'count', 'flag'"),
])
def test_a_json_body_that_does_not_fit_the_signature_is_refused_saying_why(body, message):
    answer = _reader(_toy).post("/r", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"].startswith(message), answer.json()


# --------------------------------------------------------------------------- what the front door lets through


def test_the_front_doors_rule_follows_the_signature():
    settings = Settings(device="cpu", max_request_bytes=5_000_000)
    picture = route_rule(IODescriptor.from_input(_picture), settings)
    assert picture.methods == ("POST",)
    assert picture.limits == {"multipart/form-data": 20 * 1024 * 1024 + SLACK}  # a required file: multipart only
    batch = route_rule(IODescriptor.from_input(_toy), settings)
    assert batch.limits["multipart/form-data"] == 5_000_000 + SLACK  # CourseFile: the request limit
    assert batch.limits["application/json"] == min(JSON_MAX_BYTES, 5_000_000)  # the file is optional: JSON too

    def info() -> None:
        pass

    assert route_rule(IODescriptor.from_input(info), settings).limits == {
        "application/json": SLACK, "application/x-www-form-urlencoded": SLACK, "": SLACK}


# --------------------------------------------------------------------------- the real service, in process


def _pair_png() -> bytes:
    buffer = io.BytesIO()
    Image.open(ROOT / "samples" / "pair.png").save(buffer, "PNG")
    return buffer.getvalue()


def _service_module(name: str, source: str) -> t.Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    code = compile(source, str(ROOT / "service.py"), "exec")  # the copy lives beside service.py: same ROOT
    exec(code, module.__dict__)  # noqa: S102 - our own service.py, edited by this test
    return module


@pytest.fixture(scope="module")
def noted_service(monkeypatch_module: pytest.MonkeyPatch) -> t.Any:
    """A copy of service.py whose compare_pair takes one more text field, `note`, written in its signature only."""
    monkeypatch_module.setenv("DIGIT_COMPARE_DEVICE", "cpu")
    monkeypatch_module.setenv("DIGIT_COMPARE_LAYOUT", "in_process")
    source = (ROOT / "service.py").read_text()
    old = 'prior: PriorChoice = "course") -> Comparison:\n'
    assert source.count(old) == 1
    source = source.replace(old, 'prior: PriorChoice = "course", note: str = "") -> Comparison:\n')
    return _service_module("service_with_a_note", source)


@pytest.fixture(scope="module")
def served(noted_service: t.Any) -> t.Iterator[TestClient]:
    """The copy as BentoML serves it (its ASGI app, the models loaded here), once: BentoML registers its
    metrics once per process."""
    with TestClient(noted_service.DigitCompare.to_asgi()) as client:
        yield client


@pytest.fixture(scope="module")
def monkeypatch_module() -> t.Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_field_added_to_a_signature_is_documented_let_through_and_read(served):
    client = served
    form = client.get("/docs.json").json()["paths"]["/compare_pair"]["post"]["requestBody"]["content"]
    assert form["multipart/form-data"]["schema"]["properties"]["note"]["type"] == "string"
    answer = client.post("/compare_pair", files={"image": ("p.png", _pair_png())}, data={"note": "mine"})
    assert answer.status_code == 200, answer.text
    refused = client.post("/compare_pair", files={"image": ("p.png", _pair_png())}, data={"remark": "x"})
    assert refused.status_code == 400 and "'note'" in refused.json()["error"]  # named among the fields taken


def test_each_multipart_body_is_parsed_once(served, monkeypatch):
    parses = []
    parse = formparsers.MultiPartParser.parse

    async def counted(self: formparsers.MultiPartParser) -> t.Any:
        parses.append(self)
        return await parse(self)

    monkeypatch.setattr(formparsers.MultiPartParser, "parse", counted)
    client = served
    pair = client.post("/compare_pair", files={"image": ("p.png", _pair_png())}, data={"prior": "uniform"})
    assert pair.status_code == 200 and len(parses) == 1
    npz = io.BytesIO()
    np.savez(npz, x=np.asarray(Image.open(ROOT / "samples" / "pair.png").convert("L"))[None])
    batch = client.post("/compare_batch", files={"file": ("x.npz", npz.getvalue())})
    assert batch.status_code == 200 and batch.json()["n"] == 1 and len(parses) == 2


def test_a_refused_json_batch_keeps_nothing_of_its_body(served):
    """A JSON batch over the cap is parsed, then refused with a 413 naming the .npz form; afterwards none of it is
    alive (an error's traceback used to keep the body, its text and its lists: 120 MB for a 60 MiB body). Counted
    with tracemalloc, in this process: the server's resident size cannot tell (its allocator keeps what it frees)."""
    row = "[" + ",".join(["7"] * 56) + "]"
    pair = "[" + ",".join([row] * 28) + "]"
    body = ('{"pairs": [' + ",".join([pair] * (JSON_MAX_PAIRS + 1)) + "]}").encode()  # about 4.5 MB
    headers = {"content-type": "application/json"}
    assert served.post("/compare_batch", content=body, headers=headers).status_code == 413  # warm: lazy imports
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            refused = served.post("/compare_batch", content=body, headers=headers)
            assert refused.status_code == 413 and ".npz upload" in refused.json()["error"]
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < len(body) // 4, f"{kept / 2**20:.1f} MiB still allocated after three refused bodies"
