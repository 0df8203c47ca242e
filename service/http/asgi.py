"""The small ASGI toolkit the layers share: types, reading and replaying a body, a JSON refusal."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.refusals import Rejected

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

REASON_HEADER = b"x-reject-reason"


def error_response(exc: Rejected, hint: str = "", **extra: Any) -> tuple[list, bytes]:
    """(headers, body) of `{"error": ..., "reason": ..., **extra}` for a refusal; the message
    ends with `hint`, the endpoint's usage line, when one is given."""
    message = f"{exc.message.rstrip('.')}. {hint}" if hint else exc.message
    body = json.dumps({"error": message, "reason": exc.reason, **extra}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REASON_HEADER, exc.reason.encode()),
    ]
    return headers, body


async def send_response(send: Send, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
