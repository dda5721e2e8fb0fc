"""The HTTP layer's pieces that only a real server exercised before (serving/inputs.py, serving/guard.py's
multipart checks, ensemble/priors.py's manifest entry), each on its own, in process, no server:
compare_batch's body reader on both its paths, the error mapping, inline decoding, the scorer's validator,
and the front door's refusals of missing, repeated, unexpected and wrongly typed multipart fields."""

from __future__ import annotations

import asyncio
import io
import logging
import typing as t

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ensemble.preprocess import ImageTooLargeError
from ensemble.priors import manifest_entry
from serving import inputs
from serving.guard import FrontDoor, RouteRule
from serving.inputs import ClientError, client_error, decode_inline, read_batch, validate_score_input


def _pairs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 56), dtype=np.uint8)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 0).save(buffer, "PNG")
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _request(app: t.Any, method: str, path: str, **kwargs: t.Any) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, path, **kwargs)
    return asyncio.run(send())


# --------------------------------------------------------------------------- small pieces

def test_client_error_maps_each_problem_to_its_status_and_the_one_shape():
    import json

    refused = client_error(ClientError("too many pairs", 413, detail={"limit": 3}))
    assert refused.status_code == 413 and json.loads(refused.body) == {"error": "too many pairs",
                                                                       "detail": {"limit": 3}}
    too_large = client_error(ImageTooLargeError("left: 30000000 pixels"))
    assert too_large.status_code == 413 and json.loads(too_large.body) == {"error": "left: 30000000 pixels"}
    other = client_error(ValueError("pairs: bad"))
    assert other.status_code == 400 and json.loads(other.body) == {"error": "pairs: bad"}


def test_small_pictures_are_decoded_inline_and_large_or_unreadable_ones_are_not():
    side = int(inputs.INLINE_DECODE_PIXELS ** 0.5)
    assert decode_inline(_png(28, 56)) and decode_inline(_png(side, side))
    assert not decode_inline(_png(side + 1, side))
    assert not decode_inline(b"not a picture")


def test_the_scorers_validator_passes_pairs_and_says_why_it_refuses():
    pairs = _pairs(2)
    np.testing.assert_array_equal(validate_score_input(pairs), pairs)
    with pytest.raises(ClientError) as direct:
        inputs.parse_pairs(np.zeros((2, 3)))
    with pytest.raises(ValueError) as validated:
        validate_score_input(np.zeros((2, 3)))
    assert not isinstance(validated.value, ClientError) and str(validated.value) == str(direct.value)


def test_the_uniform_priors_manifest_entry():
    entry = manifest_entry(np.array([2.0, 1.0, 1.0, 0, 0, 0, 0, 0, 0, 4.0]), "the pairing rule")
    assert entry == {"digit_frequencies": [0.25, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5],
                     "source": "the pairing rule",
                     "use": "the class frequencies the digit heads were trained under; the uniform prior divides "
                            "them out"}
    assert manifest_entry([1 / 3] * 3, "x")["digit_frequencies"] == [0.333333] * 3  # six decimals
    # normalised in float64 whatever it is given: float16's 1/10 would be written 0.099976
    assert manifest_entry(np.array([1, 2, 3, 4], np.float16), "x")["digit_frequencies"] == [0.1, 0.2, 0.3, 0.4]


@pytest.mark.parametrize("read, value, expected", [
    (inputs.env_int, None, 7), (inputs.env_int, "", 7), (inputs.env_int, "  ", 7), (inputs.env_int, "12", 12),
    (inputs.env_int, "1", 1), (inputs.env_float, None, 2.5), (inputs.env_float, " ", 2.5),
    (inputs.env_float, "0.25", 0.25), (inputs.env_float, "3", 3.0),
])
def test_settings_from_the_environment(monkeypatch, read, value, expected):
    if value is None:
        monkeypatch.delenv("DIGIT_COMPARE_TEST", raising=False)
    else:
        monkeypatch.setenv("DIGIT_COMPARE_TEST", value)
    default = 7 if read is inputs.env_int else 2.5
    got = read("DIGIT_COMPARE_TEST", default)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("read, value, message", [
    (inputs.env_int, "ten", "environment variable DIGIT_COMPARE_TEST must be an integer, got 'ten'"),
    (inputs.env_int, "2.5", "environment variable DIGIT_COMPARE_TEST must be an integer, got '2.5'"),
    (inputs.env_int, "0", "environment variable DIGIT_COMPARE_TEST must be positive, got 0"),
    (inputs.env_int, "-3", "environment variable DIGIT_COMPARE_TEST must be positive, got -3"),
    (inputs.env_float, "fast", "environment variable DIGIT_COMPARE_TEST must be a number, got 'fast'"),
    (inputs.env_float, "0", "environment variable DIGIT_COMPARE_TEST must be positive, got 0.0"),
    (inputs.env_float, "nan", "environment variable DIGIT_COMPARE_TEST must be positive, got nan"),
    (inputs.env_float, "-1e-9", "environment variable DIGIT_COMPARE_TEST must be positive, got -1e-09"),
])
def test_bad_settings_are_refused_by_name(monkeypatch, read, value, message):
    monkeypatch.setenv("DIGIT_COMPARE_TEST", value)
    with pytest.raises(ValueError) as refused:
        read("DIGIT_COMPARE_TEST", 1)
    assert str(refused.value) == message


