"""The service's two layouts (serving.settings): which one is chosen, how the in-process one coalesces single
pairs, and that a real ``bentoml serve`` of each gives the same answers to the same requests."""

from __future__ import annotations

import asyncio
import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from serving import settings
from serving.coalesce import Overloaded
from serving.scoring import LocalScorer
from serving.settings import choose_layout
from tests.server_process import serve_repository

LAYOUTS = ("auto", "in_process", "scorer")


@pytest.mark.parametrize("device, layout", [("cuda", "scorer"), ("cpu", "in_process")])
def test_auto_picks_the_scorer_service_with_a_gpu_and_in_process_without(device, layout):
    assert choose_layout("auto", device) == layout


@pytest.mark.parametrize("setting", ["in_process", "scorer"])
def test_an_explicit_layout_wins_whatever_the_device(setting):
    for device in ("cpu", "cuda"):
        assert choose_layout(setting, device) == setting


def test_the_layout_setting_is_read_whatever_its_case_and_an_unknown_one_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv("DIGIT_COMPARE_DEVICE", "cpu")
    monkeypatch.setenv("DIGIT_COMPARE_LAYOUT", "SCORER")
    assert settings.load().layout == "scorer"
    monkeypatch.setenv("DIGIT_COMPARE_LAYOUT", "sideways")
    with pytest.raises(ValueError) as refused:
        settings.load()
    message = str(refused.value)  # the variable and the values it takes (the sentence around them is pydantic's)
    assert message.startswith("DIGIT_COMPARE_LAYOUT: ") and all(f"'{v}'" in message for v in LAYOUTS), message


HANG_S = 60.0  # a bound on a hang, not a speed


class _CountingModel:
    """Stands in for the ensemble: remembers each inference call; a pair's 'probability' is its first pixel.
    ``hold()`` keeps the next call running until ``release()``: requests pile up behind it, set by the test,
    not by how long a sleep happens to last on a busy machine."""

    names = ("a", "b")

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.running, self._gate = threading.Event(), threading.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def predict(self, pairs: np.ndarray):
        from ensemble.runtime import Prediction

        self.calls.append(len(pairs))
        self.running.set()
        assert self._gate.wait(HANG_S), "the test never released the held inference call"
        n = len(pairs)
        p = pairs[:, 0, 0].astype(np.float64) / 255
        digit_probs = np.full((n, 2, 2, 10), 0.1)
        return Prediction(probability=p, label=(p >= 0.5).astype(np.int64), base_probabilities=np.stack([p, p], 1),
                          digits=np.zeros((n, 2), np.int64), logits=np.zeros((n, 2)), digit_probs=digit_probs,
                          features=np.zeros((n, 0)), by_prior={"course": p, "uniform": 1 - p},
                          base_by_prior={"course": np.stack([p, p], 1), "uniform": np.stack([1 - p, 1 - p], 1)})


def _local(model: _CountingModel, **kwargs) -> LocalScorer:
    options = {"chunk": 64, "max_group": 64, "max_wait_s": 10.0, "max_waiting": 1024, **kwargs}
    return LocalScorer(model, info={"models": list(model.names)}, **options)


def _pair(value: int) -> np.ndarray:
    pair = np.zeros((28, 56), np.uint8)
    pair[0, 0] = value
    return pair


async def _crowd(scorer: LocalScorer, model: _CountingModel, n: int) -> list:
    """One pair, then ``n - 1`` more while the first one's inference call is held: they arrive while it runs."""
    model.hold()
    first = asyncio.ensure_future(scorer.score_one(_pair(0)))
    assert await asyncio.to_thread(model.running.wait, HANG_S), "the first pair was not sent at once"
    rest = [asyncio.ensure_future(scorer.score_one(_pair(v))) for v in range(1, n)]
    await asyncio.sleep(0)  # let each of them reach the queue (one turn of the loop: no clock involved)
    model.release()
    return await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), HANG_S)


def test_concurrent_single_pairs_share_inference_calls_and_keep_their_own_rows():
    model = _CountingModel()
    scorer = _local(model)
    rows = asyncio.run(_crowd(scorer, model, 40))
    # a lone request goes at once (nothing waits for company); the 39 that came while it ran go together
    assert model.calls == [1, 39]
    for value, row in enumerate(rows):
        assert row[0] == pytest.approx(value / 255)  # course probability column: its own pair's
        assert row[1] == pytest.approx(1 - value / 255)  # uniform


def test_a_batch_is_scored_in_chunks_in_order():
    model = _CountingModel()
    scorer = _local(model, chunk=16)
    x = np.stack([_pair(v) for v in range(40)])
    rows = asyncio.run(scorer.score_many(x))
    assert model.calls == [16, 16, 8]
    np.testing.assert_allclose(rows[:, 0], np.arange(40) / 255)


def test_too_many_waiting_single_pairs_are_refused_as_overload():
    model = _CountingModel()
    scorer = _local(model, max_waiting=4)
    outcomes = asyncio.run(_crowd(scorer, model, 12))
    # the first is scored; of the 11 that came while it ran, 4 may wait and are scored, 7 are refused
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert len(refused) == 7 and all("already waiting" in str(o) for o in refused)
    assert sorted(model.calls) == [1, 4]


# --------------------------------------------------------------------------- both layouts, real servers


def _png(pair: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pair).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_both_layouts_serve_the_same_answers(tmp_path):
    rng = np.random.default_rng(5)
    pairs = rng.integers(0, 256, (6, 28, 56), dtype=np.uint8)
    pairs[:, :, :] = np.where(rng.random((6, 28, 56)) < 0.8, 0, pairs)  # sparse ink, as course pairs have
    answers = {}
    for layout in ("in_process", "scorer"):
        with serve_repository(tmp_path / layout, DIGIT_COMPARE_LAYOUT=layout) as server, \
                httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.get("/info").json()["layout"] == layout
            singles = [client.post("/compare_pair", files={"image": ("p.png", _png(p))}, data={"prior": prior}).json()
                       for p in pairs for prior in ("course", "uniform")]
            batch = client.post("/compare_batch", json={"pairs": pairs.tolist(), "prior": "uniform"}).json()
            answers[layout] = (singles, batch)
    (singles_a, batch_a), (singles_b, batch_b) = answers["in_process"], answers["scorer"]
    for a, b in zip(singles_a, singles_b, strict=True):
        assert a["prior"] == b["prior"] and a["greater"] == b["greater"] and a["digits"] == b["digits"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)
        assert a["models"] == pytest.approx(b["models"], abs=1e-6)
        for side in ("left", "right"):
            np.testing.assert_allclose(a["digit_probabilities"][side], b["digit_probabilities"][side], atol=1e-6)
    assert batch_a["labels"] == batch_b["labels"] and batch_a["digits"] == batch_b["digits"]
    np.testing.assert_allclose(batch_a["probabilities"], batch_b["probabilities"], atol=1e-6)
