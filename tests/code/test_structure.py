"""The seams between the project's parts, read from the code itself (ast), so they stay true:

- `service/` (what the Bento ships) imports `common/` and itself, never `pipelines/`; `pipelines/`
  never imports `service/`; `common/` imports neither.
- No DVC stage imports another stage, and each stage's `deps` in dvc.yaml list exactly the project
  files its module runs (followed transitively), so a code change reruns the stages it affects.
- Every file `pipelines/layout.py` names is in dvc.yaml, and every data file dvc.yaml names is in
  the layout.
- The Bento's `include` holds every file the service imports, and nothing of the training side.
"""

from __future__ import annotations

import ast
import subprocess
from functools import cache
from pathlib import Path

import pathspec
import pytest
import yaml

from pipelines import layout
from service.settings import Settings
from tests.helpers import REPO

PACKAGES = ("common", "pipelines", "service")
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = {name: stage["cmd"].removeprefix("python -m ") for name, stage in DVC["stages"].items()}


def source(module: str) -> Path | None:
    """The file of a project module (`pipelines.train` → pipelines/train.py), or None."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def direct_imports(path: Path) -> set[str]:
    """Project modules a file imports anywhere in it (functions too: they run when called)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pipelines import layout` imports the module pipelines.layout
            found |= {
                f"{node.module}.{alias.name}"
                if source(f"{node.module}.{alias.name}")
                else node.module
                for alias in node.names
            }
    return {m for m in found if source(m)}


@cache
def closure(module: str) -> frozenset[str]:
    """The module, every project module it imports transitively, and their packages."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            parent = ".".join(parts[:i])
            if parent not in seen and source(parent):
                seen.add(parent)
                todo += sorted(direct_imports(source(parent)))
    return frozenset(seen)


def files(modules: frozenset[str]) -> set[str]:
    return {str(source(m).relative_to(REPO)) for m in modules}


def modules_under(package: str) -> list[str]:
    return [
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in sorted((REPO / package).rglob("*.py"))
    ]


ALLOWED = {
    "common": {"common"},
    "pipelines": {"common", "pipelines"},
    "service": {"common", "service"},
}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_side_imports_only_itself_and_common(package):
    for module in modules_under(package):
        for imported in direct_imports(source(module)):
            assert imported.split(".")[0] in ALLOWED[package], f"{module} imports {imported}"


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage):
    others = {module for name, module in STAGES.items() if name != stage}
    assert not closure(STAGES[stage]) & others


@pytest.mark.parametrize("stage", STAGES)
def test_a_stages_deps_list_exactly_the_code_it_runs(stage):
    deps = {d for d in DVC["stages"][stage]["deps"] if d.endswith(".py")}
    runs = files(closure(STAGES[stage]))
    assert runs - deps == set(), f"dvc.yaml {stage}.deps misses code it runs"
    assert deps - runs == set(), f"dvc.yaml {stage}.deps lists code it does not run"


def _dvc_paths() -> set[str]:
    paths = set()
    for stage in DVC["stages"].values():
        paths |= {d for d in stage.get("deps", []) if not d.endswith(".py")}
        for key in ("outs", "metrics", "plots"):
            for out in stage.get(key, []):
                paths |= set(out) if isinstance(out, dict) else {out}
    return paths


def test_the_layout_and_dvc_yaml_name_the_same_files():
    named = {
        str(value)
        for name, value in vars(layout).items()
        if name.isupper() and isinstance(value, Path) and value != layout.PREPARED
    }
    named |= {str(layout.split(s)) for s in layout.SPLITS}
    assert named == _dvc_paths()


def test_the_bento_ships_what_the_service_imports_and_no_training_code():
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    spec = pathspec.PathSpec.from_lines("gitwildmatch", bento["include"])
    service = files(closure("service.service"))
    assert {f for f in service if not spec.match_file(f)} == set()
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    shipped = {f for f in tracked if spec.match_file(f)}
    assert "service/service.py" in shipped and "common/card.py" in shipped
    assert not {f for f in shipped if f.startswith("pipelines/")}
    assert "params.yaml" not in shipped


def test_the_services_default_model_is_the_one_params_yaml_registers():
    """The service reads no params.yaml, so its default tag restates the registry name; `make`
    passes the name from params.yaml anyway (MODEL_TAG in the Makefile)."""
    name = yaml.safe_load((REPO / "params.yaml").read_text())["register"]["model_name"]
    assert Settings().model_tag == f"{name}:latest"
    assert "-m pipelines.params register.model_name" in (REPO / "Makefile").read_text()