@pytest.mark.parametrize("dtype, message", [
    (np.dtype("<U256"), None), (np.dtype("S256"), None), (np.dtype("<U1"), None),
    (np.dtype("<U257"), "ids: ids of up to 257 characters; the limit is 256"),
    (np.dtype("S257"), "ids: ids of up to 257 characters; the limit is 256"),
    (np.dtype("int64"), "ids must hold strings, got dtype int64"),
    (np.dtype("O"), "ids must hold strings, got dtype object"),
])
def test_ids_must_be_short_strings(dtype, message):
    if message is None:
        inputs._check_ids_dtype("ids", dtype)
        return
    with pytest.raises(ClientError) as refused:
        inputs._check_ids_dtype("ids", dtype)
    assert str(refused.value) == message


def test_a_single_pair_in_json_has_at_most_28_rows():
    row = "[" + ",".join(["0"] * 56) + "]"
    one = inputs.parse_batch_json(('{"pairs": [' + ",".join([row] * 28) + "]}").encode())
    assert one.data.x.shape == (1, 28, 56)
    with pytest.raises(ClientError) as refused:
        inputs.parse_batch_json(('{"pairs": [' + ",".join([row] * 29) + "]}").encode())
    assert str(refused.value) == "pairs: 'x' must have shape (N, 28, 56) or (28, 56); got more than 28 rows"
    with pytest.raises(ClientError, match="must have shape"):
        inputs.parse_batch_json(('{"pairs": [' + ",".join([row] * 27) + "]}").encode())


# --------------------------------------------------------------------------- compare_batch's body reader

class _Limiter:
    """Stands in for the per-worker CapacityLimiter: counts the bodies parsed through it."""

    def __init__(self) -> None:
        self.entered = 0

    async def __aenter__(self) -> None:
        self.entered += 1

    async def __aexit__(self, *exc: object) -> None:
        return None


def _batch_app(limiter: _Limiter, large_body_bytes: int = 1024 * 1024) -> Starlette:
    async def batch(request: Request) -> JSONResponse:
        try:
            result = await read_batch(request, limiter, large_body_bytes)  # type: ignore[arg-type]
        except ClientError as err:
            return JSONResponse({"refused": str(err), "status": err.status}, status_code=400)
        data = result.data
        return JSONResponse({"x": data.x.tolist(), "ids": None if data.ids is None else data.ids.tolist(),
                             "y": None if data.y is None else data.y.tolist(), "format": result.format,
                             "prior": result.prior})
    return Starlette(routes=[Route("/batch", batch, methods=["POST"])])


def test_a_json_body_is_read_whole_and_parsed():
    limiter = _Limiter()
    pairs = _pairs(2, seed=1)
    body = {"pairs": pairs.tolist(), "ids": ["a", "b"], "format": "csv", "prior": "uniform"}
    answer = _request(_batch_app(limiter), "POST", "/batch", json=body).json()
    assert answer == {"x": pairs.tolist(), "ids": ["a", "b"], "y": None, "format": "csv", "prior": "uniform"}
    assert limiter.entered == 0  # a small declared body is parsed at once
    defaults = _request(_batch_app(limiter), "POST", "/batch", json={"pairs": pairs[:1].tolist()}).json()
    assert (defaults["format"], defaults["prior"], defaults["ids"]) == ("json", "course", None)


def test_large_or_undeclared_bodies_are_parsed_one_at_a_time():
    limiter = _Limiter()
    pairs = _pairs(3, seed=2)
    declared = _request(_batch_app(limiter, large_body_bytes=100), "POST", "/batch", json={"pairs": pairs.tolist()})
    assert declared.json()["x"] == pairs.tolist() and limiter.entered == 1

    async def chunks() -> t.AsyncIterator[bytes]:
        yield b'{"pairs": '
        yield str(pairs.tolist()).encode()
        yield b"}"

    streamed = _request(_batch_app(limiter), "POST", "/batch", content=chunks(),
                        headers={"content-type": "application/json"})
    assert streamed.json()["x"] == pairs.tolist() and limiter.entered == 2


