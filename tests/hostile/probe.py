"""What the hostile-input tests measure on the real server: its processes (every worker and
decoder child, found from the listening port), their memory and CPU, its metrics, and the
latency of valid requests sent while an attack is in flight."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import psutil
import requests

from tests.helpers import FIXTURE

JSON = {"Content-Type": "application/json"}


def digit_image() -> list[list[int]]:
    """A real MNIST digit from the test fixture, as /predict takes it."""
    with np.load(FIXTURE) as data:
        return data["x_test"][0].tolist()


def processes(url: str) -> list[psutil.Process]:
    """The server's whole process group: the BentoML arbiter, its workers, decoder children."""
    port = urlparse(url).port
    owner = next(
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    )
    group = os.getpgid(owner)
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == group:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def rss_bytes(url: str) -> int:
    """Resident memory of the whole server now."""
    total = 0
    for proc in processes(url):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def cpu_seconds(url: str) -> float:
    """CPU time the server's live processes have used (user + system), children included."""
    total = 0.0
    for proc in processes(url):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


class PeakMemory:
    """Samples the server's resident memory in the background; `peak` after the block."""

    def __init__(self, url: str, every_s: float = 0.05) -> None:
        self.url, self.every_s, self.peak = url, every_s, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.peak = rss_bytes(self.url)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.url))
            self._stop.wait(self.every_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample over the series matching `labels`."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(series.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def server_errors(url: str) -> float:
    """5xx responses BentoML has counted, every endpoint, but the 503s: those are the deliberate
    back-pressure (`overloaded`, with Retry-After), a server fault is any other."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bentoml_service_request_total{")
        and re.search(r'http_response_code="5(?!03)\d\d"', line)
    )


def latencies_while(url: str, attack: Callable[[], None], at_least_s: float = 3.0) -> list[float]:
    """Seconds each valid /predict took, sent one after another while `attack()` runs in
    background threads (and for at least `at_least_s`)."""
    body = json.dumps({"image": digit_image()})
    done = threading.Event()

    def run() -> None:
        try:
            attack()
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    session, took = requests.Session(), []
    started = time.monotonic()
    while not done.is_set() or time.monotonic() - started < at_least_s:
        t = time.perf_counter()
        reply = session.post(f"{url}/predict", data=body, headers=JSON, timeout=30)
        took.append(time.perf_counter() - t)
        assert reply.status_code == 200, reply.text[:300]
    thread.join()
    return took


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
