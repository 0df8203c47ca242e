"""Test plumbing: isolated stores, a temp copy of the project, a real server on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from bench.servers import free_port as free_port
from bench.servers import running

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "mnist-sample.npz"
BIN = Path(sys.executable).parent

# What a workspace copy needs: the code, the pipeline definition and the fixture data.
PROJECT_FILES = [
    "common",
    "digits",
    "pipelines",
    "service",
    "examples",
    "params.yaml",
    "dvc.yaml",
    "bentofile.yaml",
    "requirements.bento.txt",
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


# What a test's processes take from the caller's environment, and nothing else: where programs and
# the user's home are, the locale and time zone, temp dirs, CA certificates, and the OpenBLAS
# overrides some CPUs here need. So a user's MLFLOW_*, DVC_*, BENTOML_* or DIGIT_* settings never
# reach a test (with DIGIT_FAST_LANE=0 inherited, the lane comparison would compare the API with
# itself).
INHERITED = ("HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "TERM")
INHERITED_PREFIXES = ("LC_", "OPENBLAS_", "SSL_CERT_")
# Variables whose presence in the test process itself would change what in-process code does;
# tests/conftest.py removes them before any test runs.
FOREIGN_PREFIXES = ("MLFLOW_", "DVC_", "BENTOML_", "DIGIT_", "PROMETHEUS_", "STORES_")


def clean_env(**extra: str) -> dict[str, str]:
    """A fresh environment from the allowlist above, the venv first on PATH, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if k in INHERITED or k.startswith(INHERITED_PREFIXES)
    }
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "BENTOML_DO_NOT_TRACK": "true",
            "DVC_NO_ANALYTICS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return {**env, **extra}


def isolated_env(root: Path) -> dict[str, str]:
    """A clean environment whose MLflow store, BentoML home and feedback database live under
    `root`."""
    return clean_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        BENTOML_HOME=str(root / "bentoml"),
        DIGIT_FEEDBACK_DB=f"sqlite:///{root / 'feedback.db'}",
    )


# Stages `dvc repro` runs every time: the feedback export (DVC cannot see into a database; its
# output is byte-identical for the same rows, so nothing after it reruns).
ALWAYS_RUN = ["feedback"]


def only_always_run(status: str) -> bool:
    """Whether `dvc status` reports nothing to do but the stages that always run."""
    lines = [line.strip() for line in status.splitlines() if line.strip()]
    if "up to date" in status:
        return True
    return lines == [part for name in ALWAYS_RUN for part in (f"{name}:", "always changed")]


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
    """Start a real server, wait until `ready` answers 200, yield its base URL, stop it and every
    process it started (bench/servers.py, the runner `make bench` uses too)."""
    url = f"http://127.0.0.1:{port}"
    with running(
        Path(cmd[0]).name, cmd, f"{url}{ready}", cwd=cwd, log=log, env=env, timeout_s=timeout
    ):
        yield url


# The served fixture model (tests/conftest.py): longer training than TINY_PARAMS, so pictures of
# real digits come out right often enough to compare, and small limits for the over-limit cases.
SERVICE_PARAMS = {"train": {"epochs": 10, "augment": {"translation": 0.1}}}
SERVICE_LIMITS = {
    "DIGIT_MAX_BATCH": 64,
    "DIGIT_MAX_BODY_BYTES": 1_000_000,
    "DIGIT_BODY_TIMEOUT_S": 5,
    # The costliest decode the pixel cap lets through (an RLE BMP of 40 Mpx, padded in Python)
    # takes ~3.5 s on Zen 5, barely over the default 3 s: at 1.5 s it is stopped on any CPU of
    # this kind, while a 36 Mpx PNG (~0.4 s of CPU on Zen 5, ~0.9-1.1 s on Zen 3) still decodes:
    # the timeout counts the decoder's CPU, not its wait for a core.
    "DIGIT_DECODE_TIMEOUT_S": 1.5,
}


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


def probability_bound(url: str, exact: float = 1e-5) -> float:
    """How far a probability the server at `url` answers may be from Keras' own: float rounding
    on Keras or OpenVINO fp32, the reduced precision's bound on int8 or bf16 (common/runtimes)."""
    import requests

    from common import runtimes

    runtime = requests.get(f"{url}/model", timeout=30).json()["runtime"]
    return exact if runtime in (runtimes.KERAS, runtimes.FP32) else runtimes.REDUCED_PROBE_TOLERANCE
