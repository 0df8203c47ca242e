"""The docs say what the code does: the refusal table, the make verbs, the links, the size of the
front door. Each check reads the code (ast, the Makefile) rather than a copy of it."""

from __future__ import annotations

import ast
import re

import pytest

from service.refusals import REASONS
from tests.helpers import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *DOCS]


def emitted_reasons() -> dict[str, list[str]]:
    """Every reason the service can refuse with: the first argument of each `Rejected(...)` call
    in service/, with where it is."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Rejected":
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                first = node.args[0] if node.args else None
                assert isinstance(first, ast.Constant), f"{where}: the reason must be a literal"
                found.setdefault(first.value, []).append(where)
    return found


def test_every_reason_the_code_emits_is_in_the_table_and_every_entry_is_used():
    emitted = emitted_reasons()
    assert set(emitted) - set(REASONS) == set(), "emitted but not in service/refusals.py"
    assert set(REASONS) - set(emitted) == set(), "in the table but never emitted"


def test_docs_api_lists_exactly_the_refusal_table():
    text = (REPO / "docs" / "api.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \|", text, flags=re.M)
    assert [(reason, int(status)) for reason, status in rows] == [
        (reason, r.status) for reason, r in REASONS.items()
    ]


def test_every_make_verb_the_docs_name_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    for page in PAGES:
        named = set(re.findall(r"`make ([a-z][a-z-]*)", page.read_text()))
        assert named - targets == set(), f"{page.name} names make verbs the Makefile lacks"
    assert {"run", "test"} <= set(re.findall(r"make ([a-z-]+)", (REPO / "README.md").read_text()))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_readme_is_a_front_door():
    """About one screen-scroll per section; the details live in docs/."""
    assert len((REPO / "README.md").read_bytes()) < 12_000
