"""Who serves, and the way back: `python -m pipelines.champion` shows the champion and the
eligible versions; `python -m pipelines.champion rollback` takes the champion out of service.

A rollback tags the champion `retired` (with the reason) and moves `champion` to the best
version still eligible. The tag is what makes it stick: the gate (pipelines/register.py) always
puts the champion on the best eligible version, so a version merely un-aliased by hand would
come back at the next register.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from mlflow.tracking import MlflowClient

from pipelines.params import load
from pipelines.register import RETIRED, champion_of, eligible, settle
from pipelines.tracking import connect


def show(client: MlflowClient, name: str, min_accuracy: float) -> None:
    now = champion_of(client, name)
    print(f"{name}: champion v{now.version}" if now else f"{name}: no champion")
    for c in sorted(set(eligible(client, name, min_accuracy)), reverse=True):
        print(f"  v{c.version}  test accuracy {c.accuracy:.4f}")


def rollback(client: MlflowClient, name: str, min_accuracy: float, why: str) -> int:
    """Retire the champion; return the version that serves now."""
    now = champion_of(client, name)
    if now is None:
        raise SystemExit(f"champion: {name} has no champion to roll back")
    if not [c for c in eligible(client, name, min_accuracy) if c.version != int(now.version)]:
        raise SystemExit(f"champion: no other version of {name} is eligible; v{now.version} stays")
    stamp = f"{getpass.getuser()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {why}"
    client.set_model_version_tag(name, now.version, RETIRED, stamp)
    champion, _ = settle(client, name, min_accuracy)
    if champion is None or champion.version == int(now.version):  # a teammate's register raced
        raise SystemExit(f"champion: v{now.version} retired, but the alias did not move; rerun")
    print(f"champion: v{now.version} retired; {name} champion is v{champion.version}")
    return champion.version


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.champion", description=__doc__)
    ap.add_argument("verb", nargs="?", choices=["show", "rollback"], default="show")
    ap.add_argument("--reason", default="rolled back", help="recorded in the tag `retired`")
    args = ap.parse_args(argv)
    p = load()
    connect(p.mlflow.experiment)
    client = MlflowClient()
    name, min_accuracy = p.register.model_name, p.register.min_accuracy
    if args.verb == "rollback":
        rollback(client, name, min_accuracy, args.reason)
    show(client, name, min_accuracy)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
