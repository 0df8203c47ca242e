"""Close a keep-alive connection now and then, so connections spread over the workers.

BentoML's workers accept on one shared socket, and a client that opens its connections in a burst
(a load balancer's pool, wrk) can land all of them on one worker; keep-alive then keeps them there,
and that worker's event loop caps the service while the other one idles (seen with `ss` under
`make bench`: 64 of 64 connections on one of two workers; switched off, 1,080 instead of 1,343
requests/s in the A/B runs of bench/RESULTS.md). Like nginx's `keepalive_requests`, every
`every`-th response of a worker says `Connection: close`; the client reconnects, and the new
connection goes to whichever worker accepts it first, most often the less busy one, so the spread
evens out within seconds and follows the load.
"""

from __future__ import annotations

from service.http.asgi import App, Message, Receive, Scope, Send

CLOSE = (b"connection", b"close")


class Recycle:
    def __init__(self, app: App, every: int) -> None:
        self.app, self.every, self.count = app, every, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.every <= 0:
            await self.app(scope, receive, send)
            return
        self.count += 1
        if self.count % self.every:
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        await self.app(scope, receive, closing)
