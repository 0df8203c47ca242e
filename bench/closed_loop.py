"""A bounded closed-loop load on loopback for changing a server under traffic (a hot swap, a
rolling replacement), in tests and in `make bench`: N keep-alive connections, each sending its
next request as soon as the last reply came, for a fixed time; every reply or failure is
recorded, none is retried. (wrk, bench/load.py, is cheaper, but cannot say which model answered
each reply and when.)"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    started: float  # time.monotonic() when the request was sent
    seconds: float
    status: int  # 0: no HTTP reply (connection refused, reset, timed out)
    version: str  # the body's model_version ("" when none)
    header: str  # X-Model-Version
    error: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.seconds


@dataclass
class Load:
    """`with Load(url, body): ...` runs the load while the block runs, then `.replies`."""

    url: str
    body: bytes
    path: str = "/predict"
    connections: int = 16
    pause_s: float = 0.0  # per connection between a reply and its next request (0: none)
    timeout_s: float = 35.0  # past BentoML's 30 s request timeout
    replies: list[Reply] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.connections):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)

    def _client(self) -> None:
        where = urlsplit(self.url)
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=self.timeout_s)
        headers = {"Content-Type": "application/json"}
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn.request("POST", self.path, self.body, headers)
                response = conn.getresponse()
                data = response.read()
                version = json.loads(data).get("model_version", "") if data else ""
                reply = Reply(
                    started,
                    time.monotonic() - started,
                    response.status,
                    str(version),
                    response.getheader("X-Model-Version", ""),
                )
            except (OSError, http.client.HTTPException, ValueError) as exc:
                reply = Reply(started, time.monotonic() - started, 0, "", "", repr(exc))
                conn.close()  # a fresh connection for the next request
            self.replies.append(reply)  # list.append is atomic: no lock needed
            if self.pause_s:
                self._stop.wait(self.pause_s)

    def failures(self) -> list[Reply]:
        return [r for r in self.replies if not 200 <= r.status < 300]
