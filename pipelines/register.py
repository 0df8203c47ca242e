"""Stage 5, register: make the logged model a registry version and decide who is champion.

Every run becomes a new version with alias `challenger`; `champion` goes to the best eligible
version, so a bad retrain never replaces a good model in service. Eligible: its test accuracy
(tag `test_accuracy`) passes `register.min_accuracy` and it is not tagged `retired` (what a
rollback does to the version it takes out of service). The current champion always competes too.
Ties go to the newer version. A person's explicit choice (`make promote`, a rollback to a version
the rule would not pick) is a pin, the registered model's tag `champion_pin`: while it names a
version that is not retired, that version is champion and newcomers stay challengers.

Whenever the alias moves forward, the new champion is tagged `previous_champion` with the one it
replaced: the history a rollback walks back (pipelines/champion.py).

"Not worse on people's data" (`register.people_gate`): once the held-out feedback set holds at
least `register.people_min_images` images, the champion is scored on the same images, and a new
version more than `register.people_tolerance` below it there is tagged `people_gate` "held back:
..." and is never eligible, however well it does on the official test set. Without enough
feedback nothing is loaded and the gate is as it always was.

Race-free without a lock: two registers at once (`dvc queue start -j 2`, two teammates) may both
write the alias, but each one, after every write, reads the registry again and writes again until
the alias is on the best version it can see. The last writer therefore checks after its write,
and any version registered later is checked by its own register, so the alias always ends on the
best of them. Unlike a lock this needs nothing but the MLflow API (SQLite, PostgreSQL or a
tracking server over HTTP alike), and nothing can stay locked when a register dies. The receipt
is `cache: false` in dvc.yaml: no run-cache hit can skip this side effect.

Idempotent: a retry after a crash (the stage died after registering, before its receipt, so DVC
runs it again) finds the version already registered for the same run and logged model and reuses
it, instead of registering a duplicate. A version is never left without an alias: if setting
`challenger` fails, the version this attempt created is deleted again.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from typing import NamedTuple

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines import layout
from pipelines.atomic import write_json
from pipelines.log import start
from pipelines.params import Register
from pipelines.paths import workspace
from pipelines.tracking import LINEAGE_TAGS, connect, read_json

CHAMPION, CHALLENGER = "champion", "challenger"
RETIRED = "retired"  # a version tag: never champion again (set by a rollback)
PREVIOUS = "previous_champion"  # a version tag: the champion it replaced
PIN = "champion_pin"  # a registered-model tag: the version a person chose
PEOPLE_GATE = "people_gate"  # a version tag: "passed: ..." or "held back: ..." (never champion)
HELD_BACK = "held back"
SETTLE_ROUNDS = 50  # writes one register may make before it gives up (two racing need two or three)


class Candidate(NamedTuple):
    """A registry version as the gate sees it; tuples compare accuracy first, then the version."""

    accuracy: float
    version: int


def best(candidates: Iterable[Candidate]) -> Candidate | None:
    """The champion the gate wants: highest test accuracy, the newer version on a tie."""
    return max(candidates, default=None)


def accuracy_of(client: MlflowClient, mv: ModelVersion) -> float:
    acc = mv.tags.get("test_accuracy")
    if acc is None:  # a version registered by hand: fall back to its run's metric
        run_metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        acc = run_metrics.get("test_accuracy", 0.0)
    return float(acc)


def all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of `name`, page by page (search returns at most a page at a time)."""
    found: list[ModelVersion] = []
    token = None
    while True:
        try:
            page = client.search_model_versions(
                f"name='{name}'", max_results=1000, page_token=token
            )
        except MlflowException:  # no such registered model yet
            return found
        found.extend(page)
        token = page.token
        if not token:
            return found


