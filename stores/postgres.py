"""A private PostgreSQL cluster under the state folder: never the system's, only on loopback.

PostgreSQL will not run as root, so under root (CI) the cluster belongs to Debian's unprivileged
`postgres` user and every server command runs through `runuser`. Connections are TCP on
127.0.0.1 with a password (scram-sha-256) that `up` generates once and keeps beside the cluster,
readable by its owner only; nobody outside this machine can reach the port.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from stores.settings import HOST, Settings

SUPERUSER = "digit"
# runs and registry; basic-auth users and permissions; what people told the page (the service's
# DIGIT_FEEDBACK_DB, read by the pipeline's feedback stage)
DATABASES = ("mlflow", "mlflow_auth", "feedback")


class StoreError(RuntimeError):
    """A store cannot start; the message says what to do."""


def bindir() -> Path:
    """The newest installed server's binaries (Debian keeps them off PATH)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0),
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise StoreError("PostgreSQL's server is not installed: apt-get install postgresql")


def owner() -> str | None:
    """The unprivileged user the cluster runs as when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StoreError(
            "running as root needs the 'postgres' user that Debian's postgresql package creates"
        ) from None
    return "postgres"


def _as_owner(cmd: list[str]) -> list[str]:
    user = owner()
    if not user:
        return cmd
    # util-linux's runuser lives in /usr/sbin, which a non-login PATH (CI's) may lack.
    runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if runuser is None:
        raise StoreError("running as root needs util-linux's runuser to drop to 'postgres'")
    return [runuser, "-u", user, "--", *cmd]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_owner(cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw
    )


def secret(s: Settings, name: str) -> str:
    """A random secret made once and kept in the state folder (0600): survives restarts."""
    f = s.dir / "secrets" / name
    if not f.is_file():
        f.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return f.read_text().strip()


def password(s: Settings) -> str:
    """The cluster superuser's password (only the tracking server needs it)."""
    return secret(s, "postgres-password")


def _chown(path: Path) -> None:
    user = owner()
    if user:
        shutil.chown(path, user, user)


def init(s: Settings) -> bool:
    """Create the cluster if there is none yet; True if this call created it."""
    if (s.pgdata / "PG_VERSION").is_file():
        return False
    s.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    _chown(s.pgdata)
    if _run(["test", "-w", str(s.pgdata)]).returncode != 0:
        raise StoreError(
            f"the cluster's owner ({owner()}) cannot write {s.pgdata}: a folder above it is "
            "closed to other users; set STORES_DIR to a folder it can reach"
        )
    pwfile = s.dir / ".initdb-password"  # outside the data folder: initdb wants it empty
    pwfile.write_text(password(s) + "\n")
    pwfile.chmod(0o600)
    _chown(pwfile)
    try:
        r = _run(
            [
                str(bindir() / "initdb"),
                "-D",
                str(s.pgdata),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if r.returncode != 0:
        shutil.rmtree(s.pgdata, ignore_errors=True)  # so the next `up` starts clean
        raise StoreError(f"initdb failed:\n{r.stdout}{r.stderr}")
    with (s.pgdata / "postgresql.conf").open("a") as conf:
        # The socket in the cluster's own folder: /var/run/postgresql is the system cluster's.
        conf.write(f"\nlisten_addresses = '{HOST}'\nunix_socket_directories = '{s.pgdata}'\n")
    return True


def running(s: Settings) -> bool:
    if not (s.pgdata / "PG_VERSION").is_file():
        return False
    return _run([str(bindir() / "pg_ctl"), "-D", str(s.pgdata), "status"]).returncode == 0


def start(s: Settings) -> None:
    if running(s):
        return
    r = _run(
        [
            str(bindir() / "pg_ctl"),
            "-D",
            str(s.pgdata),
            "-l",
            str(s.pgdata / "server.log"),
            "-o",
            f"-p {s.pg_port}",
            "-w",
            "-t",
            "60",
            "start",
        ]
    )
    if r.returncode != 0:
        log = s.pgdata / "server.log"
        tail = log.read_text()[-2000:] if log.is_file() else ""
        raise StoreError(f"PostgreSQL did not start on port {s.pg_port}:\n{r.stderr}{tail}")


def stop(s: Settings) -> None:
    if running(s):
        _run(
            [str(bindir() / "pg_ctl"), "-D", str(s.pgdata), "-m", "fast", "-w", "stop"], check=True
        )


def uri(s: Settings, database: str) -> str:
    """SQLAlchemy URI without the password (libpq takes it from PGPASSWORD)."""
    return f"postgresql+psycopg2://{SUPERUSER}@{HOST}:{s.pg_port}/{database}"


def feedback_url(s: Settings) -> str:
    """The feedback database's SQLAlchemy URL for DIGIT_FEEDBACK_DB, password included: the
    service and the pipeline connect to it themselves (no server in between, as MLflow has)."""
    return f"postgresql+psycopg2://{SUPERUSER}:{password(s)}@{HOST}:{s.pg_port}/feedback"


def connect(s: Settings, database: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host=HOST,
        port=s.pg_port,
        user=SUPERUSER,
        password=password(s),
        dbname=database,
        connect_timeout=10,
    )


def ensure_databases(s: Settings) -> None:
    conn = connect(s)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for db in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{db}"')
    finally:
        conn.close()
