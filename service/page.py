"""The GET side of the service: the web page, its files, and BentoML's Swagger UI moved to /docs.

BentoML APIs are POST-only, so a FastAPI app is mounted beside them at "/"; the service class
declares its GET routes on `page_app`. The page (service/static, no build step) is "/" and its
files are under /static; BentoML's Swagger UI moves from "/" to /docs (its assets stay at
/static_content, the spec at /docs.json).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
INDEX = STATIC / "index.html"

page_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
page_app.mount("/static", StaticFiles(directory=STATIC), name="static")


def swagger_page() -> str:
    """BentoML's own Swagger UI page, minus its Google Tag Manager snippets (works offline) and
    its GitHub corner (inline styles): nothing inline is left for the CSP to allow."""
    from _bentoml_impl.server import app as bentoml_app

    html = (Path(bentoml_app.__file__).parent / "main-openapi.html").read_text()
    html = re.sub(r'\s*<div class="version">.*?</svg></a>\s*</div>\s*</div>', "", html, flags=re.S)
    return re.sub(
        r"\s*<!-- Google Tag Manager.*?End Google Tag Manager[^>]*-->", "", html, flags=re.S
    )
