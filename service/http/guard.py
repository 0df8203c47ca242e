"""ASGI middleware in front of the prediction endpoints: body limits and one shape for every 4xx.

Two things BentoML does not do for us: refuse an oversized body before reading it (413), and say
what to fix when its own request parsing fails (it answers 400 with pydantic's raw detail, and no
metric tells them apart). Refusals our handlers make already carry `X-Reject-Reason` and are
counted there; everything else that comes back 4xx is rewritten here to
`{"error": <what to fix>, "reason": <label>, "detail": [...]}` and counted under that reason.
"""

from __future__ import annotations

import json
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
    read_body,
    replay,
    send_response,
)
from service.refusals import Rejected


def explain(payload: Any, hint: str) -> tuple[Rejected, Any]:
    """BentoML's 400 body → (the refusal, with a message that says what to fix; pydantic detail)."""
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not isinstance(detail, list) or not detail:
        text = payload[0].get("error") if isinstance(payload, list) and payload else payload
        return Rejected("bad_request", f"{text}. {hint}"), None
    first = detail[0]
    kind, loc = first.get("type", ""), [str(p) for p in first.get("loc", [])]
    where = ".".join(loc) or "body"
    if kind == "json_invalid":
        message = f"the request body is not valid JSON ({first.get('msg')}). {hint}"
        return Rejected("malformed_json", message), detail
    if kind == "missing":
        return Rejected("missing_field", f"the field '{where}' is missing. {hint}"), detail
    problems = "; ".join(
        f"{'.'.join(str(p) for p in d.get('loc', [])) or 'body'}: {d.get('msg')}"
        for d in detail[:5]
    )
    return Rejected("invalid_field", f"{problems}. {hint}"), detail


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
                await _refuse(send, endpoint, self._too_large(f"{size:,}", hint))
                return
            if size == 0:
                await _refuse(send, endpoint, Rejected("empty_body", f"the body is empty. {hint}"))
                return
        else:  # chunked: read it here, within the limit, then hand it on
            body = await read_body(receive, self.max_body_bytes)
            if body is None:
                await _refuse(
                    send, endpoint, self._too_large(f"over {self.max_body_bytes:,}", hint)
                )
                return
            if not body:
                await _refuse(send, endpoint, Rejected("empty_body", f"the body is empty. {hint}"))
                return
            receive = replay(body)
        await self.app(scope, receive, _Rewriter(send, endpoint, hint))

    def _too_large(self, size: str, hint: str) -> Rejected:
        return Rejected(
            "too_large",
            f"the body is {size} bytes; this service accepts at most {self.max_body_bytes:,} "
            f"(DIGIT_MAX_BODY_BYTES). Send a smaller picture or split the batch. {hint}",
        )


async def _refuse(send: Send, endpoint: str, exc: Rejected) -> None:
    metrics.reject(exc.reason, endpoint)
    await send_response(send, exc.status, *error_response(exc))


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
        exc, detail = explain(payload, self.hint)
        metrics.reject(exc.reason, self.endpoint)
        # BentoML's own status stays (400 for everything it refuses while parsing)
        await send_response(self.send, self.start["status"], *error_response(exc, detail=detail))
