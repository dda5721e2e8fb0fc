"""Unit tests of the front door (serving/guard.py) on a tiny Starlette app, no server: every path is
guarded, the ones without a rule of their own by the default rule, and refusals have the one error shape."""

from __future__ import annotations

import asyncio
import json
import logging
import typing as t
from http import HTTPStatus

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.guard import DEFAULT_RULE, REPLAY_CHUNK, SPOOL_IN_MEMORY, FrontDoor, RouteRule, normalize_error


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


class _Client:
    """Requests straight into the ASGI app (httpx's ASGI transport), no server."""

    def __init__(self, app: t.Any) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: t.Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://door") as client:
                return await client.request(method, path, **kwargs)
        return asyncio.run(send())

    def get(self, path: str, **kwargs: t.Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: t.Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: t.Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)


def _client(rules: dict[str, RouteRule]) -> _Client:
    """A tiny app with two POST routes, /ruled and /unruled, behind a FrontDoor with ``rules``."""
    app = Starlette(routes=[Route("/ruled", _echo, methods=["POST"]), Route("/unruled", _echo, methods=["POST"])])
    return _Client(FrontDoor(app, rules=rules, openapi=lambda: {"openapi": "3.0.3"}, body_idle_timeout=5.0,
                             body_timeout=10.0))


def _is_error_shape(body: object) -> bool:
    return (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
            and set(body) <= {"error", "detail"})


RULES = {"/ruled": RouteRule(("POST",), dict.fromkeys(("application/octet-stream",), 1024 * 1024))}


@pytest.mark.parametrize("kwargs, status, text", [
    ({"content": b"[" + b"0," * 40_000 + b"0]", "headers": {"content-type": "application/json"}}, 413,
     "more than the limit of 65536 bytes"),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "'text/plain' is not accepted"),
    ({"content": b"\x80\x04K\x01.", "headers": {"content-type": "application/vnd.bentoml+pickle"}}, 415,
     "is not accepted"),
])
def test_a_path_without_a_rule_is_guarded_by_the_default_rule(kwargs, status, text):
    """A route with no entry in the rules used to get no size or content-type limit at all."""
    response = _client(RULES).post("/unruled", **kwargs)
    assert response.status_code == status, response.text
    assert _is_error_shape(response.json()) and text in response.json()["error"], response.json()


def test_the_default_rule_lets_small_json_form_and_empty_bodies_through():
    client = _client(RULES)
    json_body = {"content": b'{"a": 1}', "headers": {"content-type": "application/json"}}
    assert client.post("/unruled", **json_body).json() == {"received": 8}
    assert client.post("/unruled", data={"a": "1"}).json() == {"received": 3}  # a=1
    assert client.post("/unruled").json() == {"received": 0}
    body = b" " * DEFAULT_RULE.limits["application/json"]
    assert client.post("/unruled", content=body, headers={"content-type": "application/json"}).status_code == 200


def test_the_default_rule_leaves_methods_and_unknown_paths_to_the_app():
    client = _client(RULES)
    missing = client.post("/no/such/path", json={})
    assert missing.status_code == 404 and _is_error_shape(missing.json())
    wrong = client.get("/unruled")
    assert wrong.status_code == 405 and _is_error_shape(wrong.json())


def test_an_explicit_rule_loosens_or_tightens_the_default():
    client = _client(RULES)
    big = b"\0" * (256 * 1024)  # over the default limit, under the route's own
    octets = {"content-type": "application/octet-stream"}
    assert client.post("/ruled", content=big, headers=octets).json() == {"received": len(big)}
    assert client.post("/unruled", content=big, headers=octets).status_code == 415
    refused = client.post("/ruled", json={"a": 1})  # JSON is the default's, not this route's
    assert refused.status_code == 415 and "send application/octet-stream" in refused.json()["error"]
    tight = _client({"/unruled": RouteRule(("POST",), dict.fromkeys(("application/json",), 10))})
    assert tight.post("/unruled", json={"a": 1}).status_code == 200
    over = tight.post("/unruled", json={"a": "0123456789"})
    assert over.status_code == 413 and _is_error_shape(over.json())
    put = tight.put("/unruled", json={})
    assert put.status_code == 405 and put.headers["allow"] == "POST" and _is_error_shape(put.json())


