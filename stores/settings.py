"""Where the stores live and on which loopback ports: environment variables, one typed place.

The state folder holds the cluster, the artifacts and the logs, so data survives `down`/`up`.
Root gets /var/lib/digit-mlops/stores: PostgreSQL refuses to run as root, and the unprivileged
`postgres` user it then runs as cannot traverse /root.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_PG_PORT = 15432
DEFAULT_MLFLOW_PORT = 5001


def default_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/digit-mlops/stores")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data) / "digit-mlops/stores"


PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")  # MLflow's basic-auth permissions


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 < value < 65536:
        raise SystemExit(f"stores: {name}={raw!r} is not a port or count (a whole number, 1-65535)")
    return value


def _permission() -> str:
    raw = (os.environ.get("STORES_DEFAULT_PERMISSION") or "EDIT").strip().upper()
    if raw not in PERMISSIONS:
        choices = ", ".join(PERMISSIONS)
        raise SystemExit(f"stores: STORES_DEFAULT_PERMISSION={raw!r}: give one of {choices}")
    return raw


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    dir: Path
    pg_port: int
    mlflow_port: int
    auth: bool  # MLflow's basic-auth app, its users in the same PostgreSQL
    workers: int = 2  # the tracking server's processes (each loads MLflow)
    # What a signed-in user may do with experiments and models someone else created: EDIT lets
    # the team log runs into one experiment and register versions of one model; the creator
    # (and the admin) alone may delete them or change who may.
    default_permission: str = "EDIT"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            dir=Path(os.environ.get("STORES_DIR") or default_dir()).expanduser().absolute(),
            pg_port=_int("STORES_PG_PORT", DEFAULT_PG_PORT),
            mlflow_port=_int("STORES_MLFLOW_PORT", DEFAULT_MLFLOW_PORT),
            auth=_flag("STORES_AUTH"),
            workers=_int("STORES_MLFLOW_WORKERS", 2),
            default_permission=_permission(),
        )

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def pgdata(self) -> Path:
        return self.dir / "postgres"

    @property
    def artifacts(self) -> Path:
        return self.dir / "artifacts"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    def save(self) -> None:
        """The ports `up` used, so `down` and `status` find the same servers."""
        d = asdict(self) | {"dir": str(self.dir)}
        (self.dir / "stores.json").write_text(json.dumps(d, indent=1) + "\n")

    @classmethod
    def saved(cls, folder: Path) -> Settings | None:
        f = folder / "stores.json"
        if not f.is_file():
            return None
        d = json.loads(f.read_text())
        return cls(**(d | {"dir": Path(d["dir"])}))
