"""serving/traffic.py: BentoML's request timeout, with the timer let go once the answer starts."""

from __future__ import annotations

import asyncio
import contextvars

import pytest
from bentoml._internal.server.http import traffic

from serving.traffic import ReleasingTimeoutMiddleware, release_request_timers

REQUEST_STATE: contextvars.ContextVar[object] = contextvars.ContextVar("request_state")


class _State:
    """Stands in for what a request's context holds (its OpenTelemetry span, BentoML's request context)."""


def _app(delay: float = 0.0, answer: bool = True):
    async def app(scope, receive, send) -> None:
        await asyncio.sleep(delay)
        if answer:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
    return app


async def _request(middleware) -> list[dict]:
    """One request whose context holds a fresh ``_State`` (as a span would be); returns what was sent."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def handle() -> None:
        REQUEST_STATE.set(_State())  # in this request's task only
        await middleware({"type": "http", "path": "/x"}, receive, send)

    await asyncio.ensure_future(handle())
    return sent


def _timers_holding_a_request() -> list[asyncio.TimerHandle]:
    """The loop's scheduled timers (asyncio's own heap) that still carry a request's context."""
    loop = asyncio.get_running_loop()
    return [h for h in loop._scheduled if REQUEST_STATE in h._context]  # noqa: SLF001 - what the leak is


# BentoML's own class is the one ours derives from: `traffic.TimeoutMiddleware` itself is ours once service.py
# has been imported (release_request_timers), as it is by other tests of the same run.
BENTOML_TIMEOUT_MIDDLEWARE = ReleasingTimeoutMiddleware.__bases__[0]


@pytest.mark.parametrize("middleware_class, kept", [(BENTOML_TIMEOUT_MIDDLEWARE, True),
                                                    (ReleasingTimeoutMiddleware, False)])
def test_a_finished_request_leaves_no_timer_holding_its_context(middleware_class, kept):
    """BentoML's own middleware leaves each answered request's timer scheduled for the whole timeout (300 s in
    the service), holding the request's context; ours lets it go. The first case shows the test sees the leak."""
    async def main() -> list[asyncio.TimerHandle]:
        sent = await _request(middleware_class(_app(), timeout=300))
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        return [h for h in _timers_holding_a_request() if not h.cancelled()]

    assert bool(asyncio.run(main())) is kept


def test_an_answer_that_does_not_start_in_time_is_still_a_504():
    async def main() -> list[dict]:
        return await _request(ReleasingTimeoutMiddleware(_app(delay=5.0), timeout=0.05))

    sent = asyncio.run(main())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 504
    assert sent[1]["body"]  # a body that says so (its wording is BentoML's)


def test_bentoml_builds_the_releasing_middleware_once_installed(monkeypatch):
    monkeypatch.setattr(traffic, "TimeoutMiddleware", traffic.TimeoutMiddleware)  # restored after the test
    release_request_timers()
    from bentoml._internal.server.http import traffic as reloaded

    assert reloaded.TimeoutMiddleware is ReleasingTimeoutMiddleware
