"""The front door's size limit on streamed bodies (serving/guard.py), for every route rule the service has.

Every other size test sends a Content-Length, which the door checks before reading a byte; a chunked body
without one is counted as it arrives, and only that count stops it. Here each content type of each rule the
service's front door has (``serving.api.route_rules``, from the routes' signatures) and of the default rule (every
path without its own) gets a body one chunk past its limit, streamed in pieces with no Content-Length, and must
answer 413 in the one error shape before the application sees anything.
"""

from __future__ import annotations

import asyncio
import typing as t

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from serving.guard import DEFAULT_RULE, FrontDoor, RouteRule

CHUNK = 16 * 1024


def _service_rules() -> dict[str, RouteRule]:
    import service  # the real rules, as the served app gets them (imports bentoml; no server starts)

    return next(options["rules"] for door, options in service.DigitCompare.middlewares if door is FrontDoor)


class _App:
    """Any path, any method: answers how many bytes it read. Counts its calls, so a test sees whether the
    door let a request through."""

    def __init__(self) -> None:
        self.calls = 0
        self.app = Starlette()
        self.app.add_route("/{path:path}", self._echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])

    async def _echo(self, request: Request) -> JSONResponse:
        self.calls += 1
        return JSONResponse({"received": len(await request.body())})


async def _stream(total: int) -> t.AsyncIterator[bytes]:
    """``total`` bytes of JSON-ish filler in CHUNK pieces; httpx sends an iterator chunked, without a length."""
    sent = 0
    while sent < total:
        piece = min(CHUNK, total - sent)
        sent += piece
        yield b" " * piece


def _post_streamed(rules: dict[str, RouteRule], path: str, total: int, content_type: str,
                   method: str = "POST") -> tuple[httpx.Response, int, httpx.Request]:
    app = _App()
    door = FrontDoor(app.app, rules=rules, openapi=lambda: {}, body_idle_timeout=5.0, body_timeout=30.0)

    async def send() -> tuple[httpx.Response, httpx.Request]:
        transport = httpx.ASGITransport(app=door)
        async with httpx.AsyncClient(transport=transport, base_url="http://door") as client:
            request = client.build_request(method, path, content=_stream(total),
                                           headers={"content-type": content_type} if content_type else {})
            return await client.send(request), request

    response, request = asyncio.run(send())
    return response, app.calls, request


def _rule_cases() -> list[tuple[str, str, int]]:
    """(path, content type, limit) for every content type a rule takes a body of, and the default rule's."""
    cases = []
    for path, rule in {**_service_rules(), "/no/rule/of/its/own": DEFAULT_RULE}.items():
        method = "POST" if not rule.methods or "POST" in rule.methods else rule.methods[0]
        assert method == "POST" or not rule.limits, (path, rule.methods)  # GET-only routes read no body
        cases += [(path, content_type, limit) for content_type, limit in rule.limits.items() if content_type]
    return cases


@pytest.mark.parametrize("path, content_type, limit", _rule_cases(), ids=str)
def test_a_streamed_body_past_the_limit_without_content_length_is_a_413(path, content_type, limit):
    total = limit + CHUNK
    response, calls, request = _post_streamed(_service_rules(), path, total, content_type)
    assert "content-length" not in request.headers and request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413, (path, response.status_code, response.text[:200])
    body = response.json()
    assert set(body) <= {"error", "detail"} and f"more than the limit of {limit} bytes" in body["error"]
    assert response.headers["connection"] == "close"
    assert calls == 0, f"{path}: the application was called with an oversized body"


def test_a_streamed_body_at_the_limit_passes_and_arrives_whole():
    """The other side of the limit: exactly the limit, streamed, reaches the application intact (the default
    rule, the one every path without its own gets)."""
    limit = DEFAULT_RULE.limits["application/json"]
    response, calls, _ = _post_streamed({}, "/anything", limit, "application/json")
    assert response.status_code == 200 and response.json() == {"received": limit}
    assert calls == 1


def test_the_info_route_refuses_100_kib_streamed():
    """100 KiB of chunked JSON to /info, no Content-Length."""
    response, calls, _ = _post_streamed(_service_rules(), "/info", 100 * 1024, "application/json")
    assert response.status_code == 413 and calls == 0
    assert "more than the limit of 65536 bytes" in response.json()["error"]


def test_every_route_rule_with_a_body_is_covered():
    """A new route that takes a body gets a case above by itself; this guards the enumeration itself."""
    paths = {path for path, _, _ in _rule_cases()}
    assert ("/compare_batch", "application/json", 16 * 1024 * 1024) in _rule_cases()  # the JSON cap's body
    assert {"/compare", "/compare_pair", "/compare_batch", "/info", "/no/rule/of/its/own"} <= paths
