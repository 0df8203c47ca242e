"""The team's stores, started once for every test in tests/team: a private PostgreSQL and the
MLflow tracking server on it with basic auth, in a temp folder on free loopback ports."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import BIN, REPO, clean_env, free_port, run

ADMIN_PASSWORD = "adm1n-Test-pw-7Qz"
ALICE, ALICE_PASSWORD = "alice", "al1ce-Test-pw-3Kx"
SECRETS = (ADMIN_PASSWORD, ALICE_PASSWORD)


def stores_cmd(verb: str) -> list[str]:
    return [str(BIN / "python"), "-m", "stores", verb]


def leftovers(state: Path) -> list[psutil.Process]:
    """Processes still working in the state folder (the servers run there) or naming it."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cwd = p.info["cwd"] or ""
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cwd.startswith(str(state)) or str(state) in cmd:
            found.append(p)
    return [p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="package")
def stores() -> Iterator[dict]:
    """`python -m stores up` with auth; stopped at the end, and nothing may be left running.

    Under /tmp itself, not pytest's tmp_path: as root the cluster runs as `postgres`, which
    cannot traverse pytest's private (0700) base folder.
    """
    top = Path(tempfile.mkdtemp(prefix="digit-team-", dir="/tmp"))
    top.chmod(0o755)
    state = top / "state"
    env = clean_env(
        STORES_DIR=str(state),
        STORES_PG_PORT=str(free_port()),
        STORES_MLFLOW_PORT=str(free_port()),
        STORES_AUTH="1",
        STORES_MLFLOW_WORKERS="1",
        STORES_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    up = run(stores_cmd("up"), REPO, env, timeout=300)
    uri = re.search(r"export MLFLOW_TRACKING_URI=(\S+)", up.stdout)[1]
    try:
        yield {"top": top, "state": state, "env": env, "uri": uri, "up": up.stdout}
    finally:
        run(stores_cmd("down"), REPO, env, check=False, timeout=120)
        left = leftovers(state)
        shutil.rmtree(top, ignore_errors=True)
        assert not left, f"left running: {[p.info for p in left]}"
