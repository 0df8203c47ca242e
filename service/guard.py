"""ASGI middleware in front of the prediction endpoints: body limits and one shape for every 4xx.

Two things BentoML does not do for us: refuse an oversized body before reading it (413), and say
what to fix when its own request parsing fails (it answers 400 with pydantic's raw detail, and no
metric tells them apart). Refusals our handlers make already carry `X-Reject-Reason` and are
counted there; everything else that comes back 4xx is rewritten here to
`{"error": <what to fix>, "reason": <label>, "detail": [...]}` and counted under that reason.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service import metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

REASON_HEADER = b"x-reject-reason"


def error_response(reason: str, message: str, status: int) -> tuple[int, list, bytes]:
    body = json.dumps({"error": message, "reason": reason}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REASON_HEADER, reason.encode()),
    ]
    return status, headers, body


def explain(payload: Any, hint: str) -> tuple[str, str, Any]:
    """BentoML's 400 body → (reason, message that says what to fix, pydantic detail)."""
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not isinstance(detail, list) or not detail:
        text = payload[0].get("error") if isinstance(payload, list) and payload else payload
        return "bad_request", f"{text}. {hint}", None
    first = detail[0]
    kind, loc = first.get("type", ""), [str(p) for p in first.get("loc", [])]
    where = ".".join(loc) or "body"
    if kind == "json_invalid":
        return (
            "malformed_json",
            f"the request body is not valid JSON ({first.get('msg')}). {hint}",
            detail,
        )
    if kind == "missing":
        return "missing_field", f"the field '{where}' is missing. {hint}", detail
    problems = "; ".join(
        f"{'.'.join(str(p) for p in d.get('loc', [])) or 'body'}: {d.get('msg')}"
        for d in detail[:5]
    )
    return "invalid_field", f"{problems}. {hint}", detail


class Guard:
    """Wraps the BentoML app; `hints` maps each guarded path to a one-line usage example."""

    def __init__(self, app: App, hints: dict[str, str], max_body_bytes: int) -> None:
        self.app, self.hints, self.max_body_bytes = app, hints, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in self.hints or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        endpoint, hint = path.strip("/"), self.hints[path]
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit():
            size = int(length)
            if size > self.max_body_bytes:
                await self._refuse(
                    send, endpoint, "too_large", self._too_large(f"{size:,}", hint), 413
                )
                return
            if size == 0:
                await self._refuse(send, endpoint, "empty_body", f"the body is empty. {hint}", 400)
                return
        else:  # chunked: read it here, within the limit, then hand it on
            body = await read_body(receive, self.max_body_bytes)
            if body is None:
                message = self._too_large(f"over {self.max_body_bytes:,}", hint)
                await self._refuse(send, endpoint, "too_large", message, 413)
                return
            if not body:
                await self._refuse(send, endpoint, "empty_body", f"the body is empty. {hint}", 400)
                return
            receive = replay(body)
        await self.app(scope, receive, _Rewriter(send, endpoint, hint))

    def _too_large(self, size: str, hint: str) -> str:
        return (
            f"the body is {size} bytes; this service accepts at most {self.max_body_bytes:,} "
            f"(DIGIT_MAX_BODY_BYTES). Send a smaller picture or split the batch. {hint}"
        )

    @staticmethod
    async def _refuse(send: Send, endpoint: str, reason: str, message: str, status: int) -> None:
        metrics.reject(reason, endpoint)
        status, headers, body = error_response(reason, message, status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """The whole request body, or None as soon as it grows past `limit` bytes."""
    body, more = bytearray(), True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if limit is not None and len(body) > limit:
            return None
    return bytes(body)


def replay(body: bytes) -> Receive:
    """A `receive` that hands an already-read body to the next app."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


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
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        try:
            payload = json.loads(self.body)
        except ValueError:
            payload = self.body.decode("utf-8", "replace")
        reason, text, detail = explain(payload, self.hint)
        metrics.reject(reason, self.endpoint)
        status, headers, _ = error_response(reason, text, self.start["status"])
        body = json.dumps({"error": text, "reason": reason, "detail": detail}).encode()
        headers[1] = (b"content-length", str(len(body)).encode())
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
