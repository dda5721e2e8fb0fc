"""The web page at /ui, in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromedriver, against a real ``bentoml serve`` (one for the module, one browser for the module).

The models under models/ are retrained from time to time, so nothing here expects a probability or a
digit. What is checked is that the page shows exactly what the service answered: the answer the page
received (recorded by wrapping ``fetch``) equals a direct API call on the same bytes (the canvases' own PNGs,
the sample's pixels), so the page sent the right pictures on the right sides; and every number, bar and
picture on the page equals that answer. The preprocessed inputs shown are compared, pixel for pixel, with
``prepare_digit`` run here on the same canvas PNG.

`make test` installs chromium and chromium-driver (apt-get, as root). Without them this module skips,
except under CI (CI=true), where it fails: CI must run it. The screenshot README shows (docs/ui.png) is
written only when asked, so that a test run leaves the tree as it was: ``make screenshot`` (which sets
UI_SCREENSHOT=1 for this module).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import tempfile
import typing as t
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from ensemble.course_data import load_course_npz
from ensemble.preprocess import prepare_digit
from tests.server_process import serve_repository

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SCREENSHOT = ROOT / "docs" / "ui.png"
#: Set to 1 (``make screenshot``) to write SCREENSHOT; otherwise the page is photographed into a temporary file.
SCREENSHOT_ENV = "UI_SCREENSHOT"
#: The drawn 7 and 3 under the uniform prior answer left > right with at least this probability (issue 17's
#: target): 0.9967 measured with the models of 2026-12-02 (0.896 with those of 2026-11-29).
UNIFORM_7_VS_3 = 0.9
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAD = 280  # the pads' bitmap size (ui/app.js draws on 280x280 whatever the size on screen)
WAIT_S = 60  # an answer on a CPU that is busy training: normally well under a second

pytestmark = pytest.mark.slow

if t.TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        message = (f"the browser test needs {' and '.join(missing)}: apt-get install chromium chromium-driver "
                   "(`make test` does it as root)")
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the browser test, never skip it
        pytest.skip(message)


# --------------------------------------------------------------------------- the server and the browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_repository(tmp_path_factory.mktemp("bentoml")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> t.Iterator[WebDriver]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="digit-compare-chromium-") as profile:
        # As root in a container: no sandbox, no GPU, no /dev/shm; nothing that calls home or updates itself.
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--disable-extensions", "--hide-scrollbars", "--lang=en-US",
                         "--force-device-scale-factor=1", "--window-size=1280,900", f"--user-data-dir={profile}"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # A driver path given: Selenium Manager (which would download a driver) is never run.
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            yield driver
        finally:
            driver.quit()


# Records every answer the page gets from the service (the page is not changed for the test: this wraps the
# browser's fetch after the page loaded, before anything is clicked).
RECORD_ANSWERS = """
window.__answers = [];
const original = window.fetch;
window.fetch = async (...args) => {
  const response = await original(...args);
  const url = String(args[0]);
  if (url.startsWith("compare")) {
    response.clone().json().then((body) => window.__answers.push({url, status: response.status, body}),
                                 () => window.__answers.push({url, status: response.status, body: null}));
  }
  return response;
};
"""


@pytest.fixture()
def page(browser, server) -> WebDriver:
    browser.set_window_size(1280, 900)
    browser.get(f"{server.url}/ui")
    _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete")
    browser.execute_script(RECORD_ANSWERS)
    browser.get_log("browser")  # start each test with an empty console log
    return browser


def _wait(driver: WebDriver, condition: t.Callable[[WebDriver], t.Any], timeout: float = WAIT_S) -> t.Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def _by_id(driver: WebDriver, element_id: str) -> WebElement:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def _click_and_wait(driver: WebDriver, button: str) -> dict:
    """Click ``button``, wait for the page's next answer from the service and for the page to show it;
    return what the page received: {url, status, body}."""
    before = driver.execute_script("return window.__answers.length")
    _by_id(driver, button).click()
    _wait(driver, lambda d: d.execute_script("return window.__answers.length") > before
          and _by_id(d, "result").get_attribute("data-state") in ("done", "error"))
    return driver.execute_script("return window.__answers[window.__answers.length - 1]")


# --------------------------------------------------------------------------- drawing with pointer events


def _stroke(driver: WebDriver, canvas: WebElement, points: list[tuple[float, float]], kind: str) -> None:
    """One stroke through ``points`` (pad pixels, 0-280) with a pointer of ``kind`` (mouse or touch): W3C
    actions, so Chromium fires real pointerdown / pointermove / pointerup events on the canvas."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    scale = canvas.rect["width"] / PAD
    builder = ActionBuilder(driver, mouse=PointerInput(kind, f"{kind}-pointer"), duration=0)
    actions = builder.pointer_action

    def at(x: float, y: float) -> None:  # offsets are from the element's centre
        actions.move_to(canvas, round((x - PAD / 2) * scale), round((y - PAD / 2) * scale))

    at(*points[0])
    actions.pointer_down()
    for point in points[1:]:
        at(*point)
    actions.pointer_up()
    builder.perform()


