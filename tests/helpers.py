"""Test plumbing: isolated stores, a temp copy of the project, a real server on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "mnist-sample.npz"
BIN = Path(sys.executable).parent

# What a workspace copy needs: the code, the pipeline definition and the fixture data.
PROJECT_FILES = [
    "pipelines",
    "service",
    "examples",
    "params.yaml",
    "dvc.yaml",
    "bentofile.yaml",
    "pyproject.toml",
    ".dvcignore",
    "tests/fixtures/mnist-sample.npz",
]

# Small enough to train in seconds on the fixture, big enough to beat chance by far. Every train
# key is pinned here, so changing the default recipe in params.yaml does not slow the tests.
TINY_PARAMS = {
    "data": {"source": "npz", "path": "tests/fixtures/mnist-sample.npz"},
    "train": {
        "epochs": 4,
        "batch_size": 32,
        "learning_rate": 0.003,
        "lr_schedule": "constant",
        "warmup_epochs": 0,
        "ema": False,
        "label_smoothing": 0.0,
        "early_stopping_patience": 0,
        "conv_filters": [8, 16],
        "convs_per_block": 1,
        "padding": "same",
        "downsample": "pool",
        "batch_norm": False,
        "block_dropout": 0.0,
        "dense_units": 32,
        "dropout": 0.1,
        "augment": {"rotation_degrees": 0.0, "zoom": 0.0, "translation": 0.0},
    },
    "register": {"min_accuracy": 0.5},
}


def isolated_env(root: Path) -> dict[str, str]:
    """Environment whose MLflow store and BentoML home live under `root`, never the user's."""
    env = dict(os.environ)
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "BENTOML_HOME": str(root / "bentoml"),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "BENTOML_DO_NOT_TRACK": "true",
            "DVC_NO_ANALYTICS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("MLFLOW_ARTIFACT_ROOT", None)
    env.pop("DIGIT_MODEL_TAG", None)
    return env


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_params(workspace: Path, override: dict) -> None:
    path = workspace / "params.yaml"
    path.write_text(
        yaml.safe_dump(merge(yaml.safe_load(path.read_text()), override), sort_keys=False)
    )


def make_workspace(dest: Path, env: dict[str, str]) -> Path:
    """A git + DVC repo holding a copy of the project, with the tiny params applied."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src, dst = REPO / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    set_params(dest, TINY_PARAMS)
    run(["git", "init", "-q"], dest, env)
    run(["dvc", "init", "-q"], dest, env)
    run(["dvc", "config", "core.analytics", "false"], dest, env)
    commit(dest, env, "workspace")
    return dest


def commit(workspace: Path, env: dict[str, str], message: str) -> None:
    run(["git", "add", "-A"], workspace, env)
    run(
        [
            "git",
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            message,
        ],
        workspace,
        env,
    )


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str],
    port: int,
    log: Path,
    timeout: float = 180,
    ready: str = "/readyz",
) -> Iterator[str]:
    """Start a real server, wait until `ready` answers 200, yield its base URL, stop it."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}{ready}", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready in {timeout}s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


# The served fixture model (tests/conftest.py): longer training than TINY_PARAMS, so pictures of
# real digits come out right often enough to compare, and small limits for the over-limit cases.
SERVICE_PARAMS = {"train": {"epochs": 10, "augment": {"translation": 0.1}}}
SERVICE_LIMITS = {"DIGIT_MAX_BATCH": 64, "DIGIT_MAX_BODY_BYTES": 1_000_000}


def serve_cmd(target: str, port: int) -> list[str]:
    """`bentoml serve` of a service import path or a built Bento tag on 127.0.0.1:port."""
    return [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)]


def second_server_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """`env` with a copy of its BentoML home at `home`, for a second server beside a running one.

    Every `bentoml serve` empties `$BENTOML_HOME/prometheus_multiproc_dir` when it starts, which
    silently resets the /metrics of a server already running on the same home.
    """
    shutil.copytree(
        env["BENTOML_HOME"], home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir")
    )
    return {**env, "BENTOML_HOME": str(home)}