def test_a_refused_json_body_comes_back_as_a_client_error():
    answer = _request(_batch_app(_Limiter()), "POST", "/batch", json={"pairs": [[1, 2, 3]]})
    assert answer.json() == {"refused": "pairs: 'x' must have shape (N, 28, 56), got (1, 3)", "status": 400}
    bad_format = _request(_batch_app(_Limiter()), "POST", "/batch", json={"pairs": _pairs(1).tolist(), "format": "xml"})
    assert bad_format.json()["refused"] == "format: must be one of 'json', 'csv', got 'xml'"


def test_an_npz_upload_is_read_with_its_format_and_prior():
    pairs = _pairs(2, seed=3)
    upload = _npz(x=pairs, y=np.array([1, 0]), id=np.array(["p", "q"]))
    answer = _request(_batch_app(_Limiter()), "POST", "/batch", files={"file": ("b.npz", upload)},
                      data={"format": "csv", "prior": "uniform"}).json()
    assert answer == {"x": pairs.tolist(), "ids": ["p", "q"], "y": [1, 0], "format": "csv", "prior": "uniform"}
    defaults = _request(_batch_app(_Limiter()), "POST", "/batch", files={"file": ("b.npz", _npz(x=pairs))}).json()
    assert (defaults["format"], defaults["prior"], defaults["y"]) == ("json", "course", None)


def test_a_refused_npz_upload_comes_back_as_a_client_error():
    app = _batch_app(_Limiter())
    wrong = _request(app, "POST", "/batch", files={"file": ("b.npz", _npz(x=np.zeros((2, 3), np.uint8)))}).json()
    assert wrong["status"] == 400 and "must have shape (N, 28, 56)" in wrong["refused"]
    prior = _request(app, "POST", "/batch", files={"file": ("b.npz", _npz(x=_pairs(1)))}, data={"prior": "flat"})
    assert "prior: must be one of 'course', 'uniform', got 'flat'" == prior.json()["refused"]
    fmt = _request(app, "POST", "/batch", files={"file": ("b.npz", _npz(x=_pairs(1)))}, data={"format": "tsv"})
    assert fmt.json()["refused"] == "format: must be one of 'json', 'csv', got 'tsv'"


def test_a_refusal_from_the_parsing_thread_carries_no_traceback():
    holder = [bytearray(b'{"pairs": [[1]]}')]
    refused = inputs._parse_json_body(holder)
    assert isinstance(refused, ClientError) and refused.__traceback__ is None and refused.status == 400
    assert holder == []  # the body was handed over, not kept
    assert "must have shape" in str(refused)
    npz = inputs._read_npz_upload(io.BytesIO(b"not a zip"), "json", "course")
    assert isinstance(npz, ClientError) and npz.__traceback__ is None and npz.status == 400 and str(npz)
    ok = inputs._read_npz_upload(io.BytesIO(_npz(x=_pairs(1))), "csv", "uniform")
    assert (ok.format, ok.prior, len(ok.data.x)) == ("csv", "uniform", 1)


# --------------------------------------------------------------------------- the front door's multipart checks

RULE = RouteRule(("POST",), ("multipart/form-data",), file_fields=("left", "right"),
                 text_fields=("include_inputs", "prior"), max_bytes=1024 * 1024)


def _door() -> FrontDoor:
    async def fields(request: Request) -> JSONResponse:
        form = await request.form()
        return JSONResponse(sorted(form.keys()))
    app = Starlette(routes=[Route("/compare", fields, methods=["POST"])])
    return FrontDoor(app, rules={"/compare": RULE}, openapi=dict, body_idle_timeout=5.0, body_timeout=10.0)


GOOD = {"left": ("l.png", b"L"), "right": ("r.png", b"R")}


@pytest.mark.parametrize("files, data, message", [
    ({"left": ("l.png", b"L")}, {}, "/compare: missing file field 'right' (send it as a file upload)"),
    ([("left", ("l.png", b"L")), ("left", ("m.png", b"M")), ("right", ("r.png", b"R"))], {},
     "/compare: field 'left' was sent 2 times; send one file"),
    ({"left": ("l.png", b"L")}, {"right": "not a file"},
     "/compare: field 'right' must be a file upload, got a text value"),
    (GOOD, {"colour": "red", "size": "9"},
     "/compare: unexpected field(s) 'colour', 'size'; this route takes 'left', 'right', 'include_inputs', 'prior'"),
    ({**GOOD, "prior": ("p.txt", b"uniform")}, {}, "/compare: field 'prior' must be a text value, got a file upload"),
    (GOOD, {"prior": ["uniform", "course"]}, "/compare: field 'prior' was sent 2 times"),
])
def test_the_door_refuses_bad_multipart_fields(files, data, message):
    response = _request(_door(), "POST", "/compare", files=files, data=data)
    assert response.status_code == 400 and response.json() == {"error": message}


