"""Who serves, and how to change it by hand: `python -m pipelines.champion` shows the champion
and the eligible versions; `rollback` goes back to the previous champion; `promote VERSION`
chooses one; `unpin` hands the choice back to the gate. `make rollback` / `make promote` run these,
then `make package`, and a running service follows within seconds (service/watcher.py).

A rollback tags the champion `retired` (with the reason) and moves `champion` back along the
history the gate writes (each champion's `previous_champion` tag), skipping retired versions.
The tag is what makes it stick: the gate (pipelines/register.py) never picks a retired version.
When the previous champion is not what the gate would pick by itself, the rollback pins it.

A promotion pins the version (the registered model's tag `champion_pin`): an explicit choice that
new runs do not override until `unpin`. It must pass the gate (test accuracy at least
register.min_accuracy, not retired) unless forced (`--force`), which also un-retires it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.params import load
from pipelines.register import (
    PIN,
    PREVIOUS,
    RETIRED,
    accuracy_of,
    best,
    champion_of,
    eligible,
    pinned,
    settle,
)
from pipelines.tracking import connect


def stamp(why: str) -> str:
    return f"{getpass.getuser()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {why}"


def show(client: MlflowClient, name: str, min_accuracy: float) -> None:
    now = champion_of(client, name)
    pin = pinned(client, name)
    held = f" (pinned: {client.get_registered_model(name).tags.get(f'{PIN}_note')})" if pin else ""
    print(f"{name}: champion v{now.version}{held}" if now else f"{name}: no champion")
    if now is not None and now.tags.get(PREVIOUS):
        print(f"  previous champion: v{now.tags[PREVIOUS]} (make rollback goes back to it)")
    for c in sorted(set(eligible(client, name, min_accuracy)), reverse=True):
        print(f"  v{c.version}  test accuracy {c.accuracy:.4f}")


def previous(client: MlflowClient, name: str, version: str) -> str | None:
    """The latest champion before `version` that is not retired, walking the history back."""
    seen = {version}
    mv = client.get_model_version(name, version)
    while (back := mv.tags.get(PREVIOUS)) and back not in seen:
        seen.add(back)
        try:
            mv = client.get_model_version(name, back)
        except MlflowException:  # deleted: its history is gone with it
            return None
        if RETIRED not in mv.tags:
            return back
    return None


def move_to(client: MlflowClient, name: str, min_accuracy: float, version: int, why: str) -> int:
    """Make `version` champion: by the gate's own rule when it would pick it, else pinned."""
    chosen_by_gate = best(eligible(client, name, min_accuracy))
    if chosen_by_gate is None or chosen_by_gate.version != version:
        pin(client, name, version, why)
    elif PIN in client.get_registered_model(name).tags:
        client.delete_registered_model_tag(name, PIN)
    champion, _ = settle(client, name, min_accuracy)
    if champion is None or champion.version != version:  # a teammate's promote raced
        raise SystemExit(f"champion: {name} champion did not move to v{version}; rerun")
    return champion.version


def pin(client: MlflowClient, name: str, version: int, why: str) -> None:
    client.set_registered_model_tag(name, PIN, str(version))
    client.set_registered_model_tag(name, f"{PIN}_note", stamp(why))


def rollback(client: MlflowClient, name: str, min_accuracy: float, why: str) -> int:
    """Retire the champion and go back to the previous one; return the version that serves."""
    now = champion_of(client, name)
    if now is None:
        raise SystemExit(f"champion: {name} has no champion to roll back")
    target = previous(client, name, now.version)
    if target is None:  # no history (registered before it was kept): the best other version
        others = [c for c in eligible(client, name, min_accuracy) if c.version != int(now.version)]
        if not others:
            raise SystemExit(
                f"champion: no other version of {name} is eligible; v{now.version} stays"
            )
        target = str(best(others).version)
    client.set_model_version_tag(name, now.version, RETIRED, stamp(why))
    version = move_to(client, name, min_accuracy, int(target), f"rollback from v{now.version}")
    print(f"champion: v{now.version} retired ({why}); {name} champion is v{version} again")
    return version


def promote(
    client: MlflowClient, name: str, min_accuracy: float, version: int, force: bool, why: str
) -> int:
    """Pin `version` as champion; it must pass the gate unless `force`."""
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise SystemExit(f"champion: {name} has no version {version}") from None
    accuracy = accuracy_of(client, mv)
    problems = [f"it is retired ({mv.tags[RETIRED]})"] if RETIRED in mv.tags else []
    if accuracy < min_accuracy:
        problems.append(f"test accuracy {accuracy:.4f} < register.min_accuracy {min_accuracy}")
    if problems and not force:
        raise SystemExit(
            f"champion: v{version} does not pass the gate: {'; '.join(problems)}. "
            "Promote it anyway with FORCE=1 (make) or --force."
        )
    if RETIRED in mv.tags:
        client.delete_model_version_tag(name, str(version), RETIRED)
    forced = f" (forced: {'; '.join(problems)})" if problems else ""
    pin(client, name, version, f"promoted by hand{forced}: {why}")
    champion, _ = settle(client, name, min_accuracy)
    if champion is None or champion.version != version:
        raise SystemExit(f"champion: {name} champion did not move to v{version}; rerun")
    print(f"champion: {name} v{version} is champion, pinned (`make unpin` lets the gate choose)")
    return version


def unpin(client: MlflowClient, name: str, min_accuracy: float) -> None:
    if pinned(client, name) is not None or PIN in client.get_registered_model(name).tags:
        client.delete_registered_model_tag(name, PIN)
    champion, _ = settle(client, name, min_accuracy)
    print(f"champion: the gate chooses again; {name} champion is v{champion.version}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.champion", description=__doc__)
    ap.add_argument(
        "verb", nargs="?", choices=["show", "rollback", "promote", "unpin"], default="show"
    )
    ap.add_argument("version", nargs="?", type=int, help="with promote: the registry version")
    ap.add_argument("--reason", default="", help="recorded in the tag `retired` or the pin")
    ap.add_argument("--force", action="store_true", help="promote even if it fails the gate")
    args = ap.parse_args(argv)
    if args.verb == "promote" and args.version is None:
        ap.error("promote needs a VERSION (make promote VERSION=n)")
    p = load()
    connect(p.mlflow.experiment)
    client = MlflowClient()
    name, min_accuracy = p.register.model_name, p.register.min_accuracy
    if args.verb == "rollback":
        rollback(client, name, min_accuracy, args.reason or "rolled back")
    elif args.verb == "promote":
        promote(client, name, min_accuracy, args.version, args.force, args.reason or "by hand")
    elif args.verb == "unpin":
        unpin(client, name, min_accuracy)
    show(client, name, min_accuracy)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
