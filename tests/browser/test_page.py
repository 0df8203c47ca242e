"""The web page as a person meets it: headless Chromium against a real `bentoml serve`.

One temp workspace trains the fixture model (`dvc repro`), packages it and serves it, as in
tests/e2e/test_service.py; Debian's Chromium is driven through its chromedriver with Selenium
(`make test` installs both when missing). Strokes are real pointer input (mouse, or touch on the
phone viewport) along fixture paths, uploads go through the page's file input, and what the page
shows is checked against what the HTTP API answers for the same pixels. The feedback tests click
the "Right?" row and the "Help label" panel and read what was stored straight from the served
feedback database (DIGIT_FEEDBACK_DB under the fixture's temp root) and from /metrics.

Screenshots land in tests/artifacts/browser/ (or $TEST_ARTIFACTS/browser/); with
UPDATE_SCREENSHOT=1 the desktop one is also written to docs/page.png for the README. While
working on the page, PAGE_TEST_URL=http://127.0.0.1:3000 runs them against a service already up.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
import requests
import sqlalchemy as sa

from common.feedback_store import FEEDBACK, FeedbackStore
from tests.helpers import (
    FIXTURE,
    REPO,
)
from tests.hostile.probe import metric
from tests.uploads import render

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def chromium_installed() -> None:
    """Fail (not skip) without a browser: `make test` installs it, so its absence is a bug."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, (
        f"missing {missing}: run `scripts/apt-ensure chromium:chromium "
        "chromedriver:chromium-driver` (make test does)"
    )


ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or REPO / "tests" / "artifacts") / "browser"
WAIT_S = 30
PHONE = {"width": 375, "height": 667, "deviceScaleFactor": 2, "mobile": True}

# Fixture strokes, as (x, y) fractions of the drawing area.
ONE = [(0.5, 0.18 + 0.64 * i / 12) for i in range(13)]  # a vertical line: a canonical "1"
SEVEN = [(0.25, 0.22), (0.45, 0.22), (0.72, 0.22), (0.62, 0.42), (0.52, 0.62), (0.44, 0.82)]


@pytest.fixture(scope="module")
def server(request) -> str:
    if os.environ.get("PAGE_TEST_URL"):  # while working on the page: an already running service
        return os.environ["PAGE_TEST_URL"].rstrip("/")
    return request.getfixturevalue("served")["url"]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1100,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


# --- helpers ------------------------------------------------------------------------------------


def open_page(driver, url: str) -> None:
    driver.get(f"{url}/")
    wait_for(driver, "return document.getElementById('model-info').textContent.includes('version')")


def wait_for(driver, script: str, timeout: float = WAIT_S):
    """Wait until the JS `script` returns something truthy; return it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(script), message=f"timed out waiting for: {script}"
    )


def draw(driver, path: list[tuple[float, float]], touch: bool = False) -> None:
    """One stroke on the drawing area with real pointer input (mouse, or a finger)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)
    w, h = pad.size["width"], pad.size["height"]
    kind = interaction.POINTER_TOUCH if touch else interaction.POINTER_MOUSE
    actions = ActionBuilder(driver, mouse=PointerInput(kind, kind), duration=15)
    pointer = actions.pointer_action

    def at(x: float, y: float) -> tuple[int, int]:  # offsets from the element's centre
        return round((x - 0.5) * w), round((y - 0.5) * h)

    pointer.move_to(pad, *at(*path[0]))
    pointer.pointer_down()
    for x, y in path[1:]:
        pointer.move_to(pad, *at(x, y))
    pointer.pointer_up()
    actions.perform()


def answered(driver, requests_before: int) -> dict:
    """Wait for the answer and the explanation to a request made after `requests_before`."""
    return wait_for(
        driver,
        f"""const s = window.digitPage;
        return s.requests > {requests_before} && s.explanation !== null
            && ['ready', 'low'].includes(document.getElementById('result').dataset.state)
            ? s : null;""",
    )


def requests_made(driver) -> int:
    return driver.execute_script("return window.digitPage.requests")