def test_the_door_lets_good_multipart_fields_through():
    response = _request(_door(), "POST", "/compare", files=GOOD, data={"prior": "uniform", "include_inputs": "true"})
    assert response.status_code == 200 and response.json() == ["include_inputs", "left", "prior", "right"]
    assert _request(_door(), "POST", "/compare", files=GOOD).json() == ["left", "right"]


def test_a_malformed_multipart_body_is_a_400():
    nameless = b"--xyz\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--xyz--\r\n"
    response = _request(_door(), "POST", "/compare", content=nameless,
                        headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 400 and response.json() == {"error": (
        '/compare: malformed multipart body (MultiPartException: The Content-Disposition header field "name" '
        'must be provided.)')}
    no_boundary = _request(_door(), "POST", "/compare", content=b"abc",
                           headers={"content-type": "multipart/form-data"})
    assert no_boundary.status_code == 400 and no_boundary.json() == {
        "error": "/compare: malformed multipart body (MultiPartException: Missing boundary in multipart.)"}


def test_too_many_files_is_a_malformed_body():
    files = [(f"f{i}", (f"{i}.png", b"x")) for i in range(9)]
    response = _request(_door(), "POST", "/compare", files=files)
    assert response.status_code == 400 and "malformed multipart body" in response.json()["error"]


# --------------------------------------------------------------------------- compare_batch's .npz upload, exactly

def _zip(**members: bytes | np.ndarray) -> bytes:
    """A zip archive of .npy members (arrays saved as numpy does), or of raw bytes."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                member = io.BytesIO()
                np.save(member, value)
                value = member.getvalue()
            archive.writestr(f"{name}.npy", value)
    return buffer.getvalue()


def _refusal(upload: bytes) -> ClientError:
    with pytest.raises(ClientError) as refused:
        inputs.read_npz_upload(io.BytesIO(upload))
    return refused.value


def test_what_is_not_an_npz_archive_is_named():
    single = io.BytesIO()
    np.save(single, _pairs(1))
    assert str(_refusal(single.getvalue())) == "file: a single .npy array, not an .npz archive with keys x, y/id"
    assert str(_refusal(b"")) == "file: empty upload (0 bytes); send the .npz file's content"
    text = str(_refusal(b"hello world, not a zip"))
    assert text.startswith("file: not an .npz archive (a zip of .npy arrays); it starts with b'hello wo' (")
    assert _refusal(b"").status == 400


def test_an_archive_without_x_names_what_it_holds():
    assert str(_refusal(_zip(a=np.zeros(2), y=np.zeros(2)))) == "file: missing key 'x' (found keys: ['a', 'y'])"
    assert str(_refusal(_zip())) == "file: missing key 'x' (found keys: none)"


def test_the_unpacked_size_is_bounded_before_anything_is_read(monkeypatch):
    upload = _zip(x=_pairs(2))
    size = 128 + 2 * 28 * 56  # the .npy header and the pixels
    monkeypatch.setattr(inputs, "MAX_NPZ_UNPACKED_BYTES", size)
    assert len(inputs.read_npz_upload(io.BytesIO(upload)).x) == 2  # exactly at the limit
    monkeypatch.setattr(inputs, "MAX_NPZ_UNPACKED_BYTES", size - 1)
    refused = _refusal(upload)
    assert refused.status == 413
    assert str(refused) == f"file: the .npz unpacks to {size} bytes, more than the limit of {size - 1}"


def test_the_number_of_pairs_is_bounded_from_the_header(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_PAIRS", 2)
    assert len(inputs.read_npz_upload(io.BytesIO(_zip(x=_pairs(2)))).x) == 2
    refused = _refusal(_zip(x=_pairs(3)))
    assert refused.status == 413 and str(refused) == "file: 3 pairs is more than the limit of 2 per request"


@pytest.mark.parametrize("x, message", [
    (_pairs(2).astype(np.float32) / 255, None),
    (_pairs(2).astype(np.float64), None),
    (_pairs(2)[0], None),  # one (28, 56) pair
    (_pairs(2).astype(np.int16), "file: 'x' must be uint8 (or float in [0, 1] / [0, 255]), got dtype int16"),
    (_pairs(2).astype(np.complex64), "file: 'x' must be uint8 (or float in [0, 1] / [0, 255]), got dtype complex64"),
    (np.zeros((2, 28, 28), np.uint8), "file: 'x' must have shape (N, 28, 56), got (2, 28, 28)"),
    (np.zeros((28, 57), np.uint8), "file: 'x' must have shape (N, 28, 56), got (28, 57)"),
])
def test_the_pairs_member_is_judged_by_its_header(x, message):
    if message is None:
        assert inputs.read_npz_upload(io.BytesIO(_zip(x=x))).x.dtype == np.uint8
    else:
        assert str(_refusal(_zip(x=x))) == message


@pytest.mark.parametrize("key, value, message", [
    ("y", np.array([1, 0], np.int16), None),
    ("y", np.array([1.0, 0.0]), None),
    ("y", np.array([True, False]), None),
    ("digits", np.array([[3, 1], [0, 2]]), None),
    ("digits", np.array([[3, 1, 0], [0, 2, 1]]), "file: key 'digits' must have shape (2, 2) to match 'x', got (2, 3)"),
    ("y", np.array([1, 0, 1]), "file: key 'y' must have shape (2,) to match 'x', got (3,)"),
    ("id", np.array([1, 2]), "file: key 'id' must hold strings, got dtype int64"),
    ("y", np.array([1 + 0j, 0j]), "file: key 'y' must hold integers, got dtype complex128"),
    ("y", np.array([1, 0], np.longdouble), "file: key 'y' must hold integers, got dtype float128"),
    ("y", np.array(["1", "0"]), "file: key 'y' must hold integers, got dtype <U1"),
])
def test_the_other_members_must_match_the_pairs(key, value, message):
    upload = _zip(x=_pairs(2), **{key: value})
    if message is None:
        inputs.read_npz_upload(io.BytesIO(upload))
    else:
        assert str(_refusal(upload)) == message


def test_an_archive_of_one_pair_has_one_row_of_labels_ids_and_digits() -> None:
    pair = _pairs(1, seed=4)[0]  # (28, 56): N is 1, not the 28 rows
    data = inputs.read_npz_upload(io.BytesIO(_zip(x=pair, y=np.array([1]), id=np.array(["only"]),
                                                  digits=np.array([[7, 2]]))))
    np.testing.assert_array_equal(data.x, pair[None])
    assert data.y.tolist() == [1] and data.ids.tolist() == ["only"] and data.digits.tolist() == [[7, 2]]


def test_the_archives_own_rules_name_the_file() -> None:
    upload = _zip(x=_pairs(2), id=np.array(["", "b"]))
    assert str(_refusal(upload)) == "file: 'id' contains empty strings"
    labels = _zip(x=_pairs(2), y=np.array([0, 1]), digits=np.array([[1, 2], [3, 4]]))
    assert str(_refusal(labels)) == "file: 'digits' disagree with 'y' (label must be left > right)"


def test_a_truncated_member_says_what_its_header_declares() -> None:
    member = io.BytesIO()
    np.save(member, _pairs(2))
    cut = member.getvalue()[:-10]  # uint8 (2, 28, 56) declares 2 * 28 * 56 = 3136 bytes; 3126 are left
    assert str(_refusal(_zip(x=cut))) == ("file: key 'x' is truncated: its header declares uint8 of shape "
                                          "(2, 28, 56) (3136 bytes), the member holds 3126")


def _stored(npy: bytes) -> bytearray:
    """A zip holding ``npy`` uncompressed as x.npy, as bytes to tamper with."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", npy)
    return bytearray(buffer.getvalue())


