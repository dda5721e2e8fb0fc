"""What the service sees, end to end: a real ``bentoml serve`` scraped by Debian's ``prometheus`` on loopback.

- Each answer counts once on ``/metrics``, in both layouts (in the scorer layout the Scorer is another process
  whose metrics BentoML gathers into the same answer), and the reference gauges show once however many workers.
- 2,000 requests to random paths and with random field values add at most 10 KB to ``/metrics``.
- Prometheus scrapes the server every second with deploy/monitoring/rules.yml loaded, its windows shortened to
  ``WINDOW_S`` and its ``for`` to 0 (``shortened_rules``): course-like pairs leave the drift rule silent; free
  pictures (shapes and letters, no course digits) sent to ``compare_pair`` move the confidence histogram down and
  turn the drift rule's expression true, and the alert fires.
- Every metric the dashboard and the rules name is one the service exports.

``make test`` installs the ``prometheus`` package as root on Debian; without it the Prometheus test skips (and fails
under CI=true: CI must run it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from ensemble.course_data import load_course_npz
from tests.server_process import free_port, serve_repository

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
SAMPLES = ROOT / "samples"
WINDOW_S = 20  # every rule's window in the Prometheus test (15m / 5m in production)
SCRAPE_S = 1
HANG_S = 60  # only stops a hang: a scrape and a rule evaluation happen every SCRAPE_S
ROUTES = ("/compare", "/compare_pair", "/compare_batch")

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- inputs


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def course_pair_pngs() -> list[bytes]:
    """The committed held-out course pairs (samples/), as the pictures a client sends to compare_pair."""
    return [_png(Image.fromarray(pair)) for pair in load_course_npz(SAMPLES / "batch.npz").x]


def free_pictures(n: int, seed: int = 0) -> list[bytes]:
    """Pictures that are no course pair: outlined shapes, and pairs of letters, dark on light."""
    rng = np.random.default_rng(seed)
    pictures = []
    for i in range(n):
        image = Image.new("L", (112, 56), 255)
        draw = ImageDraw.Draw(image)
        if i % 2:
            draw.text((10, 8), f"{'ABEHKMNPRWXZ'[i % 12]}  {'QUVYGS'[i % 6]}", fill=0, font_size=36)
        else:
            for _ in range(6):
                x, y = int(rng.integers(0, 100)), int(rng.integers(0, 50))
                box = [x, y, x + int(rng.integers(5, 40)), y + int(rng.integers(5, 30))]
                shape = int(rng.integers(0, 3))
                if shape == 2:
                    draw.line(box, fill=0, width=4)
                else:
                    (draw.ellipse, draw.rectangle)[shape](box, outline=0, width=3)
        pictures.append(_png(image))
    return pictures


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a sample over the series whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rfind("}") + 1]))
            if all(series.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def exported_names(text: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """In process, two API workers: the reference gauges must still show once."""
    with serve_repository(tmp_path_factory.mktemp("bentoml"), DIGIT_COMPARE_LAYOUT="in_process",
                          DIGIT_COMPARE_WORKERS="2") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def answer_some(client: httpx.Client) -> dict[str, int]:
    """A few answers on every route, one blank picture; how many of each."""
    pngs = course_pair_pngs()
    for png in pngs[:6]:
        assert client.post("/compare_pair", files={"image": ("p.png", png)}).status_code == 200
    digit = (SAMPLES / "digit_7_dark_on_light.png").read_bytes()
    for _ in range(2):
        assert client.post("/compare", files={"left": ("l.png", digit), "right": ("r.png", digit)}).status_code == 200
    pairs = load_course_npz(SAMPLES / "batch.npz").x[:5].tolist()
    assert client.post("/compare_batch", json={"pairs": pairs}).status_code == 200
    blank = _png(Image.new("L", (56, 28), 255))
    assert client.post("/compare_pair", files={"image": ("b.png", blank)}).status_code == 400
    return {"/compare_pair": 6, "/compare": 2, "/compare_batch": 5}


def test_each_answer_and_refusal_counts_once_and_the_reference_shows_once(client):
    before = client.get("/metrics").text
    answered = answer_some(client)
    after = client.get("/metrics").text
    defaults = {"/compare_pair": "course", "/compare": "uniform", "/compare_batch": "course"}
    for route, n in answered.items():
        for name in ("digit_compare_answers_total", "digit_compare_confidence_count"):
            moved = metric(after, name, route=route, prior=defaults[route]) - metric(before, name, route=route,
                                                                                   prior=defaults[route])
            assert moved == n, (name, route)
        moved = metric(after, "digit_compare_top_digit_probability_count", route=route, half="left") - \
            metric(before, "digit_compare_top_digit_probability_count", route=route, half="left")
        assert moved == n, route
    assert metric(after, "digit_compare_batch_pairs_count") - metric(before, "digit_compare_batch_pairs_count") == 1
    assert metric(after, "digit_compare_refused_total", route="/compare_pair", reason="blank") - \
        metric(before, "digit_compare_refused_total", route="/compare_pair", reason="blank") == 1
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    reference = manifest["reference"]["models"]["ensemble"]
    lines = [line for line in after.splitlines() if line.startswith("digit_compare_reference_confidence_mean{")]
    assert len(lines) == 2, lines  # one per prior, whatever the number of workers
    assert metric(after, "digit_compare_reference_confidence_mean", prior="course") == \
        pytest.approx(reference["priors"]["course"]["confidence"]["mean"])


def test_the_scorer_layout_counts_each_answer_once(tmp_path):
    with serve_repository(tmp_path / "bentoml", DIGIT_COMPARE_LAYOUT="scorer", DIGIT_COMPARE_WORKERS="1") as srv, \
            httpx.Client(base_url=srv.url, timeout=120) as c:
        before = c.get("/metrics").text
        answered = answer_some(c)
        after = c.get("/metrics").text
    for route, n in answered.items():
        assert metric(after, "digit_compare_answers_total", route=route) - \
            metric(before, "digit_compare_answers_total", route=route) == n, route
    assert metric(after, "bentoml_service_request_total", service_name="digit_compare_scorer") > 0  # both processes


def test_random_paths_and_field_values_leave_metrics_bounded(client):
    """2,000 requests to random paths, and to the real routes with random field names and values, add at most
    10 KB to /metrics: no label takes a client's value."""
    rng = np.random.default_rng(35)
    png = course_pair_pngs()[0]

    def word() -> str:
        return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789_"), int(rng.integers(4, 16))))

    def send(i: int) -> httpx.Response:
        kind = i % 4
        if kind == 0:
            response = client.request(("GET", "POST")[i % 3 % 2], f"/{word()}/{word()}")
        elif kind == 1:
            response = client.post("/compare_pair", files={"image": ("p.png", png)}, data={"prior": word()})
        elif kind == 2:
            response = client.post("/compare_batch", json={"pairs": [[[0] * 56] * 28], "format": word()})
        else:
            response = client.post("/compare_pair", files={"image": ("p.png", png), word(): ("x", b"1")})
        assert 400 <= response.status_code < 500, response.text
        return response

    answer_some(client)  # every series the answers make, and one of each kind of request, exist before the count
    for i in range(8):
        send(i)
    before = client.get("/metrics").text
    for i in range(2000):
        send(i)
    after = client.get("/metrics").text
    assert len(after.encode()) - len(before.encode()) <= 10 * 1024, len(after.encode()) - len(before.encode())


