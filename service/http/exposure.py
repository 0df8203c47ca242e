"""Who may talk to the service: the name a request asks for, the key it shows, where it arrived.

Checks in front of everything but `Recycle`, cheapest first; each refusal is a `Rejected` in the
one JSON shape, counted like every other:

- **Host**: a web page on another site can point its own name at 127.0.0.1 (DNS rebinding) and
  then read `/model` and `/metrics` as its own origin; the browser still sends that name in
  `Host`. Only localhost, 127.0.0.1 and [::1] (any port) and `DIGIT_ALLOWED_HOSTS` are served
  (`*`: any).
- **Key**: with `DIGIT_API_KEY` set, the guarded paths (predictions, `/metrics`, and the
  feedback loop's POSTs and its queue of stored drawings, but not `GET /feedback`) want it as
  `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time, from every
  client, loopback too: a reverse proxy on the same machine arrives on loopback.
- **Arrival**: with no key set, a guarded request that arrived on a non-loopback local address (the
  ASGI scope's "server": the socket's own address, whichever of `DIGIT_HOST`, `--host`, BentoML's
  config or a container's port mapping made it reachable) is refused. Checked per request rather
  than at start, because a worker cannot tell how its socket was bound, and a check at start would
  miss `--host 0.0.0.0`.

Health (`/livez`, `/readyz`, `/healthz`) is always open: probes send a pod's IP as Host and carry
no key. Every response says `X-Content-Type-Options: nosniff`; HTML (the page, `/docs`) also gets
a CSP allowing no inline script or style (but Swagger's logo's), no framing (and
`X-Frame-Options` for old browsers) and no referrer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable

from service import metrics
from service.http.asgi import App, Message, Receive, Scope, Send, error_response, send_response
from service.refusals import Rejected
from service.settings import Settings

HEALTH = frozenset({"/livez", "/readyz", "/healthz"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
# Swagger UI's logo (an SVG, hidden by BentoML's CSS) carries this one <style>; allowed by its
# hash, /docs runs without a CSP report while nothing else inline is allowed. Images come from
# this origin only: the badges in BentoML's default API description (shields.io, ...) are not
# fetched, so neither page contacts a third party.
SWAGGER_LOGO_STYLE = ".logo_small_svg__cls-2{fill:#fff}.logo_small_svg__cls-3{fill:#85ea2d}"
_LOGO_HASH = base64.b64encode(hashlib.sha256(SWAGGER_LOGO_STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'self'; script-src 'self'; style-src 'self' 'sha256-{_LOGO_HASH}'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
NOSNIFF = (b"x-content-type-options", b"nosniff")
PAGE_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
CHALLENGE = (b"www-authenticate", b'Bearer realm="digit-classifier"')
HOW_TO_SEND = "Send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`."


def host_name(header: bytes | None) -> str | None:
    """The name in a Host header, lowercased, without its port or a trailing dot ("[::1]" keeps
    its brackets); None when there is none or it is not `name[:port]`."""
    if not header:
        return None
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):  # an IPv6 literal
        name, _, rest = text.partition("]")
        name += "]"
        if not _is_ipv6(name[1:-1]) or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        name, _, port = text.partition(":")
        if "[" in name or "]" in name:
            return None
    name = name.rstrip(".")
    if not name or (port and not port.isdigit()):
        return None
    return name


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def is_loopback(address: object) -> bool:
    """Whether an ASGI "server"/"client" host is a loopback address (an IPv4-mapped one too);
    anything else, a Unix socket's path or nothing included, is not."""
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request shows: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name == b"x-api-key":
            return value.strip()
    return None


def _digest(key: bytes) -> bytes:
    # Equal-length digests: compare_digest then leaks not even the key's length.
    return hashlib.sha256(key).digest()


def key_matches(given: bytes | None, expected_digest: bytes) -> bool:
    """Constant-time: how long it takes says nothing about how much of the key was right."""
    return hmac.compare_digest(_digest(given or b""), expected_digest) and given is not None


def normal_path(path: str) -> str:
    """The route a path reaches, for the guard: repeated and trailing slashes dropped."""
    return re.sub("/{2,}", "/", path).rstrip("/") or "/"


class Exposure:
    """`guarded`: the paths that want the key; `open_reads`: guarded paths whose GET and HEAD are
    open all the same (`/feedback` says whether feedback is on; POSTing it is guarded). The Host
    names and the key come from `settings`."""

    def __init__(
        self,
        app: App,
        guarded: Iterable[str],
        settings: Settings,
        open_reads: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.guarded = frozenset(guarded)
        self.open_reads = frozenset(open_reads)
        extra = (host_name(h.encode()) or h for h in settings.allowed_hosts)  # "name:443": name
        self.hosts = frozenset({*LOOPBACK_NAMES, *extra})
        self.any_host = "*" in self.hosts
        key = settings.key
        self.digest = _digest(key.encode()) if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.refusal(scope, scope.get("path", "")):
            await send({"type": "websocket.close", "code": 1008})  # none served, none let by
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        path = scope.get("path", "")
        if path in HEALTH:
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope, path)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        headers, body = error_response(refusal)
        if refusal.status == 401:
            headers.append(CHALLENGE)
        endpoint = path.strip("/") if path in self.guarded else "other"
        metrics.reject(refusal.reason, endpoint)
        await send_response(send, refusal.status, headers, body)

    def refusal(self, scope: Scope, path: str) -> Rejected | None:
        """Why this request may not go on, or None."""
        headers = scope.get("headers") or ()
        if not self.any_host:
            header = next((v for k, v in headers if k == b"host"), None)
            name = host_name(header)
            if name not in self.hosts:
                return _unknown_host(header)
        path = path if path in self.guarded else normal_path(path)
        if path not in self.guarded:
            return None
        if path in self.open_reads and scope.get("method") in ("GET", "HEAD"):
            return None
        if self.digest is not None:
            given = presented_key(headers)
            if key_matches(given, self.digest):
                return None
            if given is None:
                return Rejected("unauthorized", f"this endpoint needs the API key. {HOW_TO_SEND}")
            return Rejected("unauthorized", f"that is not this service's API key. {HOW_TO_SEND}")
        server = scope.get("server")
        if server is None or not is_loopback(server[0]):
            return Rejected(
                "key_required",
                "this request arrived on a non-loopback address and this service has no API key, "
                "so it answers predictions and metrics on loopback only. Its operator sets "
                "DIGIT_API_KEY (or DIGIT_API_KEY_FILE), or binds it to 127.0.0.1 (DIGIT_HOST); "
                "docs/serving.md, 'Exposing the service'.",
            )
        return None


def _unknown_host(header: bytes | None) -> Rejected:
    if not header:
        return Rejected("unknown_host", "the request has no Host header; send the one you used.")
    shown = header.decode("latin-1")[:80]
    return Rejected(
        "unknown_host",
        f"this service does not answer to the Host {shown!r}: it answers localhost, 127.0.0.1 "
        "and [::1] (any port) and the names its operator lists in DIGIT_ALLOWED_HOSTS ('*': any).",
    )


def _with_headers(send: Send) -> Send:
    """`send` adding nosniff to every response, and the page headers to HTML."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), NOSNIFF]
            kind = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            if kind.startswith(b"text/html"):
                headers += PAGE_HEADERS
            message = {**message, "headers": headers}
        await send(message)

    return sending
