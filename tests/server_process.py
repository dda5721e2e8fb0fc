"""The tests' servers: ``bench.server``'s launcher (the one the benchmarks use), with the tests' defaults."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from bench.server import ROOT, Server, bentoml_serve, free_port

__all__ = ["ROOT", "Server", "bentoml_serve", "free_port", "serve_repository"]


@contextlib.contextmanager
def serve_repository(bentoml_home: Path, **env: str) -> Iterator[Server]:
    """This checkout's ``service:DigitCompare`` on the CPU, with a private BentoML home (never the
    user's bento store) and any extra environment the test needs."""
    with bentoml_serve("service:DigitCompare", ROOT, {"BENTOML_HOME": str(bentoml_home), "DIGIT_COMPARE_DEVICE": "cpu",
                                                      **env}) as server:
        yield server
