"""Both servers for every request-class test: the source tree's (fast lane on) and the built
Bento's (BentoML's own request path), as tests/e2e/test_service.py does."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", params=["source", "bento"])
def server(request) -> str:
    return request.getfixturevalue("served" if request.param == "source" else "bento_served")["url"]
