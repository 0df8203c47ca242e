"""The exposure layer's pieces: Host parsing, loopback, the key's headers and its comparison, and
the layer driven with hand-made ASGI messages (real servers: tests/hostile/test_exposure.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from service.http.exposure import (
    CSP,
    Exposure,
    host_name,
    is_loopback,
    key_matches,
    normal_path,
    presented_key,
)
from service.settings import Settings

KEY = "k" * 24
GUARDED = ["/predict", "/metrics"]


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (b"localhost:3000", "localhost"),
        (b"LocalHost", "localhost"),
        (b"localhost.:3000", "localhost"),
        (b"127.0.0.1:", "127.0.0.1"),
        (b"[::1]:3000", "[::1]"),
        (b"[::1]", "[::1]"),
        (b"evil.example", "evil.example"),
        (b"::1", None),  # IPv6 without brackets is not host[:port]
        (b"[zz]:1", None),
        (b"[::1]x", None),
        (b"localhost:http", None),
        (b"x]:1", None),
        (b".", None),
        (b"", None),
        (None, None),
    ],
)
def test_host_name_is_the_name_without_port(header, name):
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.2", False),
        ("0.0.0.0", False),
        ("::ffff:192.0.2.2", False),
        ("/run/digit.sock", False),  # a Unix socket: unknown, so not loopback
        (None, False),
    ],
)
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_the_key_is_read_from_bearer_or_x_api_key():
    assert presented_key([(b"authorization", b"Bearer  abc ")]) == b"abc"
    assert presented_key([(b"authorization", b"bearer abc")]) == b"abc"
    assert presented_key([(b"x-api-key", b"abc")]) == b"abc"
    assert presented_key([(b"authorization", b"Basic YTpi"), (b"x-api-key", b"abc")]) == b"abc"
    assert presented_key([(b"authorization", b"Basic YTpi")]) is None
    assert presented_key([]) is None


def test_key_matches_only_the_key():
    digest = hashlib.sha256(KEY.encode()).digest()
    assert key_matches(KEY.encode(), digest)
    assert not key_matches(KEY.encode()[:-1], digest)
    assert not key_matches(b"", digest)
    assert not key_matches(None, digest)


def test_normal_path_drops_repeated_and_trailing_slashes():
    assert normal_path("//predict/") == "/predict"
    assert normal_path("/metrics") == "/metrics"
    assert normal_path("/") == "/"


def test_a_secret_never_appears_in_a_settings_error_or_repr():
    with pytest.raises(SystemExit) as err:
        Settings.from_env({"DIGIT_API_KEY": "short-secret"})
    assert "short-secret" not in str(err.value) and "16 characters" in str(err.value)
    assert KEY not in repr(Settings(api_key=KEY)) and KEY not in str(Settings(api_key=KEY))


def test_the_key_is_read_stripped_and_a_short_one_stops_the_server():
    assert Settings.from_env({"DIGIT_API_KEY": f" {KEY}\n"}).key == KEY
    assert Settings.from_env({}).key is None
    with pytest.raises(SystemExit, match="DIGIT_API_KEY=\\(hidden\\)"):
        Settings.from_env({"DIGIT_API_KEY": "x" * 15})


def test_host_must_be_an_address_and_allowed_hosts_a_list():
    assert Settings.from_env({"DIGIT_HOST": "[::]"}).host == "::"
    with pytest.raises(SystemExit, match="DIGIT_HOST='localhost'"):
        Settings.from_env({"DIGIT_HOST": "localhost"})
    hosts = Settings.from_env({"DIGIT_ALLOWED_HOSTS": "Digits.Example, ,b.example:443"})
    assert hosts.allowed_hosts == ("digits.example", "b.example:443")


# --- the layer, with hand-made messages ---------------------------------------------------------


async def behind(scope, receive, send) -> None:
    """The app behind the layer: 200 with the content type the path suggests."""
    kind = b"text/html; charset=utf-8" if scope["path"] == "/" else b"application/json"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": b"{}"})


def call(
    settings: Settings,
    path: str = "/predict",
    host: bytes | None = b"127.0.0.1:3000",
    server: tuple | None = ("127.0.0.1", 3000),
    headers: list | None = None,
) -> tuple[int, dict, dict | bytes]:
    layer = Exposure(behind, guarded=GUARDED, settings=settings)
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    all_headers = ([(b"host", host)] if host is not None else []) + (headers or [])
    scope = {"type": "http", "method": "POST", "path": path, "headers": all_headers}
    scope["server"] = server
    asyncio.run(layer(scope, receive, send))
    status, got = sent[0]["status"], dict(sent[0]["headers"])
    body = sent[1]["body"]
    return status, got, json.loads(body) if got[b"content-type"] == b"application/json" else body


def test_loopback_names_pass_other_hosts_are_refused():
    plain = Settings()
    for host in (b"localhost:1", b"127.0.0.1", b"[::1]:3000"):
        assert call(plain, host=host)[0] == 200
    status, headers, body = call(plain, host=b"rebind.example:3000")
    assert (status, body["reason"], headers[b"x-reject-reason"]) == (
        400,
        "unknown_host",
        b"unknown_host",
    )
    assert "rebind.example" in body["error"] and "DIGIT_ALLOWED_HOSTS" in body["error"]
    assert call(plain, host=None)[2]["reason"] == "unknown_host"
    assert call(plain, path="/livez", host=b"10.0.0.7:3000")[0] == 200  # probes use pod IPs


def test_allowed_hosts_add_names_and_star_allows_any():
    assert call(Settings(allowed_hosts=("digits.example:443",)), host=b"digits.example")[0] == 200
    assert call(Settings(allowed_hosts=("*",)), host=b"anything.example")[0] == 200
    assert call(Settings(allowed_hosts=("digits.example",)), host=b"evil.example")[0] == 400


def test_a_set_key_is_wanted_on_guarded_paths_from_loopback_too():
    keyed = Settings(api_key=KEY)
    status, headers, body = call(keyed)
    assert (status, body["reason"]) == (401, "unauthorized")
    assert headers[b"www-authenticate"].startswith(b"Bearer")
    assert call(keyed, headers=[(b"authorization", b"Bearer wrong")])[0] == 401
    assert call(keyed, headers=[(b"authorization", f"Bearer {KEY}".encode())])[0] == 200
    assert call(keyed, headers=[(b"x-api-key", KEY.encode())])[0] == 200
    assert call(keyed, path="//predict/")[0] == 401  # no way round it through the spelling
    assert call(keyed, path="/")[0] == 200 and call(keyed, path="/readyz")[0] == 200


def test_a_non_loopback_arrival_without_a_key_is_refused():
    status, _, body = call(Settings(), server=("192.0.2.2", 3000))
    assert (status, body["reason"]) == (403, "key_required")
    assert call(Settings(), server=None)[0] == 403  # unknown: not loopback
    assert call(Settings(), path="/", server=("192.0.2.2", 3000))[0] == 200
    with_key = [(b"x-api-key", KEY.encode())]
    assert call(Settings(api_key=KEY), server=("192.0.2.2", 3000), headers=with_key)[0] == 200


def test_every_reply_says_nosniff_and_html_gets_the_page_headers():
    _, json_headers, _ = call(Settings())
    assert json_headers[b"x-content-type-options"] == b"nosniff"
    assert b"content-security-policy" not in json_headers
    _, page, _ = call(Settings(), path="/")
    assert page[b"content-security-policy"] == CSP.encode()
    assert (page[b"x-frame-options"], page[b"referrer-policy"]) == (b"DENY", b"no-referrer")
    assert call(Settings(), host=b"evil.example")[1][b"x-content-type-options"] == b"nosniff"


def test_a_websocket_is_held_to_the_same_checks():
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "websocket.connect"}

    layer = Exposure(behind, guarded=GUARDED, settings=Settings())
    scope = {"type": "websocket", "path": "/x", "headers": [(b"host", b"evil.example")]}
    asyncio.run(layer(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