# --------------------------------------------------------------------------- the raw ASGI messages
# The tests above go through httpx, which hides what the door does on the wire: the body the application gets
# and where it ends, how much of a refused body is read, which headers an answer carries. These drive the door
# with scripted messages and record every one sent back. What they leave alone on purpose: the order of headers,
# the size of the replayed pieces and how often receive is called (no caller relies on them).

IDLE, TOTAL = 0.05, 60.0  # the door's body timeouts here: a stalled client is noticed quickly, the whole-body
# deadline only where a test sets its own
HANG = 60.0  # a door that has not answered by then hangs: the test fails instead of waiting forever


class _Wire:
    """One connection: the client's messages in order, then a disconnect (or, ``stall=True``, nothing ever
    again); everything the door sends back. ``trickle`` sends ``(bytes, pause)`` forever instead. ``taken``
    counts the body bytes the door has read from the client."""

    def __init__(self, messages: list[dict[str, t.Any]] = (), *, stall: bool = False,
                 trickle: tuple[bytes, float] | None = None) -> None:
        self.pending, self.stall, self.trickle = list(messages), stall, trickle
        self.taken = 0
        self.sent: list[dict[str, t.Any]] = []

    async def receive(self) -> dict[str, t.Any]:
        if self.pending:
            message = self.pending.pop(0)
            self.taken += len(message.get("body", b""))
            return message
        if self.trickle is not None:
            await asyncio.sleep(self.trickle[1])
            return {"type": "http.request", "body": self.trickle[0], "more_body": True}
        if self.stall:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, t.Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    def error(self) -> str:
        body = json.loads(self.body)
        assert set(body) <= {"error", "detail"}, body
        return body["error"]


class _App:
    """Reads the request body the way Starlette does (message by message until ``more_body`` is false) and
    records those messages; then, with ``listen``, waits for one more message (a streaming answer watching for
    the disconnect); then sends ``answer`` (default: 200 with the byte count)."""

    def __init__(self, answer: list[dict[str, t.Any]] | None = None, *, read: bool = True,
                 listen: bool = False) -> None:
        self.answer, self.read, self.listen = answer, read, listen
        self.calls: list[tuple[t.Any, t.Any, t.Any]] = []
        self.received: list[dict[str, t.Any]] = []

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.received if m["type"] == "http.request")

    async def __call__(self, scope: t.Any, receive: t.Any, send: t.Any) -> None:
        self.calls.append((scope, receive, send))
        if scope["type"] != "http":
            return
        while self.read:
            message = await receive()
            self.received.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if self.listen:
            self.received.append(await receive())
        for message in self.answer or [
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]},
                {"type": "http.response.body", "body": str(len(self.body)).encode()}]:
            await send(message)


def _scope(method: str, path: str, headers: dict[str, str] | None = None, type_: str = "http") -> dict[str, t.Any]:
    return {"type": type_, "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "scheme": "http", "server": ("door", 80), "client": ("client", 1234),
            "http_version": "1.1", "asgi": {"version": "3.0"},
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]}


def _door(app: t.Any, rules: dict[str, RouteRule] | None = None, *, idle: float = IDLE, total: float = TOTAL,
          openapi: t.Callable[[], dict] = lambda: {"openapi": "3.0.3"}) -> FrontDoor:
    return FrontDoor(app, rules=rules or {}, openapi=openapi, body_idle_timeout=idle, body_timeout=total)


def _call(door: FrontDoor, scope: dict[str, t.Any], wire: _Wire, within: float = HANG) -> None:
    """One request through the door; a door that hangs fails the test after ``within`` seconds (a bound on a
    hang, not on speed)."""
    asyncio.run(asyncio.wait_for(door(scope, wire.receive, wire.send), timeout=within))


def _chunks(*parts: bytes, last_has_more_body_key: bool = True) -> list[dict[str, t.Any]]:
    messages = [{"type": "http.request", "body": part, "more_body": True} for part in parts]
    if last_has_more_body_key:
        messages[-1]["more_body"] = False
    else:
        del messages[-1]["more_body"]  # ASGI: a missing more_body means False
    return messages


