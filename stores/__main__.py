"""`python -m stores up|down|status|env`: start, stop, show and point a shell at the stores."""

from __future__ import annotations

import argparse
import sys

from stores import postgres, tracking_server
from stores.postgres import StoreError
from stores.settings import Settings


def _settings(for_stop: bool = False) -> Settings:
    s = Settings.from_env()
    return (Settings.saved(s.dir) or s) if for_stop else s


def up() -> None:
    s = _settings()
    s.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    created = postgres.init(s)
    postgres.start(s)
    postgres.ensure_databases(s)
    s.save()
    tracking_server.start(s)
    what = "a new cluster" if created else "the cluster"
    print(f"stores: PostgreSQL on 127.0.0.1:{s.pg_port} ({what} in {s.pgdata})")
    print(
        f"stores: MLflow tracking server on {s.tracking_uri} (artifacts in {s.artifacts}"
        f"{', basic auth on' if s.auth else ''})"
    )
    print(
        f"stores: feedback database {postgres.uri(s, 'feedback')} (for the service and the "
        "feedback stage: DIGIT_FEEDBACK_DB, with its password, from `python -m stores env`)"
    )
    print(f"stores: point a shell at them:  export MLFLOW_TRACKING_URI={s.tracking_uri}")
    print('stores: or at all of them:  eval "$(python -m stores env)"')


def down() -> None:
    s = _settings(for_stop=True)
    tracking_server.stop(s)
    postgres.stop(s)
    print(f"stores: stopped (data kept in {s.dir})")


def status() -> int:
    s = _settings(for_stop=True)
    pg = postgres.running(s)
    ml = tracking_server.pid(s) is not None and tracking_server.healthy(s)
    print(f"PostgreSQL  {'up' if pg else 'down'}  127.0.0.1:{s.pg_port}  {s.pgdata}")
    print(f"MLflow      {'up' if ml else 'down'}  {s.tracking_uri}")
    return 0 if pg and ml else 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stores", description=__doc__)
    ap.add_argument("verb", choices=["up", "down", "status", "env"])
    verb = ap.parse_args(argv).verb
    try:
        if verb == "up":
            up()
        elif verb == "down":
            down()
        elif verb == "env":
            s = _settings(for_stop=True)
            print(f"export MLFLOW_TRACKING_URI={s.tracking_uri}")
            if postgres.running(s):  # its password exists once `up` made the cluster
                print(f"export DIGIT_FEEDBACK_DB={postgres.feedback_url(s)}")
            else:
                print("# the feedback database is down: `python -m stores up` first")
        else:
            return status()
    except StoreError as e:
        print(f"stores: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
