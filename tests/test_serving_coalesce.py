"""Coalescing of single pairs (serving/coalesce.py), with a fake scorer: who waits, who shares a call,
and what every request gets when the call fails or is cancelled.

No sleep orders anything here: a call to the fake scorer takes one turn of the event loop, or is held until the
test releases it, and the coalescer's clock is the test's own (``FakeClock``)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving import coalesce
from serving.coalesce import Overloaded, PairCoalescer


class FakeScorer:
    """Answers each pair with the row [pair id, call size]; records the calls. A call takes one turn of the
    event loop, or, when ``held``, waits until ``release()``."""

    def __init__(self, fail: BaseException | None = None, held: bool = False):
        self.fail = fail
        self.calls: list[int] = []
        self.in_flight = self.max_in_flight = 0
        self._released = asyncio.Event()
        if not held:
            self._released.set()

    def release(self) -> None:
        self._released.set()

    async def __call__(self, pairs: np.ndarray) -> np.ndarray:
        self.calls.append(len(pairs))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # a call always takes at least one turn, as a real one does
            await self._released.wait()
            if self.fail is not None:
                raise self.fail
            return np.stack([pairs[:, 0, 0], np.full(len(pairs), len(pairs))], axis=1).astype(float)
        finally:
            self.in_flight -= 1


class FakeClock:
    """The coalescer's ``time.monotonic``, moved by the test."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(coalesce, "time", fake)
    return fake


async def turns_until(condition, turns: int = 100) -> None:
    """Let the event loop run until ``condition()`` holds (a bounded number of turns: never a hang)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not reached in {turns} turns of the event loop")


def pair(i: int) -> np.ndarray:
    p = np.zeros((28, 56), np.uint8)
    p[0, 0] = i
    return p


def coalescer(scorer, **kw) -> PairCoalescer:
    settings = dict(max_group=8, max_in_flight=2, max_wait_s=10.0, max_waiting=100) | kw
    return PairCoalescer(scorer, **settings)


def test_a_lone_pair_goes_at_once_in_a_call_of_its_own():
    async def main():
        scorer = FakeScorer()
        row = await coalescer(scorer).score(pair(7))
        return scorer.calls, row

    calls, row = asyncio.run(main())
    assert calls == [1] and row.tolist() == [7, 1]


def test_a_crowd_shares_calls_with_at_most_two_in_flight_and_nobody_gets_anothers_answer():
    async def main():
        scorer = FakeScorer()
        c = coalescer(scorer)
        rows = await asyncio.gather(*(c.score(pair(i)) for i in range(30)))
        return scorer, rows

    scorer, rows = asyncio.run(main())
    assert [int(r[0]) for r in rows] == list(range(30))
    # The first two go alone (nothing waits for company), the other 28 in groups of at most 8.
    assert scorer.calls[:2] == [1, 1] and sum(scorer.calls) == 30 and max(scorer.calls) == 8
    assert len(scorer.calls) == 2 + 4  # 28 = 8 + 8 + 8 + 4
    assert scorer.max_in_flight == 2


def test_a_failed_call_fails_each_of_its_requests_with_its_own_exception():
    async def main():
        c = coalescer(FakeScorer(fail=ValueError("scorer down")))
        return await asyncio.gather(*(c.score(pair(i)) for i in range(5)), return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, ValueError) and str(e) == "scorer down" for e in errors)
    assert len({id(e) for e in errors[2:]}) == 3  # one fresh exception per request of the shared call


def test_too_many_waiting_pairs_are_refused_at_once():
    async def main():
        c = coalescer(FakeScorer(), max_in_flight=1, max_waiting=3)
        return await asyncio.gather(*(c.score(pair(i)) for i in range(6)), return_exceptions=True)

    results = asyncio.run(main())
    # Pair 0 is sent; 1-3 wait; 4 and 5 find 3 waiting and are refused.
    assert [isinstance(r, Overloaded) for r in results] == [False] * 4 + [True] * 2


def test_a_pair_that_waited_too_long_is_refused_and_a_cancelled_one_is_not_scored(clock):
    async def main():
        scorer = FakeScorer(held=True)
        c = coalescer(scorer, max_in_flight=1, max_wait_s=0.1)
        first = asyncio.ensure_future(c.score(pair(0)))
        await turns_until(lambda: scorer.in_flight == 1)
        stale = asyncio.ensure_future(c.score(pair(1)))
        gone = asyncio.ensure_future(c.score(pair(2)))
        await asyncio.sleep(0)  # both reach the queue behind the held call
        gone.cancel()
        clock.now += 0.5  # longer than max_wait_s
        scorer.release()
        results = await asyncio.gather(first, stale, return_exceptions=True)
        return scorer.calls, results

    calls, (first, stale) = asyncio.run(main())
    assert first.tolist() == [0, 1]
    assert isinstance(stale, Overloaded) and "waited" in str(stale)
    assert calls == [1]  # neither the stale nor the cancelled pair reached the scorer


def test_a_pair_within_its_wait_is_scored_after_the_call_ahead(clock):
    async def main():
        scorer = FakeScorer(held=True)
        c = coalescer(scorer, max_in_flight=1, max_wait_s=0.1)
        first = asyncio.ensure_future(c.score(pair(0)))
        await turns_until(lambda: scorer.in_flight == 1)
        second = asyncio.ensure_future(c.score(pair(1)))
        await asyncio.sleep(0)
        clock.now += 0.05  # within max_wait_s
        scorer.release()
        return await asyncio.gather(first, second)

    first, second = asyncio.run(main())
    assert first.tolist() == [0, 1] and second.tolist() == [1, 1]


def test_cancelling_a_call_cancels_its_requests_and_the_waiting_go_on():
    async def main():
        scorer = FakeScorer(held=True)
        c = coalescer(scorer)
        requests = [asyncio.ensure_future(c.score(pair(i))) for i in range(3)]  # 0, 1 sent; 2 waits
        await turns_until(lambda: scorer.in_flight == 2)
        for task in list(c._tasks):
            task.cancel()
        scorer.release()
        return await asyncio.gather(*requests, return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert isinstance(first, asyncio.CancelledError) and isinstance(second, asyncio.CancelledError)
    assert third.tolist() == [2, 1]


@pytest.mark.parametrize("max_in_flight", [1, 3])
def test_in_flight_limit_is_respected(max_in_flight):
    async def main():
        scorer = FakeScorer()
        c = coalescer(scorer, max_in_flight=max_in_flight)
        await asyncio.gather(*(c.score(pair(i)) for i in range(20)))
        return scorer.max_in_flight

    assert asyncio.run(main()) == max_in_flight
