"""A fast lane for the request the service gets most: a well-formed JSON `POST /predict`.

BentoML's generic request path (its request context, routing, the request object, the response
wrapper) costs more CPU per request on 2 cores than the model itself does (profiled under `make
bench`'s 64-connection load; bench/RESULTS.md). This ASGI middleware answers the requests a
registered handler accepts and hands every other request, its body untouched, to the BentoML API
behind it. It sits inside the `Guard`, which has already read and checked the body with the same
reader the API uses and left the images in the scope (guard.CHECKED): the body is parsed once, and
only bodies the API would accept get here. Refusals, their messages and their counters, and the
OpenAPI schema, stay in one place. BentoML's request metrics sit outside both, so they see both
lanes alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

from service.http.asgi import App, Receive, Scope, Send
from service.http.guard import CHECKED

# the checked images -> (reply body, extra headers), or None: "not mine, let the API answer"
Handler = Callable[[np.ndarray], Awaitable[tuple[bytes, list[tuple[bytes, bytes]]] | None]]

_HANDLERS: dict[str, Handler] = {}


def register(path: str, handler: Handler) -> None:
    """Route POST `path` with a checked JSON body to `handler` first (called by the service)."""
    _HANDLERS[path] = handler


class FastLane:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = _HANDLERS.get(scope.get("path", "")) if scope["type"] == "http" else None
        images = scope.get(CHECKED)
        if handler is None or images is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        try:
            answer = await handler(images)
        except Exception:  # e.g. the model failed: the API path meets it again and answers it
            answer = None
        if answer is None:
            await self.app(scope, receive, send)  # the Guard's replay of the body, unread
            return
        content, headers = answer
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
