"""Limits below the ASGI app: the size and the time of a request's head, and connections per worker.

uvicorn with httptools bounds none of them. A head of any size was buffered, each piece appended
to the last (a 64 MiB header took 10 s of a worker's CPU and ~100 MB, then was answered 200); a
client that dribbles its head, or sends nothing, held its connection forever; connections were
accepted without limit, until the process ran out of file descriptors. BentoML builds
`uvicorn.Config` itself (`_bentoml_impl/worker/service.py`) with the default `http="auto"` and no
way to pass limits, but its worker imports the service module first: so `install_limits()`,
called by service/service.py, points uvicorn's "auto" protocol at `BoundedHttpTools`, uvicorn's
own httptools protocol with the limits added:

- the request line and headers together at most `max_header_bytes`: over it, 414 when the request
  line is not even complete, else 431, and the connection closed;
- the head complete within `header_timeout_s` of the accept or of its first byte: else 408 (or,
  when nothing was sent, the connection just closed);
- at most `max_connections` open connections per worker: one more is answered 503 at accept.

Each refusal is a `Rejected` (service/refusals.py), sent as the API's JSON body, counted in
`digit_rejections_total` with an empty endpoint, and followed by a lingering close: the socket's
sending side is shut, what the client still sends is read and dropped for at most LINGER_S, then
it is closed, so the reply is not lost to a TCP reset. Importing this module changes nothing
(the BentoML CLI imports the service too); `install_limits()` may run again, and without
httptools it leaves uvicorn as it is.
"""

from __future__ import annotations

import asyncio
import http
import logging
import resource
from typing import Any, ClassVar, NamedTuple

from service import metrics
from service.http import paths
from service.http.asgi import error_response
from service.refusals import Rejected
from service.settings import RETRY_AFTER_S, Settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools missing: uvicorn falls back to h11 and install() does nothing
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)
PROTOCOL = f"{__name__}:BoundedHttpTools"  # the import string uvicorn's Config resolves
LINGER_S = 1.0  # how long a refused connection is drained before it is closed
SWEEP_S = 1.0  # how often a worker looks for heads past their deadline
FD_RESERVE = 64  # descriptors kept for the worker's own files (model, metrics, uploads)


class ConnectionLimits(NamedTuple):
    max_header_bytes: int
    header_timeout_s: float
    max_connections: int


LIMITS = ConnectionLimits(16 * 1024, 10.0, 1000)  # replaced by install_limits()


def connection_cap(wanted: int, open_files: int) -> int:
    """The connection cap a worker can keep: `wanted`, but under its open-file limit, so the
    cap refuses a connection before accept() fails for want of a descriptor."""
    return max(1, min(wanted, open_files - FD_RESERVE))


