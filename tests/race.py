"""Two registers at the same moment, many times: the harness behind the champion-gate race tests
(SQLite in tests/code, the team's tracking server in tests/team).

Each round has its own registered model whose v1 is champion at 0.95. Two worker processes, held
at a barrier, each register a version with a random test accuracy and run the gate
(`pipelines.register.settle`) at once; the champion must then be the better of the three.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
from typing import NamedTuple

import mlflow
from mlflow.tracking import MlflowClient

MIN_ACCURACY, START = 0.9, 0.95


class Round(NamedTuple):
    name: str
    accuracies: tuple[float, float]


class Outcome(NamedTuple):
    champion: int  # the version champion ended on
    expected: int  # the best of v1 and the two racers (newer wins a tie)
    writes: tuple[int, int]  # alias writes each racer made


def _racer(uri: str, exp_id: str, rounds: list[Round], me: int, barrier, out) -> None:
    from pipelines.register import settle  # imported in the child: spawn starts afresh

    mlflow.set_tracking_uri(uri)  # MLflow resolves a version's models:/ source through it
    client = MlflowClient(uri)
    for r in rounds:
        model = client.create_logged_model(exp_id)  # what mlflow.register_model registers
        barrier.wait(timeout=120)
        mv = client.create_model_version(
            r.name,
            source=f"models:/{model.model_id}",
            model_id=model.model_id,
            tags={"test_accuracy": f"{r.accuracies[me]:.6f}"},
        )
        _, writes = settle(client, r.name, MIN_ACCURACY)
        out.put((r.name, me, int(mv.version), writes))


def race(uri: str, n: int, seed: int = 0) -> list[Outcome]:
    """Run `n` rounds against the store at `uri`; return each round's outcome."""
    was = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # MLflow resolves a version's models:/ source through it
    try:
        return _race(uri, n, seed)
    finally:
        mlflow.set_tracking_uri(was)


def _race(uri: str, n: int, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    client = MlflowClient(uri)
    exp_id = client.create_experiment(f"race-{rng.getrandbits(32):08x}")
    rounds = []
    for i in range(n):
        # Mostly distinct, some ties, some below the champion or the gate.
        a, b = (round(rng.uniform(0.85, 1.0), 3 if i % 4 else 2) for _ in range(2))
        name = f"race-{exp_id}-{i}"
        client.create_registered_model(name)
        model = client.create_logged_model(exp_id)
        v1 = client.create_model_version(
            name,
            f"models:/{model.model_id}",
            model_id=model.model_id,
            tags={"test_accuracy": f"{START:.6f}"},
        )
        client.set_registered_model_alias(name, "champion", v1.version)
        rounds.append(Round(name, (a, b)))
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_racer, args=(uri, exp_id, rounds, me, barrier, out)) for me in (0, 1)
    ]
    for w in workers:
        w.start()
    got: dict[str, dict[int, tuple[int, int]]] = {}
    try:
        while sum(map(len, got.values())) < 2 * n:
            try:
                name, me, version, writes = out.get(timeout=5)
            except queue.Empty:
                failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                assert not failed, f"a racer died (exit codes {failed}); see its traceback above"
                continue
            got.setdefault(name, {})[me] = (version, writes)
    finally:
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    outcomes = []
    for r in rounds:
        contenders = [(START, 1)] + [
            (acc, got[r.name][me][0]) for me, acc in enumerate(r.accuracies) if acc >= MIN_ACCURACY
        ]
        champion = client.get_model_version_by_alias(r.name, "champion")
        outcomes.append(
            Outcome(
                int(champion.version),
                max(contenders)[1],
                (got[r.name][0][1], got[r.name][1][1]),
            )
        )
    return outcomes