OCTETS = {"content-type": "application/octet-stream"}
POST_OCTETS = RouteRule(("POST",), dict.fromkeys(("application/octet-stream",), 1000))


def test_non_http_scopes_reach_the_app_untouched():
    app = _App()
    wire, scope = _Wire(), _scope("GET", "/", type_="lifespan")
    _call(_door(app), scope, wire)
    assert app.calls == [(scope, wire.receive, wire.send)]


def test_an_undocumented_method_gets_405_naming_the_route_and_its_methods_and_is_logged(caplog):
    app, wire = _App(), _Wire()
    with caplog.at_level(logging.INFO, logger="bentoml.digit_compare"):
        _call(_door(app, {"/r": RouteRule(("POST", "PUT"))}), _scope("PATCH", "/r"), wire)
    assert not app.calls
    assert wire.status == 405 and (b"allow", b"POST, PUT") in wire.headers
    assert wire.error() == "/r answers POST and PUT, not PATCH"
    assert [r.getMessage() for r in caplog.records] == ["refused PATCH /r: /r answers POST and PUT, not PATCH (405)"]


@pytest.mark.parametrize("methods, head_allowed", [(("GET",), True), (("POST",), False), (("GET", "POST"), True)])
def test_head_comes_with_get_and_only_with_get(methods, head_allowed):
    app, wire = _App(), _Wire()
    _call(_door(app, {"/r": RouteRule(methods)}), _scope("HEAD", "/r"), wire)
    assert bool(app.calls) == head_allowed
    assert wire.status == (200 if head_allowed else 405)