def test_a_member_whose_bytes_were_changed_is_corrupt() -> None:
    member = io.BytesIO()
    np.save(member, _pairs(1))
    npy = member.getvalue()
    upload = _stored(npy)
    upload[upload.index(npy) + len(npy) - 1] ^= 0xFF  # the last pixel: the header still reads, the CRC fails
    assert str(_refusal(bytes(upload))) == "file: key 'x' is corrupt (Bad CRC-32 for file 'x.npy')"


def test_an_encrypted_member_could_not_be_read() -> None:
    member = io.BytesIO()
    np.save(member, _pairs(1))
    upload = _stored(member.getvalue())
    upload[upload.index(b"PK\x01\x02") + 8] |= 1  # the central directory's "encrypted" flag bit
    text = str(_refusal(bytes(upload)))
    assert text.startswith("file: key 'x' could not be read (RuntimeError: File ")
    assert text.endswith(" is encrypted, password required for extraction)")


# --------------------------------------------------------------------------- compare_batch's JSON body, exactly

def _pair_text(value: int | float = 0, rows: int = 28, columns: int = 56) -> str:
    """One pair as JSON text, every pixel ``value``."""
    return "[" + ",".join(["[" + ",".join([str(value)] * columns) + "]"] * rows) + "]"


def _json_refusal(body: str) -> ClientError:
    with pytest.raises(ClientError) as refused:
        inputs.parse_batch_json(body.encode())
    return refused.value


