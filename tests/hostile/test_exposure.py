"""Exposure, against real servers: who may reach the service, with which name, and with what key.

`served` (tests/conftest.py) is the default: loopback, no key. Three more servers run beside it on
copies of its BentoML home: one bound to every interface with a key (`keyed`), one bound to every
interface without (`open_wide`), and the built Bento started without `--host` (`bento_default`).
A non-loopback arrival needs a non-loopback address of this machine; the test connects to that
address itself (`own_address`), and fails, never skips, where there is none.
"""

from __future__ import annotations

import contextlib
import html.parser
import io
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from monitoring.serve import command, render
from tests.helpers import BIN, FIXTURE, clean_env, free_port, second_server_env, serving
from tests.uploads import data_url
from tests.uploads import render as render_upload

pytestmark = pytest.mark.e2e
KEY = secrets.token_hex(16)
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
GUARDED = ["/predict", "/predict_batch", "/predict_npy", "/predict_image", "/predict_canvas"]
GUARDED += ["/explain", "/metrics"]


def own_address() -> str:
    """A non-loopback IPv4 address of this machine (the one its default route leaves by, else
    the first `ip -4 addr` lists); the test fails without one, as it cannot arrive otherwise."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.connect(("192.0.2.255", 9))  # UDP: nothing is sent, the kernel only picks a route
        address = s.getsockname()[0]
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    listed = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        address = line.split()[3].split("/")[0]
        if not address.startswith("127."):
            return address
    pytest.fail("this machine has no non-loopback IPv4 address: no request can arrive on one")


@pytest.fixture(scope="module")
def digit() -> np.ndarray:
    with np.load(FIXTURE) as f:
        return f["x_test"][0]


def requests_for(x: np.ndarray) -> dict[str, dict]:
    """A request each guarded path answers 200 to: path → requests kwargs."""
    png = render_upload(x, "canvas_png")
    buf = io.BytesIO()
    np.save(buf, x[None])
    return {
        "/predict": {"method": "POST", "json": {"image": x.tolist()}},
        "/predict_batch": {"method": "POST", "json": {"images": [x.tolist()]}},
        "/predict_npy": {"method": "POST", "files": {"array": ("b.npy", buf.getvalue())}},
        "/predict_image": {"method": "POST", "files": {"image": ("d.png", png, "image/png")}},
        "/predict_canvas": {"method": "POST", "json": {"data_url": data_url(png)}},
        "/explain": {"method": "POST", "json": {"image": x.tolist()}},
        "/metrics": {"method": "GET"},
    }


def send(url: str, path: str, spec: dict, **headers: str) -> requests.Response:
    kwargs = {k: v for k, v in spec.items() if k != "method"}
    return requests.request(spec["method"], f"{url}{path}", headers=headers, timeout=60, **kwargs)


SOURCE, BENTO = "service.service:DigitClassifier", "digit_classifier:latest"


@contextlib.contextmanager
def another_server(served: dict, name: str, target: str, extra: dict[str, str]) -> Iterator[dict]:
    """`bentoml serve target --port P` with no --host, on a copy of the fixture's home, with one
    worker and `extra` settings; a built Bento from an empty folder, as it would ship. Yields its
    url, port and log."""
    root = served["root"]
    env = {**second_server_env(served["env"], root / f"home-{name}"), "DIGIT_WORKERS": "1"}
    env.update(extra)
    port = free_port()
    cmd = [str(BIN / "bentoml"), "serve", target, "--port", str(port)]
    cwd = served["dir"] if target == SOURCE else root / f"cwd-{name}"
    cwd.mkdir(exist_ok=True)
    log = root / f"{name}.log"
    with serving(cmd, cwd, env, port, log) as url:
        yield {"url": url, "port": port, "log": log}


@pytest.fixture(scope="module")
def address() -> str:
    return own_address()


@pytest.fixture(scope="module")
def keyed(served, address) -> Iterator[dict]:
    """Bound to every interface (DIGIT_HOST) with a key, answering to this machine's address."""
    extra = {"DIGIT_HOST": "0.0.0.0", "DIGIT_API_KEY": KEY, "DIGIT_ALLOWED_HOSTS": address}
    with another_server(served, "keyed", SOURCE, extra) as s:
        yield s


@pytest.fixture(scope="module")
def open_wide(served, address) -> Iterator[dict]:
    """Bound to every interface (DIGIT_HOST) and no key."""
    extra = {"DIGIT_HOST": "0.0.0.0", "DIGIT_ALLOWED_HOSTS": address}
    with another_server(served, "open", SOURCE, extra) as s:
        yield s


# --- Host ---------------------------------------------------------------------------------------