def champion_of(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def eligible(client: MlflowClient, name: str, min_accuracy: float) -> list[Candidate]:
    """The versions that may be champion: passing and not retired, plus the champion itself
    (a version someone promoted by hand keeps its place until a better one comes)."""
    out = []
    for mv in all_versions(client, name):
        acc = mv.tags.get("test_accuracy")
        held = mv.tags.get(PEOPLE_GATE, "").startswith(HELD_BACK)
        if acc is not None and float(acc) >= min_accuracy and RETIRED not in mv.tags and not held:
            out.append(Candidate(float(acc), int(mv.version)))
    now = champion_of(client, name)
    if now is not None and RETIRED not in now.tags:
        out.append(Candidate(accuracy_of(client, now), int(now.version)))
    return out


def pinned(client: MlflowClient, name: str) -> Candidate | None:
    """The version a person pinned as champion, unless it is gone or retired."""
    try:
        version = client.get_registered_model(name).tags.get(PIN)
        mv = client.get_model_version(name, version) if version else None
    except MlflowException:
        return None
    if mv is None or RETIRED in mv.tags:
        return None
    return Candidate(accuracy_of(client, mv), int(mv.version))


def remember_previous(client: MlflowClient, name: str, version: int, previous: str) -> None:
    """Tag `version` with the champion it replaces. Two racing gates may tag the same version at
    once, and MLflow's tag upsert then fails for one of them (a UNIQUE constraint): the other's
    write stands, and the alias, which is what matters, is settled below either way."""
    with contextlib.suppress(MlflowException):
        client.set_model_version_tag(name, str(version), PREVIOUS, str(previous))


def settle(client: MlflowClient, name: str, min_accuracy: float) -> tuple[Candidate | None, int]:
    """Move `champion` to the pinned version or else the best eligible one, re-reading after each
    write until it stays there; return (the champion, how many writes it took). See the module
    docstring for why this cannot lose a race."""
    for writes in range(SETTLE_ROUNDS):
        target = pinned(client, name) or best(eligible(client, name, min_accuracy))
        now = champion_of(client, name)
        if target is None:  # nothing eligible: leave the alias where it is
            return (Candidate(accuracy_of(client, now), int(now.version)) if now else None), writes
        if now is not None and int(now.version) == target.version:
            return target, writes
        if now is not None and RETIRED not in now.tags:  # forward, not a rollback: keep history
            remember_previous(client, name, target.version, now.version)
        client.set_registered_model_alias(name, CHAMPION, str(target.version))
    raise RuntimeError(f"register: {CHAMPION} of {name} did not settle in {SETTLE_ROUNDS} writes")


def reason(accuracy: float, version: int, min_accuracy: float, champion: Candidate | None) -> str:
    """Why this version is or is not champion, in words for the receipt and the log."""
    if accuracy < min_accuracy:
        return f"test accuracy {accuracy:.4f} is below register.min_accuracy {min_accuracy}"
    if champion is None:
        return f"no eligible champion (test accuracy {accuracy:.4f})"
    if champion.version == version:
        return f"best eligible version (test accuracy {accuracy:.4f})"
    if champion.accuracy > accuracy:
        return (
            f"test accuracy {accuracy:.4f} is worse than champion v{champion.version}'s "
            f"{champion.accuracy:.4f}"
        )
    return f"champion v{champion.version} ties at {champion.accuracy:.4f} and is newer"


def already_registered(
    client: MlflowClient, name: str, run_id: str, model_uri: str
) -> ModelVersion | None:
    """The version an earlier attempt registered for this run's logged model, if there is one."""
    try:
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:  # no such registered model yet
        return None
    same = [mv for mv in found if model_uri in (mv.source, mv.tags.get("model_uri"))]
    return min(same, key=lambda mv: int(mv.version), default=None)


def register(client: MlflowClient, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Reuse or create the version of `model_uri` and give it `challenger`; return its number."""
    mv = already_registered(client, name, tags["run_id"], model_uri)
    created = mv is None
    if mv is None:
        mv = mlflow.register_model(model_uri, name, tags=tags | {"model_uri": model_uri})
    else:  # the gate reads test_accuracy from the tags: make sure the earlier try left them all
        for key, value in tags.items():
            if mv.tags.get(key) != value:
                client.set_model_version_tag(name, mv.version, key, value)
    try:
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
    except BaseException:
        if created:  # never leave a version without an alias behind
            with contextlib.suppress(Exception):
                client.delete_model_version(name, mv.version)
        raise
    return str(mv.version)


def people_verdict(mine: float, champion: float, images: int, tolerance: float) -> str:
    """The gate's words on a new version's people accuracy against the champion's."""
    facts = f"{mine:.4f} on {images:,} people's images against the champion's {champion:.4f}"
    if mine < champion - tolerance:
        return f"{HELD_BACK}: {facts}, more than register.people_tolerance {tolerance} below"
    return f"passed: {facts}"


def champion_on_people(client: MlflowClient, name: str, version: int) -> tuple[str, float] | None:
    """(the champion's version, its accuracy on the held-out people set); None without another
    champion. Loads the champion's logged model (TensorFlow: only when the gate applies)."""
    now = champion_of(client, name)
    if now is None or int(now.version) == version:
        return None
    import mlflow.keras

    from pipelines.data import load_feedback

    people = load_feedback(layout.PEOPLE)
    net = mlflow.keras.load_model(f"models:/{name}/{now.version}")
    probs = net.predict(people["x"], batch_size=1000, verbose=0)
    return now.version, float(np.mean(probs.argmax(axis=1) == people["y"]))


def people_gate(
    client: MlflowClient, name: str, version: int, people: dict, gate: Register
) -> str | None:
    """Apply "not worse on people's data" to `version` (tagging it); None where it does not apply
    (off, too little feedback, no other champion)."""
    if not gate.people_gate or people.get("images", 0) < gate.people_min_images:
        return None
    theirs = champion_on_people(client, name, version)
    if theirs is None:
        return None
    verdict = (
        people_verdict(people["accuracy"], theirs[1], people["images"], gate.people_tolerance)
        + f" (v{theirs[0]})"
    )
    client.set_model_version_tag(name, str(version), PEOPLE_GATE, verdict)
    return verdict


def main() -> None:
    p = start("register")
    ws = workspace()
    logged = read_json(ws / layout.LOGGED_MODEL)
    evaluation = read_json(ws / layout.EVAL_METRICS)
    accuracy = float(evaluation["accuracy"])
    people = evaluation.get("people", {"images": 0})
    name, min_accuracy = p.register.model_name, p.register.min_accuracy

    connect(p.mlflow.experiment)
    client = MlflowClient()
    run = client.get_run(logged["run_id"])
    tags = {k: run.data.tags[k] for k in LINEAGE_TAGS if k in run.data.tags}
    tags |= {"run_id": logged["run_id"], "test_accuracy": f"{accuracy:.6f}"}
    if people["images"]:
        tags |= {
            "people_accuracy": f"{people['accuracy']:.6f}",
            "people_images": str(people["images"]),
        }

    version = int(register(client, name, logged["model_uri"], tags))
    verdict = people_gate(client, name, version, people, p.register)
    champion, _ = settle(client, name, min_accuracy)
    promoted = champion is not None and champion.version == version
    why = reason(accuracy, version, min_accuracy, champion)
    if verdict is not None and verdict.startswith(HELD_BACK):
        why = f"people's data: {verdict}"
    receipt = {
        "model_name": name,
        "version": version,
        "run_id": logged["run_id"],
        "test_accuracy": accuracy,
        "decision": "promoted to champion" if promoted else "challenger only",
        "reason": why,
        "champion_version": champion.version if champion else None,
        "people_gate": verdict,
    }
    write_json(ws / layout.RECEIPT, receipt)
    print(f"register: {name} v{version}: {receipt['decision']} ({why})", file=sys.stderr)


if __name__ == "__main__":
    main()