SEND_EITHER = "send either JSON {\"pairs\": [...]} or a multipart .npz upload as field 'file'"


@pytest.mark.parametrize("body", ["{}", "{ }", "{} ", " {\n}\r\n\t"])
def test_an_empty_object_is_asked_for_its_pairs(body: str) -> None:
    assert str(_json_refusal(body)) == SEND_EITHER


@pytest.mark.parametrize("body, message", [
    ("{}x", "body: not valid JSON (extra data after the object at character 2)"),
    ("{ } 1", "body: not valid JSON (extra data after the object at character 4)"),
    ("[1, 2]", "body: must be a JSON object with key 'pairs', got list"),
    ('"pairs"', "body: must be a JSON object with key 'pairs', got str"),
    ("7", "body: must be a JSON object with key 'pairs', got int"),
    ('{"x": 1, "pairs": []}', "body: unknown key 'x'; this route takes 'pairs', 'ids', 'format', 'prior'"),
    ('{"pairs": ' + "[" * 50_000, "body: JSON nested too deeply"),
    ('{"format" 1}', "body: not valid JSON (expected ':' at character 10, found '1')"),
    ('{"format": "csv" x}', "body: not valid JSON (expected ',' or '}' at character 17, found 'x')"),
    ('{"format": "csv"', "body: not valid JSON (expected ',' or '}' at character 16, found the end of the body)"),
    ('{"pairs": [[1, 2] x', "body: not valid JSON (expected ',' or ']' at character 18, found 'x')"),
    ('{"pairs": [[1, 2]', "body: not valid JSON (expected ',' or ']' at character 17, found the end of the body)"),
])
def test_a_malformed_body_says_where_and_what(body: str, message: str) -> None:
    assert str(_json_refusal(body)) == message


def test_after_a_whole_pair_a_comma_or_bracket_is_expected() -> None:
    head = '{"pairs": [' + _pair_text()
    assert str(_json_refusal(head + " x]}")) == (
        f"body: not valid JSON (expected ',' or ']' at character {len(head) + 1}, found 'x')")
    assert str(_json_refusal(head)) == (
        f"body: not valid JSON (expected ',' or ']' at character {len(head)}, found the end of the body)")


@pytest.mark.parametrize("pairs, message", [
    ("5", "pairs: 'x' must have shape (N, 28, 56), got ()"),
    ("null", "pairs: missing"),
    ('"abc"', "pairs: must hold pixel values (numbers), got strings"),
    ("true", "pairs: must hold pixel values (numbers), got booleans"),
    ("[]", "pairs: no pairs given (N = 0)"),
    ("[ \n ]", "pairs: no pairs given (N = 0)"),
])
def test_pairs_that_are_not_a_list_of_pairs_are_named(pairs: str, message: str) -> None:
    assert str(_json_refusal('{"pairs": ' + pairs + "}")) == message


@pytest.mark.parametrize("pairs, message", [
    ([_pair_text(columns=55)], "pairs: 'x' must have shape (N, 28, 56); pair 0 has shape (28, 55)"),
    ([_pair_text(), _pair_text(), _pair_text(rows=27)],
     "pairs: 'x' must have shape (N, 28, 56); pair 2 has shape (27, 56)"),
    ([_pair_text(), _pair_text(256)], "pairs: integer pixel values must lie in [0, 255], got values in [256, 256] "
                                      "(pair 1)"),
    ([_pair_text(-1)], "pairs: integer pixel values must lie in [0, 255], got values in [-1, -1] (pair 0)"),
    ([_pair_text(), _pair_text(300.5)], "pairs: float 'x' must lie in [0, 1] or [0, 255], got values in [0, 300.5]"),
    ([_pair_text(0.5), _pair_text("NaN")], "pairs: 'x' contains NaN or infinite values"),
])
def test_each_bad_pair_is_named_by_its_index(pairs: list[str], message: str) -> None:
    assert str(_json_refusal('{"pairs": [' + ",".join(pairs) + "]}")) == message