def test_a_foreign_host_is_refused_and_the_loopback_names_pass(served, digit):
    url, port = served["url"], served["url"].rsplit(":", 1)[1]
    reqs = requests_for(digit)
    for path, spec in {**reqs, "/model": {"method": "GET"}, "/": {"method": "GET"}}.items():
        r = send(url, path, spec, Host=f"rebind.attacker.example:{port}")
        assert r.status_code == 400, (path, r.status_code, r.text[:200])
        assert r.headers["X-Reject-Reason"] == r.json()["reason"] == "unknown_host"
        assert "rebind.attacker.example" in r.json()["error"]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            assert send(url, path, spec, Host=host).status_code == 200, (path, host)
    for health in ("/livez", "/readyz"):  # probes name a pod's IP
        assert requests.get(f"{url}{health}", headers={"Host": "10.1.2.3"}, timeout=10).ok


def test_a_listed_host_passes_and_the_machines_own_address_is_not_listed_by_default(
    served, keyed, address, digit
):
    spec = requests_for(digit)["/predict"]
    with_key = {"Authorization": f"Bearer {KEY}"}
    assert send(keyed["url"], "/predict", spec, Host=address, **with_key).status_code == 200
    r = send(served["url"], "/predict", spec, Host=address)
    assert (r.status_code, r.json()["reason"]) == (400, "unknown_host")


# --- headers on the page ------------------------------------------------------------------------


class Inline(html.parser.HTMLParser):
    """Collects whatever a CSP without 'unsafe-inline' would block: inline scripts, styles,
    style attributes and event handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self.in_script = True
            if "src" not in names:
                self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name[:2] == "on"]

    def handle_endtag(self, tag: str) -> None:
        self.in_script = self.in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.found.append("script text")


def test_the_page_and_docs_send_security_headers_and_hold_nothing_inline(served):
    for path in ("/", "/docs"):
        r = requests.get(f"{served['url']}{path}", timeout=10)
        assert r.ok and r.headers["Content-Type"].startswith("text/html")
        csp = {d.split()[0]: d.split()[1:] for d in r.headers["Content-Security-Policy"].split(";")}
        assert csp["script-src"] == ["'self'"] and csp["style-src"][0] == "'self'"
        assert "'unsafe-inline'" not in r.headers["Content-Security-Policy"]
        assert all(s.startswith("'sha256-") for s in csp["style-src"][1:])  # Swagger's logo
        assert csp["frame-ancestors"] == ["'none'"] and csp["default-src"] == ["'self'"]
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        parser = Inline()
        parser.feed(r.text)
        assert parser.found == [], (path, parser.found)
    for path in ("/model", "/livez", "/static/page.js", "/docs.json", "/metrics"):
        r = requests.get(f"{served['url']}{path}", timeout=10)
        assert r.ok and r.headers["X-Content-Type-Options"] == "nosniff", path
        assert "Content-Security-Policy" not in r.headers, path


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"missing {missing}: scripts/apt-ensure chromium:chromium ... (make test)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(script), message=f"timed out waiting for: {script}"
    )


INJECT = """const s = document.createElement('script');
s.textContent = 'window.injected = true';
document.body.append(s);
return window.injected === true;"""


def test_a_browser_enforces_the_csp_and_the_page_and_docs_still_work(served, browser):
    """Both pages render fully with no script or style blocked, images from other sites are not
    fetched, and a script injected inline (what an XSS would do) does not run."""
    browser.get(f"{served['url']}/")
    wait_for(
        browser, "return document.getElementById('model-info').textContent.includes('version')"
    )
    reports = csp_reports(browser)
    assert browser.execute_script(INJECT) is False
    assert len(csp_reports(browser)) == 1  # the injection's own report: the log is read right
    browser.get(f"{served['url']}/docs")
    wait_for(browser, "return document.querySelectorAll('.opblock-summary-path').length >= 6")
    time.sleep(1)  # what the page loads after it rendered
    reports += csp_reports(browser)
    assert browser.execute_script(INJECT) is False
    # BentoML's default API description shows badges from shields.io and others: not fetched.
    external = [r for r in reports if re.search(r"Loading the image 'https://[^']+' violates", r)]
    assert [r for r in reports if r not in external] == [], reports


def csp_reports(driver) -> list[str]:
    """The console's CSP reports since the last call."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security" in e["message"]]


# --- the key ------------------------------------------------------------------------------------