def shown(driver) -> dict:
    """What a person reads off the page: the digit, the bars, the winner, the error."""
    return driver.execute_script(
        """const $ = (s) => document.querySelector(s);
        const visible = (e) => e && !e.hidden && e.offsetParent !== null;
        const bars = [...document.querySelectorAll('#bars li')];
        return {
          digit: visible($('#digit')) ? $('#digit').textContent : null,
          confidence: $('#confidence').textContent,
          unsure: visible($('#unsure')) ? $('#unsure').textContent : null,
          bars: bars.filter(visible).map((li) => li.textContent),
          widths: bars.map((li) => li.querySelector('.bar > span').style.width),
          winners: bars.filter((li) => li.classList.contains('winner'))
              .map((li) => li.dataset.digit),
          error: visible($('#error')) ? $('#error').textContent : null,
          features: [...document.querySelectorAll('#features .grid')]
              .map((g) => g.querySelectorAll('canvas').length),
        };"""
    )


def about_panel(driver) -> dict:
    """What the "About this model" panel shows: its facts by key, the recall row, the card link."""
    return driver.execute_script(
        """const visible = (e) => e && !e.hidden && e.offsetParent !== null;
        const facts = {};
        for (const dd of document.querySelectorAll('#about-facts dd')) {
          if (visible(dd)) facts[dd.dataset.key] = dd.textContent;
        }
        const card = document.getElementById('about-card');
        return {
          open: document.getElementById('about').open,
          facts,
          titles: Object.fromEntries([...document.querySelectorAll('#about-facts dd')]
              .map((dd) => [dd.dataset.key, dd.title])),
          recall: [...document.querySelectorAll('#about-recall li')].filter(visible)
              .map((li) => [li.dataset.digit, li.lastChild.textContent]),
          card: visible(card) ? card.getAttribute('href') : null,
        };"""
    )


def js_percent(p: float) -> str:
    """The page's own percent(): whole numbers at the ends, one decimal between."""
    return f"{100 * p:.{0 if p >= 0.9995 or p < 0.0005 else 1}f}%"


def canvas_pixels(driver, element_id: str) -> np.ndarray:
    """The red channel of a canvas on the page, as uint8 rows."""
    return pixels_at(driver, f"#{element_id}")


def pixels_at(driver, selector: str) -> np.ndarray:
    """The red channel of the canvas a CSS selector finds, as uint8 rows."""
    rows = driver.execute_script(
        """const c = document.querySelector(arguments[0]);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const rows = [];
        for (let r = 0; r < c.height; r++) {
          rows.push([]);
          for (let x = 0; x < c.width; x++) rows[r].push(d[4 * (r * c.width + x)]);
        }
        return rows;""",
        selector,
    )
    return np.array(rows, dtype=np.uint8)


PRIVACY = (
    "Sending stores this 28×28 drawing and your answer in the service's feedback database; "
    "nothing is kept unless you send it."
)


def right_row(driver) -> dict:
    """What the "Right?" row under the answer shows, and which of its buttons can be pressed."""
    return driver.execute_script(
        """const $ = (s) => document.querySelector(s);
        const visible = (e) => e && !e.hidden && e.offsetParent !== null;
        const digits = [...document.querySelectorAll('#fb-digits button')];
        const buttons = [$('#fb-yes'), $('#fb-unsure'), ...digits].filter(visible);
        return {
          shown: visible($('#feedback')),
          yes: visible($('#fb-yes')),
          unsure: visible($('#fb-unsure')),
          digits: digits.filter(visible).map((b) => b.textContent),
          enabled: buttons.filter((b) => !b.disabled).length,
          privacy: visible($('#feedback .privacy'))
              ? $('#feedback .privacy').textContent.replace(/\\s+/g, ' ').trim() : null,
        };"""
    )


def feedback_result(driver) -> str:
    """The line under the row once a send is over: the thanks, or the refusal's message."""
    return wait_for(
        driver,
        """const e = document.getElementById('fb-result');
        return !e.hidden && e.dataset.state !== 'busy' && e.textContent;""",
    )


def stored_row(served: dict, row_id: int) -> dict:
    """The feedback row as the served database holds it (seen as 28×28 uint8)."""
    store = FeedbackStore(served["env"]["DIGIT_FEEDBACK_DB"])
    try:
        with store.engine.connect() as conn:
            query = sa.select(FEEDBACK).where(FEEDBACK.c.id == row_id)
            row = conn.execute(query).mappings().one()
    finally:
        store.close()
    return {**row, "seen": np.frombuffer(row["seen"], np.uint8).reshape(28, 28)}


