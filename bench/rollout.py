"""`make bench`, rollout part: what a hot swap costs the requests in flight, and what the shadow
challenger costs a reply, on the same champion as the rest of the run.

The swap: a server on a private home serves the champion under a closed-loop load (16
connections, bench/closed_loop.py) while a second Bento model (the champion's own files under a
new tag and version, what `make package` leaves for a new champion) is written to the store and
`:latest` moved to it; the watcher of each worker (default interval) swaps it in. Reported: every
reply's outcome, the replies answered between the move and the last worker's switch, and the
longest of them.

The shadow: the same server settings with DIGIT_SHADOW_SHARE=1 and that copy named challenger,
loaded with wrk at the /predict settings of the main run, so the shadow-off figures of the same
run are the comparison.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path

from bench import servers
from bench.closed_loop import Load
from bench.results import Champion, Run, Setting

SWAP_CONNECTIONS = 16
BEFORE_S, AFTER_S, SWAP_TIMEOUT_S = 3.0, 3.0, 60.0
SHADOW_CONNECTIONS = (1, 16)


def copy_model(
    home: Path,
    source: str,
    version: str,
    *,
    tag_version: str | None = None,
    files: dict[str, bytes] | None = None,
) -> str:
    """Save the Bento model `source` of `home`'s store again as registry `version` (its card's
    `mlflow_version` and `source`), with `files` replacing some of its files; returns the new
    tag. This is what `make package` leaves for a new champion, without MLflow; BentoML's create
    moves `:latest` to it."""
    import bentoml
    from bentoml._internal.models.model import ModelStore

    from common.card import ModelCard

    store = ModelStore(Path(home) / "models")
    old = store.get(source)
    card = ModelCard.from_metadata(old.info.metadata)
    name = old.tag.name
    source_uri = f"models:/{name}/{version}"
    card = card.model_copy(update={"mlflow_version": version, "source": source_uri})
    tag = f"{name}:{tag_version or f'v{version}-{card.run_id[:8]}'}"
    with bentoml.models.create(
        tag, module=old.info.module, metadata=card.to_metadata(), _model_store=store
    ) as model:
        for item in Path(old.path).iterdir():
            if item.name != "model.yaml" and item.is_file():
                shutil.copy2(item, Path(model.path) / item.name)
        for file, data in (files or {}).items():
            (Path(model.path) / file).write_bytes(data)
    return str(store.get(tag).tag)


def next_version(home: Path, champ: Champion) -> str:
    """A new champion in `home`'s store: the champion's files under the next version."""
    return copy_model(home, champ.bento_tag, f"{champ.version}-next")


def point(home: Path, tag: str, pointer: str) -> None:
    """Move `:latest` (pointer "latest") or the challenger pointer to `tag`, atomically."""
    name, version = tag.split(":")
    target = home / "models" / name / pointer
    tmp = target.with_name(f".{pointer}.tmp")
    tmp.write_text(version)
    tmp.replace(target)


def swapped(base: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("digit_model_reloads_total{") and 'outcome="swapped"' in line
    )


def workers(env: dict[str, str]) -> int:
    """How many workers the server runs: its DIGIT_WORKERS, as the service reads it."""
    from service.settings import Settings

    return Settings.from_env(env).workers


def bench_swap(champ: Champion, home: Path, tmp: Path, env: dict, argv: list, run: Run) -> str:
    """Measure one hot swap under load; record it in run.rollout; return the new tag."""
    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [*argv, "--port", str(port)]
    env = {**env, "DIGIT_MODEL_TAG": f"{champ.bento_tag.split(':')[0]}:latest"}
    log = tmp / "bentoml-swap.log"
    from bench import payloads

    image, _ = payloads.single()
    body = payloads.predict_json(image)
    print(f"==> hot swap under {SWAP_CONNECTIONS} connections", flush=True)
    with servers.running("bentoml serve", argv, f"{base}/readyz", cwd=tmp, log=log, env=env):
        expected = workers(env)
        with Load(base, body, connections=SWAP_CONNECTIONS) as load:
            time.sleep(BEFORE_S)
            new = next_version(home, champ)
            moved = time.monotonic()
            point(home, new, "latest")
            deadline = moved + SWAP_TIMEOUT_S
            while swapped(base) < expected and time.monotonic() < deadline:
                time.sleep(0.1)
            done = time.monotonic()
            time.sleep(AFTER_S)
    replies = load.replies
    during = [r for r in replies if moved <= r.started <= done]
    before = sorted(r.seconds for r in replies if r.started < moved)
    failed = load.failures()
    run.rollout["swap"] = {
        "connections": SWAP_CONNECTIONS,
        "replies": len(replies),
        "failed": len(failed),
        "failures": sorted({f"{r.status} {r.error}"[:120] for r in failed})[:3],
        "versions": sorted({r.version for r in replies}),
        "workers": expected,
        "swap_s": done - moved,
        "during": len(during),
        "during_max_ms": max((r.seconds for r in during), default=0.0) * 1e3,
        "before_p99_ms": before[int(0.99 * (len(before) - 1))] * 1e3 if before else 0.0,
        "before_max_ms": (before[-1] if before else 0.0) * 1e3,
        "switched": done < deadline,
    }
    s = run.rollout["swap"]
    print(
        f"    {s['replies']} replies, {s['failed']} failed; swap took {s['swap_s']:.1f} s, "
        f"{s['during']} replies during it, longest {s['during_max_ms']:.0f} ms "
        f"(before: p99 {s['before_p99_ms']:.0f} ms, max {s['before_max_ms']:.0f} ms)",
        flush=True,
    )
    return new


def shadow_settings() -> list[Setting]:
    return [Setting("ours+shadow", "/predict", c) for c in SHADOW_CONNECTIONS]


def shadow_metrics(base: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    totals = {"compared": 0.0, "skipped": 0.0}
    for line in text.splitlines():
        if line.startswith("digit_shadow_comparisons_total{"):
            totals["compared"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("digit_shadow_skipped_total{"):
            totals["skipped"] += float(line.rsplit(" ", 1)[1])
    return totals