def test_an_answer_to_head_passes_unchanged_even_an_error():
    """A HEAD answer has no body to rewrite; its headers describe the GET's body and must stay as they are."""
    answer = [{"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"9")]},
              {"type": "http.response.body", "body": b""}]
    wire = _Wire()
    _call(_door(_App(answer, read=False)), _scope("HEAD", "/missing"), wire)
    assert wire.sent == answer


def test_docs_json_is_the_services_own_description():
    built = []

    def openapi() -> dict:
        built.append(1)
        return {"openapi": "3.0.3", "paths": {"/compare": {}}}

    app = _App()
    door = _door(app, openapi=openapi)
    for method in ("GET", "HEAD", "GET"):
        wire = _Wire()
        _call(door, _scope(method, "/docs.json"), wire)
        assert wire.status == 200 and (b"content-type", b"application/json") in wire.headers
        assert json.loads(wire.body) == {"openapi": "3.0.3", "paths": {"/compare": {}}}  # HEAD too: the app strips it
    assert built and not app.calls
    wire = _Wire(_chunks(b"{}"))
    _call(door, _scope("POST", "/docs.json", {"content-type": "application/json"}), wire)
    assert len(app.calls) == 1 and wire.body == b"2"  # any other method is the application's (its 405)


def test_a_request_without_a_checked_body_passes_with_its_own_receive():
    """GET and a rule without content types: the door reads nothing, the application reads the body itself, and
    no size limit applies (such a route takes no body, or limits its own)."""
    app = _App()
    wire = _Wire(_chunks(b"q"))
    _call(_door(app, {"/r": RouteRule((), {"application/json": 0})}), _scope("GET", "/r"), wire)
    assert wire.status == 200 and app.body == b"q" and app.calls[0][1] == wire.receive
    app = _App()
    wire = _Wire(_chunks(b"x" * 3000))
    _call(_door(app, {"/r": RouteRule(("POST",))}), _scope("POST", "/r", OCTETS), wire)
    assert wire.status == 200 and app.body == b"x" * 3000


def test_the_body_is_replayed_in_replay_chunks_then_the_real_receive_answers():
    """However the client split it, the application gets the body it was sent, ``more_body`` false on the last
    piece only; a body one byte past a replay piece must not lose that byte. Messages without ``body`` or without
    ``more_body`` (both optional in ASGI) count as empty and as the end."""
    body = bytes(range(256)) * (REPLAY_CHUNK // 256) + b"!"
    client = [{"type": "http.request", "body": body[:1000], "more_body": True},
              {"type": "http.request", "more_body": True},  # no body key: empty
              {"type": "http.request", "body": body[1000:200_000], "more_body": True},
              {"type": "http.request", "body": body[200_000:]}]  # no more_body key: the end
    app = _App(listen=True)
    wire = _Wire(client)
    _call(_door(app, {"/r": RouteRule(("POST",), dict.fromkeys(("application/octet-stream",), 1 << 20))}),
          _scope("POST", "/r", OCTETS), wire)
    assert wire.status == 200 and app.body == body
    *pieces, end = app.received
    assert [m["more_body"] for m in pieces] == [True] * (len(pieces) - 1) + [False]  # one end, at the end
    assert end == {"type": "http.disconnect"}  # after the body, the connection's own receive


def test_a_body_past_the_memory_spool_is_replayed_from_its_file_intact():
    body = np.random.default_rng(5).integers(0, 256, 2 * SPOOL_IN_MEMORY + 5, dtype=np.uint8).tobytes()
    pieces = [body[i:i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]
    app = _App()
    wire = _Wire(_chunks(*pieces))
    _call(_door(app, {"/r": RouteRule(("POST",), dict.fromkeys(("application/octet-stream",), 4 << 20))}),
          _scope("POST", "/r", OCTETS), wire)
    assert wire.status == 200 and app.body == body
    assert [m["more_body"] for m in app.received] == [True] * (len(app.received) - 1) + [False]
    # read back from the file a bounded piece at a time, not whole: a large body never sits in memory at once
    assert max(len(m["body"]) for m in app.received) <= REPLAY_CHUNK < len(body)


@pytest.mark.parametrize("media_types, content_type, message", [
    (("application/json", ""), "text/plain; charset=utf-8",
     "/r: content type 'text/plain' is not accepted; send application/json"),
    (("application/json", "multipart/form-data"), "",
     "/r: content type '(none)' is not accepted; send application/json or multipart/form-data"),
    (("",), "application/json", "/r: content type 'application/json' is not accepted; send no body"),
])
def test_an_unaccepted_content_type_gets_415_saying_what_to_send(media_types, content_type, message):
    app = _App()
    wire = _Wire(_chunks(b"{}"))
    headers = {"content-type": content_type} if content_type else {}
    rule = RouteRule(("POST",), dict.fromkeys(media_types, 100))
    _call(_door(app, {"/r": rule}), _scope("POST", "/r", headers), wire)
    assert not app.calls and wire.status == 415 and wire.error() == message


def test_a_declared_oversize_body_is_refused_after_draining_at_most_twice_the_limit():
    """Declared 5,000 bytes against a limit of 1,000: the door reads up to 2,000 (so that a client still sending
    sees the answer, not a reset), then answers 413 naming the declared size, and closes the connection."""
    app = _App()
    wire = _Wire(_chunks(*[b"x" * 500] * 10))
    _call(_door(app, {"/r": POST_OCTETS}), _scope("POST", "/r", {**OCTETS, "content-length": "5000"}), wire)
    assert not app.calls and wire.status == 413 and (b"connection", b"close") in wire.headers
    assert wire.error() == "request body of 5000 bytes is more than the limit of 1000 bytes"
    assert 2000 <= wire.taken <= 2000 + 500  # twice the limit, then at most the message that passed it


def test_draining_stops_at_the_end_of_the_body_and_on_a_stalled_client():
    # declares 5,000, sends 1,500, then nothing: a door that waits for more after the body's end would hang
    lying = _Wire(_chunks(*[b"x" * 500] * 3, last_has_more_body_key=False), stall=True)
    _call(_door(_App(), {"/r": POST_OCTETS}, idle=HANG), _scope("POST", "/r", {**OCTETS, "content-length": "5000"}),
          lying, within=10.0)
    assert lying.status == 413 and lying.taken == 1500
    stalled = _Wire([{"type": "http.request", "body": b"x" * 500, "more_body": True}], stall=True)
    _call(_door(_App(), {"/r": POST_OCTETS}), _scope("POST", "/r", {**OCTETS, "content-length": "5000"}), stalled)
    assert stalled.status == 413
    nothing = _Wire(_chunks(b"x" * 10))  # a route that takes no body at all reads none of it
    _call(_door(_App(), {"/r": RouteRule(("POST",), dict.fromkeys(("application/octet-stream",), 0))}),
          _scope("POST", "/r", {**OCTETS, "content-length": "10"}), nothing)
    assert nothing.status == 413 and nothing.taken == 0


def test_a_streamed_body_is_refused_once_its_count_passes_the_limit():
    app = _App()
    wire = _Wire(_chunks(b"x" * 600, b"x" * 600, b"x" * 600))
    _call(_door(app, {"/r": POST_OCTETS}), _scope("POST", "/r", OCTETS), wire)
    assert not app.calls and wire.status == 413 and (b"connection", b"close") in wire.headers
    assert wire.error() == "request body of 1200 bytes is more than the limit of 1000 bytes"
    assert wire.taken == 1200 and wire.pending  # refused as soon as the count passed the limit, the rest unread


def test_a_client_that_stops_sending_gets_408_after_the_idle_timeout():
    app = _App()
    wire = _Wire([{"type": "http.request", "body": b"x" * 100, "more_body": True}], stall=True)
    _call(_door(app, {"/r": POST_OCTETS}, idle=IDLE, total=TOTAL), _scope("POST", "/r", OCTETS), wire)
    assert not app.calls and wire.status == 408 and (b"connection", b"close") in wire.headers
    assert wire.error() == "request body stalled: no data for 0.05 s (100 bytes received)"


def test_a_client_that_trickles_gets_408_at_the_whole_body_deadline():
    app = _App()
    wire = _Wire(trickle=(b"x", 0.01))
    rule = RouteRule(("POST",), dict.fromkeys(("application/octet-stream",), 1 << 20))
    _call(_door(app, {"/r": rule}, idle=HANG, total=0.15), _scope("POST", "/r", OCTETS), wire)
    assert not app.calls and wire.status == 408 and (b"connection", b"close") in wire.headers
    assert wire.error() == "request body not complete within 0.15 s"


def test_a_client_that_disconnects_mid_body_gets_nothing_and_the_app_is_not_called():
    app = _App()
    wire = _Wire([{"type": "http.request", "body": b"x" * 10, "more_body": True}])  # then: disconnect
    _call(_door(app, {"/r": POST_OCTETS}), _scope("POST", "/r", OCTETS), wire)
    assert not app.calls and wire.sent == []


def _shaped(answer: list[dict[str, t.Any]], method: str = "GET", path: str = "/x") -> _Wire:
    wire = _Wire()
    _call(_door(_App(answer, read=False), {path: RouteRule(())}), _scope(method, path), wire)
    return wire


def test_an_error_answer_is_rewritten_whole_into_the_one_shape_keeping_its_other_headers():
    wire = _shaped([
        {"type": "http.response.start", "status": 400,
         "headers": [(b"content-type", b"text/plain"), (b"Content-Length", b"9"), (b"x-request-id", b"7")]},
        {"type": "http.response.body", "body": b"bad ", "more_body": True},
        {"type": "http.response.body", "more_body": True},  # no body key: empty
        {"type": "http.response.body", "body": b"input"}])
    assert wire.status == 400 and json.loads(wire.body) == {"error": "bad input"}
    # in any order, the names in lower case as ASGI requires of the headers an application sends
    assert sorted(wire.headers) == sorted([(b"x-request-id", b"7"), (b"content-type", b"application/json"),
                                           (b"content-length", str(len(wire.body)).encode())])
    assert wire.sent[-1].get("more_body", False) is False  # the answer ends


def test_a_404_without_a_body_names_the_missing_route_and_where_the_api_is():
    wire = _shaped([{"type": "http.response.start", "status": 404, "headers": []},
                    {"type": "http.response.body", "body": b""}], method="DELETE", path="/nowhere")
    assert wire.status == 404 and wire.error() == "no route DELETE /nowhere; the API is described at /docs.json"


def test_an_error_message_keeps_its_non_ascii_characters_as_utf8():
    wire = _shaped([{"type": "http.response.start", "status": 422, "headers": [(b"content-type", b"application/json")]},
                    {"type": "http.response.body", "body": json.dumps({"error": "café"}).encode()}])
    assert "café".encode() in wire.body and wire.error() == "café"


def test_a_successful_answer_passes_message_for_message():
    answer = [{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]},
              {"type": "http.response.body", "body": b"a", "more_body": True},
              {"type": "http.response.body", "body": b"b"}]
    assert _shaped(answer).sent == answer


def test_a_watched_route_is_answered_as_an_unwatched_one_and_its_refusals_counted_once():
    """With a refusal counter (serving.model_metrics), a watched route gets exactly what it would without one: the
    app's scope, the body it was sent, and its answer message for message. Each refused request counts once, with
    its reason; answers, and routes not watched, count nothing."""
    from prometheus_client import CollectorRegistry

    from serving.model_metrics import Instruments, RefusalCounter

    registry = CollectorRegistry()
    instruments = Instruments(registry)

    def door(app: _App) -> FrontDoor:
        return FrontDoor(app, rules={"/r": POST_OCTETS}, openapi=dict, body_idle_timeout=IDLE, body_timeout=TOTAL,
                         refusals=RefusalCounter(["/r"], lambda: instruments))

    def refused(route: str, reason: str) -> float:
        return registry.get_sample_value("digit_compare_refused_total", {"route": route, "reason": reason}) or 0.0

    app, wire = _App(), _Wire(_chunks(b"abc", b"de"))
    _call(door(app), _scope("POST", "/r", OCTETS), wire)
    assert app.body == b"abcde" and app.calls[0][0]["path"] == "/r"
    assert wire.sent == [{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]},
                         {"type": "http.response.body", "body": b"5"}]
    answer = [{"type": "http.response.start", "status": 400,
               "headers": [(b"content-type", b"application/json")]},
              {"type": "http.response.body", "body": b'{"error": "no"}'}]
    _call(door(_App(answer)), _scope("POST", "/r", OCTETS), _Wire(_chunks(b"x")))
    _call(door(_App()), _scope("POST", "/r", {"content-type": "text/plain"}), _Wire(_chunks(b"x")))
    _call(door(_App()), _scope("POST", "/elsewhere", {"content-type": "text/plain"}), _Wire(_chunks(b"x")))
    assert (refused("/r", "invalid_request"), refused("/r", "content_type")) == (1, 1)
    assert refused("/elsewhere", "content_type") == 0


@pytest.mark.parametrize("raw, message", [
    (b'{"error": "1 validation error", "detail": [{"loc": ["body", "left"], "msg": "field required"}, '
     b'{"loc": [], "msg": "bad value"}]}', "body.left: field required; body: bad value"),
    (b'{"error": "kept", "detail": []}', "kept"),
    (b'{"error": "kept", "detail": [{"no": "msg"}]}', "kept"),
    (b'[{"error": "from a one-element list"}]', "from a one-element list"),
    (b'{"detail": "starlette style"}', "starlette style"),
])
def test_normalize_error_reads_each_json_error_shape(raw, message):
    assert normalize_error(400, "application/json", raw, "POST", "/x")["error"] == message


def test_normalize_error_takes_plain_text_as_the_message_replacing_bad_bytes():
    assert normalize_error(500, "text/plain", b" boom \xff\n", "GET", "/x") == {"error": "boom \ufffd"}
    assert normalize_error(502, "text/plain", b"", "GET", "/x") == {"error": HTTPStatus(502).phrase}  # no body


def test_a_too_large_body_gets_the_routes_hint_unless_it_is_multipart():
    """A route may say where a larger body goes (compare_batch: the .npz upload); a multipart body is that
    upload already, so its 413 has no hint."""
    rule = RouteRule(("POST",), {"application/json": 100, "multipart/form-data": 100}, too_large_hint="send a file")
    json_wire = _Wire(_chunks(b"[" + b"0," * 100 + b"0]"))
    _call(_door(_App(), {"/r": rule}), _scope("POST", "/r", {"content-type": "application/json"}), json_wire)
    assert json_wire.status == 413 and json_wire.error().endswith("; send a file")
    form = "multipart/form-data; boundary=x"
    form_wire = _Wire(_chunks(b"x" * 300))
    _call(_door(_App(), {"/r": rule}), _scope("POST", "/r", {"content-type": form, "content-length": "300"}), form_wire)
    assert form_wire.status == 413 and "send a file" not in form_wire.error()