def stored_rows(served: dict) -> int:
    store = FeedbackStore(served["env"]["DIGIT_FEEDBACK_DB"])
    try:
        return store.count()
    finally:
        store.close()


def help_items(driver) -> list[dict]:
    """The drawings the "Help label" panel lists: their ids and what it says of each."""
    return driver.execute_script(
        """return [...document.querySelectorAll('#help-items li')].map((li) => ({
          id: Number(li.dataset.id),
          said: li.querySelector('.said').textContent,
          buttons: [...li.querySelectorAll('button')].map((b) => b.textContent),
        }));"""
    )


def overflow(driver) -> dict:
    """How far anything on the page reaches past the viewport's right edge."""
    return driver.execute_script(
        """const w = window.innerWidth;
        const over = [...document.querySelectorAll('body *')]
            .filter((e) => e.getBoundingClientRect().right > w + 0.5)
            .map((e) => e.tagName + '#' + e.id + '.' + e.className);
        return {width: w, scrollWidth: document.documentElement.scrollWidth, over};"""
    )


def js_errors(driver) -> list[str]:
    """Console errors other than the failed requests a test provokes on purpose."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


def upload(driver, path: Path) -> None:
    driver.find_element("id", "file").send_keys(str(path))


def screenshot(driver, name: str, width: int = 1100) -> Path:
    """The whole page at `width` CSS px into the artifacts folder."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": height})
    target = ARTIFACTS / name
    target.write_bytes(driver.get_screenshot_as_png())
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return target


def readme_image(png: Path, dest: Path = REPO / "docs" / "page.png") -> None:
    """A real run's screenshot, made small for the repository (256 colours, under 200 KB)."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    if image.width > 1000:
        image = image.resize((1000, round(image.height * 1000 / image.width)), Image.LANCZOS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    assert len(buf.getvalue()) < 200_000, f"screenshot is {len(buf.getvalue())} bytes"
    dest.write_bytes(buf.getvalue())


# --- tests --------------------------------------------------------------------------------------


def test_drawn_one_is_answered_like_the_api_answers_its_pixels(server, browser):
    open_page(browser, server)
    before = requests_made(browser)
    draw(browser, ONE)
    state = answered(browser, before)
    page = shown(browser)
    reply = state["reply"]

    assert page["digit"] == str(reply["digit"]) == "1", page
    assert len(page["bars"]) == 10 and [b[0] for b in page["bars"]] == list("0123456789")
    assert page["winners"] == [page["digit"]]
    assert page["error"] is None
    # The same 28×28 through the pixel endpoint gives the same digit and probabilities.
    api = requests.post(f"{server}/predict", json={"image": reply["seen"]}, timeout=30).json()
    assert api["digit"] == reply["digit"]
    assert np.allclose(api["probabilities"], reply["probabilities"], atol=1e-4)
    # "What the model saw" is those pixels, and "Why" shows two conv layers and the heat-maps.
    assert np.array_equal(canvas_pixels(browser, "seen"), np.array(reply["seen"], np.uint8))
    assert page["features"] == [len(f["maps"]) for f in state["explanation"]["features"]]
    assert len(page["features"]) == 2 and min(page["features"]) > 0
    assert canvas_pixels(browser, "gradcam").max() > 0
    assert canvas_pixels(browser, "saliency").max() > 0
    # Everything the page loaded came from the service itself (works offline, no CDN).
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)"
    )
    assert set(origins) <= {server}, origins
    assert js_errors(browser) == []


def test_undo_clear_and_predict_button(server, browser):
    open_page(browser, server)
    draw(browser, SEVEN[:3])  # the bar of a 7 alone
    bar_seen = answered(browser, 0)["reply"]["seen"]
    bar_pad = canvas_pixels(browser, "pad")
    before = requests_made(browser)
    draw(browser, SEVEN[2:])
    assert answered(browser, before)["reply"]["seen"] != bar_seen
    assert not np.array_equal(canvas_pixels(browser, "pad"), bar_pad)
    before = requests_made(browser)
    browser.find_element("id", "undo").click()  # back to the bar: the stroke is gone, asked again
    state = answered(browser, before)
    assert np.array_equal(canvas_pixels(browser, "pad"), bar_pad)
    assert state["reply"]["seen"] == bar_seen
    browser.find_element("id", "clear").click()
    assert browser.execute_script("return document.getElementById('result').dataset.state") == (
        "empty"
    )
    assert canvas_pixels(browser, "pad").max() == 0  # the drawing area is black again
    # Predict on an empty pad says what to do; after drawing, the keyboard's Enter on Predict works.
    browser.find_element("id", "predict").click()
    assert "Draw a digit first" in wait_for(
        browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent"
    )
    before = requests_made(browser)
    draw(browser, ONE)
    answered(browser, before)
    from selenium.webdriver.common.keys import Keys

    before = requests_made(browser)
    browser.find_element("id", "predict").send_keys(Keys.ENTER)
    assert answered(browser, before)["reply"]["digit"] == 1
    assert js_errors(browser) == []


def test_uploaded_test_digit_gets_its_label_and_preview(server, browser, tmp_path):
    with np.load(FIXTURE) as f:
        x, y = f["x_test"], f["y_test"]
    # A real test digit the service classifies right (the fixture model is small, not perfect).
    for i in range(20):
        png = render(x[i], "canvas_png")
        files = {"image": ("digit.png", png, "image/png")}
        api = requests.post(f"{server}/predict_image", files=files, timeout=30).json()
        if api["digit"] == y[i]:
            break
    else:
        pytest.fail("the fixture model got none of the first 20 test digits right")
    path = tmp_path / f"digit-{y[i]}.png"
    path.write_bytes(png)

    open_page(browser, server)
    upload(browser, path)
    state = answered(browser, 0)
    page = shown(browser)
    assert page["digit"] == str(y[i]), page
    assert len(page["bars"]) == 10
    assert state["reply"]["seen"] == api["seen"]
    assert np.array_equal(canvas_pixels(browser, "seen"), np.array(api["seen"], np.uint8))
    # The same picture dropped on the upload area.
    before = requests_made(browser)
    browser.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        const drop = document.getElementById('drop');
        for (const type of ['dragenter', 'dragover', 'drop']) {
          drop.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true,
                                                  dataTransfer: files}));
        }""",
        base64.b64encode(png).decode(),
    )
    state = answered(browser, before)
    assert state["reply"]["seen"] == api["seen"] and shown(browser)["digit"] == str(y[i])
    assert js_errors(browser) == []


