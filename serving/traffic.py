"""BentoML's request timeout without its memory cost: each request's timer is cancelled once the answer starts.

BentoML 1.4.40's ``TimeoutMiddleware`` (``bentoml/_internal/server/http/traffic.py``) schedules, per request,
``loop.call_later(timeout, ...)`` and never cancels it. The timer handle keeps the request's context alive
(``call_later`` copies the contextvars: the OpenTelemetry span and its attributes, BentoML's request context)
until the timeout fires, 300 s later here (``REQUEST_TIMEOUT_S``). Under load that is every request of the last
five minutes: an API worker grew by 233 MB in its first five minutes, then held flat (``bench/soak.py``;
tracemalloc showed the spans and contexts, ~1.8 KB a request, docs/reliability.md). ``release_request_timers``
makes BentoML build this subclass instead, which behaves the same (a 504 when no answer starts in time), gives
its timer an empty context and cancels it as soon as the answer starts or the request ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import typing as t

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

Scope = t.MutableMapping[str, t.Any]


class ReleasingTimeoutMiddleware(traffic.TimeoutMiddleware):
    """``TimeoutMiddleware`` whose per-request timer is cancelled when the answer starts."""

    async def __call__(self, scope: Scope, receive: t.Any, send: t.Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        # An empty context: the handle must not carry the request's (a cancelled handle stays in the loop's heap
        # until the loop next prunes it, and holds what it was given until then).
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter, context=contextvars.Context())

        async def _send(message: t.Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
                timer.cancel()
            await send(message)

        answer = asyncio.ensure_future(self.app(scope, receive, _send))
        try:
            await waiter
        except TimeoutError:
            if answer.cancel():
                response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                        status_code=504)
                await response(scope, receive, send)
        else:
            await answer
        finally:
            timer.cancel()  # whatever happened: the handle drops its context now, not after the timeout


def release_request_timers() -> None:
    """Make BentoML build ``ReleasingTimeoutMiddleware``: it imports the class from its module each time it builds
    an application (``base_app.BaseAppFactory.middlewares``), so replacing the module's attribute is enough."""
    traffic.TimeoutMiddleware = ReleasingTimeoutMiddleware
