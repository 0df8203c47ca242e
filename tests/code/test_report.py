"""`make report` (scripts/report.py) on two fixture commits of a tiny git + DVC repo: a real
`dvc repro` of a one-line stage writes a metric and a plot from params.yaml, so the second commit
changes a param and, through it, the metrics. No training: each report takes a few seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import BIN, REPO, clean_env, commit, run

pytestmark = pytest.mark.e2e

REPORT = REPO / "scripts" / "report.py"
# accuracy and ECE as functions of the epochs param: 2 epochs -> 95.00% and 2.500%, 4 -> 97.50%
# and 0.625% (dvc metrics diff rounds to 5 places).
STAGE = (
    "python -c \"import json, yaml; e = yaml.safe_load(open('params.yaml'))['train']['epochs']; "
    "json.dump({'accuracy': 1 - 0.1 / e, 'ece': 0.1 / e ** 2}, open('metrics/eval.json', 'w')); "
    "open('plots/history.csv', 'w').write('epoch,accuracy\\n' + "
    "''.join(f'{i},{1 - 0.1 / (i + 1)}\\n' for i in range(e)))\""
)
DVC_YAML = {
    "stages": {
        "evaluate": {
            "cmd": STAGE,
            "params": ["train.epochs"],
            "metrics": [{"metrics/eval.json": {"cache": False}}],
            "outs": [{"plots/history.csv": {"cache": False}}],
        }
    },
    "plots": [{"Training curves": {"x": "epoch", "y": {"plots/history.csv": ["accuracy"]}}}],
}


def repro_and_commit(root: Path, env: dict[str, str], epochs: int, message: str) -> str:
    (root / "params.yaml").write_text(
        yaml.safe_dump({"train": {"epochs": epochs, "learning_rate": 0.003}})
    )
    run([str(BIN / "dvc"), "repro", "-q"], root, env)
    commit(root, env, message)
    return run(["git", "rev-parse", "--short", "HEAD"], root, env).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict:
    """main: `first` (epochs 2), then `second` (epochs 4); the workspace is `second`, clean."""
    root = tmp_path_factory.mktemp("report") / "repo"
    root.mkdir()
    env = clean_env()
    run(["git", "init", "-q", "-b", "main"], root, env)
    run([str(BIN / "dvc"), "init", "-q"], root, env)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root, env)
    (root / "metrics").mkdir()
    (root / "plots").mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    first = repro_and_commit(root, env, 2, "first: two epochs")
    second = repro_and_commit(root, env, 4, "second: four epochs")
    return {"root": root, "env": env, "first": first, "second": second}


def report(root: Path, env: dict[str, str], *args: str, check: bool = True):
    return run([str(BIN / "python"), str(REPORT), *args], root, env, check=check, timeout=120)


def row(text: str, name: str) -> list[str]:
    """The cells of the Markdown table row whose second cell is `name`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 1 and cells[1] == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n{text}")


def test_the_report_against_the_first_commit(repo, tmp_path):
    out = tmp_path / "out" / "change.md"
    proc = report(repo["root"], repo["env"], "--rev", repo["first"], "--out", str(out))
    assert str(out) in proc.stdout
    text = out.read_text()

    before, after = (line for line in text.splitlines() if line.startswith("- **"))
    assert repo["first"] in before and "first: two epochs" in before
    assert repo["second"] in after and "second: four epochs" in after
    assert "uncommitted" not in after

    params = text.split("## Params")[1].split("## Metrics")[0]
    assert row(params, "train.epochs")[2:] == ["2", "4"]
    assert "learning_rate" not in params  # unchanged params are not listed

    metrics = text.split("## Metrics")[1].split("## Plots")[0]
    assert row(metrics, "accuracy")[2:4] == ["0.95", "0.975"]
    assert row(metrics, "ece")[2:4] == ["0.025", "0.00625"]
    assert "| test accuracy | 95.00% | 97.50% | +2.50 pt |" in metrics
    assert "| calibration error (ECE) | 2.500% | 0.625% | -1.875 pt |" in metrics

    page = tmp_path / "out" / "change-plots" / "index.html"
    html = page.read_text()
    assert "Training curves" in html
    assert html.count('"rev": "workspace"') == 4 and html.count(f'"rev": "{repo["first"]}"') == 2
    plots = text.split("## Plots")[1]
    assert "(change-plots/index.html)" in plots
    assert "- Training curves (both)" in plots
    assert f"make report REV={repo['first']}" in text


def test_on_main_the_default_is_the_previous_commit(repo, tmp_path):
    out = tmp_path / "change.md"
    report(repo["root"], repo["env"], "--out", str(out))
    before = next(line for line in out.read_text().splitlines() if line.startswith("- **Before"))
    assert repo["first"] in before and "HEAD~1" in before and "`main`" in before


def test_on_a_branch_the_default_is_the_merge_base_with_main(repo, tmp_path):
    """A branch off `first` with a commit and an uncommitted param: what a pull request shows."""
    root = tmp_path / "clone"
    shutil.copytree(repo["root"], root)
    env = repo["env"]
    run(["git", "switch", "-q", "-c", "feature"], root, env)
    third = repro_and_commit(root, env, 5, "third: five epochs")
    run(["git", "branch", "-f", "main", repo["first"]], root, env)  # so the merge base is `first`
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 6}}))  # not reproduced

    out = tmp_path / "change.md"
    report(root, env, "--out", str(out))
    text = out.read_text()
    before, after = (line for line in text.splitlines() if line.startswith("- **"))
    assert repo["first"] in before and "merge base" in before
    assert third in after and "`feature`" in after and "with uncommitted changes" in after
    assert row(text, "train.epochs")[2:] == ["2", "6"]
    assert row(text, "accuracy")[2:4] == ["0.95", "0.98"]  # the committed third's metrics


def test_a_revision_that_does_not_exist_fails_clearly(repo, tmp_path):
    out = tmp_path / "change.md"
    proc = report(repo["root"], repo["env"], "--rev", "no-such-rev", "--out", str(out), check=False)
    assert proc.returncode == 2
    assert "no revision 'no-such-rev'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("kind", ["no git", "git without DVC"])
def test_outside_a_git_and_dvc_repository_it_fails_clearly(tmp_path, kind):
    env = clean_env()
    if kind == "git without DVC":
        run(["git", "init", "-q"], tmp_path, env)
    proc = report(tmp_path, env, "--out", str(tmp_path / "change.md"), check=False)
    assert proc.returncode == 2
    expected = "not inside a git repository" if kind == "no git" else "not a DVC repository"
    assert expected in proc.stderr and "Traceback" not in proc.stderr