# --------------------------------------------------------------------------- Prometheus, for real


def shortened_rules(text: str, window_s: int) -> str:
    """rules.yml with every range window ``window_s`` seconds and every ``for`` 0: what a test can wait for."""
    text = re.sub(r"\[\d+[smh]\]", f"[{window_s}s]", text)
    return re.sub(r"(\n\s*for:) \S+", r"\1 0s", text)


@contextlib.contextmanager
def prometheus(target: str, rules: str, tmp: Path) -> Iterator[str]:
    """Debian's prometheus on 127.0.0.1, scraping ``target`` (host:port) every SCRAPE_S with ``rules``."""
    binary = shutil.which("prometheus")
    if binary is None:
        message = "prometheus not found: apt-get install prometheus (`make test` does it as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    (tmp / "rules.yml").write_text(rules)
    config = {"global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
              "rule_files": [str(tmp / "rules.yml")],
              "scrape_configs": [{"job_name": "digit-compare", "static_configs": [{"targets": [target]}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:
        process = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "prometheus not ready in 60 s"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def query(url: str, promql: str) -> list[dict]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def send_for(client: httpx.Client, pictures: list[bytes], seconds: float) -> int:
    """compare_pair with these pictures, in turn, for ``seconds``; how many were answered."""
    answered, deadline, i = 0, time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        response = client.post("/compare_pair", files={"image": ("p.png", pictures[i % len(pictures)])})
        assert response.status_code in (200, 400), response.text
        answered += response.status_code == 200
        i += 1
    return answered


def wait_scraped(prom: str, client: httpx.Client) -> None:
    """Until Prometheus's latest sample holds every answer the server has counted (no sleep guessing a scrape)."""
    counted = metric(client.get("/metrics").text, "digit_compare_answers_total")
    deadline = time.monotonic() + HANG_S
    while not (seen := query(prom, "sum(digit_compare_answers_total)")) or float(seen[0]["value"][1]) < counted:
        assert time.monotonic() < deadline, f"Prometheus has {seen}, the server {counted} answers"
        time.sleep(SCRAPE_S / 4)


def wait_firing(prom: str, alertname: str) -> list[dict]:
    """Prometheus's alerts once ``alertname`` fires (the rules are evaluated every SCRAPE_S)."""
    deadline = time.monotonic() + HANG_S
    while True:
        alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        if any(a["labels"]["alertname"] == alertname and a["state"] == "firing" for a in alerts):
            return alerts
        assert time.monotonic() < deadline, f"{alertname} not firing after {HANG_S} s: {alerts}"
        time.sleep(SCRAPE_S / 4)


def test_prometheus_sees_the_confidence_fall_and_the_drift_rule_fire_on_free_pictures(server, client, tmp_path):
    rules_text = shortened_rules((MONITORING / "rules.yml").read_text(), WINDOW_S)
    drift = next(r for g in yaml.safe_load(rules_text)["groups"] for r in g["rules"]
                 if r.get("alert") == "DigitCompareConfidenceDrift")
    window = f"{WINDOW_S}s"
    course_pairs = 'route="/compare_pair",prior="course"'
    mean = (f"sum(rate(digit_compare_confidence_sum{{{course_pairs}}}[{window}])) / "
            f"sum(rate(digit_compare_confidence_count{{{course_pairs}}}[{window}]))")
    below_09 = (f'sum(rate(digit_compare_confidence_bucket{{{course_pairs},le="0.9"}}[{window}])) / '
                f"sum(rate(digit_compare_confidence_count{{{course_pairs}}}[{window}]))")
    target = server.url.removeprefix("http://")
    with prometheus(target, rules_text, tmp_path) as prom:
        assert send_for(client, course_pair_pngs(), WINDOW_S + 5) >= 50
        wait_scraped(prom, client)
        course_mean, course_low = float(query(prom, mean)[0]["value"][1]), float(query(prom, below_09)[0]["value"][1])
        assert query(prom, drift["expr"]) == [], "the drift rule is true on course pairs"
        assert send_for(client, free_pictures(40), WINDOW_S + 5) >= 50
        wait_scraped(prom, client)
        free_mean, free_low = float(query(prom, mean)[0]["value"][1]), float(query(prom, below_09)[0]["value"][1])
        assert free_mean < course_mean - 0.08, (course_mean, free_mean)
        assert free_low > course_low, (course_low, free_low)  # the histogram's mass moved below 0.9
        true = query(prom, drift["expr"])
        assert [r["metric"].get("prior") for r in true] == ["course"], true
        wait_firing(prom, "DigitCompareConfidenceDrift")


def test_the_dashboard_and_the_rules_name_only_metrics_the_service_exports(client):
    answer_some(client)
    for png in free_pictures(6):  # some model votes against some answer: its dissent series exists
        client.post("/compare_pair", files={"image": ("p.png", png)})
    for status in (405, 404):  # BentoML's request metrics for a few codes exist too
        client.request("PUT" if status == 405 else "GET", "/compare_pair" if status == 405 else "/nowhere")
    exported = exported_names(client.get("/metrics").text)
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    expressions += [rule["expr"] for group in yaml.safe_load((MONITORING / "rules.yml").read_text())["groups"]
                    for rule in group["rules"]]
    named = {name for expr in expressions for name in re.findall(r"\b((?:digit_compare|bentoml)_\w+)", expr)}
    assert named, "no metric found in the expressions"
    assert named <= exported, f"named but not exported: {sorted(named - exported)}"