def raw_response(exc: Rejected) -> bytes:
    """A refusal as HTTP/1.1 bytes, written straight to the socket: the API's JSON body and
    `X-Reject-Reason`, `Connection: close`, and `Retry-After` on a 503."""
    headers, body = error_response(exc)
    headers.append((b"connection", b"close"))
    if exc.status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    phrase = http.HTTPStatus(exc.status).phrase
    lines = [f"HTTP/1.1 {exc.status} {phrase}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def install_limits(settings: Settings) -> bool:
    """Make uvicorn's default HTTP protocol `BoundedHttpTools`, with the settings' limits; False
    (and uvicorn unchanged) when httptools is missing."""
    global LIMITS
    if HttpToolsProtocol is None:
        log.warning("httptools is not installed: no header or connection limits (uvicorn h11)")
        return False
    from uvicorn import config

    wanted = settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = wanted if soft == resource.RLIM_INFINITY else connection_cap(wanted, soft)
    if cap < wanted:
        log.warning("%d connections per worker, not %d: open-file limit %d", cap, wanted, soft)
    LIMITS = ConnectionLimits(settings.max_header_bytes, settings.header_timeout_s, cap)
    config.HTTP_PROTOCOLS["auto"] = config.HTTP_PROTOCOLS["httptools"] = PROTOCOL
    return True


if HttpToolsProtocol is not None:

    class BoundedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol, with the head's size and time and the connections
        bounded. The app it runs is `paths.Label` around uvicorn's, so /metrics stays bounded
        too."""

        lingering: ClassVar[set[BoundedHttpTools]] = set()  # refused, being drained
        sweeping: ClassVar[asyncio.AbstractEventLoop | None] = None  # where the sweep runs

        def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None):
            super().__init__(config, server_state, app_state, _loop)
            self.limits = LIMITS
            self.app = _labelled(config)
            self.in_head = True  # bytes now fed are a request line or headers
            self.head_bytes = 0
            self.line_done = False  # the request line has ended (then 431, not 414)
            self.head_deadline: float | None = None  # loop time the head must be in by
            self.refused = False

        # --- the connection ----------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= self.limits.max_connections:
                self.transport = transport
                cap = self.limits.max_connections
                self._refuse(
                    Rejected(
                        "too_many_connections",
                        f"this worker already holds {cap:,} connections (DIGIT_MAX_CONNECTIONS); "
                        f"retry in {RETRY_AFTER_S} s, or reuse a keep-alive connection.",
                    )
                )
                return
            super().connection_made(transport)
            self._head_begins()

        def connection_lost(self, exc: Exception | None) -> None:
            self.head_deadline = None
            self.lingering.discard(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return  # drained: read and dropped until the lingering close
            # A head is fed in pieces that fit what is left of the limit, so it never grows
            # past it. (A pipelined request that starts inside the piece that ended the one
            # before is counted from the next read: at most one read more, parsed in one go.)
            while data and self.in_head and not self.transport.is_closing():
                room = self.limits.max_header_bytes - self.head_bytes
                if room <= 0:
                    self._head_too_large()
                    return
                piece, data = data[:room], data[room:]
                self.head_bytes += len(piece)
                self.line_done = self.line_done or b"\n" in piece
                super().data_received(piece)
            if data and not self.transport.is_closing():
                super().data_received(data)

        # --- parser callbacks --------------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_begins()

        def on_headers_complete(self) -> None:
            self.in_head, self.head_deadline = False, None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.in_head, self.head_bytes, self.line_done = True, 0, False

        # --- refusals ----------------------------------------------------------------------

        def _head_too_large(self) -> None:
            limit = f"{self.limits.max_header_bytes:,} bytes (DIGIT_MAX_HEADER_BYTES)"
            if self.line_done:
                exc = Rejected(
                    "headers_too_large",
                    f"the request line and headers are over {limit}; send fewer or smaller "
                    "headers.",
                )
            else:
                exc = Rejected(
                    "url_too_long",
                    f"the request line is over {limit}; send the data in a POST body, not "
                    "in the URL.",
                )
            self._refuse(exc)

        def _head_timeout(self) -> None:
            self.head_deadline = None
            if self.transport.is_closing() or not self.in_head:
                return
            if self.head_bytes == 0:  # an idle connection: nothing to answer
                self.transport.close()
                return
            self._refuse(
                Rejected(
                    "header_timeout",
                    f"the request line and headers did not arrive within "
                    f"{self.limits.header_timeout_s:g} s (DIGIT_HEADER_TIMEOUT_S); send them "
                    "at once.",
                )
            )

        def _refuse(self, exc: Rejected) -> None:
            """Answer `exc` and close; while a response is under way (a pipelined request),
            close without an answer, as one cannot be put in the middle of another."""
            metrics.reject(exc.reason, "")
            self.head_deadline = None
            self._unset_keepalive_if_required()
            self.refused = True
            self.connections.discard(self)  # it no longer counts against the cap
            if self.cycle is not None and not self.cycle.response_complete:
                self.transport.close()
                return
            self.transport.write(raw_response(exc))
            flood = len(self.lingering) >= self.limits.max_connections
            if flood or not self.transport.can_write_eof():  # (TLS cannot half-close)
                self.transport.close()  # no draining, so no more sockets than the cap
                return
            self.lingering.add(self)
            self.transport.write_eof()
            if self.flow is not None:
                self.flow.resume_reading()
            self.loop.call_later(LINGER_S, self.transport.close)

        # --- the head's deadline ---------------------------------------------------------
        # A deadline per head, checked by one sweep per worker (every SWEEP_S at most), not a
        # timer per request: a uvloop timer armed and cancelled per request measured ~10 µs,
        # more than the rest of these limits together. A head is cut within its timeout plus
        # one sweep.

        def _head_begins(self) -> None:
            if self.head_deadline is None:
                self.head_deadline = self.loop.time() + self.limits.header_timeout_s
                if BoundedHttpTools.sweeping is not self.loop:
                    BoundedHttpTools.sweeping = self.loop
                    interval = min(SWEEP_S, self.limits.header_timeout_s / 4)
                    _sweep(self.loop, self.connections, interval)


def _sweep(loop: asyncio.AbstractEventLoop, connections: set, interval: float) -> None:
    """Time out every head past its deadline among a worker's connections, then again later."""
    now = loop.time()
    late = [c for c in connections if (d := getattr(c, "head_deadline", None)) and d <= now]
    for connection in late:
        connection._head_timeout()
    loop.call_later(interval, _sweep, loop, connections, interval)


def _labelled(config: Any) -> paths.App:
    """uvicorn's app behind `paths.Label`, built once per Config; uvicorn's own when the app
    has no Starlette routes to label by."""
    app = getattr(config, "_digit_labelled", None)
    if app is None:
        routes = paths.routes_of(config.app)
        app = config.loaded_app if routes is None else paths.Label(config.loaded_app, routes)
        config._digit_labelled = app
    return app
