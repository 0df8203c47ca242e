"""What a change did to the model, in Markdown: the thing a pull-request bot posts.

    python scripts/report.py [--rev REV] [--out reports/change.md] [--plots-dir DIR]

Compares the git revision REV with the workspace (HEAD plus any uncommitted change, which is what
`dvc repro` just produced) through the real DVC CLI: `dvc params diff --md`, `dvc metrics diff
--md` (plus the headline figures before and after) and `dvc plots diff`, whose HTML page goes to
DIR (default: beside the report, `<out stem>-plots/`). Without --rev it compares with what a pull
request is compared with: the merge base of HEAD and `main` (or `origin/main`); on main itself,
where that is HEAD, with HEAD~1, the last commit's change. It reads committed metrics and plots
only, so a clone without data or models gets the same report. Exit 0 once the report is written
(its path is printed), 2 when REV or the repository is not there, 1 when DVC fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path

from pipelines.atomic import atomic_dir, write_text
from pipelines.layout import EVAL_METRICS
from pipelines.redact import redact

MAIN_REFS = ("refs/heads/main", "refs/remotes/origin/main")


def _percent(value: float, places: int = 2) -> str:
    return f"{value * 100:.{places}f}%"


def _points(diff: float, places: int = 2) -> str:
    return f"{diff * 100:+.{places}f} pt"


# The figures a reviewer reads first (README's results table): file, key, label, formats. Accuracy
# on 10,000 test digits moves in steps of 0.01%; ECE is a tenth of a percent, hence a finer format.
HEADLINES: tuple[tuple[Path, str, str, Callable[[float], str], Callable[[float], str]], ...] = (
    (EVAL_METRICS, "accuracy", "test accuracy", _percent, _points),
    (
        EVAL_METRICS,
        "ece",
        "calibration error (ECE)",
        partial(_percent, places=3),
        partial(_points, places=3),
    ),
)
# Longer metric tables are folded (GitHub renders <details>), so the headline stays on screen.
FOLD_ROWS = 12


class ReportError(Exception):
    """A reason to stop with a message instead of a traceback; `code` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Commit:
    rev: str  # what DVC is given and names its columns after
    short: str
    subject: str
    why: str  # how this revision was chosen


def _run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)


def git(root: Path, *args: str) -> str:
    proc = _run(["git", *args], root)
    if proc.returncode != 0:
        raise ReportError(f"git {' '.join(args)} failed: {proc.stderr.strip()}", code=1)
    return proc.stdout.strip()


def _dvc_bin() -> str:
    """The `dvc` beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def dvc(root: Path, *args: str) -> str:
    proc = _run([_dvc_bin(), *args], root)
    if proc.returncode != 0:
        raise ReportError(f"dvc {' '.join(args)} failed:\n{proc.stderr.strip()}", code=1)
    return proc.stdout


def repo_root(cwd: Path) -> Path:
    """The git work tree's top, which must also be a DVC repository."""
    proc = _run(["git", "rev-parse", "--show-toplevel"], cwd)
    if proc.returncode != 0:
        raise ReportError(
            f"{cwd} is not inside a git repository: the report compares git revisions"
        )
    root = Path(proc.stdout.strip())
    if not (root / ".dvc").is_dir():
        raise ReportError(f"{root} is not a DVC repository (no .dvc/ folder); run `dvc init`")
    return root


