"""The pure parts of the layers below the app: the refusal bytes written to a socket, the
connection cap kept under the open-file limit, and the route labels that keep /metrics bounded."""

from __future__ import annotations

import json

import httptools
import pytest
from _bentoml_impl.server.mount import PassiveMount
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from service.http.paths import UNMATCHED, labeller, route_label
from service.http.server import FD_RESERVE, connection_cap, raw_response
from service.refusals import REASONS, Rejected


class Parsed:
    """What httptools' response parser (the one uvicorn uses for requests) reads back."""

    def __init__(self, data: bytes) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body, self.complete = b"", False
        parser = httptools.HttpResponseParser(self)
        parser.feed_data(data)
        self.status = parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


@pytest.mark.parametrize(
    "reason", ["url_too_long", "headers_too_large", "header_timeout", "too_many_connections"]
)
def test_a_refusal_on_the_socket_is_one_whole_response_in_the_apis_shape(reason):
    reply = Parsed(raw_response(Rejected(reason, "what to fix.")))
    assert reply.complete and reply.status == REASONS[reason].status
    assert json.loads(reply.body) == {"error": "what to fix.", "reason": reason}
    assert reply.headers[b"x-reject-reason"] == reason.encode()
    assert reply.headers[b"connection"] == b"close"
    assert (b"retry-after" in reply.headers) == (REASONS[reason].status == 503)


@pytest.mark.parametrize(
    ("wanted", "open_files", "cap"),
    [(1000, 1_048_576, 1000), (1000, 1024, 1024 - FD_RESERVE), (4, 1024, 4), (1000, 10, 1)],
)
def test_the_connection_cap_stays_under_the_open_file_limit(wanted, open_files, cap):
    assert connection_cap(wanted, open_files) == cap


async def ok(request):
    return PlainTextResponse("ok")


@pytest.fixture
def app(tmp_path) -> Starlette:
    """BentoML's shape: its own routes, and a page app mounted passively at "/" with files."""
    (tmp_path / "page.js").write_text("//")
    (tmp_path / "sub").mkdir()
    page = FastAPI()
    page.add_api_route("/model", ok)
    page.mount("/static", StaticFiles(directory=tmp_path), name="static")
    return Starlette(
        routes=[
            Route("/predict", ok, methods=["POST"]),
            Route("/items/{item_id:int}", ok),
            Mount("/api", routes=[Route("/v1", ok)]),
            PassiveMount("/", page),
        ]
    )


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/predict", "/predict"),  # a GET is a 405 there: still a real endpoint
        ("/model", "/model"),  # through the passive mount
        ("/api/v1", "/api/v1"),
        ("/items/7", "/items/{item_id:int}"),  # one label for every value
        ("/static/page.js", "/static/page.js"),
        ("/static/./sub/../page.js", "/static/page.js"),  # one file, one label
        ("/static/missing.js", None),
        ("/static/sub", None),  # a directory, no html mode: 404
        ("/static/" + "a" * 5000, None),  # a name too long for the file system
        ("/items/seven", None),
        ("/api/v2", None),
        ("/predict/", None),  # the router's redirect: restored before routing, labelled here
        ("/wp-login.php", None),
    ],
)
def test_a_path_is_labelled_by_the_route_that_serves_it_or_not_at_all(app, path, label):
    scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    assert route_label(app.routes, scope) == label


def test_every_unrouted_path_shares_one_label(app):
    label = labeller(app.routes)
    assert {label(f"/scan-{i}") for i in range(100)} == {UNMATCHED}
    assert label("/model") == "/model"