def test_integer_pixels_of_zero_and_one_stay_zero_and_one() -> None:
    """Integers are pixel values as they are: only floats all in [0, 1] are scaled by 255."""
    batch = inputs.parse_batch_json(('{"pairs": [' + _pair_text(1) + "," + _pair_text(0) + "]}").encode())
    assert batch.data.x.dtype == np.uint8 and batch.data.x[0].min() == 1 and batch.data.x[0].max() == 1
    assert batch.data.x[1].max() == 0
    as_float = inputs.parse_batch_json(('{"pairs": [' + _pair_text(1.0) + "]}").encode())
    assert as_float.data.x.min() == 255


def test_stacked_float_pairs_come_out_as_pixels() -> None:
    arrays = [np.full((28, 56), 0.5), np.ones((28, 56))]  # all in [0, 1]: x 255, rounded (127.5 -> 128)
    x = inputs._stack_pairs(arrays)
    assert x.dtype == np.uint8 and x.shape == (2, 28, 56)
    assert set(x[0].ravel().tolist()) == {128} and set(x[1].ravel().tolist()) == {255}
    assert arrays == []  # emptied once stacked
    ints = [np.full((28, 56), 1, np.uint8)]
    assert inputs._stack_pairs(ints).max() == 1


def test_a_float_pair_is_used_without_a_copy() -> None:
    pair = np.full((28, 56), 0.25)
    assert np.shares_memory(inputs._pair_array(pair, 0), pair)
    as_float64 = inputs._pair_array(pair.astype(np.float32), 0)
    assert as_float64.dtype == np.float64 and as_float64[0, 0] == 0.25


def test_a_pair_of_another_kind_of_number_names_its_dtype() -> None:
    with pytest.raises(ClientError) as refused:
        inputs._pair_array(np.zeros((28, 56), np.complex64), 4)
    assert str(refused.value) == "pairs: must hold pixel values (numbers), got complex64 (pair 4)"


@pytest.mark.parametrize("ids, message", [
    ('["a", "b"]', "pairs: 'id' must have shape (1,) to match 'x', got (2,)"),
    ("[]", "pairs: 'id' must have shape (1,) to match 'x', got (0,)"),
    ("[3]", "ids: must be a list of strings"),
    ('"a"', "ids: must be a list of strings"),
    ('["' + "i" * 257 + '"]', "ids: an id is longer than 256 characters"),
])
def test_the_ids_are_checked_against_the_pairs(ids: str, message: str) -> None:
    assert str(_json_refusal('{"pairs": [' + _pair_text() + '], "ids": ' + ids + "}")) == message


def test_ids_of_up_to_256_characters_are_taken() -> None:
    longest = "i" * 256
    batch = inputs.parse_batch_json(('{"pairs": [' + _pair_text() + '], "ids": ["' + longest + '"]}').encode())
    assert batch.data.ids.tolist() == [longest]
    unique = _json_refusal('{"pairs": [' + _pair_text() + "," + _pair_text() + '], "ids": ["a", "a"]}')
    assert str(unique) == "pairs: ids must be unique; 1 repeat, e.g. a"


def test_no_ids_are_an_empty_array_of_strings() -> None:
    empty = inputs._ids_array([])
    assert empty.shape == (0,) and empty.dtype.kind == "U"


# --------------------------------------------------------------------------- parse_pairs, exactly

@pytest.mark.parametrize("value, source, message", [
    (None, "left", "left: missing"),
    (np.zeros((1, 28, 56), np.complex128), "pairs", "pairs: must hold pixel values (numbers), got complex128"),
    ([["a", "b"]], "pairs", "pairs: must hold pixel values (numbers), got strings"),
    ([[True]], "pairs", "pairs: must hold pixel values (numbers), got booleans"),
    ([], "pairs", "pairs: no pairs given (N = 0)"),
    (np.full((1, 28, 56), 300, np.int16), "x",
     "x: integer pixel values must lie in [0, 255], got values in [300, 300]"),
    (np.full((1, 28, 56), -2, np.int64), "x",
     "x: integer pixel values must lie in [0, 255], got values in [-2, -2]"),
])
def test_parse_pairs_says_what_is_wrong(value: t.Any, source: str, message: str) -> None:
    with pytest.raises(ClientError) as refused:
        inputs.parse_pairs(value, source)
    assert str(refused.value) == message and refused.value.status == 400


def test_a_ragged_array_is_not_rectangular() -> None:
    with pytest.raises(ClientError) as refused:
        inputs.parse_pairs([[1, 2], [3]])
    assert str(refused.value).startswith("pairs: not a rectangular (N, 28, 56) array of numbers (")
    assert "inhomogeneous" in str(refused.value)  # numpy's own reason, kept


