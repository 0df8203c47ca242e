"""Fixtures shared by the service and browser tests: one fixture model, trained and served once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import (
    BIN,
    SERVICE_LIMITS,
    SERVICE_PARAMS,
    free_port,
    isolated_env,
    make_workspace,
    run,
    serve_cmd,
    serving,
    set_params,
)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Iterator[dict]:
    """A temp workspace whose `dvc repro` trained the fixture model, packaged and served for real.

    Yields {"root", "env", "dir", "url"}; the server runs with small limits (SERVICE_LIMITS) so
    over-limit requests stay small.
    """
    root = tmp_path_factory.mktemp("served")
    env = isolated_env(root)
    env.update({k: str(v) for k, v in SERVICE_LIMITS.items()})
    workspace = make_workspace(root / "project", env)
    set_params(workspace, SERVICE_PARAMS)
    run([str(BIN / "dvc"), "repro"], workspace, env)
    run([str(BIN / "python"), "-m", "service.package"], workspace, env)
    port = free_port()
    cmd = serve_cmd("service.service:DigitClassifier", port)
    with serving(cmd, workspace, env, port, root / "server.log") as url:
        yield {"root": root, "env": env, "dir": workspace, "url": url}
