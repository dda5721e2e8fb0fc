"""The scorer's part of a graceful stop: it outlives the API workers that call it.

On SIGTERM (a rolling update, ``kubectl delete pod``, Ctrl+C's cousin) BentoML's process manager (circus) signals
every worker at once. The API workers stop accepting connections and finish the requests they hold, and to do
so they still need the scorer; a scorer that stopped at once answered those requests' pairs with a refused
connection, which the API workers turned into 503s. So the scorer defers uvicorn's own SIGTERM handling until
it has been idle for ``idle_s`` (no call in flight and none for that long: the API workers have finished), or
until ``limit_s`` has passed, whichever comes first; then uvicorn shuts down as usual.

Why not BentoML's own mechanism: in 1.4.40 circus stops all watchers concurrently (``Arbiter._stop_watchers``
gathers every ``watcher._stop``), with no order between a service and its dependencies.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import typing as t
from collections.abc import Iterator

logger = logging.getLogger("bentoml.digit_compare")


class DrainBeforeExit:
    """``with drain.working(): ...`` around each call; ``drain.install()`` in the serving process's main thread."""

    def __init__(self, idle_s: float = 1.0, limit_s: float = 8.0) -> None:
        self.idle_s, self.limit_s = idle_s, limit_s
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last = time.monotonic()
        self._previous: t.Any = None
        self._draining = False

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._last = time.monotonic()

    def idle(self) -> bool:
        with self._lock:
            return self._in_flight == 0 and time.monotonic() - self._last >= self.idle_s

    def install(self) -> bool:
        """Wrap the current SIGTERM handler (uvicorn's); False where signals cannot be handled (not the main
        thread), and nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_term)
        return True

    def _on_term(self, signum: int, frame: object) -> None:
        if self._draining:  # a second SIGTERM: stop waiting
            self._exit(signum, frame)
            return
        self._draining = True
        threading.Thread(target=self._wait_then_exit, args=(signum, frame), name="drain", daemon=True).start()

    def _wait_then_exit(self, signum: int, frame: object) -> None:
        started = time.monotonic()
        logger.info("SIGTERM: serving the API workers' last calls before stopping (at most %.0f s)", self.limit_s)
        while not self.idle() and time.monotonic() - started < self.limit_s:
            time.sleep(0.05)
        logger.info("stopping after %.1f s of draining", time.monotonic() - started)
        self._exit(signum, frame)

    def _exit(self, signum: int, frame: object) -> None:
        previous = self._previous
        if callable(previous):
            previous(signum, frame)  # uvicorn's handle_exit: sets its flags, the server loop stops
        else:  # SIG_DFL: what the signal would have done
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
