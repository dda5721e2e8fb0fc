"""Client errors in the server's log: one line each, never a traceback.

BentoML 1.4.40's API wrapper (``_bentoml_impl/server/app.py``, ``api_endpoint_wrapper``) calls ``log_exception``
(``bentoml/_internal/server/http_app.py``) on every exception an API raises, a client's 4xx included, which logs it
at ERROR level with its whole traceback: a server log that cries wolf for every bad upload. ``OneLineClientErrors``
is a logging filter (no code of BentoML's is replaced) that turns those records into one INFO line;
``tests/test_serving_patches.py`` shows the defect with BentoML's own function.
"""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

#: BentoML's logger of exceptions raised inside an API (``log_exception``).
API_LOGGER = "bentoml._internal.server.http_app"


class OneLineClientErrors(logging.Filter):
    """BentoML logs a full traceback for every exception an API raises, 4xx included (``log_exception``).
    A client's mistake is not the server's: log those as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        client = isinstance(error, ValidationError) or (
            isinstance(error, BentoMLException) and int(error.error_code) < 500)
        if client:
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {' '.join(str(error).split())}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def log_client_errors_as_one_line() -> None:
    """Install OneLineClientErrors on BentoML's API logger (once, however often the service is imported)."""
    api_logger = logging.getLogger(API_LOGGER)
    if not any(isinstance(f, OneLineClientErrors) for f in api_logger.filters):
        api_logger.addFilter(OneLineClientErrors())
