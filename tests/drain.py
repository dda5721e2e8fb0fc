"""A graceful stop under load, as the shutdown tests check it (a real server, or a container): closed-loop
clients of ``compare_pair`` whose every request is recorded with the time it was sent, and the verdict."""

from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
from PIL import Image

CLIENTS = 16
#: A server still running this long after SIGTERM hangs (its own drain gives up well before). A bound on a hang,
#: not a speed: how long a stop takes is measured on a quiet machine and recorded (docs/testing.md).
EXIT_HANG_S = 90.0
#: Answers before the signal: the load is going (set by counting answers, not by sleeping).
ANSWERED_BEFORE_SIGNAL = 50


def _png(pair: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pair).save(buffer, format="PNG")
    return buffer.getvalue()


class ClosedLoop:
    """``with ClosedLoop(url) as load: ...``: ``CLIENTS`` threads post course-like pairs until the block ends;
    ``load.outcomes`` holds (when sent, status code or transport error name) per request; ``load.wait_answered(n)``
    returns once n requests got their 200."""

    def __init__(self, url: str, clients: int = CLIENTS, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self.url, self.clients = url, clients
        self.images = [_png(np.where(rng.random((28, 56)) < 0.8, 0, rng.integers(0, 256, (28, 56))).astype(np.uint8))
                       for _ in range(clients)]
        self.outcomes: list[tuple[float, str]] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._answered = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def _loop(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status = str(client.post("/compare_pair", files={"image": ("p.png", self.images[index])})
                                 .status_code)
                except httpx.TransportError as err:
                    status = type(err).__name__
                with self._lock:
                    self.outcomes.append((sent, status))
                    self._answered.notify_all()
                if not status.isdigit():
                    time.sleep(0.05)  # the door is shut: do not spin

    def wait_answered(self, n: int, timeout: float = 300.0) -> None:
        """Until ``n`` requests got their 200 (a server that answers none fails the test after ``timeout``)."""
        with self._answered:
            assert self._answered.wait_for(lambda: sum(s == "200" for _, s in self.outcomes) >= n, timeout), (
                f"fewer than {n} answers in {timeout:.0f} s: {self.outcomes[-5:]}")

    def __enter__(self) -> ClosedLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(40)


def assert_drained(outcomes: list[tuple[float, str]], signalled: float, exited: float, log: str, what: str) -> None:
    """Every request sent before the signal got its 200; later ones found the door shut or an answer, never a
    5xx; ``what`` exited (``exited``: seconds after the signal, inf if it was still running after EXIT_HANG_S)."""
    before = [status for sent, status in outcomes if sent < signalled]
    after = [status for sent, status in outcomes if sent >= signalled]
    print(f"\n{what}: {len(before)} requests before SIGTERM, {len(after)} after; exited in {exited:.1f} s; "
          f"after: { {s: after.count(s) for s in set(after)} }")
    assert len(before) >= ANSWERED_BEFORE_SIGNAL, "the load did not get going"
    failed_before = {s: before.count(s) for s in set(before) if s != "200"}
    assert not failed_before, f"requests sent before the signal got {failed_before}:\n{log[-3000:]}"
    assert not [s for s in after if s.startswith("5")], {s: after.count(s) for s in set(after)}
    assert exited <= EXIT_HANG_S, f"{what} had not exited {EXIT_HANG_S:.0f} s after SIGTERM:\n{log[-3000:]}"