def test_text_upload_shows_the_services_error_and_the_page_keeps_working(server, browser, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a picture of a digit\n")
    open_page(browser, server)
    upload(browser, path)
    message = wait_for(
        browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent"
    )
    expected = requests.post(
        f"{server}/predict_image", files={"image": ("notes.txt", path.read_bytes())}, timeout=30
    )
    assert expected.status_code == 400
    assert message == expected.json()["error"]
    assert shown(browser)["digit"] is None  # no stale or made-up answer under the error
    # Still works: draw, and the error gives way to an answer.
    before = requests_made(browser)
    draw(browser, ONE)
    answered(browser, before)
    page = shown(browser)
    assert page["error"] is None and page["digit"] == "1"
    assert js_errors(browser) == []


def test_phone_viewport_fits_and_draws_by_touch(server, browser):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    open_page(browser, server)
    before = requests_made(browser)
    draw(browser, ONE, touch=True)
    answered(browser, before)
    assert shown(browser)["digit"] == "1"
    layout = browser.execute_script(
        """const w = window.innerWidth;
        const over = [...document.querySelectorAll('body *')]
            .filter((e) => e.getBoundingClientRect().right > w + 0.5)
            .map((e) => e.tagName + '#' + e.id + '.' + e.className);
        const pad = document.getElementById('pad').getBoundingClientRect();
        return {width: w, scrollWidth: document.documentElement.scrollWidth, over,
                pad: [pad.left, pad.right, pad.width, pad.height]};"""
    )
    assert layout["width"] == PHONE["width"]
    assert layout["scrollWidth"] <= PHONE["width"], layout
    assert layout["over"] == [], layout
    assert about_panel(browser)["open"] is False  # collapsed until asked
    browser.find_element("css selector", "#about summary").click()
    wait_for(browser, "return document.querySelectorAll('#about-recall li').length === 10")
    layout = browser.execute_script(
        """const w = window.innerWidth;
        const over = [...document.querySelectorAll('body *')]
            .filter((e) => e.getBoundingClientRect().right > w + 0.5)
            .map((e) => e.tagName + '#' + e.id + '.' + e.className);
        const pad = document.getElementById('pad').getBoundingClientRect();
        return {width: w, scrollWidth: document.documentElement.scrollWidth, over,
                pad: [pad.left, pad.right, pad.width, pad.height]};"""
    )
    assert layout["scrollWidth"] <= PHONE["width"] and layout["over"] == [], layout  # opened too
    left, right, width, height = layout["pad"]
    assert left >= 0 and right <= PHONE["width"] and width >= 280 and abs(width - height) < 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "page-phone.png").write_bytes(browser.get_screenshot_as_png())
    assert js_errors(browser) == []


