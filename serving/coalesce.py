"""Coalescing of single pairs: concurrent one-pair requests share calls to the scorer.

Each call to the scorer costs both processes CPU time (HTTP, serialisation) whatever its size, so a
crowd of single-pair requests sent one call each spends the machine on overhead. ``PairCoalescer``
keeps at most ``max_in_flight`` calls going; pairs that arrive meanwhile wait and go together (up to
``max_group`` at a time) in the next call. A lone request is sent at once: nothing ever waits for
company. Waiting is bounded: a pair that waited longer than ``max_wait_s``, or that finds
``max_waiting`` pairs already queued, is refused with ``Overloaded`` (the service answers 503),
as the scorer's own dispatcher refuses work it cannot do in time.

Plain asyncio and numpy: no BentoML here, so it is tested on its own (tests/test_serving_coalesce.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np


class Overloaded(Exception):
    """Too many pairs are waiting, or one waited too long: the caller should answer 503."""


@dataclass
class _Waiting:
    pair: np.ndarray
    future: asyncio.Future
    since: float  # time.monotonic() when it arrived


class PairCoalescer:
    """``await coalescer.score(pair)`` -> that pair's row of ``score_many(np.stack(pairs))``."""

    def __init__(self, score_many: Callable[[np.ndarray], Awaitable[np.ndarray]], max_group: int,
                 max_in_flight: int, max_wait_s: float, max_waiting: int):
        self._score_many = score_many
        self.max_group, self.max_in_flight = max_group, max_in_flight
        self.max_wait_s, self.max_waiting = max_wait_s, max_waiting
        self._waiting: list[_Waiting] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()  # referenced until done: the event loop keeps only weak ones

    async def score(self, pair: np.ndarray) -> np.ndarray:
        if len(self._waiting) >= self.max_waiting:
            raise Overloaded(f"{len(self._waiting)} pairs are already waiting; retry shortly")
        waiting = _Waiting(pair, asyncio.get_running_loop().create_future(), time.monotonic())
        self._waiting.append(waiting)
        self._send()
        return await waiting.future  # cancelled with its request: _send then drops it

    def _send(self) -> None:
        if self._in_flight >= self.max_in_flight:
            return  # nothing can go now; the next call to finish sends (and sheds) what waits
        self._shed_stale()
        while self._waiting and self._in_flight < self.max_in_flight:
            group, self._waiting = self._waiting[:self.max_group], self._waiting[self.max_group:]
            self._in_flight += 1
            task = asyncio.ensure_future(self._score_group(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _shed_stale(self) -> None:
        """Drop pairs whose request is gone; refuse those that waited longer than ``max_wait_s``."""
        now, kept = time.monotonic(), []
        for waiting in self._waiting:
            if waiting.future.done():
                continue
            if now - waiting.since > self.max_wait_s:
                waiting.future.set_exception(Overloaded(f"waited {now - waiting.since:.1f} s for the scorer"))
            else:
                kept.append(waiting)
        self._waiting = kept

    async def _score_group(self, group: list[_Waiting]) -> None:
        try:
            rows = await self._score_many(np.stack([waiting.pair for waiting in group]))
            for waiting, row in zip(group, rows, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(row)
        except BaseException as err:  # every request of the group gets the error (cancellation included)
            for waiting in group:
                if not waiting.future.done():
                    # A fresh exception each: one object raised in many tasks would grow one traceback.
                    waiting.future.set_exception(_copy(err))
            if not isinstance(err, Exception):
                raise
        finally:
            self._in_flight -= 1
            self._send()


def _copy(err: BaseException) -> BaseException:
    if isinstance(err, asyncio.CancelledError):
        return asyncio.CancelledError()
    try:
        copy = type(err)(*err.args)
    except Exception:  # an exception type that cannot be rebuilt from its args
        copy = RuntimeError(f"{type(err).__name__}: {err}")
    copy.__cause__ = err.__cause__
    return copy