def test_integer_arrays_are_pixel_values_as_they_are() -> None:
    ones = inputs.parse_pairs(np.ones((2, 28, 56), np.int64))
    assert ones.dtype == np.uint8 and ones.min() == 1 and ones.max() == 1


def test_parse_pairs_counts_pairs_not_rows_against_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "MAX_PAIRS", 2)
    assert inputs.parse_pairs(_pairs(1)[0]).shape == (1, 28, 56)  # one pair: 28 rows, not 28 pairs
    assert inputs.parse_pairs(_pairs(2)).shape == (2, 28, 56)  # exactly at the limit
    with pytest.raises(ClientError) as refused:
        inputs.parse_pairs(_pairs(3))
    assert refused.value.status == 413
    assert str(refused.value) == "pairs: 3 pairs is more than the limit of 2 per request"


# --------------------------------------------------------------------------- refusals: the log line, the thread

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_each_refusal_is_logged_as_one_line_with_its_status(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = _Records()
    monkeypatch.setattr(inputs.logger, "disabled", False)
    level = inputs.logger.level
    inputs.logger.addHandler(handler)
    inputs.logger.setLevel(logging.INFO)
    try:
        client_error(ClientError("pairs: too many", 413))
        client_error(ValueError("pairs: bad"))
    finally:
        inputs.logger.removeHandler(handler)
        inputs.logger.setLevel(level)
    assert [(r.levelno, r.getMessage()) for r in handler.records] == [
        (logging.INFO, "refused request: pairs: too many (413)"), (logging.INFO, "refused request: pairs: bad (400)")]
    assert all(type(r.args[0]) is str for r in handler.records)  # the text: a record must not keep the error


def test_a_refusal_from_the_parsing_thread_keeps_its_status_and_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: t.Any) -> t.NoReturn:
        raise ClientError("pairs: too many", 413, detail={"limit": 2})

    monkeypatch.setattr(inputs, "parse_batch_text", refuse)
    monkeypatch.setattr(inputs, "read_npz_upload", refuse)
    json_body = inputs._parse_json_body([bytearray(b"{}")])
    for refused in (json_body, inputs._read_npz_upload(io.BytesIO(), "json", "course")):
        assert isinstance(refused, ClientError) and refused.__traceback__ is None
        assert (str(refused), refused.status, refused.detail) == ("pairs: too many", 413, {"limit": 2})


# --------------------------------------------------------------------------- read_batch, exactly

def test_a_body_of_exactly_the_large_size_is_parsed_at_once() -> None:
    body = ('{"pairs": [' + _pair_text(3) + "]}").encode()
    limiter = _Limiter()
    headers = {"content-type": "application/json"}
    at_limit = _request(_batch_app(limiter, large_body_bytes=len(body)), "POST", "/batch", content=body,
                        headers=headers)
    assert at_limit.json()["x"] == [[[3] * 56] * 28] and limiter.entered == 0
    _request(_batch_app(limiter, large_body_bytes=len(body) - 1), "POST", "/batch", content=body, headers=headers)
    assert limiter.entered == 1


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON;charset=UTF-8",
                                          " application/json "])
def test_a_json_content_type_with_parameters_is_json(content_type: str) -> None:
    body = ('{"pairs": [' + _pair_text(2) + '], "format": "csv"}').encode()
    answer = _request(_batch_app(_Limiter()), "POST", "/batch", content=body, headers={"content-type": content_type})
    assert answer.status_code == 200 and answer.json()["format"] == "csv" and answer.json()["x"] == [[[2] * 56] * 28]


def test_an_upload_with_more_than_one_file_or_three_fields_is_refused() -> None:
    app = _batch_app(_Limiter())
    upload = _npz(x=_pairs(1))
    two_files = _request(app, "POST", "/batch", files=[("file", ("a.npz", upload)), ("more", ("b.npz", upload))])
    assert two_files.status_code == 400 and two_files.text == "Too many files. Maximum number of files is 1."
    fields = {"format": "csv", "prior": "course", "a": "1", "b": "2"}
    four_fields = _request(app, "POST", "/batch", files={"file": ("a.npz", upload)}, data=fields)
    assert four_fields.status_code == 400 and four_fields.text == "Too many fields. Maximum number of fields is 3."
    three = _request(app, "POST", "/batch", files={"file": ("a.npz", upload)},
                     data={"format": "csv", "a": "1", "b": "2"})
    assert three.status_code == 200 and three.json()["format"] == "csv"