def _draw_seven(driver: WebDriver, canvas: WebElement) -> None:
    """A 7 with the mouse: the bar, then the stem, in one stroke."""
    bar = [(70 + 14 * i, 62) for i in range(11)]
    stem = [(210 - 9 * i, 62 + 17 * i) for i in range(1, 11)]
    _stroke(driver, canvas, bar + stem, "mouse")


def _draw_three(driver: WebDriver, canvas: WebElement) -> None:
    """A 3 with a finger: two arcs."""
    upper = [(140 + 58 * math.sin(a), 98 - 44 * math.cos(a)) for a in np.linspace(-1.2, 2.4, 16)]
    lower = [(140 + 64 * math.sin(a), 186 - 48 * math.cos(a)) for a in np.linspace(0.2, 3.9, 16)]
    _stroke(driver, canvas, upper, "touch")
    _stroke(driver, canvas, lower, "touch")


def _canvas_png(driver: WebDriver, side: str) -> bytes:
    url = driver.execute_script(f"return document.getElementById('canvas-{side}').toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


# --------------------------------------------------------------------------- reading the page


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%"  # the page's own format (toFixed(1)); both round the same float half-even-ish


def _same_percent(shown: str, p: float) -> bool:
    """The page's "61.4%" shows ``p``: within rounding of one decimal (JavaScript's toFixed and Python's
    format may round a tie differently)."""
    match = re.fullmatch(r"(\d+\.\d)%", shown.strip())
    return match is not None and abs(float(match.group(1)) - 100 * p) <= 0.05 + 1e-9


def _same_width(style_width: str, p: float) -> bool:
    """A bar's CSS width ("61.4%"; the browser writes "50.0%" back as "50%") is ``p``, to the page's rounding."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)%", style_width.strip())
    return match is not None and abs(float(match.group(1)) - 100 * p) <= 0.05 + 1e-9


def _image_pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,"), data_url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def _assert_page_shows(driver: WebDriver, answer: dict, info: dict, route: str) -> None:
    """Every number, bar and picture of the page's answer panel is ``answer``'s."""
    assert _by_id(driver, "answer").is_displayed() and not _by_id(driver, "error").is_displayed()
    assert _by_id(driver, "verdict").text == ("left > right" if answer["greater"] else "left < right")
    assert _by_id(driver, "versus").text == (">" if answer["greater"] else "<")
    assert _same_percent(_by_id(driver, "probability-text").text, answer["probability"])
    fill = driver.execute_script("return document.getElementById('probability-fill').style.width")
    assert _same_width(fill, answer["probability"]), fill
    assert float(_by_id(driver, "probability-bar").get_attribute("aria-valuenow")) == \
        pytest.approx(100 * answer["probability"], abs=0.05 + 1e-9)
    for side in ("left", "right"):
        digit = answer["digits"][side]
        assert _by_id(driver, f"digit-{side}").text == str(digit)
        assert _same_percent(_by_id(driver, f"digit-{side}-prob").text, answer["digit_probabilities"][side][digit])
        columns = driver.execute_script(f"return [...document.querySelectorAll('#dist-{side} .col')]"
                                        ".map((c) => [c.title, c.classList.contains('read')])")
        assert [read for _, read in columns] == [d == digit for d in range(10)]
        for d, (title, _) in enumerate(columns):
            label, value = title.split(": ")
            assert label == str(d) and _same_percent(value, answer["digit_probabilities"][side][d])
        image = _by_id(driver, f"input-{side}")
        assert image.is_displayed()
        size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
        assert size == [28, 28]
        np.testing.assert_array_equal(_image_pixels(image.get_attribute("src")),
                                      _image_pixels("data:image/png;base64," + answer["inputs"][side]))
    # the per-model chart: one bar per model of /info, in its order, each showing that model's answer
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#models li')].map((li) => [li.dataset.model, "
        "li.querySelector('.name').textContent, li.querySelector('.value').textContent, "
        "li.querySelector('.fill').style.width])")
    assert [name for name, *_ in rows] == info["models"]
    for name, label, value, width in rows:
        assert label == name
        assert _same_percent(value, answer["models"][name]) and _same_width(width, answer["models"][name])
    timing = re.fullmatch(r"Answered in (\d+) ms \(the service: (\d+) ms\) by /(\w+), in an inference batch of (\d+)\.",
                          _by_id(driver, "timing").text)
    assert timing, _by_id(driver, "timing").text
    assert int(timing.group(2)) == round(answer["elapsed_ms"]) and timing.group(3) == route
    assert int(timing.group(1)) >= int(timing.group(2)) - 1  # the round trip includes the service's time
    assert int(timing.group(4)) == answer["batch_size"]
    # one plain sentence says which prior produced the answer
    sentence = _by_id(driver, "prior-text").text
    assert sentence.endswith(f"({answer['prior']} prior).") and sentence.count(" prior") == 1, sentence


def _assert_same_answer(page_answer: dict, direct: dict) -> None:
    """The page's answer and a direct API call on the same bytes (timing and batching aside)."""
    assert page_answer["prior"] == direct["prior"]
    assert page_answer["digits"] == direct["digits"] and page_answer["greater"] == direct["greater"]
    assert page_answer["probability"] == pytest.approx(direct["probability"], abs=1e-9)
    assert page_answer["models"] == pytest.approx(direct["models"], abs=1e-9)
    for side in ("left", "right"):
        assert page_answer["digit_probabilities"][side] == pytest.approx(direct["digit_probabilities"][side], abs=1e-9)
    assert page_answer["inputs"] == direct["inputs"]


def _layout_is_intact(driver: WebDriver) -> None:
    """Nothing sticks out sideways, and both pads are on screen, side by side."""
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the window"
    left, right = (_by_id(driver, f"canvas-{side}").rect for side in ("left", "right"))
    assert left["width"] >= 100 and abs(left["width"] - right["width"]) < 1
    assert left["x"] + left["width"] <= right["x"]
    viewport = driver.execute_script("return window.innerWidth")
    assert right["x"] + right["width"] <= viewport


@contextlib.contextmanager
def _phone(driver: WebDriver) -> t.Iterator[None]:
    """A phone's screen, 390x844 CSS pixels (headless Chromium's window cannot be narrower than 500 px, so
    the DevTools protocol emulates the device, viewport meta tag included)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        assert driver.execute_script("return window.innerWidth") == 390
        yield
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the page's files, over plain HTTP


def test_page_and_its_files_are_served_by_the_service(client):
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Is the left digit greater" in page.text
    # nothing but this origin, enforced by the browser too
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    for path, media_type in (("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type), path
        assert response.content == (ROOT / "ui" / path.rsplit("/", 1)[1]).read_bytes()
    # revalidation: a browser holding the current version gets a 304, never a stale script
    assert page.headers["cache-control"] == "no-cache"
    assert client.get("/ui", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    assert client.head("/ui").status_code == 200
    # guarded like every route: other methods and unknown files answer in the one error shape
    refused = client.post("/ui", content=b"x")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET" and "error" in refused.json()
    missing = client.get("/ui/secret.txt")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}


def test_page_loads_nothing_from_elsewhere():
    """No URL with a scheme or a host in the page's files: nothing from the internet (the machine has none)."""
    for path in (ROOT / "ui").iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|[\"'(=]\s*//", text), path  # absolute or protocol-relative URLs
        assert "@import" not in text and "url(" not in text, path  # CSS would fetch those


def test_sample_pairs_are_the_committed_ones(client):
    pairs = client.get("/ui/samples.json").json()["pairs"]
    expected = json.loads((SAMPLES / "expected.json").read_text())
    batch = load_course_npz(SAMPLES / "batch.npz")
    assert [p["id"] for p in pairs] == ["pair.png", *batch.ids]
    assert pairs[0]["label"] == expected["pair.png"]["label"] and pairs[0]["digits"] == expected["pair.png"]["digits"]
    assert [p["label"] for p in pairs[1:]] == expected["batch.npz"]["labels"]
    for entry, x in zip(pairs, [np.asarray(Image.open(SAMPLES / "pair.png").convert("L")), *batch.x], strict=True):
        np.testing.assert_array_equal(_image_pixels("data:image/png;base64," + entry["pair"]), x)
        np.testing.assert_array_equal(_image_pixels("data:image/png;base64," + entry["left"]), x[:, :28])
        np.testing.assert_array_equal(_image_pixels("data:image/png;base64," + entry["right"]), x[:, 28:])


# --------------------------------------------------------------------------- in the browser


def test_drawn_digits_are_compared_and_the_answer_shown(page, client, server):
    """Draw a 7 (mouse) and a 3 (finger), press Compare: the page shows the service's answer in full.
    Then the screenshot for README, and the same answer on a phone-sized window."""
    info = client.get("/info").json()
    _draw_seven(page, _by_id(page, "canvas-left"))
    _draw_three(page, _by_id(page, "canvas-right"))
    assert _by_id(page, "source-left").text == "Your drawing (mouse)"
    assert _by_id(page, "source-right").text == "Your drawing (touch)"
    received = _click_and_wait(page, "compare")  # within WAIT_S: a bound on a hang, not a speed
    assert received["url"] == "compare" and received["status"] == 200, received
    answer = received["body"]
    assert answer["prior"] == "uniform"  # two drawings can be any pair of digits
    print(f"drawn 7 and 3, uniform prior: read {answer['digits']}, P(left > right) = {answer['probability']:.4f}")

    # What the page sent is what it drew, left on the left: a direct call on the canvases' PNGs answers the same.
    left_png, right_png = _canvas_png(page, "left"), _canvas_png(page, "right")
    direct = client.post("/compare", files={"left": ("left.png", left_png, "image/png"),
                                            "right": ("right.png", right_png, "image/png")},
                         data={"include_inputs": "true"})
    assert direct.status_code == 200, direct.text
    _assert_same_answer(answer, direct.json())
    # and the pictures shown are the preprocessed canvases, pixel for pixel
    for side, png in (("left", left_png), ("right", right_png)):
        shown = _image_pixels(_by_id(page, f"input-{side}").get_attribute("src"))
        np.testing.assert_array_equal(shown, prepare_digit(Image.open(io.BytesIO(png))))
        assert shown.max() > 0  # the strokes reached the canvas

    _assert_page_shows(page, answer, info, "compare")
    _layout_is_intact(page)
    assert _by_id(page, "status").text == "Your two digits, sent as two pictures to /compare."
    errors = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors  # no script error, no request the page's Content-Security-Policy refused
    fetched = page.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert fetched and all(url.startswith(f"{server.url}/") for url in fetched), fetched  # this origin only

    # The screenshot README shows: the whole page at a laptop's width (written to docs/ only when asked).
    height, chrome = page.execute_script("return [document.documentElement.scrollHeight, "
                                         "window.outerHeight - window.innerHeight]")
    page.set_window_size(1280, height + chrome)  # the window's size includes the browser's own bars
    with tempfile.TemporaryDirectory() as tmp:
        shot_path = SCREENSHOT if os.environ.get(SCREENSHOT_ENV) == "1" else Path(tmp) / SCREENSHOT.name
        shot_path.parent.mkdir(exist_ok=True)
        assert page.save_screenshot(str(shot_path))
        with Image.open(shot_path) as shot:
            assert shot.width == 1280 and shot.height >= height - 1

    # A phone: the same answer, the pads side by side, nothing wider than the screen.
    with _phone(page):
        _layout_is_intact(page)
        _assert_page_shows(page, answer, info, "compare")

    # Switching to the course prior asks the same question again under it.
    before = page.execute_script("return window.__answers.length")
    _select_prior(page, "course")
    _wait(page, lambda d: d.execute_script("return window.__answers.length") > before
          and _by_id(d, "result").get_attribute("data-state") == "done")
    course = page.execute_script("return window.__answers[window.__answers.length - 1]")
    assert course["url"] == "compare" and course["body"]["prior"] == "course", course
    direct = client.post("/compare", files={"left": ("left.png", left_png, "image/png"),
                                            "right": ("right.png", right_png, "image/png")},
                         data={"include_inputs": "true", "prior": "course"})
    _assert_same_answer(course["body"], direct.json())
    _assert_page_shows(page, course["body"], info, "compare")
    _select_prior(page, "auto")


def _select_prior(driver: WebDriver, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(_by_id(driver, "prior")).select_by_value(value)


def test_drawn_seven_and_three_under_the_uniform_prior(page, client):
    """The page's drawn 7 and 3 (the README's example), under the uniform prior the page sends them with: read
    as 7 and 3, left > right, with the probability the Bayes read-out gives (worked out here from the answer's
    digit probabilities and /info's digit frequencies), above the course stacker's answer for the same pair
    (7 vs 3 is rare in the course: it said 0.704 for the README's drawing).

    Measured with the models of 2026-12-02: 0.9967, course prior 0.9694; with those of 2026-11-29: 0.896 (the
    heads read the 7 at about 85% and the 3 at about 71%), course prior 0.704."""
    _draw_seven(page, _by_id(page, "canvas-left"))
    _draw_three(page, _by_id(page, "canvas-right"))
    answer = _click_and_wait(page, "compare")["body"]
    assert answer["prior"] == "uniform"
    assert (answer["digits"]["left"], answer["digits"]["right"]) == (7, 3), answer["digits"]
    q = np.asarray(client.get("/info").json()["priors"]["digit_frequencies"])
    left = np.asarray(answer["digit_probabilities"]["left"]) / q
    right = np.asarray(answer["digit_probabilities"]["right"]) / q
    weights = np.outer(left, right)  # weights[a, b]: left a, right b
    a, b = np.indices((10, 10))
    assert answer["probability"] == pytest.approx(weights[a > b].sum() / weights[a != b].sum(), abs=1e-4)
    course = client.post("/compare", files={"left": ("l.png", _canvas_png(page, "left"), "image/png"),
                                            "right": ("r.png", _canvas_png(page, "right"), "image/png")},
                         data={"prior": "course"}).json()
    print(f"drawn 7 and 3: uniform prior {answer['probability']:.4f}, course prior {course['probability']:.4f}")
    assert answer["greater"] and answer["probability"] >= UNIFORM_7_VS_3, answer["probability"]
    assert answer["probability"] > course["probability"]


def test_sample_pair_is_read_as_the_service_reads_it(page, client):
    """A random sample course pair: sent whole to /compare_pair; the page shows the service's digits and the
    pair's truth from samples/expected.json. Compare then sends its two halves to /compare."""
    info = client.get("/info").json()
    received = _click_and_wait(page, "sample")
    assert received["url"] == "compare_pair" and received["status"] == 200, received
    answer = received["body"]
    sample_id = _by_id(page, "sample-id").text
    expected = json.loads((SAMPLES / "expected.json").read_text())
    if sample_id == "pair.png":
        pixels = np.asarray(Image.open(SAMPLES / "pair.png").convert("L"))
        label, digits = expected["pair.png"]["label"], expected["pair.png"]["digits"]
        assert _by_id(page, "sample-truth").text == \
            f"{'left > right' if label else 'left < right'} ({digits[0]} and {digits[1]})"
    else:
        batch = load_course_npz(SAMPLES / "batch.npz")
        index = list(batch.ids).index(sample_id)
        pixels = batch.x[index]
        label = expected["batch.npz"]["labels"][expected["batch.npz"]["ids"].index(sample_id)]
        assert _by_id(page, "sample-truth").text == ("left > right" if label else "left < right")

    direct = client.post("/compare_pair", files={"image": ("pair.png", _png(pixels), "image/png")},
                         data={"include_inputs": "true"})
    assert direct.status_code == 200, direct.text
    _assert_same_answer(answer, direct.json())
    _assert_page_shows(page, answer, info, "compare_pair")
    assert [int(_by_id(page, f"digit-{side}").text) for side in ("left", "right")] == \
        [direct.json()["digits"]["left"], direct.json()["digits"]["right"]]
    for side, half in (("left", pixels[:, :28]), ("right", pixels[:, 28:])):  # a course pair is used as it is
        np.testing.assert_array_equal(_image_pixels(_by_id(page, f"input-{side}").get_attribute("src")), half)

    assert answer["prior"] == "course"  # a course pair: the course's prior
    # The same pair as two halves, two pictures, through /compare: still a course pair, so the course prior.
    received = _click_and_wait(page, "compare")
    assert received["url"] == "compare" and received["status"] == 200, received
    assert received["body"]["prior"] == "course"
    direct = client.post("/compare", files={"left": ("l.png", _png(pixels[:, :28]), "image/png"),
                                            "right": ("r.png", _png(pixels[:, 28:]), "image/png")},
                         data={"include_inputs": "true", "prior": "course"})
    _assert_same_answer(received["body"], direct.json())
    _assert_page_shows(page, received["body"], info, "compare")
    assert sample_id in _by_id(page, "status").text and "/compare." in _by_id(page, "status").text


def test_service_errors_are_shown_in_words_and_the_page_recovers(page, client, tmp_path):
    """A blank pad and an unreadable file: the service's refusal is shown in words, the layout holds, and
    the next comparison works."""
    _draw_three(page, _by_id(page, "canvas-right"))
    received = _click_and_wait(page, "compare")  # the left pad is blank
    assert received["status"] == 400, received
    direct = client.post("/compare", files={"left": ("left.png", _canvas_png(page, "left"), "image/png"),
                                            "right": ("right.png", _canvas_png(page, "right"), "image/png")})
    assert direct.status_code == 400 and received["body"] == direct.json()
    error = _by_id(page, "error")
    assert error.is_displayed() and error.text == f"The service could not use the input: {direct.json()['error']}"
    assert "left" in error.text and not _by_id(page, "answer").is_displayed()
    _layout_is_intact(page)

    # An unreadable file, chosen for the left side.
    junk = tmp_path / "not-a-picture.png"
    junk.write_bytes(b"this is a text file, not a picture")
    _by_id(page, "file-left").send_keys(str(junk))
    _wait(page, lambda d: _by_id(d, "source-left").text.endswith("(no preview)"))
    received = _click_and_wait(page, "compare")
    assert received["status"] == 400, received
    direct = client.post("/compare", files={"left": ("not-a-picture.png", junk.read_bytes(), "image/png"),
                                            "right": ("right.png", _canvas_png(page, "right"), "image/png")})
    assert direct.status_code == 400 and received["body"] == direct.json()
    assert error.is_displayed() and error.text == f"The service could not use the input: {direct.json()['error']}"
    _layout_is_intact(page)
    with _phone(page):  # a long message wraps on a phone too
        _layout_is_intact(page)

    # Drawing on the left replaces the file; the next answer replaces the error.
    _draw_seven(page, _by_id(page, "canvas-left"))
    received = _click_and_wait(page, "compare")
    assert received["status"] == 200, received
    assert not error.is_displayed() and _by_id(page, "answer").is_displayed()
    _assert_page_shows(page, received["body"], client.get("/info").json(), "compare")