def test_low_confidence_says_not_sure(server, browser):
    open_page(browser, server)
    # The service's real reply, its probabilities replaced by an undecided 4-or-9.
    browser.execute_script(
        """const real = window.fetch;
        window.fetch = async (path, init) => {
          const response = await real(path, init);
          if (path !== '/predict_canvas') return response;
          const body = await response.json();
          body.probabilities = [0, 0, 0, 0.02, 0.47, 0, 0, 0.06, 0, 0.45];
          body.digit = 4;
          body.confidence = 0.47;
          return new Response(JSON.stringify(body), {status: 200});
        };"""
    )
    draw(browser, ONE)
    answered(browser, 0)
    page = shown(browser)
    assert page["unsure"] == "Not sure: looks like 4 or 9"
    assert page["digit"] == "4" and page["winners"] == ["4"]
    assert page["confidence"] == "Confidence 47.0%"
    assert browser.execute_script("return document.getElementById('result').dataset.state") == (
        "low"
    )


def test_about_this_model_shows_what_model_says(server, browser):
    model = requests.get(f"{server}/model", timeout=10).json()
    open_page(browser, server)
    wait_for(browser, "return document.getElementById('about-status').hidden")
    assert about_panel(browser)["open"] is False
    browser.find_element("css selector", "#about summary").click()
    panel = about_panel(browser)
    facts = panel["facts"]
    assert panel["open"] is True
    assert facts["version"] == f"{model['name']} version {model['version']}"
    assert model["bento_tag"] in panel["titles"]["version"]
    assert facts["accuracy"].startswith(f"{100 * model['test_accuracy']:.2f}%")
    assert f"(ECE) {100 * model['ece']:.2f}%" in facts["accuracy"]
    # the recall of all ten digits, in order, as /model says
    recall = model["per_class_recall"]
    assert panel["recall"] == [[str(d), js_percent(recall[str(d)])] for d in range(10)]
    arch = model["architecture"]
    assert facts["architecture"].startswith(
        f"{len(arch['layers'])} layers · {arch['parameters']:,} parameters · "
        f"{arch['multiply_adds'] / 1e6:.1f} M multiply-adds"
    )
    params = model["params"]
    assert f"{params['train.epochs']} epochs" in facts["recipe"]
    assert f"batch size {params['train.batch_size']}" in facts["recipe"]
    assert f"learning rate {params['train.learning_rate']}" in facts["recipe"]
    augment = {k: params[f"train.augment.{k}"] for k in ("rotation_degrees", "zoom", "translation")}
    assert float(augment["translation"]) > 0  # the served fixture model's (SERVICE_PARAMS)
    for key, text in [
        ("rotation_degrees", f"rotation ±{augment['rotation_degrees']}°"),
        ("zoom", f"zoom ±{augment['zoom']}"),
        ("translation", f"translation ±{augment['translation']}"),
    ]:
        assert (text in facts["recipe"]) == (float(augment[key]) > 0), (key, facts["recipe"])
    assert facts["trained"] == model["trained_at"] != ""
    assert facts["commit"] == model["git_commit"][:12] + (
        "-dirty" if model["git_commit"].endswith("-dirty") else ""
    )
    assert facts["data"] == model["data_hash"][:12]
    assert all(md5 in panel["titles"]["data"] for md5 in model["data_md5"].values())
    assert panel["card"] == "/model/card"
    assert js_errors(browser) == []


