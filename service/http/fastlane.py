"""A fast lane for the request the service gets most: a well-formed JSON `POST /predict`.

BentoML's generic request path (its request context, routing, the request object, the response
wrapper) costs more CPU per request on 2 cores than the model itself does (profiled under `make
bench`'s 64-connection load; bench/RESULTS.md). This ASGI middleware answers the requests a
registered handler accepts and hands every other request, its body replayed byte for byte, to the
BentoML API behind it. The handler validates with that API's own input model, so both lanes accept
the same bodies; refusals, their messages and their counters, and the OpenAPI schema, stay in one
place: the API. BentoML's request metrics and the body-size `Guard` sit outside this middleware, so
they see both lanes alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from service.http.asgi import App, Receive, Scope, Send, read_body, replay

# bytes of a JSON body -> (reply body, extra headers), or None: "not mine, let the API answer"
Handler = Callable[[bytes], Awaitable[tuple[bytes, list[tuple[bytes, bytes]]] | None]]

_HANDLERS: dict[str, Handler] = {}


def register(path: str, handler: Handler) -> None:
    """Route POST `path` with a JSON body to `handler` first (called by the service instance)."""
    _HANDLERS[path] = handler


class FastLane:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = _HANDLERS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if handler is None or scope.get("method") != "POST" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        try:
            answer = await handler(body)
        except Exception:  # e.g. the model failed: the API path meets it again and answers it
            answer = None
        if answer is None:
            await self.app(scope, replay(body), send)
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


def _is_json(scope: Scope) -> bool:
    """BentoML reads a body without a Content-Type as JSON too."""
    for key, value in scope.get("headers") or ():
        if key.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return True