def test_with_a_key_every_guarded_path_wants_it_and_health_and_the_page_stay_open(keyed, digit):
    url = keyed["url"]
    for path, spec in requests_for(digit).items():
        for headers in ({}, {"Authorization": "Bearer not-the-key"}, {"X-API-Key": KEY[:-1]}):
            r = send(url, path, spec, **headers)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.json()["reason"] == "unauthorized" and "Bearer" in r.json()["error"]
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
            r = send(url, path, spec, **headers)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
    for path in ("/livez", "/readyz", "/", "/model", "/static/page.js", "/docs"):
        assert requests.get(f"{url}{path}", timeout=10).status_code == 200, path


def test_a_key_also_admits_a_non_loopback_arrival(keyed, address, digit):
    there = f"http://{address}:{keyed['port']}"
    spec = requests_for(digit)["/predict"]
    assert send(there, "/predict", spec).status_code == 401
    assert send(there, "/predict", spec, Authorization=f"Bearer {KEY}").status_code == 200


def test_the_key_is_never_in_the_servers_log(keyed, digit):
    spec = requests_for(digit)["/predict"]
    assert send(keyed["url"], "/predict", spec).status_code == 401  # the key is in force
    assert send(keyed["url"], "/predict", spec, Authorization=f"Bearer {KEY}").ok
    log = keyed["log"].read_text(errors="replace")
    assert "Uvicorn running" in log or "listening" in log.lower()  # it is the server's log
    assert KEY not in log


def test_the_page_asks_for_the_key_and_then_answers(keyed, browser, digit, tmp_path):
    picture = tmp_path / "seven.png"
    picture.write_bytes(render_upload(digit, "canvas_png"))
    browser.get(f"{keyed['url']}/")
    wait_for(
        browser, "return document.getElementById('model-info').textContent.includes('version')"
    )
    browser.find_element("id", "file").send_keys(str(picture))
    wait_for(browser, "return !document.getElementById('key-form').hidden")
    error = browser.find_element("id", "error").text
    assert "API key" in error, error
    assert browser.execute_script("return window.digitPage.reply") is None
    browser.find_element("id", "api-key").send_keys(KEY)
    browser.find_element("css selector", "#key-form button").click()
    reply = wait_for(browser, "return window.digitPage.explanation && window.digitPage.reply")
    api = send(
        keyed["url"], "/predict_image", requests_for(digit)["/predict_image"], **{"X-API-Key": KEY}
    )
    assert reply["digit"] == api.json()["digit"]
    assert browser.find_element("id", "key-form").is_displayed() is False


def test_prometheus_scrapes_a_keyed_service_with_a_credentials_file(keyed, tmp_path):
    """What docs/serving.md tells an operator to add: the key in a file, named by the job."""
    key_file = tmp_path / "digit-api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    target = f"127.0.0.1:{keyed['port']}"
    ups = {}
    for name, key in (("with", key_file), ("without", None)):
        root = tmp_path / name
        config = render(root, target, interval="1s", key_file=key)
        assert KEY not in config.read_text()
        port = free_port()
        cmd = command(config, f"127.0.0.1:{port}", root / "tsdb")
        env = clean_env()
        with serving(cmd, root, env, port, root / "prometheus.log", 60, "/-/ready") as prom:
            ups[name] = scraped_up(prom)
    assert ups == {"with": 1.0, "without": 0.0}
    (default,) = yaml.safe_load(render(tmp_path / "default", target).read_text())["scrape_configs"]
    assert "authorization" not in default  # the config as shipped scrapes without a key


def scraped_up(prom: str, timeout: float = 20) -> float:
    """`up` of the service's job after its first scrape."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = requests.get(f"{prom}/api/v1/query", params={"query": "up"}, timeout=10).json()
        if reply["data"]["result"]:
            return float(reply["data"]["result"][0]["value"][1])
        time.sleep(0.5)
    raise AssertionError("Prometheus never scraped the service")


# --- where it listens ---------------------------------------------------------------------------


def test_exposed_without_a_key_it_answers_health_and_the_page_but_no_predictions(
    open_wide, address, digit
):
    there, here = f"http://{address}:{open_wide['port']}", open_wide["url"]
    for path, spec in requests_for(digit).items():
        r = send(there, path, spec)
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert r.json()["reason"] == "key_required" and "DIGIT_API_KEY" in r.json()["error"]
        assert send(here, path, spec).status_code == 200, path  # loopback: as before
    for path in ("/livez", "/readyz", "/", "/model"):
        assert requests.get(f"{there}{path}", timeout=10).status_code == 200, path


def test_a_built_bento_served_without_host_listens_on_loopback_only(served, bento_served, address):
    """`bentoml serve <bento>` as a user types it (the container runs the same): BentoML's own
    default would be 0.0.0.0."""
    with another_server(served, "bento-bind", BENTO, {}) as s:
        assert requests.get(f"{s['url']}/readyz", timeout=10).ok
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            sock.settimeout(5)
            sock.connect((address, s["port"]))
