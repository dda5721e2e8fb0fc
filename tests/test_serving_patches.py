"""The BentoML defects that serving/ works around, each shown with BentoML's own class, and the fix.

Each fix is tied to BentoML 1.4.40 (pyproject.toml pins it). When an upgrade fixes a defect, its "BentoML's own"
case here fails: that is the sign to delete the fix. (The request timer's: tests/test_serving_traffic.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing as t

import pytest
from bentoml._internal.server import http_app
from bentoml._internal.server.http import instruments
from bentoml.exceptions import BadInput
from starlette.requests import Request

from serving.errors import API_LOGGER, OneLineClientErrors
from serving.metrics import OTHER_PATHS, bounded_metrics_middleware


class _Series:
    def __init__(self, labels: list[dict[str, t.Any]], values: dict[str, t.Any]) -> None:
        labels.append(values)

    def __getattr__(self, name: str) -> t.Callable[..., t.Any]:  # inc, observe, track_inprogress (a context), ...
        return lambda *args, **kwargs: contextlib.nullcontext()


class _Metrics:
    """Stands in for BentoML's Prometheus client: records the labels of every series touched."""

    def __init__(self) -> None:
        self.labels: list[dict[str, t.Any]] = []

    def _metric(self, **kwargs: t.Any) -> t.Any:
        recorded = self.labels

        class Metric:
            def labels(self, **values: t.Any) -> _Series:
                return _Series(recorded, values)

        return Metric()

    Histogram = Counter = Gauge = Summary = _metric


def _endpoints_seen(middleware_class: type, paths: list[str]) -> set[str]:
    async def app(scope: t.Any, receive: t.Any, send: t.Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def nothing(message: t.Any = None) -> t.Any:
        return {"type": "http.request", "body": b""}

    metrics = _Metrics()
    middleware = middleware_class(app, namespace="bentoml_service")
    middleware._setup(metrics_client=metrics, duration_buckets=(1.0,))  # noqa: SLF001 - BentoML's lazy setup
    for path in paths:
        asyncio.run(middleware({"type": "http", "path": path, "method": "GET"}, nothing, nothing))
    return {values["endpoint"] for values in metrics.labels if "endpoint" in values}


# BentoML's own class: the module attribute is ours once service.py has been imported (bound_path_labels).
_CURRENT = instruments.RunnerTrafficMetricsMiddleware
BENTOML_METRICS_MIDDLEWARE = _CURRENT.__mro__[1] if hasattr(_CURRENT, "known_paths") else _CURRENT
RANDOM_PATHS = [f"/no/such/path/{i}" for i in range(20)]


def test_bentomls_metrics_label_every_unknown_path_as_its_own_series():
    """The defect: each unknown path a client sends is a new series of every request metric, forever."""
    assert set(RANDOM_PATHS) <= _endpoints_seen(BENTOML_METRICS_MIDDLEWARE, RANDOM_PATHS)


def test_bounded_metrics_give_every_unknown_path_one_label_and_keep_the_known_ones():
    bounded = bounded_metrics_middleware({"/compare"})
    seen = _endpoints_seen(bounded, [*RANDOM_PATHS, "/compare"])
    assert seen & set(RANDOM_PATHS) == set() and {OTHER_PATHS, "/compare"} <= seen


def _logged(exception: BaseException, with_filter: bool) -> list[logging.LogRecord]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(API_LOGGER)
    handler, one_line = Keep(), OneLineClientErrors()
    installed = list(logger.filters)  # an imported service.py has installed one already
    for existing in installed:
        logger.removeFilter(existing)
    logger.addHandler(handler)
    if with_filter:
        logger.addFilter(one_line)
    request = Request({"type": "http", "method": "POST", "path": "/compare", "headers": [], "query_string": b""})
    try:
        try:
            raise exception
        except BaseException:
            http_app.log_exception(request)  # BentoML's own: what its API wrapper calls on any exception
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(one_line)
        for existing in installed:
            logger.addFilter(existing)
    return records


@pytest.mark.parametrize("with_filter", [False, True])
def test_a_client_error_is_an_error_with_a_traceback_to_bentoml_and_one_info_line_with_the_filter(with_filter):
    [record] = _logged(BadInput("left: not an image"), with_filter)
    if not with_filter:  # the defect: a client's mistake logged as the server's, traceback and all
        assert record.levelno == logging.ERROR and record.exc_info is not None
        return
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "Exception on /compare [POST]: BadInput: left: not an image"


def test_a_server_error_keeps_its_traceback():
    [record] = _logged(RuntimeError("boom"), with_filter=True)
    assert record.levelno == logging.ERROR and record.exc_info is not None