def test_controls_are_labelled_and_reachable_by_keyboard(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server)
    unnamed = browser.execute_script(
        """return [...document.querySelectorAll('button, input, a, canvas, output')]
            .filter((e) => !(e.getAttribute('aria-label') || e.textContent.trim()
                             || (e.labels && e.labels.length)))
            .map((e) => e.outerHTML.slice(0, 80));"""
    )
    assert unnamed == []
    reached = []
    for _ in range(12):  # real key presses (an element's send_keys would fill the file input)
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.append(browser.execute_script("return document.activeElement.id"))
    assert {"predict", "undo", "clear", "file"} <= set(reached), reached


def test_screenshot_of_a_prediction(server, browser):
    """The artifact (and, with UPDATE_SCREENSHOT=1, the README's image) from a real run."""
    open_page(browser, server)
    draw(browser, SEVEN)
    answered(browser, 0)
    browser.find_element("css selector", "#about summary").click()  # "About this model" too
    wait_for(browser, "return document.querySelectorAll('#about-recall li').length === 10")
    png = screenshot(browser, "page.png")
    assert png.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        readme_image(png)


def test_swagger_ui_stays_at_docs(server, browser):
    open_page(browser, server)
    link = browser.find_element("css selector", "nav a[href='/docs']")
    link.click()
    # Swagger UI renders the spec's operations, the new /explain among them.
    wait_for(browser, "return document.querySelectorAll('.opblock').length > 0")
    text = browser.find_element("id", "swagger-ui").text
    assert "/predict_canvas" in text and "/explain" in text


def test_explain_endpoint_answers_and_refuses(server):
    with np.load(FIXTURE) as f:
        x = f["x_test"][0]
    reply = requests.post(f"{server}/explain", json={"image": x.tolist()}, timeout=30)
    assert reply.status_code == 200 and reply.headers["X-Model-Version"]
    body = reply.json()
    api = requests.post(f"{server}/predict", json={"image": x.tolist()}, timeout=30).json()
    assert body["digit"] == api["digit"]
    assert np.allclose(body["probabilities"], api["probabilities"], atol=1e-4)
    for name in ("gradcam", "saliency"):
        heat = np.array(body[name])
        assert heat.shape == (28, 28) and heat.min() >= 0 and heat.max() == 255, name
    first, second = body["features"]
    assert np.array(first["maps"]).shape == (min(first["channels"], 16), 28, 28)
    assert np.array(second["maps"]).shape[1:] == (14, 14)  # after the first 2×2 pool
    bad = requests.post(f"{server}/explain", json={"image": [[1, 2]]}, timeout=30)
    assert bad.status_code == 400 and bad.headers["X-Reject-Reason"] == "wrong_shape"
    assert "/predict_image" in bad.json()["error"]  # the hint says where a good image comes from


# --- feedback -----------------------------------------------------------------------------------


