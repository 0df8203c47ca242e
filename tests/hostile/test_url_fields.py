"""Class 6: BentoML downloads a *text* value in a file field (and a JSON body that is a URL), so a
plain HTML form on any web site could make the server fetch any address. The Guard refuses every
way of sending a URL where a file belongs, and the URL is never fetched."""

from __future__ import annotations

import http.server
import threading

import pytest
import requests

pytestmark = pytest.mark.e2e


@pytest.fixture
def witness():
    """An HTTP server that records every request it gets: the URL the attacks point at."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\x89PNG\r\n\x1a\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/secret.png", hits
    server.shutdown()


def test_no_way_of_sending_a_url_makes_the_server_fetch_it(server, witness):
    target, hits = witness
    attempts = {
        "text field": ("/predict_image", {"files": {"image": (None, target)}}, 400),
        "urlencoded form": ("/predict_image", {"data": {"image": target}}, 415),
        "npy text field": ("/predict_npy", {"files": {"array": (None, target)}}, 400),
        "JSON string body": ("/predict_image", {"json": target}, 415),
        "raw URL body": (
            "/predict_image",
            {"data": target.encode(), "headers": {"Content-Type": "application/json"}},
            415,
        ),
        "text/plain": (
            "/predict_image",
            {"data": target.encode(), "headers": {"Content-Type": "text/plain"}},
            415,
        ),
    }
    for name, (endpoint, kwargs, status) in attempts.items():
        reply = requests.post(f"{server}{endpoint}", timeout=30, **kwargs)
        assert reply.status_code == status, (name, reply.text[:300])
        if status == 400:
            assert "does not fetch URLs" in reply.json()["error"]
    assert hits == [], f"the server fetched {hits}"
