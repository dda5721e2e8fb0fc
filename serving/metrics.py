"""Bounded ``/metrics``: requests to paths the service does not serve share one ``endpoint`` label.

BentoML 1.4.40 labels its request metrics (``bentoml_service_request_total``, ``..._request_duration_seconds``,
``..._request_in_progress``) with the raw request path. Each distinct path is a new series in every worker's
Prometheus files and in the ``/metrics`` answer: 2,000 requests to random unknown paths grew that answer from
10 KB to 8.8 MB (40,000 series), so any client could grow the server's memory, and a Prometheus server's load,
without bound. The middleware that does it (``RunnerTrafficMetricsMiddleware``) is the outermost of the
service's, so no middleware of the service can change what it sees. ``bound_path_labels`` therefore gives
BentoML a subclass that labels any path outside ``known`` as ``OTHER_PATHS`` and hands the rest of the stack
the request unchanged (routing, the access log and the 404's message still see the real path).
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterable

from bentoml._internal.server.http import instruments

Scope = t.MutableMapping[str, t.Any]
#: The one ``endpoint`` label of every path the service does not serve.
OTHER_PATHS = "[other]"
_REAL_PATH = "digit_compare.real_path"


class _RealPath:
    """Inside the metrics middleware: gives the application the request's real path back."""

    def __init__(self, app: t.Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: t.Any, send: t.Any) -> None:
        if _REAL_PATH in scope:
            scope = {**scope, "path": scope[_REAL_PATH]}
            del scope[_REAL_PATH]
        await self.app(scope, receive, send)


def bounded_metrics_middleware(known: Iterable[str]) -> type:
    """BentoML's metrics middleware, labelling paths outside ``known`` as OTHER_PATHS."""
    known_paths = frozenset(known)
    base = instruments.RunnerTrafficMetricsMiddleware

    class BoundedPathMetrics(base):  # type: ignore[misc, valid-type]
        def __init__(self, app: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
            super().__init__(_RealPath(app), *args, **kwargs)

        async def __call__(self, scope: Scope, receive: t.Any, send: t.Any) -> None:
            if scope.get("type", "").startswith("http") and scope.get("path") not in known_paths:
                scope = {**scope, "path": OTHER_PATHS, _REAL_PATH: scope.get("path")}
            await super().__call__(scope, receive, send)

    BoundedPathMetrics.known_paths = known_paths  # type: ignore[attr-defined]
    return BoundedPathMetrics


def bound_path_labels(known: Iterable[str]) -> None:
    """Make BentoML build its metrics middleware from ``bounded_metrics_middleware(known)``.

    BentoML imports the class from its module each time it builds a service's application (in each worker,
    after importing the service), so replacing the module's attribute when service.py is imported is enough.
    Called again (a second import), the newest set of paths wins.
    """
    current = instruments.RunnerTrafficMetricsMiddleware
    base = current.__mro__[1] if hasattr(current, "known_paths") else current
    instruments.RunnerTrafficMetricsMiddleware = base
    instruments.RunnerTrafficMetricsMiddleware = bounded_metrics_middleware(known)
