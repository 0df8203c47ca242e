"""One `endpoint` label for every path no route serves, so a scanner cannot grow `/metrics`.

BentoML's request metrics (`RunnerTrafficMetricsMiddleware`, the outermost layer of its app, outside
every `add_asgi_middleware` layer) label each request with `scope["path"]` as they find it: each
distinct 404 path added 20 series (a histogram's buckets, a counter, an in-progress gauge) that
stay until restart. `Label` runs below all of BentoML's layers (service/http/server.py's protocol
puts it there): for a path that routing would not serve it sets `scope["path"]` to `UNMATCHED`
and keeps the real one aside. `Restore`, just inside our outermost layer (`Recycle`, which reads
no path), puts it back, so routing answers exactly as before (the same 404, or the redirect of a
trailing slash) and only BentoML's metrics, tracing and access log, in between, see the label.
Real endpoints keep their own series.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles

from service.http.asgi import App, Receive, Scope, Send

UNMATCHED = "/{unmatched}"  # a route template no real path equals
ORIGINAL = "digit.path"  # where Label keeps the real path for Restore
CACHE = 4096  # paths whose label is remembered (an LRU: a flood of new paths only evicts)


def route_label(routes: Sequence[BaseRoute], scope: Scope) -> str | None:
    """The label of the route Starlette would send `scope` to, or None for a 404.

    A plain route is its path; a route with parameters is its template (one label for all its
    values); a static file is its normalised path (so `/static/./x.js` is `/static/x.js`), and a
    missing one is a 404. Mounts are followed into the app they hold (BentoML's `PassiveMount` of
    the page app included); a mounted app whose routes cannot be read counts as a 404 here.
    """
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        inner = {**scope, **child}
        if not isinstance(route, Mount):
            if getattr(route, "param_convertors", None):
                return inner.get("root_path", "") + route.path  # type: ignore[attr-defined]
            return scope["path"]
        if isinstance(route.app, StaticFiles):
            return _static_file(route.app, inner)
        nested = getattr(route.app, "routes", None)
        return route_label(nested, inner) if nested is not None else None
    return None


def _static_file(files: StaticFiles, scope: Scope) -> str | None:
    """`/mount/relative/path` of an existing file under a StaticFiles mount, else None."""
    relative = files.get_path(scope)
    try:
        _, found = files.lookup_path(relative)
    except (OSError, ValueError):  # a name too long, a NUL byte: StaticFiles answers 404 too
        return None
    if found is None or not stat.S_ISREG(found.st_mode):
        return None
    return f"{scope.get('root_path', '')}/{relative.replace(os.sep, '/')}"


def labeller(routes: Sequence[BaseRoute]) -> Callable[[str], str]:
    """path → its label (UNMATCHED for a 404), cached; routes are read at each miss, so routes
    added after this is built are seen."""

    @lru_cache(maxsize=CACHE)
    def label(path: str) -> str:
        scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
        return route_label(routes, scope) or UNMATCHED

    return label


class Label:
    """Outermost: a 404 path reaches BentoML's layers as UNMATCHED, the real one kept aside."""

    def __init__(self, app: App, routes: Sequence[BaseRoute]) -> None:
        self.app, self.label = app, labeller(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            label = self.label(path)
            if label != path:
                scope[ORIGINAL], scope["path"] = path, label
        await self.app(scope, receive, send)


class Restore:
    """The real path back, before any layer that reads it and before routing (service.py)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if ORIGINAL in scope:
            scope["path"] = scope.pop(ORIGINAL)
        await self.app(scope, receive, send)


def routes_of(app: Any) -> Sequence[BaseRoute] | None:
    """The routes of a Starlette app (BentoML's is one), or None for any other ASGI app."""
    routes = getattr(app, "routes", None)
    return routes if isinstance(routes, list) else None
