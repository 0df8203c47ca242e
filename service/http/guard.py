"""ASGI middleware in front of the prediction endpoints: nothing malformed reaches BentoML.

For each guarded path the request must have the right Content-Type (415 otherwise: no form or
`text/plain` body from a web page, no pickle), a body within its size limit (413, refused before
it is read) that arrives within DIGIT_BODY_TIMEOUT_S (408), and that parses and checks as the
endpoint's body (service/http/bodies.py), the first problem found being the one reported. Only
then is the body replayed to BentoML; the images a JSON body held ride along in the scope (CHECKED)
for the fast lane. Refusals made before the body is read drain a bounded part of it first, so
clients that send the whole body before they read (Python's urllib) see the 4xx, not a reset.

Refusals our handlers make carry `X-Reject-Reason` and are counted there; any other 4xx BentoML
still gives is rewritten here to `{"error": <what to fix>, "reason": <label>, "detail": [...]}`
and counted under that reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from service import metrics
from service.http.asgi import (
    REASON_HEADER,
    App,
    Message,
    Receive,
    Scope,
    Send,
    error_response,
    replay,
    send_response,
)
from service.http.bodies import Body, FormBody, JsonBody, check_form, media_type, read_json
from service.refusals import Rejected

CHECKED = "digit.images"  # scope key: the uint8 (n, 28, 28) a JSON body held, checked
DRAIN_BYTES = 16 * 1024 * 1024  # read and dropped before refusing an unread body, at most...
DRAIN_S = 2.0  # ...for this long; then the connection is closed
MAX_REWRITE = 64 * 1024  # a BentoML 4xx body larger than this is not parsed for its detail
CLOSE = (b"connection", b"close")
_EXPECTED = {JsonBody: "application/json", FormBody: "multipart/form-data"}


def explain(payload: Any, hint: str) -> tuple[Rejected, Any]:
    """BentoML's 400 body → (the refusal, with a message that says what to fix; pydantic detail)."""
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not isinstance(detail, list) or not detail:
        text = payload[0].get("error") if isinstance(payload, list) and payload else payload
        return Rejected("bad_request", f"{str(text)[:500]}. {hint}"), None
    first = detail[0]
    kind, loc = first.get("type", ""), [str(p) for p in first.get("loc", [])]
    where = ".".join(loc) or "body"
    if kind == "json_invalid":
        message = f"the request body is not valid JSON ({first.get('msg')}). {hint}"
        return Rejected("malformed_json", message), detail[:5]
    if kind == "missing":
        return Rejected("missing_field", f"the field '{where}' is missing. {hint}"), detail[:5]
    problems = "; ".join(
        f"{'.'.join(str(p) for p in d.get('loc', [])) or 'body'}: {d.get('msg')}"
        for d in detail[:5]
    )
    return Rejected("invalid_field", f"{problems}. {hint}"), detail[:5]


class _Slow(Exception):
    """The body did not arrive within the time allowed."""


class Guard:
    """Wraps the BentoML app; `hints` maps each guarded path to a one-line usage example and
    `bodies` to what its body must be."""

    def __init__(
        self,
        app: App,
        hints: dict[str, str],
        bodies: dict[str, Body],
        body_timeout_s: float,
    ) -> None:
        self.app, self.hints, self.bodies = app, hints, bodies
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in self.hints or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        endpoint, hint, spec = path.strip("/"), self.hints[path], self.bodies[path]
        scope["digit.endpoint"] = path
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"")
        expected = _EXPECTED[type(spec)]
        if media_type(content_type) != expected:
            got = media_type(content_type) or "no Content-Type"
            if isinstance(spec, JsonBody):
                curl = "-H 'Content-Type: application/json'"
            else:
                curl = f"-F {spec.field}=@file"
            message = f"this endpoint takes {expected} (got {got}; with curl: {curl})"
            if isinstance(spec, JsonBody) and got == "multipart/form-data":
                message += "; a picture file goes to /predict_image"
            await self._refuse_unread(receive, send, path, Rejected("unsupported_media", message))
            return
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > spec.max_bytes:
            await self._refuse_unread(receive, send, path, self._too_large(spec, f"{declared:,}"))
            return
        try:
            body = await self._read(receive, spec.max_bytes)
        except _Slow:
            message = (
                f"the body did not arrive within {self.body_timeout_s:g} s "
                "(DIGIT_BODY_TIMEOUT_S); send it at once"
            )
            await self._refuse(send, path, Rejected("slow_body", message), close=True)
            return
        if body is None:
            too_large = self._too_large(spec, f"over {spec.max_bytes:,}")
            await self._refuse_unread(receive, send, path, too_large)
            return
        try:
            if not body:
                raise Rejected("empty_body", "the body is empty")
            if isinstance(spec, JsonBody):
                checked = read_json(spec, body)
                if checked is not None:
                    scope[CHECKED] = checked
            else:
                check_form(spec, body, content_type)
        except Rejected as exc:
            await self._refuse(send, path, exc)
            return
        await self.app(scope, replay(body), _Rewriter(send, endpoint, hint))

    async def _read(self, receive: Receive, limit: int) -> bytes | None:
        """The whole body, None as soon as it grows past `limit`; _Slow past the deadline."""
        body, more = bytearray(), True
        deadline = time.monotonic() + self.body_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                raise _Slow from None
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return None
        return bytes(body)

    async def _refuse_unread(self, receive: Receive, send: Send, path: str, exc: Rejected) -> None:
        """Refuse before reading: drop up to DRAIN_BYTES of the body for up to DRAIN_S first."""
        dropped, deadline = 0, time.monotonic() + DRAIN_S
        try:
            while dropped <= DRAIN_BYTES:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
                dropped += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        except TimeoutError:
            pass
        await self._refuse(send, path, exc, close=True)

    async def _refuse(self, send: Send, path: str, exc: Rejected, close: bool = False) -> None:
        """Count it, add the endpoint's usage hint, answer (closing the connection if asked)."""
        metrics.reject(exc.reason, path.strip("/"))
        headers, body = error_response(exc, self.hints[path])
        await send_response(send, exc.status, [*headers, CLOSE] if close else headers, body)

    def _too_large(self, spec: Body, size: str) -> Rejected:
        return Rejected(
            "too_large",
            f"the body is {size} bytes; this endpoint accepts at most {spec.max_bytes:,} "
            "(DIGIT_MAX_BODY_BYTES). Send a smaller picture or split the batch",
        )


class _Rewriter:
    """Passes 2xx/5xx and our own refusals straight through; rewrites and counts other 4xx."""

    def __init__(self, send: Send, endpoint: str, hint: str) -> None:
        self.send, self.endpoint, self.hint = send, endpoint, hint
        self.start: Message | None = None
        self.body = bytearray()

    async def __call__(self, message: Message) -> None:
        if self.start is None and message["type"] == "http.response.start":
            status = message["status"]
            ours = any(k.lower() == REASON_HEADER for k, _ in message.get("headers", []))
            if 400 <= status < 500 and not ours:
                self.start = message  # hold it: the body decides the reason
                return
            await self.send(message)
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        if len(self.body) <= MAX_REWRITE:
            self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        try:
            payload = json.loads(self.body) if len(self.body) <= MAX_REWRITE else "a refusal"
        except ValueError:
            payload = self.body.decode("utf-8", "replace")
        exc, detail = explain(payload, self.hint)
        metrics.reject(exc.reason, self.endpoint)
        # BentoML's own status stays (400 for everything it refuses while parsing)
        await send_response(self.send, self.start["status"], *error_response(exc, detail=detail))