def _verify(root: Path, rev: str) -> str | None:
    proc = _run(
        ["git", "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"], root
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _commit(root: Path, rev: str, sha: str, why: str) -> Commit:
    short, subject = git(root, "show", "-s", "--format=%h%x00%s", sha).split("\0", 1)
    return Commit(rev=rev, short=short, subject=subject, why=why)


def base_commit(root: Path, rev: str | None) -> Commit:
    """REV as given, else the merge base with main, else (on main) HEAD~1."""
    if rev is not None:
        sha = _verify(root, rev)
        if sha is None:
            raise ReportError(
                f"no revision {rev!r} in {root}: give a commit, branch or tag that exists "
                "(git rev-parse found none)"
            )
        return _commit(root, rev, sha, "given with --rev")
    head = _verify(root, "HEAD")
    if head is None:
        raise ReportError(f"{root} has no commit yet: nothing to compare with")
    main_ref = next((ref for ref in MAIN_REFS if _verify(root, ref)), None)
    if main_ref is None:
        why = "no `main` branch: the last commit's change"
    else:
        name = main_ref.removeprefix("refs/heads/").removeprefix("refs/remotes/")
        merge_base = git(root, "merge-base", "HEAD", main_ref)
        if merge_base != head:
            short = git(root, "rev-parse", "--short", merge_base)
            return _commit(
                root,
                short,
                merge_base,
                f"the merge base of HEAD and `{name}` (as for a pull request)",
            )
        why = f"HEAD is on `{name}`: the last commit's change"
    parent = _verify(root, "HEAD~1")
    if parent is None:
        raise ReportError("HEAD is the first commit: nothing to compare with; pass --rev")
    return _commit(root, "HEAD~1", parent, why)


def header(root: Path, base: Commit) -> str:
    head = _commit(root, "HEAD", git(root, "rev-parse", "HEAD"), "")
    branch = git(root, "branch", "--show-current")
    on = f"branch `{branch}`" if branch else "a detached HEAD"
    dirty = git(root, "status", "--porcelain", "--untracked-files=no")
    return "\n".join(
        [
            "# What this change did to the model",
            "",
            f"- **Before** (`{base.rev}` in the tables): `{base.short}` {_quote(base.subject)}, "
            f"{base.why}",
            f"- **After** (`workspace`): `{head.short}` {_quote(head.subject)} on {on}"
            + (", with uncommitted changes" if dirty else ""),
        ]
    )


def _quote(subject: str) -> str:
    return "“" + subject.replace("|", "\\|") + "”"


def _rows(md_table: str) -> int:
    """Data rows of a Markdown table printed by DVC (header and rule excluded)."""
    return max(0, sum(line.startswith("|") for line in md_table.splitlines()) - 2)


def params_section(root: Path, base: Commit) -> str:
    table = dvc(root, "params", "diff", base.rev, "--md").strip()
    return "## Params\n\n" + (table if _rows(table) else "No change.")


def headline_table(diff: dict) -> str:
    """Old and new of each headline figure present in `dvc metrics diff --json --all`."""
    lines = []
    for path, key, label, fmt, fmt_diff in HEADLINES:
        entry = diff.get(str(path), {}).get(key)
        if not entry:
            continue
        old, new = entry.get("old"), entry.get("new")
        change = fmt_diff(new - old) if None not in (old, new) else "—"
        show = [fmt(v) if isinstance(v, int | float) else "—" for v in (old, new)]
        lines.append(f"| {label} | {show[0]} | {show[1]} | {change} |")
    if not lines:
        return ""
    return "\n".join(["| figure | before | after | change |", "|---|---|---|---|", *lines])


def metrics_section(root: Path, base: Commit) -> str:
    table = dvc(root, "metrics", "diff", base.rev, "--md").strip()
    headline = headline_table(json.loads(dvc(root, "metrics", "diff", base.rev, "--json", "--all")))
    parts = ["## Metrics"]
    if headline:
        parts.append(headline)
    rows = _rows(table)
    if not rows:
        parts.append("No metric changed.")
    elif rows > FOLD_ROWS:
        parts.append(
            f"<details><summary>All {rows} changed metrics</summary>\n\n{table}\n\n</details>"
        )
    else:
        parts.append(table)
    return "\n\n".join(parts)


def plot_names(root: Path, base: Commit) -> tuple[dict[str, set[str]], list[dict]]:
    """Each plot's name with the revisions that have it, and DVC's errors, if any."""
    with tempfile.TemporaryDirectory(prefix="report-plots-") as scratch:  # where it copies images
        out = dvc(root, "plots", "diff", base.rev, "--json", "--split", "--out", scratch)
    shown = json.loads(out)
    names: dict[str, set[str]] = {}
    for name, entries in shown.get("data", {}).items():
        for entry in entries:
            names.setdefault(name, set()).update(entry.get("revisions", []))
    return names, list(shown.get("errors") or [])


def plots_section(root: Path, base: Commit, plots_dir: Path, out: Path) -> str:
    with atomic_dir(plots_dir) as tmp:
        dvc(root, "plots", "diff", base.rev, "--out", str(Path(tmp).resolve()))
    page = plots_dir / "index.html"
    link = Path(os.path.relpath(page.resolve(), out.resolve().parent)).as_posix()
    names, errors = plot_names(root, base)
    lines = [
        "## Plots",
        "",
        f"The DVC plots of both, overlaid: [{page}]({link}) (`dvc plots diff {base.rev}`; "
        "open it in a browser, which loads Vega from its CDN).",
        "",
    ]
    for name, revs in sorted(names.items()):
        has = "both" if {base.rev, "workspace"} <= revs else "only " + ", ".join(sorted(revs))
        lines.append(f"- {name} ({has})")
    for err in errors:
        what = err.get("source") or err.get("name") or "a plot"
        lines.append(f"- not at `{err.get('rev')}`: {what} ({err.get('msg') or err.get('type')})")
    if not names:
        lines.append("No plots are defined in dvc.yaml.")
    return "\n".join(lines)


def footer(root: Path, base: Commit) -> str:
    head = git(root, "rev-parse", "--short", "HEAD")
    return (
        f"---\nReproduce: at `{head}`, `make report REV={base.short}` "
        f"(`python scripts/report.py --rev {base.short}`; DVC {version('dvc')})."
    )


def build(root: Path, base: Commit, plots_dir: Path, out: Path) -> str:
    sections = [
        header(root, base),
        params_section(root, base),
        metrics_section(root, base),
        plots_section(root, base, plots_dir, out),
        footer(root, base),
    ]
    return "\n\n".join(sections) + "\n"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="compare with this git revision (default: see the docstring)")
    parser.add_argument("--out", type=Path, default=Path("reports/change.md"))
    parser.add_argument("--plots-dir", type=Path, help="default: <out stem>-plots/ beside --out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    out: Path = args.out
    plots_dir: Path = args.plots_dir or out.with_name(f"{out.stem}-plots")
    try:
        root = repo_root(Path.cwd())
        base = base_commit(root, args.rev)
        text = build(root, base, plots_dir, out)
    except ReportError as err:
        print(f"report: {redact(str(err))}", file=sys.stderr)  # DVC may quote a URL
        return err.code
    write_text(out, text)
    print(f"report: wrote {out} (before: {base.rev}; plots: {plots_dir / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
