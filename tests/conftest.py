"""Fixtures shared by the service, browser and monitoring tests: one fixture model, trained once,
served from the source tree and from the Bento built of it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers import (
    BIN,
    FOREIGN_PREFIXES,
    SERVICE_LIMITS,
    SERVICE_PARAMS,
    free_port,
    isolated_env,
    make_workspace,
    run,
    second_server_env,
    serve_cmd,
    serving,
    set_params,
)


def pytest_configure(config: pytest.Config) -> None:
    """The caller's store and service settings must not steer in-process code either."""
    for name in [n for n in os.environ if n.startswith(FOREIGN_PREFIXES)]:
        del os.environ[name]


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
    run([str(BIN / "python"), "-m", "pipelines.package"], workspace, env)
    port = free_port()
    cmd = serve_cmd("service.service:DigitClassifier", port)
    with serving(cmd, workspace, env, port, root / "server.log") as url:
        yield {"root": root, "env": env, "dir": workspace, "url": url}


@pytest.fixture(scope="session")
def bento_served(served) -> Iterator[dict]:
    """The Bento `bentoml build` makes of the served workspace (service/ and common/ only, no
    pipelines/, no params.yaml), served on a copy of its BentoML home with the same limits and the
    /predict fast lane off (DIGIT_FAST_LANE=0), so BentoML's own request path answers everything.

    Yields {"env", "url"}.
    """
    root, workspace = served["root"], served["dir"]
    run([str(BIN / "bentoml"), "build"], workspace, served["env"], timeout=300)
    env = {**second_server_env(served["env"], root / "home-bento"), "DIGIT_FAST_LANE": "0"}
    port = free_port()
    cmd = serve_cmd("digit_classifier:latest", port)
    # Served from an empty folder: nothing of the workspace can be picked up from the cwd.
    empty = root / "bento-cwd"
    empty.mkdir()
    with serving(cmd, empty, env, port, root / "bento.log") as url:
        yield {"env": env, "url": url}
