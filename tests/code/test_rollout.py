"""The parts of a rollout that need no server: the probe check, the watcher's decisions and the
shadow's bounds (the real swap, over HTTP, is tests/e2e/test_rollout.py)."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import numpy as np
import pytest
from prometheus_client import REGISTRY

from common.rollout import ProbeMismatch, check_probe, save_probe
from service.batcher import CHALLENGER, CHAMPION, Batch
from service.models import LoadFailed
from service.shadow import Shadow
from service.watcher import Watcher


def softmax_of_first_pixel(images: np.ndarray) -> np.ndarray:
    """A stand-in model: digit = first pixel mod 10, as probabilities."""
    out = np.full((len(images), 10), 0.01)
    out[np.arange(len(images)), images[:, 0, 0] % 10] = 0.91
    return out


def test_the_probe_accepts_the_same_answers_and_refuses_others(tmp_path):
    images = np.zeros((4, 28, 28), np.uint8)
    images[:, 0, 0] = [1, 2, 3, 4]
    save_probe(tmp_path / "probe.npz", images, softmax_of_first_pixel(images))
    assert check_probe(tmp_path, softmax_of_first_pixel) == 4
    with pytest.raises(ProbeMismatch, match=r"unlike the packaged model.*4 different digits"):
        check_probe(tmp_path, lambda x: np.roll(softmax_of_first_pixel(x), 1, axis=1))
    with pytest.raises(ProbeMismatch, match="not probabilities"):
        check_probe(tmp_path, lambda x: softmax_of_first_pixel(x) * 2)
    with pytest.raises(ProbeMismatch, match="shape"):
        check_probe(tmp_path, lambda x: np.zeros((len(x), 9)))
    # packaged before probes existed: only well-formed output is asked for
    assert check_probe(tmp_path / "elsewhere", softmax_of_first_pixel) == 0


class Fake:
    """A loaded model as the watcher and the shadow see it."""

    def __init__(self, tag: str, offset: int = 0) -> None:
        self.tag, self.version, self.offset = tag, tag.rsplit(":", 1)[1], offset

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return softmax_of_first_pixel(images + self.offset)


def run_watcher(wanted: dict, rounds: int, fail: set[str] = frozenset()):
    """`rounds` watcher rounds against a store naming `wanted`; returns outcomes and installs."""
    serving = {CHAMPION: "m:1", CHALLENGER: None}
    installed, loads = [], []

    def load(tag):
        loads.append(tag)
        if tag in fail:
            raise LoadFailed(tag, "check", "answers unlike the packaged model")
        return Fake(tag)

    async def install(role, new):
        installed.append((role, new.tag if new else None))
        serving[role] = new.tag if new else None

    async def main():
        loop = asyncio.get_running_loop()
        w = Watcher(
            wanted=lambda: wanted,
            serving=lambda: dict(serving),
            load=load,
            install=install,
            loop=loop,
            interval_s=60,
        )
        return [await asyncio.to_thread(w.check) for _ in range(rounds)]

    return asyncio.run(main()), installed, loads


def test_the_watcher_swaps_what_changed_and_nothing_else():
    outcomes, installed, loads = run_watcher({CHAMPION: "m:2", CHALLENGER: "m:3"}, rounds=3)
    assert outcomes == [{CHAMPION: "swapped", CHALLENGER: "swapped"}, {}, {}]
    assert installed == [(CHAMPION, "m:2"), (CHALLENGER, "m:3")] and loads == ["m:2", "m:3"]


def test_a_refused_model_is_not_retried_until_the_store_names_another():
    outcomes, installed, loads = run_watcher(
        {CHAMPION: "m:2", CHALLENGER: None}, rounds=3, fail={"m:2"}
    )
    assert outcomes == [{CHAMPION: "check_failed"}, {}, {}]
    assert installed == [] and loads == ["m:2"]  # loaded once, never installed


def test_an_unreadable_store_keeps_what_serves():
    def unreadable():
        raise FileNotFoundError("the store is mid-rename")

    async def main():
        w = Watcher(
            wanted=unreadable,
            serving=dict,
            load=Fake,
            install=None,
            loop=asyncio.get_running_loop(),
            interval_s=60,
        )
        return await asyncio.to_thread(w.check)

    assert asyncio.run(main()) == {}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def batch(model, n: int, route: str = CHAMPION) -> Batch:
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(n)
    return Batch(images, softmax_of_first_pixel(images), [""] * n, 0.001, model, route)


def test_the_shadow_compares_each_image_once_and_skips_past_its_backlog():
    champion, challenger = Fake("m:7"), Fake("m:8", offset=1)  # disagrees on every image
    gate = threading.Event()

    class Slow(Fake):
        def __call__(self, images):
            gate.wait(10)
            return super().__call__(images)

    slow = Slow("m:8", offset=1)
    current = {"challenger": challenger}
    shadow = Shadow(1.0, backlog=10, challenger=lambda: current["challenger"])
    labels = {"champion_version": "7", "challenger_version": "8"}
    before = sample("digit_shadow_comparisons_total", digit="3", agree="no", **labels)
    shadow(batch(champion, 4))
    shadow(batch(champion, 4, route=CHALLENGER))  # the canary's batches are not shadowed
    shadow(batch(challenger, 4))  # nor a batch the challenger itself answered
    shadow._executor.submit(lambda: None).result()  # the queued work is done
    assert sample("digit_shadow_comparisons_total", digit="3", agree="no", **labels) == before + 1
    current["challenger"] = slow
    skipped = sample("digit_shadow_skipped_total", reason="backlog")
    shadow(batch(champion, 8))  # 8 waiting
    shadow(batch(champion, 4))  # 8 + 4 > 10: skipped, not queued
    assert sample("digit_shadow_skipped_total", reason="backlog") == skipped + 4
    gate.set()
    shadow._executor.submit(lambda: None).result()
    shadow.close()


def test_a_swapped_out_model_is_released():
    async def main():
        from service.batcher import MicroBatcher

        old = Fake("m:1")
        ref = weakref.ref(old)
        b = MicroBatcher(old, max_batch=8, max_queue=10)
        await b(np.zeros((1, 28, 28), np.uint8))
        b.install(CHAMPION, Fake("m:2"))
        del old
        answer = await b(np.zeros((1, 28, 28), np.uint8))
        b.close()
        return ref, answer

    ref, answer = asyncio.run(main())
    gc.collect()
    assert answer.model.tag == "m:2" and ref() is None