def test_right_row_stores_what_the_person_says(served, browser):
    """A drawn answer, "it was a …" and then "Yes" on another: each click stores one row holding
    the pixels the model saw, the answer and the label; nothing is stored before a click."""
    url = served["url"]
    settings = requests.get(f"{url}/feedback", timeout=10).json()
    assert settings["enabled"] is True, settings
    open_page(browser, url)
    wait_for(browser, "return window.digitPage.feedback.loaded")
    assert right_row(browser)["shown"] is False  # no answer yet, nothing to say "Right?" to
    rows = stored_rows(served)
    before = requests_made(browser)
    draw(browser, ONE)
    reply = answered(browser, before)["reply"]
    assert reply["prediction_id"], reply
    row = right_row(browser)
    assert row["shown"] and row["yes"] and row["digits"] == list("0123456789"), row
    assert row["unsure"] == (reply["confidence"] < settings["queue_below"]), (row, reply)
    assert row["privacy"] == PRIVACY
    assert stored_rows(served) == rows  # an answer alone keeps nothing

    wrong = 7 if reply["digit"] != 7 else 3
    series = {"answered": str(reply["digit"]), "model_version": reply["model_version"]}
    counted = metric(url, "digit_feedback_total", **series, label=str(wrong), correct="no")
    browser.find_element("css selector", f"#fb-digits button[data-label='{wrong}']").click()
    assert feedback_result(browser) == f"Thanks — stored: it was a {wrong}."
    last = browser.execute_script("return window.digitPage.feedback.last")
    assert last["stored"] is True and last["label"] == wrong and last["correct"] is False, last
    assert last["model_version"] == reply["model_version"]
    db = stored_row(served, last["id"])
    assert np.array_equal(db["seen"], np.array(reply["seen"], np.uint8))
    assert (db["answered"], db["label"], db["model_version"]) == (
        reply["digit"],
        wrong,
        reply["model_version"],
    )
    assert db["key"] == reply["prediction_id"].rsplit(".", 1)[1]
    assert db["confidence"] == pytest.approx(reply["confidence"], abs=1e-6)
    assert stored_rows(served) == rows + 1
    assert metric(url, "digit_feedback_total", **series, label=str(wrong), correct="no") == (
        counted + 1
    )
    assert right_row(browser)["enabled"] == 0  # one answer is labelled once

    # Another drawing: a fresh row, and "Yes" stores the answer as its label.
    browser.find_element("id", "clear").click()
    assert right_row(browser)["shown"] is False
    before = requests_made(browser)
    draw(browser, SEVEN)
    reply = answered(browser, before)["reply"]
    row = right_row(browser)
    assert row["shown"] and row["enabled"] == 11 + row["unsure"], row
    assert browser.execute_script("return document.getElementById('fb-result').hidden")
    series = {"answered": str(reply["digit"]), "model_version": reply["model_version"]}
    yes = {**series, "label": str(reply["digit"]), "correct": "yes"}
    counted = metric(url, "digit_feedback_total", **yes)
    browser.find_element("id", "fb-yes").click()
    assert feedback_result(browser) == "Thanks — stored: the answer was right."
    last = browser.execute_script("return window.digitPage.feedback.last")
    assert last["label"] == reply["digit"] and last["correct"] is True, last
    db = stored_row(served, last["id"])
    assert db["label"] == db["answered"] == reply["digit"]
    assert np.array_equal(db["seen"], np.array(reply["seen"], np.uint8))
    assert metric(url, "digit_feedback_total", **yes) == counted + 1

    # An answer without a prediction id (the loop off, or an older service) gets no row.
    browser.execute_script(
        """const real = window.fetch;
        window.fetch = async (path, init) => {
          const response = await real(path, init);
          if (path !== '/predict_canvas') return response;
          const body = await response.json();
          body.prediction_id = null;
          return new Response(JSON.stringify(body), {status: 200});
        };"""
    )
    before = requests_made(browser)
    browser.find_element("id", "predict").click()
    answered(browser, before)
    assert right_row(browser)["shown"] is False
    # A service whose GET /feedback says the loop is off: no row, no "Help label" panel.
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": """const real = window.fetch;
            window.fetch = async (path, init) => {
              const response = await real(path, init);
              if (path !== '/feedback' || (init && init.method)) return response;
              const body = await response.json();
              return new Response(JSON.stringify({...body, enabled: false}), {status: 200});
            };"""
        },
    )
    open_page(browser, url)
    wait_for(browser, "return window.digitPage.feedback.loaded")
    assert browser.execute_script("return document.getElementById('help-card').hidden") is True
    before = requests_made(browser)
    draw(browser, ONE)
    assert answered(browser, before)["reply"]["prediction_id"]
    assert right_row(browser)["shown"] is False
    assert js_errors(browser) == []


def unsure_picture(url: str, below: float) -> tuple[bytes, dict]:
    """A picture the served model answers with confidence under `below`: two test digits of
    different classes drawn over each other (found through the API, nothing stored)."""
    with np.load(FIXTURE) as f:
        x, y = f["x_test"], f["y_test"]
    for i in range(60):
        j = next(k for k in range(i + 1, len(y)) if y[k] != y[i])
        for x28 in (x[i], np.maximum(x[i], x[j]), ((x[i].astype(int) + x[j]) // 2)):
            png = render(np.asarray(x28, np.uint8), "canvas_png")
            files = {"image": ("digit.png", png, "image/png")}
            api = requests.post(f"{url}/predict_image", files=files, timeout=30).json()
            if api["confidence"] < below:
                return png, api
    pytest.fail(f"no test digit or overlay of two gets under {below} confidence")


def test_help_label_panel_labels_what_people_were_unsure_of(served, browser, tmp_path):
    """A "Not sure" on a low-confidence answer stores it unlabelled; the "Help label" panel lists
    it as the queue API does, and a helper's click stores its label and takes it off the list."""
    url = served["url"]
    below = requests.get(f"{url}/feedback", timeout=10).json()["queue_below"]
    png, api = unsure_picture(url, below)
    path = tmp_path / "unsure.png"
    path.write_bytes(png)
    open_page(browser, url)
    wait_for(browser, "return window.digitPage.feedback.loaded")
    upload(browser, path)
    reply = answered(browser, 0)["reply"]
    assert reply["seen"] == api["seen"] and reply["confidence"] < below, reply
    assert right_row(browser)["unsure"] is True
    series = {"answered": str(reply["digit"]), "model_version": reply["model_version"]}
    counted = metric(url, "digit_feedback_total", **series, label="none", correct="unknown")
    browser.find_element("id", "fb-unsure").click()
    assert feedback_result(browser).startswith("Thanks — stored: a helper can label it")
    last = browser.execute_script("return window.digitPage.feedback.last")
    assert last["label"] is None and last["correct"] is None, last
    db = stored_row(served, last["id"])
    assert db["label"] is None and db["review_label"] is None
    assert np.array_equal(db["seen"], np.array(reply["seen"], np.uint8))
    assert metric(url, "digit_feedback_total", **series, label="none", correct="unknown") == (
        counted + 1
    )

    # The panel: collapsed until opened, then the queue as the API gives it.
    assert browser.execute_script("return document.getElementById('help').open") is False
    browser.find_element("css selector", "#help summary").click()
    mine = f"#help-items li[data-id='{last['id']}']"
    wait_for(browser, f"return document.querySelector({mine!r}) !== null")
    queue = requests.get(f"{url}/feedback/queue", timeout=10).json()
    listed = help_items(browser)
    assert [i["id"] for i in listed] == [i["id"] for i in queue["items"]]
    item = next(i for i in listed if i["id"] == last["id"])
    assert item["said"] == (
        f"The model said {reply['digit']} ({js_percent(db['confidence'])}); "
        "the sender was not sure."
    )
    assert item["buttons"] == list("0123456789")
    assert np.array_equal(pixels_at(browser, f"{mine} canvas"), db["seen"])
    # It fits a phone, list and all.
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    layout = overflow(browser)
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert layout["scrollWidth"] <= PHONE["width"] and layout["over"] == [], layout

    label = (reply["digit"] + 1) % 10
    reviews = metric(url, "digit_feedback_reviews_total", label=str(label))
    browser.find_element("css selector", f"{mine} button[data-label='{label}']").click()
    wait_for(browser, f"return document.querySelector({mine!r}) === null")
    assert stored_row(served, last["id"])["review_label"] == label
    assert metric(url, "digit_feedback_reviews_total", label=str(label)) == reviews + 1
    done = browser.execute_script("return window.digitPage.feedback.reviewed")
    assert done[-1] == {"reviewed": last["id"], "label": label}
    queue = requests.get(f"{url}/feedback/queue", timeout=10).json()
    assert last["id"] not in [i["id"] for i in queue["items"]]

    # Label the rest (other tests' unsure answers) until the panel has nothing left to show.
    status = "return document.getElementById('help-status').textContent"
    for _ in range(30):
        wait_for(
            browser,
            "return !document.getElementById('help-status').textContent.startsWith('Loading')",
        )
        if browser.execute_script(status) == "Nothing to label":
            break
        first = help_items(browser)[0]["id"]
        browser.find_element("css selector", f"#help-items li[data-id='{first}'] button").click()
        wait_for(browser, f"return !document.querySelector('#help-items li[data-id=\"{first}\"]')")
    assert browser.execute_script(status) == "Nothing to label"
    assert requests.get(f"{url}/feedback/queue", timeout=10).json()["items"] == []
    assert js_errors(browser) == []
