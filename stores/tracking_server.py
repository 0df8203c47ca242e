"""The MLflow tracking server on the private PostgreSQL: runs, registry and (with auth) users.

Artifacts are proxied (`--artifacts-destination`): clients upload and download through the
server, so a second clone needs nothing but its URL. The database password reaches the server as
PGPASSWORD, never inside a URI (MLflow prints its backend URI at start and in error messages).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from stores import postgres
from stores.postgres import StoreError
from stores.settings import HOST, Settings

ADMIN_PASSWORD_ENV = "STORES_ADMIN_PASSWORD"


def _pidfile(s: Settings) -> Path:
    return s.dir / "mlflow-server.pid"


def pid(s: Settings) -> int | None:
    """The server's process (group leader), if the one `up` started still runs."""
    f = _pidfile(s)
    if not f.is_file():
        return None
    p = int(f.read_text())
    try:
        cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
    except OSError:
        return None
    return p if b"mlflow" in cmdline else None


def healthy(s: Settings, timeout: float = 2.0) -> bool:
    try:
        return requests.get(f"{s.tracking_uri}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def auth_config(s: Settings) -> Path:
    """basic_auth.ini: the users live in PostgreSQL too, not in a stray SQLite file."""
    ini = s.dir / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        f"default_permission = {s.default_permission}\n"
        f"database_uri = {postgres.uri(s, 'mlflow_auth')}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return ini


def command(s: Settings) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        postgres.uri(s, "mlflow"),
        "--serve-artifacts",
        "--artifacts-destination",
        s.artifacts.as_uri(),
        "--host",
        HOST,
        "--port",
        str(s.mlflow_port),
        "--workers",
        str(s.workers),
    ]
    return [*cmd, "--app-name", "basic-auth"] if s.auth else cmd


def start(s: Settings, wait_s: float = 180.0) -> None:
    if pid(s) is not None and healthy(s):
        return
    env = {**os.environ, "PGPASSWORD": postgres.password(s)}
    for name in [n for n in env if n.startswith("MLFLOW_TRACKING_")]:
        del env[name]  # the server is not a client of itself
    if s.auth:
        admin = os.environ.get(ADMIN_PASSWORD_ENV)
        if not admin:
            raise StoreError(f"STORES_AUTH=1 needs the admin's password in {ADMIN_PASSWORD_ENV}")
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(s)),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
            # signs the UI's CSRF tokens; the same across restarts and workers
            "MLFLOW_FLASK_SERVER_SECRET_KEY": postgres.secret(s, "flask-secret-key"),
        }
    s.artifacts.mkdir(parents=True, exist_ok=True)
    s.logs.mkdir(parents=True, exist_ok=True)
    log = (s.logs / "mlflow-server.log").open("ab")
    proc = subprocess.Popen(
        command(s),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=s.dir,
    )
    _pidfile(s).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StoreError(
                f"the MLflow server exited ({proc.returncode}); see {log.name}:\n"
                + (s.logs / "mlflow-server.log").read_text()[-3000:]
            )
        if healthy(s):
            return
        time.sleep(0.5)
    stop(s)
    raise StoreError(f"the MLflow server did not answer on {s.tracking_uri} in {wait_s:.0f} s")


def stop(s: Settings, grace_s: float = 20.0) -> None:
    """SIGTERM to the server's whole process group (its workers too), SIGKILL after grace_s."""
    p = pid(s)
    if p is None:
        _pidfile(s).unlink(missing_ok=True)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(p):
        time.sleep(0.2)
    if _group_alive(p):
        os.killpg(p, signal.SIGKILL)
    _pidfile(s).unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A zombie leader (our own child, not yet reaped) still counts: reap it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    return True
