"""Unit tests of the front door (serving/guard.py) on a tiny Starlette app, no server: every path is
guarded, the ones without a rule of their own by the default rule, and refusals have the one error shape."""

from __future__ import annotations

import asyncio
import typing as t

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.guard import DEFAULT_RULE, FrontDoor, RouteRule


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


RULES = {"/ruled": RouteRule(("POST",), ("application/octet-stream",), max_bytes=1024 * 1024)}


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
    body = b" " * DEFAULT_RULE.max_bytes
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
    tight = _client({"/unruled": RouteRule(("POST",), ("application/json",), max_bytes=10)})
    assert tight.post("/unruled", json={"a": 1}).status_code == 200
    over = tight.post("/unruled", json={"a": "0123456789"})
    assert over.status_code == 413 and _is_error_shape(over.json())
    put = tight.put("/unruled", json={})
    assert put.status_code == 405 and put.headers["allow"] == "POST" and _is_error_shape(put.json())
